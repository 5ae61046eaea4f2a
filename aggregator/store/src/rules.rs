//! Rules both backends apply alike: which buckets an entry writes, what retention deletes, how
//! pending sketches join cells, and the sizes of their transactions.

use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch};

use crate::DAY_MS;
use crate::records::{
    CELLS_READ_RESOURCES_MAX, CountCell, IMPORT_CELLS_MAX, Import, ResourceRecord, Tier,
};
use crate::rollup::{Rollups, bucket_of};

/// The retention job deletes at most this many rows per transaction, so ingest never waits long.
pub(crate) const RETENTION_DELETE_ROWS_MAX: usize = 10_000;
/// Pending sketch rows folded into cells per compaction transaction: small transactions, so that
/// merges wait little for the cells' row locks.
pub(crate) const COMPACTION_ROWS_MAX: usize = 10_000;
/// The encoding of an empty sketch.
pub(crate) const EMPTY_SKETCH: &[u8] = &[0];

/// Retention rules for `prune`: (resource or all, tier, cutoff) for every tier with a retention
/// and every resource with its own.
pub(crate) fn retention_rules(
    resources: &[ResourceRecord],
    now_ms: u64,
) -> Vec<(Option<String>, Tier, u64)> {
    let mut rules = Vec::new();
    for tier in Tier::ALL {
        if let Some(retention) = tier.retention_ms() {
            rules.push((None, tier, now_ms.saturating_sub(retention)));
        }
    }
    for resource in resources {
        if let Some(days) = resource.retention_days {
            let cutoff = now_ms.saturating_sub(u64::from(days) * DAY_MS);
            for tier in Tier::ALL {
                rules.push((Some(resource.id.clone()), tier, cutoff));
            }
        }
    }
    rules
}

/// What a merge writes for one entry: the rows of the buckets still kept that the rollup rule
/// writes ([`Rollups::minute_rows`]), and every kept bucket its counts change; nothing when the
/// entry is past its resource's retention.
pub(crate) fn entry_buckets(
    entry: &DeltaEntry,
    retention_days: Option<u32>,
    rollups: &Rollups,
    now_ms: u64,
) -> Option<MinuteWrites> {
    let entry_ms = entry.minute * MINUTE_MS;
    if let Some(days) = retention_days
        && entry_ms + MINUTE_MS <= now_ms.saturating_sub(u64::from(days) * DAY_MS)
    {
        return None;
    }
    Some(minute_writes(&entry.resource_id, entry_ms, rollups, now_ms))
}

/// The rows one minute of a resource is written to, and the buckets it changes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MinuteWrites {
    pub rows: Vec<(Tier, u64)>,
    pub changed: Vec<(Tier, u64)>,
}

/// [`MinuteWrites`] of one kept minute at `now_ms`.
pub(crate) fn minute_writes(
    resource_id: &str,
    minute_ms: u64,
    rollups: &Rollups,
    now_ms: u64,
) -> MinuteWrites {
    let kept = |tier, bucket_ms| tier_kept(tier, bucket_ms, now_ms);
    MinuteWrites {
        rows: rollups.minute_rows(resource_id, minute_ms, kept),
        changed: Tier::ALL
            .into_iter()
            .map(|tier| (tier, bucket_of(tier, minute_ms)))
            .filter(|(tier, bucket_ms)| kept(*tier, *bucket_ms))
            .collect(),
    }
}

/// False for a bucket the retention job would delete next: writing it is wasted work.
pub(crate) fn tier_kept(tier: Tier, bucket_ms: u64, now_ms: u64) -> bool {
    !tier.retention_ms().is_some_and(|retention| {
        bucket_ms + tier.resolution_ms() <= now_ms.saturating_sub(retention)
    })
}

/// False for a cell past its tier's retention or its resource's (`retention_days`): retention
/// would delete it, so an import skips it.
pub fn cell_kept(tier: Tier, bucket_ms: u64, retention_days: Option<u32>, now_ms: u64) -> bool {
    let resource_kept = retention_days.is_none_or(|days| {
        bucket_ms + tier.resolution_ms() > now_ms.saturating_sub(u64::from(days) * DAY_MS)
    });
    resource_kept && tier_kept(tier, bucket_ms, now_ms)
}

/// An import's cells are within [`IMPORT_CELLS_MAX`] and distinct (each is one upsert).
pub(crate) fn check_import(import: &Import) {
    assert!(
        import.cells.len() <= IMPORT_CELLS_MAX,
        "an import holds at most IMPORT_CELLS_MAX cells; the caller refuses bigger files"
    );
    debug_assert_eq!(
        import
            .cells
            .iter()
            .map(|cell| (&cell.resource_id, cell.tier, cell.cell.bucket_ms))
            .collect::<std::collections::HashSet<_>>()
            .len(),
        import.cells.len(),
        "the cells of one import are distinct"
    );
}

/// The ids of one `cells_of_many` read are distinct (each answer is placed by its id) and
/// within [`CELLS_READ_RESOURCES_MAX`] (what one statement binds and one snapshot holds).
pub(crate) fn check_read_ids(resource_ids: &[String]) {
    assert!(
        resource_ids.len() <= CELLS_READ_RESOURCES_MAX,
        "a cells read names at most CELLS_READ_RESOURCES_MAX resources; callers read in chunks"
    );
    debug_assert_eq!(
        resource_ids
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        resource_ids.len(),
        "the resources of one cells read are distinct"
    );
}

/// Merges pending sketches (by minute) into cells of `tier` sorted by bucket.
pub(crate) fn merge_pending(cells: &mut [CountCell], tier: Tier, minute_ms: u64, sketch: &Sketch) {
    let bucket_ms = minute_ms / tier.resolution_ms() * tier.resolution_ms();
    // A pending sketch whose cell retention already removed has nothing to join.
    if let Ok(index) = cells.binary_search_by_key(&bucket_ms, |cell| cell.bucket_ms) {
        cells[index].visitors.merge(sketch);
    }
}
