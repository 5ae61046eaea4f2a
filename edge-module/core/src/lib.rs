//! The counting logic of a hitcount edge, as plain Rust that builds natively (and is tested
//! natively) and for `wasm32-wasip2` (where the edge component wraps it).
//!
//! - [`filter`]: which requests are hits at all (bots, prefetches, invalid resource ids).
//! - [`VisitorHasher`]: the visitor hash, keyed with a salt that rotates daily, so raw client
//!   addresses never leave the edge and visitors cannot be linked across days.
//! - [`EdgeCounter`]: the bounded window map of one edge and its flush into delta entries.
//! - [`Counting`]: a window and its delivery queue together, with the rule that a full window
//!   is flushed early into the queue; what a host calls.
//! - [`Delivery`]: the order in which windows become numbered batches, and what happens while
//!   the aggregator is unreachable: one batch is in flight and retried with the same key until
//!   acknowledged, and new windows merge into one pending map, so memory grows with distinct
//!   counters, not with the length of an outage, and no hit is counted twice.
//!
//! No clock and no randomness here: callers pass times in, which keeps the logic deterministic
//! under test and free of WASI imports in the component.

pub mod beacon;
mod counter;
mod counting;
mod delivery;
pub mod filter;
mod visitor;

pub use counter::{ClosedWindow, EdgeCounter, Outcome};
pub use counting::Counting;
pub use delivery::{BatchIdentity, Delivery, DeliveryFull, SealedBatch, seal_entries};
pub use filter::{BotPolicy, HitRequest, Rejection};
pub use visitor::{VisitorHasher, window_map_key};

pub use hitcount_wire::SECRET_BYTES_MIN;

/// The default length of an edge's window: hits are at the aggregator about a second after they
/// happen.
pub const WINDOW_MS_DEFAULT: u64 = 1_000;
/// Shorter windows would send a batch per instance several times a second for little freshness.
pub const WINDOW_MS_MIN: u64 = 100;
/// Windows longer than this would make hits older than the aggregator's freshness promise.
pub const WINDOW_MS_MAX: u64 = 10_000;

/// Why an edge's configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid edge id: {0}")]
    EdgeId(#[from] hitcount_wire::WireError),
    #[error("the secret must be at least {SECRET_BYTES_MIN} bytes, not {0}")]
    SecretTooShort(usize),
}

/// Checks what an edge is configured with, before it counts anything.
pub fn validate_config(edge_id: &str, secret: &[u8]) -> Result<(), ConfigError> {
    hitcount_wire::validate_edge_id(edge_id)?;
    if secret.len() < SECRET_BYTES_MIN {
        return Err(ConfigError::SecretTooShort(secret.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_refused_for_a_bad_edge_id_or_a_short_secret() {
        let secret = [7u8; SECRET_BYTES_MIN];
        assert_eq!(validate_config("edge-1", &secret), Ok(()));
        assert!(matches!(
            validate_config("", &secret),
            Err(ConfigError::EdgeId(_))
        ));
        assert!(matches!(
            validate_config("edge/1", &secret),
            Err(ConfigError::EdgeId(_))
        ));
        assert_eq!(
            validate_config("edge-1", &secret[1..]),
            Err(ConfigError::SecretTooShort(SECRET_BYTES_MIN - 1))
        );
    }
}
