//! A group merge's decisions, shared by both backends: which batches of a group apply (from
//! the dedupe records), and the group's distinct cells. A backend only records dedupe keys,
//! looks up retention and writes what `fold_group` returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hitcount_wire::{MINUTE_MS, Sketch};

use crate::records::{Applied, ApplyOutcome, BatchKey, MergeBatch, Tier};
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
    /// Hits per (resource, minute ms): what the inbox shape appends instead of `cells`.
    pub minutes: BTreeMap<(String, u64), u64>,
    /// Visitors per (resource, minute ms), merged across the group: one pending row each.
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
    retention: &HashMap<String, Option<u32>>,
    rollups: &Rollups,
    now_ms: u64,
    shape: WriteShape,
) -> GroupWrites {
    let mut writes = GroupWrites::default();
    for (index, batch) in batches.iter().enumerate() {
        if let Some(key) = &batch.key {
            let digest_kept = match recorded.get(&key.id()) {
                Some(Recorded::Now { batch }) if *batch == index => None,
                Some(Recorded::Now { batch }) => {
                    batches[*batch].key.as_ref().map(|first| first.body_sha256)
                }
                Some(Recorded::Before(digest)) => Some(*digest),
                None => unreachable!("every key of the group was recorded or looked up"),
            };
            if let Some(digest) = digest_kept {
                writes.outcomes.push(if digest == key.body_sha256 {
                    ApplyOutcome::Duplicate
                } else {
                    ApplyOutcome::Conflict
                });
                continue;
            }
        }
        let mut applied = Applied::default();
        for entry in &batch.entries {
            let Some(retention_days) = retention.get(&entry.resource_id) else {
                applied.unknown_resource_entries += 1;
                applied.unknown_resource_hits += entry.hits;
                continue;
            };
            let Some(buckets) = entry_buckets(entry, *retention_days, rollups, now_ms) else {
                applied.expired_entries += 1;
                continue;
            };
            match shape {
                WriteShape::Direct => {
                    writes.changed.extend(buckets.changed);
                    for (tier, bucket_ms) in buckets.rows {
                        *writes
                            .cells
                            .entry((entry.resource_id.clone(), tier, bucket_ms))
                            .or_default() += entry.hits;
                    }
                }
                WriteShape::Inbox => {
                    *writes
                        .minutes
                        .entry((entry.resource_id.clone(), entry.minute * MINUTE_MS))
                        .or_default() += entry.hits;
                }
            }
            if !entry.visitors.is_empty() {
                writes
                    .sketches
                    .entry((entry.resource_id.clone(), entry.minute * MINUTE_MS))
                    .or_default()
                    .merge(&entry.visitors);
            }
            applied.entries += 1;
            applied.hits += entry.hits;
        }
        writes.outcomes.push(ApplyOutcome::Applied(applied));
    }
    writes
}

/// Every resource id a group names, each once, sorted.
pub(crate) fn group_resource_ids(batches: &[MergeBatch]) -> Vec<&str> {
    let ids: BTreeSet<&str> = batches
        .iter()
        .flat_map(|batch| batch.entries.iter().map(|entry| entry.resource_id.as_str()))
        .collect();
    ids.into_iter().collect()
}
