//! Windows kept in Redis: key names, the atomic record script, and the deterministic batches a
//! closed window becomes.
//!
//! Per edge id, with `P = hitcount:{edge id}`:
//!
//! - `P:w:{window}:hits`, a hash: `{resource}|{minute}` -> hits;
//! - `P:w:{window}:visitors`, a set: `{resource}|{minute}|{visitor hash}`;
//! - `P:windows`, the windows holding data (a sorted set, scored by index); `P:closed`, the windows being flushed;
//! - `P:flush-lock`, held (with an expiry) by the request that flushes.
//!
//! A window index is `now_ms / window_ms`. Recording checks `P:closed` inside the same script
//! that counts, so once a window is closed nothing more can enter it and its batch stays the
//! same however often the flush is retried.

use std::collections::BTreeMap;

use hitcount_edge_core::{BatchIdentity, SealedBatch, seal_entries};
use hitcount_wire::{DeltaEntry, ENTRY_HITS_MAX, Sketch, validate_resource_id};

/// The Spin variables the component reads (declared in infra/spin.toml). `window_ms` is
/// optional; the others are required.
pub const VARIABLES: [&str; 6] = [
    "edge_id",
    "edge_key",
    "visitor_secret",
    "aggregator_url",
    "redis_address",
    "window_ms",
];

/// The window's bounds and default are every edge's (a variable can change the length).
pub use hitcount_edge_core::{WINDOW_MS_DEFAULT, WINDOW_MS_MAX, WINDOW_MS_MIN};
/// Batches one window may be split into (by the wire format's 8 MiB bound). Sequence numbers
/// are `window * SEAL_PARTS_MAX + part`.
pub const SEAL_PARTS_MAX: u64 = 64;
/// How long a flusher holds the lock; a crashed flusher's lock expires after it.
pub const FLUSH_LOCK_MS: u64 = 10_000;
/// Closed windows flushed by one request at most, so one request's latency stays bounded.
pub const WINDOWS_PER_FLUSH_MAX: usize = 16;
/// A hit whose window closed while it was being recorded moves to the next one; after this many
/// tries the request fails (it would mean windows closing faster than a Redis round trip).
pub const RECORD_ATTEMPTS_MAX: u64 = 3;

/// Counts one hit unless its window is closed. KEYS: hits, visitors, windows (a sorted set
/// scored by window index), closed. ARGV: window, field, visitor member. Answers `{1, oldest
/// window with data}` when counted (so the caller knows whether a flush is due without another
/// round trip), `{0}` when the window is closed.
pub const RECORD_SCRIPT: &str = "\
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return {0} end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[1])
return {1, redis.call('ZRANGE', KEYS[3], 0, 0)[1]}";

/// The Redis keys of one edge.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(edge_id: &str) -> Self {
        Self {
            prefix: format!("hitcount:{edge_id}"),
        }
    }

    pub fn hits(&self, window: u64) -> String {
        format!("{}:w:{window}:hits", self.prefix)
    }

    pub fn visitors(&self, window: u64) -> String {
        format!("{}:w:{window}:visitors", self.prefix)
    }

    pub fn windows(&self) -> String {
        format!("{}:windows", self.prefix)
    }

    pub fn closed(&self) -> String {
        format!("{}:closed", self.prefix)
    }

    pub fn flush_lock(&self) -> String {
        format!("{}:flush-lock", self.prefix)
    }
}

/// The hash field of a counter.
pub fn counter_field(resource_id: &str, minute: u64) -> String {
    format!("{resource_id}|{minute}")
}

/// The set member of a visitor of a counter.
pub fn visitor_member(resource_id: &str, minute: u64, visitor: u64) -> String {
    format!("{resource_id}|{minute}|{visitor:016x}")
}

pub fn window_index(now_ms: u64, window_ms: u64) -> u64 {
    debug_assert!(window_ms > 0);
    now_ms / window_ms
}

/// What can be wrong with a window's data in Redis (someone else wrote those keys).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowDataError {
    #[error("malformed counter field {0:?}")]
    Field(String),
    #[error("malformed visitor member {0:?}")]
    Member(String),
    #[error("counter {field:?} holds {hits} hits; 1 to {ENTRY_HITS_MAX} allowed")]
    Hits { field: String, hits: i64 },
    #[error("the window needs more than {SEAL_PARTS_MAX} batches")]
    TooManyParts,
}

fn parse_counter(field: &str) -> Option<(String, u64)> {
    let (resource_id, minute) = field.rsplit_once('|')?;
    validate_resource_id(resource_id).ok()?;
    Some((resource_id.to_owned(), minute.parse().ok()?))
}

fn parse_visitor(member: &str) -> Option<(String, u64, u64)> {
    let (counter, visitor) = member.rsplit_once('|')?;
    let (resource_id, minute) = parse_counter(counter)?;
    Some((resource_id, minute, u64::from_str_radix(visitor, 16).ok()?))
}

/// The batches of a closed window, from its hash and set. The same data always gives the same
/// batches, byte for byte, with the same (boot epoch, sequence) keys.
pub fn window_batches(
    edge_id: &str,
    window_ms: u64,
    window: u64,
    counters: &[(String, i64)],
    visitors: &[String],
) -> Result<Vec<SealedBatch>, WindowDataError> {
    let mut entries: BTreeMap<(String, u64), DeltaEntry> = BTreeMap::new();
    for (field, hits) in counters {
        let (resource_id, minute) =
            parse_counter(field).ok_or_else(|| WindowDataError::Field(field.clone()))?;
        if *hits < 1 || *hits as u64 > ENTRY_HITS_MAX {
            return Err(WindowDataError::Hits {
                field: field.clone(),
                hits: *hits,
            });
        }
        entries.insert(
            (resource_id.clone(), minute),
            DeltaEntry {
                resource_id,
                minute,
                hits: *hits as u64,
                visitors: Sketch::new(),
            },
        );
    }
    for member in visitors {
        let (resource_id, minute, visitor) =
            parse_visitor(member).ok_or_else(|| WindowDataError::Member(member.clone()))?;
        // The script writes both together, so every visitor has its counter.
        if let Some(entry) = entries.get_mut(&(resource_id, minute)) {
            entry.visitors.insert_hash(visitor);
        }
    }
    let start_ms = window * window_ms;
    let batches = seal_entries(
        &BatchIdentity {
            edge_id,
            // Distinct per window length, so changing it never reuses a key.
            boot_epoch: window_ms,
            first_sequence: window * SEAL_PARTS_MAX,
            window_start_ms: start_ms,
            window_end_ms: start_ms + window_ms,
        },
        entries.into_values().collect(),
        window,
    );
    if batches.len() as u64 > SEAL_PARTS_MAX {
        return Err(WindowDataError::TooManyParts);
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hitcount_wire::DeltaBatch;

    #[test]
    fn a_window_becomes_the_same_batch_every_time() {
        let counters = vec![
            (counter_field("home", 29_666_666), 3),
            (counter_field("blog.post-1", 29_666_666), 1),
        ];
        let mut visitors = vec![
            visitor_member("home", 29_666_666, 1),
            visitor_member("home", 29_666_666, u64::MAX),
            visitor_member("blog.post-1", 29_666_666, 1),
        ];
        let first =
            window_batches("edge-spin", 1_000, 1_780_000_000, &counters, &visitors).unwrap();
        // Redis returns members in any order.
        visitors.reverse();
        let mut reordered = counters.clone();
        reordered.reverse();
        let second =
            window_batches("edge-spin", 1_000, 1_780_000_000, &reordered, &visitors).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), 1);
        let batch = DeltaBatch::decode(&first[0].bytes).unwrap();
        assert_eq!(batch.header.boot_epoch, 1_000);
        assert_eq!(batch.header.sequence, 1_780_000_000 * SEAL_PARTS_MAX);
        assert_eq!(batch.header.window_start_ms, 1_780_000_000_000);
        assert_eq!(batch.hits(), 4);
        let home = batch
            .entries
            .iter()
            .find(|entry| entry.resource_id == "home")
            .unwrap();
        assert_eq!((home.hits, home.visitors.count()), (3, 2));
    }

    #[test]
    fn foreign_data_is_refused_not_sent() {
        let bad_field = vec![("no-minute".to_owned(), 1)];
        assert!(matches!(
            window_batches("e", 1_000, 1, &bad_field, &[]),
            Err(WindowDataError::Field(_))
        ));
        let zero = vec![(counter_field("a", 1), 0)];
        assert!(matches!(
            window_batches("e", 1_000, 1, &zero, &[]),
            Err(WindowDataError::Hits { .. })
        ));
        let counters = vec![(counter_field("a", 1), 1)];
        assert!(matches!(
            window_batches("e", 1_000, 1, &counters, &["a|1|zz".to_owned()]),
            Err(WindowDataError::Member(_))
        ));
        assert_eq!(window_index(1_999, 1_000), 1);
    }
}
