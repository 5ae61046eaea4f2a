//! The contract between hitcount edges and the aggregator.
//!
//! - [`DeltaBatch`]: what an edge ships every window, in a compact, versioned binary format with
//!   strict, bounded decoding.
//! - [`Sketch`]: the mergeable unique-visitor sketch carried in each entry.
//! - [`WindowCounts`]: the bounded pre-aggregation map both edges and the aggregator's direct-hit
//!   path use to turn hits into delta entries.
//! - [`validate_resource_id`] and [`validate_edge_id`]: the identifier rules both sides enforce.
//!
//! This crate builds for `wasm32-wasip2` as well as natively: it has no I/O, no clock and no
//! randomness.
//!
//! An edge's flush, from hits to signed bytes:
//!
//! ```
//! use hitcount_wire::{DeltaBatch, DeltaHeader, WindowCounts, visitor_hash};
//!
//! let mut window = WindowCounts::new(1_000);
//! let minute = 1_700_000_040_000 / hitcount_wire::MINUTE_MS;
//! window.record("home", minute, 1, Some(visitor_hash(b"visitor-1"))).unwrap();
//! window.record("home", minute, 1, Some(visitor_hash(b"visitor-2"))).unwrap();
//! let batch = DeltaBatch {
//!     header: DeltaHeader {
//!         edge_id: "edge-1".into(),
//!         boot_epoch: 1_700_000_000_000,
//!         sequence: 0,
//!         window_start_ms: 1_700_000_040_000,
//!         window_end_ms: 1_700_000_041_000,
//!     },
//!     entries: window.drain(),
//! };
//! let body = batch.encode().unwrap();
//! let signature = hitcount_wire::auth::sign(b"edge secret", "edge-1", 1_700_000_041_000, &body);
//!
//! let received = DeltaBatch::decode(&body).unwrap();
//! assert_eq!(received.hits(), 2);
//! assert_eq!(received.entries[0].visitors.count(), 2);
//! assert!(hitcount_wire::auth::verify(b"edge secret", "edge-1", 1_700_000_041_000, &body, &signature));
//! ```

mod aggregate;
pub mod auth;
mod batch;
mod ids;
pub mod journal;
pub mod sketch;
pub mod text;
pub mod varint;

pub use aggregate::{WindowCounts, WindowFull};
pub use auth::{CLOCK_SKEW_MS_MAX, SECRET_BYTES_MIN};
pub use batch::{
    BATCH_BYTES_MAX, BATCH_ENTRIES_MAX, DAY_MS, DeltaBatch, DeltaEntry, DeltaHeader,
    ENTRY_HITS_MAX, FORMAT_VERSION, HEADER_BYTES_MAX, HOUR_MS, KEY_NUMBER_MAX, MAGIC, MINUTE_MS,
    WINDOW_SPAN_MS_MAX,
};
pub use ids::{EDGE_ID_BYTES_MAX, RESOURCE_ID_BYTES_MAX, validate_edge_id, validate_resource_id};
pub use sketch::{SKETCH_STANDARD_ERROR, Sketch, visitor_hash};

/// Every way an encoded batch (or an identifier) can be malformed. Offsets are byte positions in
/// the input, so an operator can find the fault in a captured body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("input ends early at byte {offset}")]
    Truncated { offset: usize },
    #[error("the batch does not start with the hitcount magic bytes")]
    BadMagic,
    #[error("format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("varint at byte {offset} overflows 64 bits")]
    VarintOverflow { offset: usize },
    #[error("varint at byte {offset} is padded (not minimally encoded)")]
    VarintNotMinimal { offset: usize },
    #[error("{what} at byte {offset} is {length}, over the limit of {max}")]
    TooLong {
        what: &'static str,
        length: u64,
        max: u64,
        offset: usize,
    },
    #[error("batch is {length} bytes, over the limit of {max}")]
    BatchTooLarge { length: usize, max: usize },
    #[error("invalid {what}: {reason}")]
    InvalidIdentifier {
        what: &'static str,
        reason: &'static str,
    },
    #[error("{what} {value} is over the limit of {max}")]
    KeyNumberTooLarge {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("window end {end_ms} is before its start {start_ms} or spans more than the limit")]
    InvalidWindow { start_ms: u64, end_ms: u64 },
    #[error("entry {index} has {hits} hits; entries carry 1 to {max}")]
    InvalidHitCount { index: usize, hits: u64, max: u64 },
    #[error("entry {index} is not after the entry before it (entries are sorted and unique)")]
    EntriesNotSorted { index: usize },
    #[error("entry {index} has a minute bucket outside the representable range")]
    MinuteOutOfRange { index: usize },
    #[error("first entry refers to a previous resource id")]
    NoPreviousResource,
    #[error("invalid sketch at byte {offset}: {reason}")]
    SketchInvalid { offset: usize, reason: &'static str },
    #[error("unexpected bytes after the end at byte {offset}")]
    TrailingBytes { offset: usize },
}

impl WireError {
    /// A stable machine-readable name for the kind of fault, for API error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadMagic => "bad_magic",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::VarintOverflow { .. } | Self::VarintNotMinimal { .. } => "bad_varint",
            Self::TooLong { .. } | Self::BatchTooLarge { .. } | Self::KeyNumberTooLarge { .. } => {
                "limit_exceeded"
            }
            Self::InvalidIdentifier { .. } => "invalid_identifier",
            Self::InvalidWindow { .. } => "invalid_window",
            Self::InvalidHitCount { .. } => "invalid_hit_count",
            Self::EntriesNotSorted { .. } | Self::NoPreviousResource => "entries_not_sorted",
            Self::MinuteOutOfRange { .. } => "minute_out_of_range",
            Self::SketchInvalid { .. } => "invalid_sketch",
            Self::TrailingBytes { .. } => "trailing_bytes",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are part of the aggregator's API (error bodies, metric labels): they stay.
    #[test]
    fn every_fault_has_its_stable_code() {
        let codes = [
            WireError::Truncated { offset: 0 },
            WireError::BadMagic,
            WireError::InvalidWindow {
                start_ms: 1,
                end_ms: 0,
            },
            WireError::NoPreviousResource,
            WireError::TrailingBytes { offset: 3 },
        ]
        .map(|error| error.code());
        assert_eq!(
            codes,
            [
                "truncated",
                "bad_magic",
                "invalid_window",
                "entries_not_sorted",
                "trailing_bytes"
            ]
        );
    }
}
