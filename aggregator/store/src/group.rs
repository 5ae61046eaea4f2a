//! A group merge's decisions, shared by both backends: which batches of a group apply (from
//! the dedupe records), and the group's distinct cells. A backend only records dedupe keys,
//! looks up retention and writes what `fold_group` returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch};

use crate::records::{Applied, ApplyOutcome, BatchKey, InboxCell, MergeBatch, Tier};
use crate::rollup::Rollups;
use crate::rules::entry_buckets;

/// A batch key as the dedupe table keys it.
pub(crate) type KeyId = (String, u64, u64);

impl BatchKey {
    pub(crate) fn id(&self) -> KeyId {
        (self.edge_id.clone(), self.boot_epoch, self.sequence)
    }
}

/// What the dedupe table says about a key of the group, once the group's records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// This transaction recorded the key, for the group's batch at this index.
    Now { batch: usize },
    /// The key was recorded by an earlier transaction, with this body digest.
    Before([u8; 32]),
}

/// The group's distinct keys in key order (so concurrent groups lock dedupe rows in the same
/// order), each with the index of the first batch that carries it.
pub(crate) fn first_occurrences(batches: &[MergeBatch]) -> Vec<(usize, &BatchKey)> {
    let mut firsts: BTreeMap<KeyId, (usize, &BatchKey)> = BTreeMap::new();
    for (index, batch) in batches.iter().enumerate() {
        if let Some(key) = &batch.key {
            firsts.entry(key.id()).or_insert((index, key));
        }
    }
    firsts.into_values().collect()
}

/// How a group commit writes its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteShape {
    /// Every tier's cells in the group's transaction (`--fold-interval-ms 0`).
    #[default]
    Direct,
    /// The group's minute cells as inbox rows, folded into the tiers later (see `inbox.rs`).
    Inbox,
}

/// What one group merge writes, and each batch's answer.
#[derive(Debug, Default)]
pub(crate) struct GroupWrites {
    pub outcomes: Vec<ApplyOutcome>,
    /// Hits to add per row of every tier, in key order (concurrent merges cannot deadlock);
    /// written by the direct shape and by folds. Open hours and days have no row here: their
    /// minutes count for them until the rollup (`rollup.rs`).
    pub cells: BTreeMap<(String, Tier, u64), u64>,
    /// Every kept bucket of every tier the writes change, the open ones included: what a late
    /// write bumps (`summaries.rs`).
    pub changed: BTreeSet<(Tier, u64)>,
    /// The inbox shape's minute cells, instead of `cells` and `sketches`: sorted by (resource,
    /// minute), each once, hits and visitors merged across the group; what its rows hold, made
    /// once here rather than through two maps whose keys were copies of the id.
    pub minute_cells: Vec<InboxCell>,
    /// Visitors per (resource, minute ms), merged across the group: one pending row each (the
    /// direct shape and folds).
    pub sketches: BTreeMap<(String, u64), Sketch>,
}

impl GroupWrites {
    pub fn applied_any(&self) -> bool {
        self.outcomes
            .iter()
            .any(|outcome| matches!(outcome, ApplyOutcome::Applied(_)))
    }
}

/// Decides every batch of a group from the dedupe records (`recorded` holds every key of the
/// group) and folds the entries of those to apply into the group's writes. `retention` holds
/// the retention of every existing resource the group names; a resource missing from it does
/// not exist and its entries are not counted.
pub(crate) fn fold_group(
    batches: &[MergeBatch],
    recorded: &HashMap<KeyId, Recorded>,
    retention: &HashMap<impl std::borrow::Borrow<str> + Eq + std::hash::Hash, Option<u32>>,
    rollups: &Rollups,
    now_ms: u64,
    shape: WriteShape,
) -> GroupWrites {
    let mut writes = GroupWrites::default();
    let mut shares = Shares::default();
    // Sized once for every entry of the group rather than grown by doubling as entries apply.
    shares
        .minutes
        .reserve(batches.iter().map(|batch| batch.entries.len()).sum());
    for (index, batch) in batches.iter().enumerate() {
        if let Some(kept) = batch
            .key
            .as_ref()
            .and_then(|key| kept_outcome(batches, index, key, recorded))
        {
            writes.outcomes.push(kept);
            continue;
        }
        let mut applied = Applied::default();
        for entry in &batch.entries {
            let Some(retention_days) = retention.get(entry.resource_id.as_str()) else {
                applied.unknown_resource_entries += 1;
                applied.unknown_resource_hits += entry.hits;
                continue;
            };
            let Some(buckets) = entry_buckets(entry, *retention_days, rollups, now_ms) else {
                applied.expired_entries += 1;
                continue;
            };
            if shape == WriteShape::Direct {
                writes.changed.extend(buckets.changed);
                let id = entry.resource_id.as_str();
                shares.cells.extend(
                    buckets
                        .rows
                        .into_iter()
                        .map(|(tier, bucket_ms)| (id, tier, bucket_ms, entry.hits)),
                );
            }
            shares.minutes.push(entry);
            applied.entries += 1;
            applied.hits += entry.hits;
        }
        writes.outcomes.push(ApplyOutcome::Applied(applied));
    }
    shares.write_into(&mut writes, shape);
    writes
}

/// A batch whose key was recorded before (by an earlier transaction or an earlier batch of the
/// group) is not applied: its outcome, a duplicate or a conflict by the body digest kept.
fn kept_outcome(
    batches: &[MergeBatch],
    index: usize,
    key: &BatchKey,
    recorded: &HashMap<KeyId, Recorded>,
) -> Option<ApplyOutcome> {
    let digest_kept = match recorded.get(&key.id()) {
        Some(Recorded::Now { batch }) if *batch == index => return None,
        Some(Recorded::Now { batch }) => batches[*batch].key.as_ref()?.body_sha256,
        Some(Recorded::Before(digest)) => *digest,
        None => unreachable!("every key of the group was recorded or looked up"),
    };
    Some(if digest_kept == key.body_sha256 {
        ApplyOutcome::Duplicate
    } else {
        ApplyOutcome::Conflict
    })
}

/// The applied entries' shares of the group's writes, borrowed from the batches while the group
/// is read: each entry adds a tuple, and only a distinct key is copied into the writes (the
/// writes' maps keyed by owned ids, filled entry by entry, were an allocation and a search of
/// string comparisons per entry, the largest share of the 12% `memcmp` took in a profile under
/// load). Batches arrive sorted by key, so one stable sort of their concatenation merges runs.
#[derive(Default)]
struct Shares<'a> {
    /// The direct shape's (resource, tier, bucket ms, hits) per row an entry adds to.
    cells: Vec<(&'a str, Tier, u64, u64)>,
    /// The applied entries, for their minute cells (the inbox shape) and their visitors.
    minutes: Vec<&'a DeltaEntry>,
}

impl Shares<'_> {
    fn write_into(mut self, writes: &mut GroupWrites, shape: WriteShape) {
        self.cells
            .sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        writes.cells = self
            .cells
            .chunk_by(|a, b| (a.0, a.1, a.2) == (b.0, b.1, b.2))
            .map(|run| {
                let (resource_id, tier, bucket_ms, _) = run[0];
                let hits = run.iter().map(|share| share.3).sum();
                ((resource_id.to_owned(), tier, bucket_ms), hits)
            })
            .collect();
        self.minutes.sort_by(|a, b| {
            (a.resource_id.as_str(), a.minute).cmp(&(b.resource_id.as_str(), b.minute))
        });
        let mut sketches = Vec::new();
        for run in self
            .minutes
            .chunk_by(|a, b| (&a.resource_id, a.minute) == (&b.resource_id, b.minute))
        {
            let (resource_id, minute_ms) = (run[0].resource_id.clone(), run[0].minute * MINUTE_MS);
            let mut visitors = Sketch::default();
            for entry in run.iter().filter(|entry| !entry.visitors.is_empty()) {
                visitors.merge(&entry.visitors);
            }
            match shape {
                WriteShape::Inbox => writes.minute_cells.push(InboxCell {
                    resource_id,
                    minute_ms,
                    hits: run.iter().map(|entry| entry.hits).sum(),
                    visitors,
                }),
                WriteShape::Direct if !visitors.is_empty() => {
                    sketches.push(((resource_id, minute_ms), visitors));
                }
                WriteShape::Direct => {}
            }
        }
        // Sorted and distinct already, so the map is built without a search.
        writes.sketches = sketches.into_iter().collect();
    }
}

/// Every resource id a group names, each once, sorted. Each batch is sorted by resource, so the
/// ids are their runs concatenated: a stable sort merges runs, where an ordered set searched
/// for every entry compared ids that share their prefix a dozen times each.
pub(crate) fn group_resource_ids(batches: &[MergeBatch]) -> Vec<&str> {
    let mut ids: Vec<&str> = Vec::new();
    for entry in batches.iter().flat_map(|batch| &batch.entries) {
        if ids.last() != Some(&entry.resource_id.as_str()) {
            ids.push(&entry.resource_id);
        }
    }
    ids.sort();
    ids.dedup();
    ids
}
