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

pub use counter::{ClosedWindow, EdgeCounter, Recorded};
pub use counting::Counting;
pub use delivery::{BatchIdentity, Delivery, DeliveryFull, SealedBatch, seal_entries};
pub use filter::{BotPolicy, HitRequest, Rejection};
pub use visitor::{DAY_MS, VisitorHasher, window_map_key};

/// Shortest deployment secret accepted: shorter ones make the daily salt guessable.
pub const SECRET_BYTES_MIN: usize = 16;

/// Checks what an edge is configured with, before it counts anything.
pub fn validate_config(edge_id: &str, secret: &[u8]) -> Result<(), String> {
    hitcount_wire::validate_edge_id(edge_id).map_err(|error| error.to_string())?;
    if secret.len() < SECRET_BYTES_MIN {
        return Err(format!(
            "the secret must be at least {SECRET_BYTES_MIN} bytes"
        ));
    }
    Ok(())
}
