//! The delta batch: what one edge learned in one window.
//!
//! Layout (all integers are LEB128 varints unless noted):
//!
//! ```text
//! magic "HCDB" (4 bytes) | version (1 byte)
//! edge id length | edge id bytes | boot epoch | sequence
//! window start ms | window length ms | entry count
//! entry*: resource id length (0 = same as the previous entry) | resource id bytes
//!         minute offset from the window start's minute (zigzag) | hits | sketch
//! ```
//!
//! Entries are sorted by (resource id, minute) and unique, which makes the encoding canonical
//! (one batch, one byte string) and lets a repeated resource id cost a single byte.

use crate::sketch::{SKETCH_ENCODED_BYTES_MAX, Sketch};
use crate::varint::{self, Reader, varint_bytes};
use crate::{EDGE_ID_BYTES_MAX, RESOURCE_ID_BYTES_MAX, WireError};

pub const MAGIC: [u8; 4] = *b"HCDB";
pub const FORMAT_VERSION: u8 = 1;
/// An encoded batch is at most 8 MiB; edges split larger windows into several batches.
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Entries (distinct resource and minute pairs) in one batch.
pub const BATCH_ENTRIES_MAX: usize = 16_384;
/// A batch may cover at most seven days: edges merge pending windows during an aggregator outage,
/// and the aggregator keeps dedupe records at least this long.
pub const WINDOW_SPAN_MS_MAX: u64 = 7 * DAY_MS;
/// Hits in one entry; far above any real window, low enough that sums cannot overflow.
pub const ENTRY_HITS_MAX: u64 = 1 << 48;
pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;
/// Minute buckets are kept below 2^40 minutes (two million years) so that milliseconds fit i64.
const MINUTE_MAX: u64 = 1 << 40;
/// The latest window end a header may name: the last millisecond of minute [`MINUTE_MAX`].
const WINDOW_END_MS_MAX: u64 = (MINUTE_MAX + 1) * MINUTE_MS - 1;
/// The largest boot epoch or sequence (the batch key's numbers): the stores keep them as signed
/// 64-bit integers (PostgreSQL `bigint`, SQLite `INTEGER`), where a larger value could not be
/// told apart from another.
pub const KEY_NUMBER_MAX: u64 = i64::MAX as u64;
/// The longest header a batch can have (everything before the first entry): magic, version, a
/// longest edge id with its length, the boot epoch and sequence at their largest, a window start
/// no later than the latest end, the longest span, and the most entries. Senders that cut
/// batches by size start each batch's byte count from this.
pub const HEADER_BYTES_MAX: usize = MAGIC.len()
    + 1
    + varint_bytes(EDGE_ID_BYTES_MAX as u64)
    + EDGE_ID_BYTES_MAX
    + 2 * varint_bytes(KEY_NUMBER_MAX)
    + varint_bytes(WINDOW_END_MS_MAX)
    + varint_bytes(WINDOW_SPAN_MS_MAX)
    + varint_bytes(BATCH_ENTRIES_MAX as u64);

/// Who sent a batch and which window it covers. (edge id, boot epoch, sequence) is the batch's
/// idempotency key: an edge numbers batches from 0 after each boot, and the boot epoch (from its start
/// time) keeps numbers from two boots apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaHeader {
    pub edge_id: String,
    pub boot_epoch: u64,
    pub sequence: u64,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
}

/// The hits one resource received in one minute, and who its visitors were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaEntry {
    pub resource_id: String,
    /// Minutes since the Unix epoch.
    pub minute: u64,
    pub hits: u64,
    pub visitors: Sketch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaBatch {
    pub header: DeltaHeader,
    pub entries: Vec<DeltaEntry>,
}

fn validate_header(header: &DeltaHeader) -> Result<(), WireError> {
    crate::validate_edge_id(&header.edge_id)?;
    for (what, value) in [
        ("boot epoch", header.boot_epoch),
        ("sequence", header.sequence),
    ] {
        if value > KEY_NUMBER_MAX {
            return Err(WireError::KeyNumberTooLarge {
                what,
                value,
                max: KEY_NUMBER_MAX,
            });
        }
    }
    let span = header.window_end_ms.checked_sub(header.window_start_ms);
    if !matches!(span, Some(span) if span <= WINDOW_SPAN_MS_MAX)
        || header.window_end_ms / MINUTE_MS > MINUTE_MAX
    {
        return Err(WireError::InvalidWindow {
            start_ms: header.window_start_ms,
            end_ms: header.window_end_ms,
        });
    }
    Ok(())
}

fn validate_entry(
    index: usize,
    entry: &DeltaEntry,
    previous: Option<&DeltaEntry>,
) -> Result<(), WireError> {
    crate::validate_resource_id(&entry.resource_id)?;
    if entry.hits == 0 || entry.hits > ENTRY_HITS_MAX {
        return Err(WireError::InvalidHitCount {
            index,
            hits: entry.hits,
            max: ENTRY_HITS_MAX,
        });
    }
    if entry.minute > MINUTE_MAX {
        return Err(WireError::MinuteOutOfRange { index });
    }
    if let Some(previous) = previous
        && (previous.resource_id.as_str(), previous.minute)
            >= (entry.resource_id.as_str(), entry.minute)
    {
        return Err(WireError::EntriesNotSorted { index });
    }
    Ok(())
}

impl DeltaBatch {
    /// Encodes the batch after checking every rule the decoder checks, so that an edge can never
    /// ship a batch the aggregator would reject as malformed.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let out = self.encode_any_length()?;
        if out.len() > BATCH_BYTES_MAX {
            return Err(WireError::BatchTooLarge {
                length: out.len(),
                max: BATCH_BYTES_MAX,
            });
        }
        Ok(out)
    }

    /// Everything [`DeltaBatch::encode`] checks but the total length.
    fn encode_any_length(&self) -> Result<Vec<u8>, WireError> {
        validate_header(&self.header)?;
        if self.entries.len() > BATCH_ENTRIES_MAX {
            return Err(WireError::TooLong {
                what: "entry count",
                length: self.entries.len() as u64,
                max: BATCH_ENTRIES_MAX as u64,
                offset: 0,
            });
        }
        let mut out = Vec::with_capacity(64 + self.entries.len() * 16);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        varint::put_u64(&mut out, self.header.edge_id.len() as u64);
        out.extend_from_slice(self.header.edge_id.as_bytes());
        varint::put_u64(&mut out, self.header.boot_epoch);
        varint::put_u64(&mut out, self.header.sequence);
        varint::put_u64(&mut out, self.header.window_start_ms);
        varint::put_u64(
            &mut out,
            self.header.window_end_ms - self.header.window_start_ms,
        );
        varint::put_u64(&mut out, self.entries.len() as u64);
        let base_minute = (self.header.window_start_ms / MINUTE_MS) as i64;
        let mut previous: Option<&DeltaEntry> = None;
        for (index, entry) in self.entries.iter().enumerate() {
            validate_entry(index, entry, previous)?;
            if previous.is_some_and(|previous| previous.resource_id == entry.resource_id) {
                out.push(0);
            } else {
                varint::put_u64(&mut out, entry.resource_id.len() as u64);
                out.extend_from_slice(entry.resource_id.as_bytes());
            }
            varint::put_i64(&mut out, entry.minute as i64 - base_minute);
            varint::put_u64(&mut out, entry.hits);
            entry.visitors.encode(&mut out);
            previous = Some(entry);
        }
        Ok(out)
    }

    /// Decodes and validates a batch from untrusted bytes. Every length is checked against its
    /// limit before anything is allocated for it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > BATCH_BYTES_MAX {
            return Err(WireError::BatchTooLarge {
                length: bytes.len(),
                max: BATCH_BYTES_MAX,
            });
        }
        let mut reader = Reader::new(bytes);
        if reader.take(MAGIC.len()).map_err(|_| WireError::BadMagic)? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = reader.u8()?;
        if version != FORMAT_VERSION {
            return Err(WireError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let edge_id = read_identifier(&mut reader, "edge id length", EDGE_ID_BYTES_MAX)?;
        let boot_epoch = reader.u64()?;
        let sequence = reader.u64()?;
        let window_start_ms = reader.u64()?;
        let window_span_ms = reader.u64()?;
        let header = DeltaHeader {
            edge_id,
            boot_epoch,
            sequence,
            window_start_ms,
            window_end_ms: window_start_ms.checked_add(window_span_ms).ok_or(
                WireError::InvalidWindow {
                    start_ms: window_start_ms,
                    end_ms: u64::MAX,
                },
            )?,
        };
        validate_header(&header)?;
        let count = reader.length("entry count", BATCH_ENTRIES_MAX)?;
        // Every entry takes at least four bytes, so a count the input cannot hold is rejected
        // before the vector is sized by it.
        if count > reader.remaining() / 4 {
            return Err(WireError::Truncated {
                offset: bytes.len(),
            });
        }
        let base_minute = (window_start_ms / MINUTE_MS) as i64;
        let mut entries: Vec<DeltaEntry> = Vec::with_capacity(count);
        for index in 0..count {
            let offset = reader.position();
            let length = reader.length("resource id length", RESOURCE_ID_BYTES_MAX)?;
            let resource_id = if length == 0 {
                entries
                    .last()
                    .map(|previous| previous.resource_id.clone())
                    .ok_or(WireError::NoPreviousResource)?
            } else {
                let raw = reader.take(length)?;
                let text = std::str::from_utf8(raw).map_err(|_| WireError::InvalidIdentifier {
                    what: "resource id",
                    reason: "not UTF-8",
                })?;
                text.to_owned()
            };
            let minute = base_minute
                .checked_add(reader.i64()?)
                .filter(|minute| *minute >= 0)
                .ok_or(WireError::MinuteOutOfRange { index })? as u64;
            let hits = reader.u64()?;
            let visitors = Sketch::decode(&mut reader)?;
            debug_assert!(reader.position() - offset <= 1 + 64 + 30 + SKETCH_ENCODED_BYTES_MAX);
            let entry = DeltaEntry {
                resource_id,
                minute,
                hits,
                visitors,
            };
            validate_entry(index, &entry, entries.last())?;
            entries.push(entry);
        }
        if reader.remaining() != 0 {
            return Err(WireError::TrailingBytes {
                offset: reader.position(),
            });
        }
        Ok(Self { header, entries })
    }

    /// Total hits in the batch.
    pub fn hits(&self) -> u64 {
        self.entries.iter().map(|entry| entry.hits).sum()
    }
}

fn read_identifier(
    reader: &mut Reader<'_>,
    what: &'static str,
    max: usize,
) -> Result<String, WireError> {
    let length = reader.length(what, max)?;
    let raw = reader.take(length)?;
    let text = std::str::from_utf8(raw).map_err(|_| WireError::InvalidIdentifier {
        what: "edge id",
        reason: "not UTF-8",
    })?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worst_header(window_end_ms: u64) -> DeltaHeader {
        DeltaHeader {
            edge_id: "e".repeat(EDGE_ID_BYTES_MAX),
            boot_epoch: KEY_NUMBER_MAX,
            sequence: KEY_NUMBER_MAX,
            window_start_ms: window_end_ms - WINDOW_SPAN_MS_MAX,
            window_end_ms,
        }
    }

    /// A header's bytes as `encode` lays them out, without its checks.
    fn raw_header(boot_epoch: u64, sequence: u64) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(FORMAT_VERSION);
        varint::put_u64(&mut out, 1);
        out.push(b'e');
        for value in [boot_epoch, sequence, 60_000, 1_000, 0] {
            varint::put_u64(&mut out, value);
        }
        out
    }

    #[test]
    fn a_boot_epoch_or_sequence_a_store_cannot_keep_is_refused_both_ways() {
        assert!(DeltaBatch::decode(&raw_header(KEY_NUMBER_MAX, KEY_NUMBER_MAX)).is_ok());
        for (boot_epoch, sequence, what) in [
            (KEY_NUMBER_MAX + 1, 0, "boot epoch"),
            (0, u64::MAX, "sequence"),
        ] {
            let refused = DeltaBatch::decode(&raw_header(boot_epoch, sequence)).unwrap_err();
            assert!(
                matches!(refused, WireError::KeyNumberTooLarge { what: named, .. } if named == what),
                "{refused:?}"
            );
            assert_eq!(refused.code(), "limit_exceeded");
            let mut header = worst_header(WINDOW_END_MS_MAX);
            (header.boot_epoch, header.sequence) = (boot_epoch, sequence);
            let batch = DeltaBatch {
                header,
                entries: Vec::new(),
            };
            assert!(matches!(
                batch.encode(),
                Err(WireError::KeyNumberTooLarge { .. })
            ));
        }
    }

    #[test]
    fn the_header_bound_is_the_longest_header_the_format_allows() {
        let batch = DeltaBatch {
            header: worst_header(WINDOW_END_MS_MAX),
            entries: Vec::new(),
        };
        let bytes = batch.encode().unwrap();
        // With no entries the count takes one byte; with the most it takes this many.
        let count_bytes = varint_bytes(BATCH_ENTRIES_MAX as u64);
        assert_eq!(bytes.len() - 1 + count_bytes, HEADER_BYTES_MAX);
        assert_eq!(HEADER_BYTES_MAX, 104);
        // One millisecond later is past the last minute a header may name.
        let later = DeltaBatch {
            header: worst_header(WINDOW_END_MS_MAX + 1),
            entries: Vec::new(),
        };
        assert!(matches!(
            later.encode(),
            Err(WireError::InvalidWindow { .. })
        ));
    }

    #[test]
    fn a_count_the_remaining_bytes_cannot_hold_is_refused_before_any_entry() {
        let mut bytes = DeltaBatch {
            header: header(60 * MINUTE_MS, 60 * MINUTE_MS + 1_000),
            entries: Vec::new(),
        }
        .encode()
        .unwrap();
        assert_eq!(bytes.pop(), Some(0), "the entry count of an empty batch");
        // 100 entries claimed, 300 bytes left: at four bytes an entry at least, too few.
        bytes.push(100);
        bytes.extend([0; 300]);
        assert_eq!(
            DeltaBatch::decode(&bytes),
            Err(WireError::Truncated {
                offset: bytes.len()
            })
        );
    }

    /// The limits as the README and ARCHITECTURE.md state them, in plain numbers.
    #[test]
    fn the_limits_are_the_documented_ones() {
        assert_eq!(BATCH_BYTES_MAX, 8_388_608, "8 MiB");
        assert_eq!(WINDOW_SPAN_MS_MAX, 604_800_000, "seven days");
        assert_eq!(BATCH_ENTRIES_MAX, 16_384);
        assert_eq!(crate::auth::CLOCK_SKEW_MS_MAX, 300_000, "five minutes");
    }

    fn entry(resource_id: String, minute: u64, hits: u64, visitors: Sketch) -> DeltaEntry {
        DeltaEntry {
            resource_id,
            minute,
            hits,
            visitors,
        }
    }

    fn header(window_start_ms: u64, window_end_ms: u64) -> DeltaHeader {
        DeltaHeader {
            edge_id: "edge-1".to_owned(),
            boot_epoch: 1,
            sequence: 0,
            window_start_ms,
            window_end_ms,
        }
    }

    #[test]
    fn windows_entries_hits_and_minutes_are_allowed_up_to_their_bounds() {
        let start = 60 * MINUTE_MS;
        let one = |hits, minute| DeltaBatch {
            header: header(start, start + 1_000),
            entries: vec![entry("a".to_owned(), minute, hits, Sketch::new())],
        };
        assert!(one(ENTRY_HITS_MAX, 60).encode().is_ok());
        assert!(matches!(
            one(ENTRY_HITS_MAX + 1, 60).encode(),
            Err(WireError::InvalidHitCount { .. })
        ));
        assert!(one(1, MINUTE_MAX).encode().is_ok());
        assert!(matches!(
            one(1, MINUTE_MAX + 1).encode(),
            Err(WireError::MinuteOutOfRange { .. })
        ));
        let spanning = |span| DeltaBatch {
            header: header(start, start + span),
            entries: Vec::new(),
        };
        assert!(spanning(WINDOW_SPAN_MS_MAX).encode().is_ok());
        assert!(matches!(
            spanning(WINDOW_SPAN_MS_MAX + 1).encode(),
            Err(WireError::InvalidWindow { .. })
        ));
        let counters = |count: usize| DeltaBatch {
            header: header(start, start + 1_000),
            entries: (0..count)
                .map(|index| entry(format!("r{index:05}"), 60, 1, Sketch::new()))
                .collect(),
        };
        let most = counters(BATCH_ENTRIES_MAX).encode().unwrap();
        assert_eq!(
            DeltaBatch::decode(&most).unwrap().entries.len(),
            BATCH_ENTRIES_MAX
        );
        assert!(matches!(
            counters(BATCH_ENTRIES_MAX + 1).encode(),
            Err(WireError::TooLong { .. })
        ));
    }

    /// A batch that encodes to exactly `bytes` (a few hundred entries or more, so that the entry
    /// count takes two bytes): entries with one dense sketch each, then entries without visitors
    /// whose id lengths make up the rest.
    fn batch_of_exactly(bytes: usize) -> DeltaBatch {
        let mut dense = Sketch::new();
        for visitor in 0..20_000u64 {
            dense.insert(&visitor.to_le_bytes());
        }
        let header = header(60 * MINUTE_MS, 60 * MINUTE_MS + 1_000);
        let size = |entries: &[DeltaEntry]| {
            DeltaBatch {
                header: header.clone(),
                entries: entries.to_vec(),
            }
            .encode_any_length()
            .unwrap()
            .len()
        };
        let one = [entry("d00000".to_owned(), 60, 1, dense.clone())];
        let dense_bytes = size(&one) - size(&[]);
        let dense_count = bytes / dense_bytes - 2;
        let mut entries: Vec<DeltaEntry> = (0..dense_count)
            .map(|index| entry(format!("d{index:05}"), 60, 1, dense.clone()))
            .collect();
        // An entry without visitors, minute delta 0 and one hit is its id and four bytes.
        let mut remaining = bytes - size(&entries);
        let mut filler = 0;
        while remaining > 0 {
            let entry_bytes = match remaining {
                10..=68 => remaining,
                69..=136 => remaining / 2,
                _ => 68,
            };
            let id = format!("z{filler:05}{}", "a".repeat(entry_bytes - 4 - 6));
            entries.push(entry(id, 60, 1, Sketch::new()));
            filler += 1;
            remaining -= entry_bytes;
        }
        DeltaBatch { header, entries }
    }

    #[test]
    fn a_batch_of_exactly_the_byte_bound_encodes_and_decodes_and_one_byte_more_does_not() {
        let largest = batch_of_exactly(BATCH_BYTES_MAX);
        let bytes = largest.encode().unwrap();
        assert_eq!(bytes.len(), BATCH_BYTES_MAX);
        assert_eq!(DeltaBatch::decode(&bytes).unwrap(), largest);
        assert!(matches!(
            batch_of_exactly(BATCH_BYTES_MAX + 1).encode(),
            Err(WireError::BatchTooLarge { .. })
        ));
        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(
            DeltaBatch::decode(&longer),
            Err(WireError::BatchTooLarge { .. })
        ));
    }
}
