//! Identifier rules shared by edges and the aggregator, so an id an edge accepts is one the
//! aggregator accepts too.

use crate::WireError;

/// Resource ids are short, URL-safe names: they appear in paths, beacons and storage keys.
pub const RESOURCE_ID_BYTES_MAX: usize = 64;
/// Edge ids name a deployment in logs, keys and dedupe records.
pub const EDGE_ID_BYTES_MAX: usize = 64;

fn validate(what: &'static str, id: &str, max: usize) -> Result<(), WireError> {
    if id.is_empty() {
        return Err(WireError::InvalidIdentifier {
            what,
            reason: "empty",
        });
    }
    if id.len() > max {
        return Err(WireError::InvalidIdentifier {
            what,
            reason: "longer than 64 bytes",
        });
    }
    if !id
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
    {
        return Err(WireError::InvalidIdentifier {
            what,
            reason: "only ASCII letters, digits, '-', '_' and '.' are allowed",
        });
    }
    Ok(())
}

/// A resource id: 1 to 64 bytes of ASCII letters, digits, `-`, `_` and `.`.
pub fn validate_resource_id(id: &str) -> Result<(), WireError> {
    validate("resource id", id, RESOURCE_ID_BYTES_MAX)
}

/// An edge id: the same alphabet and length as a resource id.
pub fn validate_edge_id(id: &str) -> Result<(), WireError> {
    validate("edge id", id, EDGE_ID_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(validate_resource_id("home-page_v2.en").is_ok());
        assert!(validate_resource_id(&"a".repeat(64)).is_ok());
        for bad in ["", "with space", "slash/", "é", &"a".repeat(65)] {
            assert!(validate_resource_id(bad).is_err(), "{bad:?}");
        }
    }
}
