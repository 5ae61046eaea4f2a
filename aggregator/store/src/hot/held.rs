//! The hot tier's minutes as this process last merged them ([`HeldMinutes`]), so a read of the
//! last hour decodes only the sketch fragments appended since, not every group's fragment of
//! every minute again (a busy resource gets one per group commit: up to thousands a minute).
//!
//! It rests on how the tier's lists change. Within one generation a minute's list only grows
//! (the write scripts `RPUSH`), except when a resource is deleted: its keys are deleted, and a
//! resource created again under the same id starts new lists, which may grow past the length a
//! reader held. So a deletion then gives the resource a new *incarnation* (a random name in
//! `...:i:{resource}`, "" before the first deletion) after the keys are gone, and a read asks for the incarnation before the
//! lists: a held minute counts only at the generation and incarnation it was merged at, and
//! only while its list is at least as long as the fragments merged into it. A read that raced a
//! deletion holds what it merged under the incarnation from before it, which the next read finds
//! bumped.

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
    /// The minute as held in `generation`, if it is; its incarnation and length are for the
    /// caller to check against the list.
    pub fn get(&self, resource_id: &str, minute_ms: u64, generation: &str) -> Option<HeldMinute> {
        self.minutes
            .get(&(resource_id.to_owned(), minute_ms))
            .filter(|held| held.generation == generation)
    }

    pub fn hold(&self, resource_id: &str, minute_ms: u64, held: HeldMinute) {
        self.minutes
            .insert((resource_id.to_owned(), minute_ms), held);
    }
}
