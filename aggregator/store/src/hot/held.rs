//! The hot tier's minutes as this process last merged them ([`HeldMinutes`]), so a read of the
//! last hour decodes only the sketch fragments appended since, not every group's fragment of
//! every minute again (a busy resource gets one per group commit: up to thousands a minute).
//!
//! It rests on how the tier's lists change. Within one generation a minute's list and hits only
//! grow (the write scripts `INCRBY` and `RPUSH`), except when a resource is deleted: its keys go,
//! and a resource created again under the same id starts new lists, which may grow past the
//! length a reader held. So a deletion also names a new *incarnation* of the resource (a random
//! name in `...:i:{resource}`, "" before the first deletion), in the same script as it deletes
//! the keys, and a read asks for the incarnation before and after the lists in its one round
//! trip. A held minute counts only at the generation and incarnation it was merged at (read
//! the same before and after: a read that raced a deletion holds nothing), and while neither
//! its hits nor its list is shorter than when it was held; a minute not there as held is
//! dropped and the read made again without what is held.
//!
//! The bound: a Redis that loses the end of a list but keeps its epoch (a failover to a replica
//! that lagged, a restart from a snapshot) already loses acknowledged hits from the hot tier
//! until their minute leaves it (the hour). If such a minute's hits and list both grow back past
//! what was held before this process reads it again, a held minute answers the lost fragments'
//! visitors in place of as many new fragments', for as long.

use hitcount_wire::Sketch;

/// The most memory held minutes take (sketches and keys, estimated from their contents), the
/// least recently used going first past it: the last hour of a busy resource (dense sketches,
/// 16 KiB each decoded) weighs about 1 MiB.
pub const HOT_HELD_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// What a held minute costs besides its sketch, its resource id and its generation.
const ENTRY_OVERHEAD_BYTES: usize = 96;
/// What a held minute is expected to weigh, for sizing the table only.
const ENTRY_BYTES_EXPECTED: u64 = 4 * 1024;
/// quick_cache splits the weight among its shards and refuses an entry heavier than one shard;
/// with 16, a shard holds 4 MiB, far above one minute.
const HELD_SHARDS: usize = 16;

/// (resource, minute).
type MinuteKey = (String, u64);

/// One minute of one resource as a read merged it.
#[derive(Debug, Clone)]
pub struct HeldMinute {
    /// The tier's generation and the resource's incarnation the list was read at.
    pub generation: String,
    pub incarnation: String,
    /// The minute's hits when it was read: they only grow too.
    pub hits: u64,
    /// How many fragments, from the list's first, `visitors` is the union of.
    pub fragments: usize,
    pub visitors: Sketch,
}

#[derive(Debug, Clone)]
struct MinuteWeighter;

impl quick_cache::Weighter<MinuteKey, HeldMinute> for MinuteWeighter {
    fn weight(&self, key: &MinuteKey, held: &HeldMinute) -> u64 {
        let bytes =
            key.0.len() + held.generation.len() + held.visitors.heap_bytes() + ENTRY_OVERHEAD_BYTES;
        bytes as u64
    }
}

/// The hot minutes this process's reads merged, by (resource, minute). A crate made for this
/// (`quick_cache`) bounds it by weight and evicts.
pub struct HeldMinutes {
    minutes: quick_cache::sync::Cache<MinuteKey, HeldMinute, MinuteWeighter>,
}

impl std::fmt::Debug for HeldMinutes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HeldMinutes")
            .field("minutes", &self.minutes.len())
            .finish()
    }
}

impl Default for HeldMinutes {
    fn default() -> Self {
        Self {
            minutes: crate::bounded::weighed_table(
                HOT_HELD_BYTES_MAX,
                ENTRY_BYTES_EXPECTED,
                HELD_SHARDS,
                MinuteWeighter,
            ),
        }
    }
}

impl HeldMinutes {
    /// The minute as held in `generation`, if it is; whether it is still there as held is for
    /// the caller to check against what the read finds ([`HeldMinute::is_there`]).
    pub fn get(&self, resource_id: &str, minute_ms: u64, generation: &str) -> Option<HeldMinute> {
        self.minutes
            .get(&(resource_id.to_owned(), minute_ms))
            .filter(|held| held.generation == generation)
    }

    pub fn hold(&self, resource_id: &str, minute_ms: u64, held: HeldMinute) {
        self.minutes
            .insert((resource_id.to_owned(), minute_ms), held);
    }

    pub fn forget(&self, resource_id: &str, minute_ms: u64) {
        self.minutes.remove(&(resource_id.to_owned(), minute_ms));
    }
}

impl HeldMinute {
    /// Whether the minute is still there as held: the same incarnation (`None`: a deletion
    /// raced the read), and neither its hits nor its list shorter than when it was held.
    pub fn is_there(&self, incarnation: Option<&str>, hits: u64, length: usize) -> bool {
        incarnation == Some(self.incarnation.as_str())
            && hits >= self.hits
            && length >= self.fragments
    }
}
