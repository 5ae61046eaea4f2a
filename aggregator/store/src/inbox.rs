//! The durable inbox: the write shape of `--fold-interval-ms` above zero (issue 11).
//!
//! With it, a group commit writes only the group's dedupe records and the group's merged minute
//! cells (counts and sketches) as a few inbox rows, and each batch is acknowledged once that
//! committed. A fold, every fold interval in any aggregator (one at a time), claims inbox rows by
//! deleting them and writes their cells into every tier in the same transaction: each row is
//! folded exactly once, and in every snapshot a row is either in the inbox or in the counters,
//! never both. Durable writes then grow with the distinct counters of a fold interval (seconds)
//! rather than of a merge interval (a tenth of a second): over 100k resources most resources get
//! about one hit per merge group, but many per fold, and the rows a fold writes are bounded by
//! the resources touched however long it covers, so a slow fold makes the next one cover more,
//! not cost more.
//!
//! Reads stay exact and fresh: the aggregator that appended a row keeps its cells in memory (the
//! [`Overlay`]) until the row is folded, and a read adds the cells of those of its rows that the
//! read's own snapshot still finds in the inbox. Other aggregators see a row once it is folded
//! (within a fold interval), or at once through the Redis hot tier, which is written at the group
//! commit as before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hitcount_wire::{MINUTE_MS, Sketch};

use crate::DAY_MS;
use crate::group::GroupWrites;
use crate::records::{CountCell, StoreError, Tier};
use crate::rules::tier_kept;

/// Longest fold interval: other aggregators (without a hot tier) see a hit within it.
pub const FOLD_INTERVAL_MS_MAX: u64 = 60_000;
/// Cells one aggregator keeps in memory for its unfolded rows. Past it deltas get 503 until a
/// fold catches up: at about 100 bytes a cell this bounds the overlay near 400 MB.
pub const UNFOLDED_ENTRIES_MAX: usize = 4_000_000;
/// Cells one fold transaction takes (it takes whole rows, at least one): bounds its size and
/// time; a fold runs transactions until the inbox is empty.
pub const FOLD_ENTRIES_MAX: usize = 1_000_000;
/// Inbox rows a fold lists at once, to choose its transaction's rows from.
pub(crate) const FOLD_ROWS_LISTED_MAX: i64 = 1_000;
/// Cells in one inbox row: a group larger than this is written as several rows, so that one
/// row stays far below PostgreSQL's 1 GB value limit even if every cell held a dense sketch
/// (20,000 x 12 KiB = 245 MB; a typical row of sparse sketches is about 1 MB).
pub const INBOX_ROW_CELLS_MAX: usize = 20_000;
/// Bytes of one encoded row the decoder accepts (the bound above, with room for ids).
pub const INBOX_ROW_BYTES_MAX: usize = 256 * 1024 * 1024;

/// One minute cell of an inbox row.
#[derive(Debug, Clone)]
pub struct InboxCell {
    pub resource_id: String,
    pub minute_ms: u64,
    pub hits: u64,
    pub visitors: Sketch,
}

/// The encoded form (postcard): a crate made for compact, bounded serde encoding, where a
/// hand-written framing would need its own fuzzing.
#[derive(serde::Serialize, serde::Deserialize)]
struct EncodedCell {
    resource_id: String,
    minute_ms: u64,
    hits: u64,
    sketch: Vec<u8>,
}

/// One inbox row's cells, sorted by (resource, minute), each (resource, minute) once.
#[derive(Debug, Clone, Default)]
pub struct InboxRow {
    cells: Vec<InboxCell>,
}

impl InboxRow {
    /// The rows a group's writes go into: its minute cells in key order, split every
    /// [`INBOX_ROW_CELLS_MAX`]. Takes the cells out of `writes` (its outcomes stay), so that no
    /// id or sketch is copied on the way.
    pub(crate) fn from_writes(writes: &mut GroupWrites) -> Vec<Self> {
        debug_assert!(
            writes.cells.is_empty(),
            "a group written to the inbox has minute cells only, no tier cells"
        );
        let mut sketches = std::mem::take(&mut writes.sketches);
        let mut rows = Vec::new();
        let mut row = Self::default();
        for (key, hits) in std::mem::take(&mut writes.minutes) {
            if row.cells.len() == INBOX_ROW_CELLS_MAX {
                rows.push(std::mem::take(&mut row));
            }
            let visitors = sketches.remove(&key).unwrap_or_default();
            let (resource_id, minute_ms) = key;
            debug_assert!(
                minute_ms.is_multiple_of(MINUTE_MS),
                "an inbox cell is a minute: its minute_ms is minute-aligned ({minute_ms})"
            );
            row.cells.push(InboxCell {
                resource_id,
                minute_ms,
                hits,
                visitors,
            });
        }
        if !row.cells.is_empty() {
            rows.push(row);
        }
        // A group's sketches are keyed by the minute cells their entries also added hits to.
        debug_assert!(
            sketches.is_empty(),
            "every sketch of a group belongs to one of its minute cells, so none is left behind"
        );
        rows
    }

    pub fn cells(&self) -> &[InboxCell] {
        &self.cells
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.cells.len() <= INBOX_ROW_CELLS_MAX,
            "a row holds at most INBOX_ROW_CELLS_MAX cells, or the decoder would refuse it: {}",
            self.cells.len()
        );
        let encoded: Vec<EncodedCell> = self
            .cells
            .iter()
            .map(|cell| EncodedCell {
                resource_id: cell.resource_id.clone(),
                minute_ms: cell.minute_ms,
                hits: cell.hits,
                sketch: cell.visitors.to_bytes(),
            })
            .collect();
        let bytes = postcard::to_allocvec(&encoded).expect("a vector of plain fields encodes");
        assert!(
            bytes.len() <= INBOX_ROW_BYTES_MAX,
            "a row of at most {INBOX_ROW_CELLS_MAX} cells fits the decoder's bound"
        );
        bytes
    }

    /// Decodes a row this program encoded; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() > INBOX_ROW_BYTES_MAX {
            return Err(StoreError::CorruptInbox("a row is over its size bound"));
        }
        let encoded: Vec<EncodedCell> = postcard::from_bytes(bytes)?;
        if encoded.len() > INBOX_ROW_CELLS_MAX {
            return Err(StoreError::CorruptInbox("a row has too many cells"));
        }
        let mut cells = Vec::with_capacity(encoded.len());
        for cell in encoded {
            cells.push(InboxCell {
                resource_id: cell.resource_id,
                minute_ms: cell.minute_ms,
                hits: cell.hits,
                visitors: Sketch::from_bytes(&cell.sketch)?,
            });
        }
        let sorted = cells.windows(2).all(|pair| {
            (pair[0].resource_id.as_str(), pair[0].minute_ms)
                < (pair[1].resource_id.as_str(), pair[1].minute_ms)
        });
        if !sorted {
            return Err(StoreError::CorruptInbox("a row's cells are out of order"));
        }
        Ok(Self { cells })
    }

    /// This row's cells of one resource.
    pub(crate) fn cells_of(&self, resource_id: &str) -> &[InboxCell] {
        let first = self
            .cells
            .partition_point(|cell| cell.resource_id.as_str() < resource_id);
        let end = first
            + self.cells[first..].partition_point(|cell| cell.resource_id.as_str() == resource_id);
        &self.cells[first..end]
    }

    pub(crate) fn holds(&self, resource_id: &str) -> bool {
        !self.cells_of(resource_id).is_empty()
    }

    /// Adds this row's cells of `resource_id` to `cells` (one tier, sorted by bucket, buckets in
    /// `[start_ms, end_ms)`), as the fold would write them at `now_ms`.
    pub(crate) fn add_to(
        &self,
        cells: &mut Vec<CountCell>,
        resource_id: &str,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) {
        debug_assert!(
            cells
                .windows(2)
                .all(|pair| pair[0].bucket_ms < pair[1].bucket_ms),
            "cells are sorted by bucket, each bucket once, as the binary search below needs"
        );
        for cell in self.cells_of(resource_id) {
            let bucket_ms = cell.minute_ms / tier.resolution_ms() * tier.resolution_ms();
            if bucket_ms < start_ms || bucket_ms >= end_ms || !tier_kept(tier, bucket_ms, now_ms) {
                continue;
            }
            match cells.binary_search_by_key(&bucket_ms, |stored| stored.bucket_ms) {
                Ok(index) => {
                    cells[index].hits += cell.hits;
                    cells[index].visitors.merge(&cell.visitors);
                }
                Err(index) => cells.insert(
                    index,
                    CountCell {
                        bucket_ms,
                        hits: cell.hits,
                        visitors: cell.visitors.clone(),
                    },
                ),
            }
        }
    }

    /// A copy without one resource's cells.
    pub(crate) fn without(&self, resource_id: &str) -> Self {
        Self {
            cells: self
                .cells
                .iter()
                .filter(|cell| cell.resource_id != resource_id)
                .cloned()
                .collect(),
        }
    }
}

/// The inbox rows this process appended and has not seen folded, by row id.
#[derive(Debug, Default)]
pub struct Overlay {
    rows: Mutex<BTreeMap<u64, Arc<InboxRow>>>,
    entries: AtomicUsize,
}

impl Overlay {
    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<InboxRow>>> {
        self.rows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Called after the row's transaction committed and before its batches are answered.
    pub fn insert(&self, id: u64, row: InboxRow) {
        self.entries.fetch_add(row.len(), Ordering::Relaxed);
        let previous = self.rows().insert(id, Arc::new(row));
        assert!(previous.is_none(), "inbox row ids are never reused");
    }

    pub fn get(&self, id: u64) -> Option<Arc<InboxRow>> {
        self.rows().get(&id).cloned()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.rows().keys().copied().collect()
    }

    /// The rows holding cells of `resource_id`.
    pub fn rows_for(&self, resource_id: &str) -> Vec<(u64, Arc<InboxRow>)> {
        self.rows()
            .iter()
            .filter(|(_, row)| row.holds(resource_id))
            .map(|(id, row)| (*id, Arc::clone(row)))
            .collect()
    }

    /// Forgets rows that were folded (by this process or another).
    pub fn remove(&self, ids: &[u64]) {
        let mut rows = self.rows();
        for id in ids {
            if let Some(row) = rows.remove(id) {
                let before = self.entries.fetch_sub(row.len(), Ordering::Relaxed);
                // Added before a row enters the map, taken only after it left: never below.
                assert!(
                    before >= row.len(),
                    "the overlay's cell count covers every row it holds, so it never underflows"
                );
            }
        }
    }

    /// A deleted resource's cells leave the overlay at once (the fold drops them too), so a
    /// resource made again under the same id does not show them.
    pub fn forget_resource(&self, resource_id: &str) {
        let mut rows = self.rows();
        for row in rows.values_mut() {
            if row.holds(resource_id) {
                let kept = row.without(resource_id);
                let before = self
                    .entries
                    .fetch_sub(row.len() - kept.len(), Ordering::Relaxed);
                assert!(
                    before >= row.len(),
                    "the overlay's cell count covers every row it holds, so it never underflows"
                );
                *row = Arc::new(kept);
            }
        }
    }

    /// The earliest minute an unfolded row holds: the next fold may change any bucket from it
    /// on, late ones included (`summaries.rs`).
    pub fn earliest_minute_ms(&self) -> Option<u64> {
        self.rows()
            .values()
            .flat_map(|row| row.cells().iter().map(|cell| cell.minute_ms))
            .min()
    }

    /// Every resource with an unfolded cell of a minute in `[start_ms, end_ms)`.
    pub fn resource_ids_between(&self, start_ms: u64, end_ms: u64) -> BTreeSet<String> {
        self.rows()
            .values()
            .flat_map(|row| row.cells().iter())
            .filter(|cell| (start_ms..end_ms).contains(&cell.minute_ms))
            .map(|cell| cell.resource_id.clone())
            .collect()
    }

    /// Cells held now, over all rows.
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }
}

/// The writes of a fold: every cell of the claimed rows whose resource still exists and whose
/// minute is within its retention, into every tier still kept (as a direct merge would write
/// them at `now_ms`). `retention` holds every existing resource the rows name.
pub(crate) fn fold_rows<'a>(
    rows: impl IntoIterator<Item = &'a InboxRow>,
    retention: &HashMap<String, Option<u32>>,
    now_ms: u64,
) -> GroupWrites {
    let mut writes = GroupWrites::default();
    for row in rows {
        for cell in &row.cells {
            let Some(retention_days) = retention.get(&cell.resource_id) else {
                // Deleted since it was appended: its counts went with it.
                continue;
            };
            if let Some(days) = retention_days
                && cell.minute_ms + MINUTE_MS <= now_ms.saturating_sub(u64::from(*days) * DAY_MS)
            {
                continue;
            }
            for tier in Tier::ALL {
                let bucket_ms = cell.minute_ms / tier.resolution_ms() * tier.resolution_ms();
                if tier_kept(tier, bucket_ms, now_ms) {
                    *writes
                        .cells
                        .entry((cell.resource_id.clone(), tier, bucket_ms))
                        .or_default() += cell.hits;
                }
            }
            if !cell.visitors.is_empty() {
                writes
                    .sketches
                    .entry((cell.resource_id.clone(), cell.minute_ms))
                    .or_default()
                    .merge(&cell.visitors);
            }
        }
    }
    writes
}

/// This process's unfolded rows holding cells of each of `resource_ids`, in order (none without
/// the inbox).
pub(crate) fn rows_for_each(
    overlay: Option<&Overlay>,
    resource_ids: &[String],
) -> Vec<Vec<(u64, Arc<InboxRow>)>> {
    resource_ids
        .iter()
        .map(|id| {
            overlay
                .map(|overlay| overlay.rows_for(id))
                .unwrap_or_default()
        })
        .collect()
}

/// Every resource id the rows name, each once, sorted.
pub(crate) fn rows_resource_ids<'a>(rows: impl IntoIterator<Item = &'a InboxRow>) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for row in rows {
        for cell in &row.cells {
            if ids.last() != Some(&cell.resource_id) {
                ids.push(cell.resource_id.clone());
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Chooses a fold transaction's rows from the listed (id, cells) in id order: whole rows up to
/// [`FOLD_ENTRIES_MAX`] cells, at least one.
pub(crate) fn choose_fold_rows(listed: &[(u64, usize)]) -> Vec<u64> {
    let mut chosen = Vec::new();
    let mut entries = 0;
    for (id, cells) in listed {
        if !chosen.is_empty() && entries + cells > FOLD_ENTRIES_MAX {
            break;
        }
        entries += cells;
        chosen.push(*id);
    }
    assert!(
        listed.is_empty() || !chosen.is_empty(),
        "a fold takes at least one listed row, so folding always progresses"
    );
    debug_assert!(
        chosen.len() <= 1 || entries <= FOLD_ENTRIES_MAX,
        "a fold takes at most FOLD_ENTRIES_MAX cells, unless one row alone holds more"
    );
    debug_assert!(
        chosen
            .iter()
            .zip(listed)
            .all(|(id, (listed_id, _))| id == listed_id),
        "a fold claims only rows it listed: the first ones, in id order"
    );
    chosen
}

/// Adds minute cells of rows (what a rebuild of the hot tier reads) to `cells`, for minutes from
/// `start_ms` on and resources in `existing`.
pub(crate) fn add_minutes_since<'a>(
    cells: &mut BTreeMap<(String, u64), CountCell>,
    rows: impl IntoIterator<Item = &'a InboxRow>,
    existing: &std::collections::HashSet<String>,
    start_ms: u64,
) {
    for row in rows {
        for cell in &row.cells {
            if cell.minute_ms < start_ms || !existing.contains(&cell.resource_id) {
                continue;
            }
            cells
                .entry((cell.resource_id.clone(), cell.minute_ms))
                .or_insert_with(|| CountCell::empty(cell.minute_ms))
                .add(cell.hits, &cell.visitors);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn writes(cells: &[(&str, u64, u64, &[&str])]) -> GroupWrites {
        let mut writes = GroupWrites::default();
        for (resource_id, minute_ms, hits, visitors) in cells {
            writes
                .minutes
                .insert(((*resource_id).to_owned(), *minute_ms), *hits);
            if !visitors.is_empty() {
                let mut sketch = Sketch::new();
                for visitor in *visitors {
                    sketch.insert(visitor.as_bytes());
                }
                writes
                    .sketches
                    .insert(((*resource_id).to_owned(), *minute_ms), sketch);
            }
        }
        writes
    }

    #[test]
    fn a_row_decodes_to_what_was_encoded_and_garbage_is_an_error() {
        let rows = InboxRow::from_writes(&mut writes(&[
            ("a", 0, 3, &["x", "y"]),
            ("a", MINUTE_MS, 1, &[]),
            ("b", 0, 2, &["z"]),
        ]));
        assert_eq!(rows.len(), 1);
        let decoded = InboxRow::decode(&rows[0].encode()).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded.cells()[0].hits, 3);
        assert_eq!(decoded.cells()[0].visitors, rows[0].cells()[0].visitors);
        assert_eq!(decoded.cells_of("a").len(), 2);
        assert_eq!(decoded.cells_of("b").len(), 1);
        assert!(decoded.cells_of("c").is_empty());
        let bytes = rows[0].encode();
        for cut in 0..bytes.len() {
            assert!(InboxRow::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_large_group_is_split_into_bounded_rows() {
        let mut group = GroupWrites::default();
        for index in 0..(INBOX_ROW_CELLS_MAX + 5) {
            group.minutes.insert((format!("r{index:06}"), 0), 1);
        }
        let rows = InboxRow::from_writes(&mut group);
        assert_eq!(
            rows.iter().map(InboxRow::len).collect::<Vec<_>>(),
            vec![INBOX_ROW_CELLS_MAX, 5]
        );
    }

    #[test]
    fn overlay_cells_join_stored_ones_by_bucket() {
        let row = InboxRow::from_writes(&mut writes(&[
            ("a", 0, 3, &[]),
            ("a", 2 * MINUTE_MS, 4, &[]),
        ]))
        .remove(0);
        let mut cells = vec![CountCell {
            bucket_ms: 2 * MINUTE_MS,
            hits: 10,
            visitors: Sketch::new(),
        }];
        row.add_to(&mut cells, "a", Tier::Minute, 0, 3 * MINUTE_MS, 0);
        assert_eq!(
            cells
                .iter()
                .map(|cell| (cell.bucket_ms, cell.hits))
                .collect::<Vec<_>>(),
            vec![(0, 3), (2 * MINUTE_MS, 14)]
        );
        let mut hours = Vec::new();
        row.add_to(&mut hours, "a", Tier::Hour, 0, DAY_MS, 0);
        assert_eq!(hours.len(), 1);
        assert_eq!(hours[0].hits, 7);
    }

    #[test]
    fn fold_rows_are_chosen_whole_and_bounded() {
        assert_eq!(choose_fold_rows(&[]), Vec::<u64>::new());
        assert_eq!(
            choose_fold_rows(&[(7, FOLD_ENTRIES_MAX + 1), (8, 1)]),
            vec![7]
        );
        assert_eq!(
            choose_fold_rows(&[(1, FOLD_ENTRIES_MAX / 2), (2, FOLD_ENTRIES_MAX / 2), (3, 1)]),
            vec![1, 2]
        );
    }

    #[test]
    fn the_overlay_counts_its_cells() {
        let overlay = Overlay::default();
        let rows = InboxRow::from_writes(&mut writes(&[("a", 0, 1, &[]), ("b", 0, 1, &[])]));
        overlay.insert(1, rows[0].clone());
        assert_eq!(overlay.entries(), 2);
        overlay.forget_resource("a");
        assert_eq!(overlay.entries(), 1);
        assert!(overlay.rows_for("a").is_empty());
        assert_eq!(overlay.rows_for("b").len(), 1);
        overlay.remove(&[1]);
        assert_eq!(overlay.entries(), 0);
    }
}
