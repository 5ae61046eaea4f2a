//! The edge's journal: one record per counted hit, after validation and visitor hashing, so an
//! edge with a spool can rebuild what it had not yet sealed into batches after a crash.
//!
//! A record is the window generation the hit was counted in (the edge skips records whose
//! generation a committed batch already covers), the resource id, the minute bucket and the
//! 64-bit visitor hash. The raw client address is never in it. Records are concatenated; the host
//! frames and checksums what it appends, so this layer only has to reject malformed bytes.

use crate::varint::{self, Reader};
use crate::{RESOURCE_ID_BYTES_MAX, WireError, validate_resource_id};

/// One counted hit as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub generation: u64,
    pub resource_id: String,
    pub minute: u64,
    pub visitor: u64,
}

/// Appends one record to `out`.
pub fn put_journal_record(
    out: &mut Vec<u8>,
    generation: u64,
    resource_id: &str,
    minute: u64,
    visitor: u64,
) {
    debug_assert!(resource_id.len() <= RESOURCE_ID_BYTES_MAX);
    varint::put_u64(out, generation);
    varint::put_u64(out, resource_id.len() as u64);
    out.extend_from_slice(resource_id.as_bytes());
    varint::put_u64(out, minute);
    out.extend_from_slice(&visitor.to_le_bytes());
}

/// Decodes concatenated records; any malformed byte is an error (the host's framing has already
/// cut off a torn tail).
pub fn decode_journal(bytes: &[u8]) -> Result<Vec<JournalRecord>, WireError> {
    let mut reader = Reader::new(bytes);
    let mut records = Vec::new();
    while reader.remaining() > 0 {
        let generation = reader.u64()?;
        let length = reader.length("resource id", RESOURCE_ID_BYTES_MAX)?;
        let raw = reader.take(length)?;
        let resource_id = std::str::from_utf8(raw).map_err(|_| WireError::InvalidIdentifier {
            what: "resource id",
            reason: "not UTF-8",
        })?;
        validate_resource_id(resource_id)?;
        let minute = reader.u64()?;
        let visitor_bytes: [u8; 8] =
            reader
                .take(8)?
                .try_into()
                .map_err(|_| WireError::Truncated {
                    offset: reader.position(),
                })?;
        records.push(JournalRecord {
            generation,
            resource_id: resource_id.to_owned(),
            minute,
            visitor: u64::from_le_bytes(visitor_bytes),
        });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_malformed_bytes_are_errors() {
        let mut bytes = Vec::new();
        put_journal_record(&mut bytes, 1, "home", 29_666_666, u64::MAX);
        let first_length = bytes.len();
        put_journal_record(&mut bytes, 300, "blog.post-1", 0, 7);
        let records = decode_journal(&bytes).unwrap();
        assert_eq!(
            records,
            vec![
                JournalRecord {
                    generation: 1,
                    resource_id: "home".to_owned(),
                    minute: 29_666_666,
                    visitor: u64::MAX,
                },
                JournalRecord {
                    generation: 300,
                    resource_id: "blog.post-1".to_owned(),
                    minute: 0,
                    visitor: 7,
                },
            ]
        );
        for cut in 1..bytes.len() {
            if cut == first_length {
                continue; // the boundary between the two records
            }
            assert!(decode_journal(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_id = Vec::new();
        put_journal_record(&mut bad_id, 1, "has space", 0, 0);
        assert!(decode_journal(&bad_id).is_err());
    }
}
