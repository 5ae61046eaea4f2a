//! What a browser sends: the beacon body and the request headers that matter, read the same way
//! by every edge (the wasmtime host and the Spin component).

use serde::Deserialize;

/// How long a browser may keep a beacon route's CORS preflight answer: a day.
pub const CORS_MAX_AGE_S: u64 = 24 * 60 * 60;
/// A beacon body is a resource id and maybe a timestamp: a few hundred bytes at most.
pub const BEACON_BODY_BYTES_MAX: usize = 4 * 1024;

/// Response header naming what became of a hit: `counted`, or why not.
pub const RESULT_HEADER: &str = "x-hitcount-result";
/// The smallest transparent GIF (1x1): what `GET /hit.gif` always answers.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Headers by which browsers mark prefetches and prerenders.
pub const PURPOSE_HEADERS: [&str; 4] = ["sec-purpose", "purpose", "x-purpose", "x-moz"];

/// The body of `POST /hit`: `{"resource_id": "...", "timestamp": ms}`, or `r` and `t` for short.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beacon {
    #[serde(alias = "r")]
    pub resource_id: String,
    /// Unix ms; the edge's clock if absent.
    #[serde(alias = "t")]
    pub timestamp: Option<u64>,
}

/// The content types a beacon may be labelled with; its body is JSON in each case.
pub const BEACON_CONTENT_TYPES: &[&str] = &[
    "text/plain",
    "application/json",
    "application/x-www-form-urlencoded",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    #[error("send the beacon as text/plain, application/json or application/x-www-form-urlencoded")]
    ContentType,
    #[error("the body is over {BEACON_BODY_BYTES_MAX} bytes")]
    TooLarge,
    #[error("the body must be {{\"resource_id\": \"...\"}}: {0}")]
    Json(String),
}

impl BeaconError {
    /// A stable machine-readable name, for error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ContentType => "unsupported_media_type",
            Self::TooLarge => "body_too_large",
            Self::Json(_) => "invalid_beacon",
        }
    }
}

/// Parses a beacon. `content_type` absent means text/plain, which is what `sendBeacon` sends
/// for a string.
pub fn parse_beacon(content_type: Option<&str>, body: &[u8]) -> Result<Beacon, BeaconError> {
    let content_type = content_type.unwrap_or("text/plain");
    // The body is JSON whichever of these it is labelled: sendBeacon labels a string text/plain,
    // fetch sends application/json, and `curl -d` (like an HTML form) says form-urlencoded. The
    // two text types are CORS-safelisted, so none of them costs a browser a preflight.
    if !BEACON_CONTENT_TYPES
        .iter()
        .any(|accepted| content_type.starts_with(accepted))
    {
        return Err(BeaconError::ContentType);
    }
    if body.len() > BEACON_BODY_BYTES_MAX {
        return Err(BeaconError::TooLarge);
    }
    serde_json::from_slice(body).map_err(|error| BeaconError::Json(error.to_string()))
}

/// True when one of the [`PURPOSE_HEADERS`] values says prefetch, prerender or preview.
pub fn is_prefetch<'a>(purpose_values: impl IntoIterator<Item = &'a str>) -> bool {
    purpose_values.into_iter().any(|value| {
        let value = value.to_ascii_lowercase();
        value.contains("prefetch") || value.contains("prerender") || value.contains("preview")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beacons_parse_in_both_spellings_and_refuse_the_rest() {
        let long = parse_beacon(None, br#"{"resource_id":"home","timestamp":5}"#).unwrap();
        let short = parse_beacon(Some("application/json"), br#"{"r":"home","t":5}"#).unwrap();
        assert_eq!(long, short);
        // What `curl -d '{"resource_id":"home","timestamp":5}'` sends.
        let curl = parse_beacon(
            Some("application/x-www-form-urlencoded"),
            br#"{"resource_id":"home","timestamp":5}"#,
        )
        .unwrap();
        assert_eq!(long, curl);
        assert_eq!(
            parse_beacon(Some("application/xml"), b"{}"),
            Err(BeaconError::ContentType)
        );
        assert!(matches!(
            parse_beacon(None, br#"{"resource_id":"a","extra":1}"#),
            Err(BeaconError::Json(_))
        ));
        assert_eq!(
            parse_beacon(None, &vec![b' '; BEACON_BODY_BYTES_MAX + 1]),
            Err(BeaconError::TooLarge)
        );
        // The limit itself is allowed: a body of exactly BEACON_BODY_BYTES_MAX bytes parses.
        let mut at_limit = br#"{"resource_id":"a"}"#.to_vec();
        at_limit.resize(BEACON_BODY_BYTES_MAX, b' ');
        assert_eq!(BEACON_BODY_BYTES_MAX, 4096);
        assert_eq!(parse_beacon(None, &at_limit).unwrap().resource_id, "a");
    }

    #[test]
    fn every_refusal_has_its_code() {
        assert_eq!(BeaconError::ContentType.code(), "unsupported_media_type");
        assert_eq!(BeaconError::TooLarge.code(), "body_too_large");
        assert_eq!(
            BeaconError::Json("expected value".to_owned()).code(),
            "invalid_beacon"
        );
    }

    #[test]
    fn each_purpose_word_alone_marks_a_prefetch() {
        for value in ["prefetch", "Prerender", "preview", "Prefetch;prerender"] {
            assert!(is_prefetch([value]), "{value}");
            assert!(is_prefetch(["", value]), "{value} in a second header");
        }
        assert!(!is_prefetch(["document"]));
        assert!(!is_prefetch(["", "navigate"]));
    }
}
