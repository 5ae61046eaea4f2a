//! The durable inbox: the write shape of `--fold-interval-ms` above zero (issue 11).
//!
//! With it, a group commit writes only the group's dedupe records and the group's merged minute
//! cells (counts and sketches) as a few inbox rows, and each batch is acknowledged once that
//! committed. The appending process also merges its rows in memory into slots by the time their
//! last minute closes (the [`Overlay`]). Once a slot's minute closed (and [`MINUTE_CLOSE_GRACE_MS`]
//! passed), a fold claims the slot's rows by deleting them and writes its merged cells into every
//! tier in the same transaction: each row is folded exactly once, and in every snapshot a row is
//! either in the inbox or in the counters, never both. Durable writes then grow with the
//! distinct (resource, minute) cells, written about once a minute, rather than with the groups
//! (a tenth of a second each) or the folds: over 100k resources most resources get about one
//! hit per merge group, but many per minute.
//!
//! Reads stay exact and fresh: a read adds the cells of this process's slots whose rows the
//! read's own snapshot still finds in the inbox. Other aggregators see a row once it is folded
//! (after its minute closed), or at once through the Redis hot tier, which is written at the
//! group commit as before. Rows a stopped process left are folded by any process from their
//! bodies, [`FOREIGN_FOLD_AFTER_MS`] after they closed or at once by [`FoldScope::All`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hitcount_wire::{MINUTE_MS, Sketch};

use crate::DAY_MS;
use crate::group::GroupWrites;
use crate::records::{CountCell, StoreError, Tier, TierCell};
use crate::rollup::Rollups;
use crate::rules::{minute_writes, tier_kept};

/// Longest fold interval: how often an aggregator looks for minutes that closed.
pub const FOLD_INTERVAL_MS_MAX: u64 = 60_000;
/// Distinct (resource, minute) cells one aggregator keeps in memory for its unfolded rows, summed
/// over its slots. Past it deltas get 503 until a fold catches up: at about 100 bytes a cell
/// this bounds the overlay near 400 MB.
pub const UNFOLDED_ENTRIES_MAX: usize = 4_000_000;
/// Cells one fold transaction of another process's rows takes (it takes whole rows, at least
/// one): bounds its size and time; a fold runs transactions until none is left. A slot's fold
/// is bounded by [`UNFOLDED_ENTRIES_MAX`] instead, as its cells are merged.
pub const FOLD_ENTRIES_MAX: usize = 1_000_000;
/// Inbox rows a fold lists at once, to choose its transaction's rows from.
pub(crate) const FOLD_ROWS_LISTED_MAX: i64 = 1_000;
/// Cells in one inbox row: a group larger than this is written as several rows, so that one
/// row stays far below PostgreSQL's 1 GB value limit even if every cell held a dense sketch
/// (20,000 x 12 KiB = 245 MB; a typical row of sparse sketches is about 1 MB).
pub const INBOX_ROW_CELLS_MAX: usize = 20_000;
/// Bytes of one encoded row the decoder accepts (the bound above, with room for ids).
pub const INBOX_ROW_BYTES_MAX: usize = 256 * 1024 * 1024;

pub use crate::records::InboxCell;

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
            writes.cells.is_empty() && writes.sketches.is_empty(),
            "a group written to the inbox has minute cells only, no tier cells or pending sketches"
        );
        debug_assert!(
            writes.minute_cells.windows(2).all(|pair| {
                (pair[0].resource_id.as_str(), pair[0].minute_ms)
                    < (pair[1].resource_id.as_str(), pair[1].minute_ms)
            }),
            "a group's minute cells are sorted by (resource, minute), each once"
        );
        debug_assert!(
            writes
                .minute_cells
                .iter()
                .all(|cell| cell.minute_ms.is_multiple_of(MINUTE_MS)),
            "an inbox cell is a minute: its minute_ms is minute-aligned"
        );
        let mut cells = std::mem::take(&mut writes.minute_cells);
        let mut rows = Vec::with_capacity(cells.len().div_ceil(INBOX_ROW_CELLS_MAX));
        // From the end, so that each row is split off without moving the cells before it, and
        // the first row (most groups' only one) keeps the group's vector.
        while cells.len() > INBOX_ROW_CELLS_MAX {
            let start = (cells.len() - 1) / INBOX_ROW_CELLS_MAX * INBOX_ROW_CELLS_MAX;
            rows.push(Self {
                cells: cells.split_off(start),
            });
        }
        if !cells.is_empty() {
            rows.push(Self { cells });
        }
        rows.reverse();
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

/// When this process folds its rows of a minute, after the minute closed: the deltas of a minute
/// that arrive within it (an edge ships its window within seconds) join that minute's one fold
/// instead of making a late one.
pub const MINUTE_CLOSE_GRACE_MS: u64 = 5_000;
/// When any process folds another's rows, after their last minute closed: their writer folds them
/// within [`MINUTE_CLOSE_GRACE_MS`] and a fold interval unless it stopped, so these are a stopped
/// (or stalled) writer's. Folding a live writer's rows is still exact, only slower.
pub const FOREIGN_FOLD_AFTER_MS: u64 = MINUTE_CLOSE_GRACE_MS + 2 * FOLD_INTERVAL_MS_MAX;

/// Which rows a fold takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldScope {
    /// Rows whose minutes have all closed: this process's after [`MINUTE_CLOSE_GRACE_MS`], any
    /// other's after [`FOREIGN_FOLD_AFTER_MS`]. What the periodic fold takes, so that durable
    /// rows follow the distinct (resource, minute) cells rather than the folds.
    Closed,
    /// Every row: at start (a killed run's rows answer at once), at a clean stop, and before a
    /// resource is deleted.
    All,
}

impl InboxRow {
    /// When the row's last minute closes: the row is folded after that, with every other row
    /// that closes then.
    pub fn closes_at_ms(&self) -> u64 {
        self.cells
            .iter()
            .map(|cell| cell.minute_ms + MINUTE_MS)
            .max()
            .unwrap_or(0)
    }

    /// A row of a slot's merged cells: sorted once here, when a fold takes the slot, rather
    /// than kept in order cell by cell while rows join it.
    fn from_open(cells: OpenCells) -> Self {
        let mut by_resource: Vec<(String, Vec<CountCell>)> = cells.into_iter().collect();
        by_resource.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut row = Self::default();
        for (resource_id, minutes) in by_resource {
            debug_assert!(
                minutes
                    .windows(2)
                    .all(|pair| pair[0].bucket_ms < pair[1].bucket_ms),
                "a resource's open cells are sorted by minute, each minute once"
            );
            row.cells.extend(minutes.into_iter().map(|cell| InboxCell {
                resource_id: resource_id.clone(),
                minute_ms: cell.bucket_ms,
                hits: cell.hits,
                visitors: cell.visitors,
            }));
        }
        row
    }
}

/// This process's unfolded inbox rows, merged into slots: the rows that close at one time go into
/// one slot, whose cells are their merged (resource, minute) cells. A slot is folded whole, in
/// one transaction, from those cells, so the memory held and the rows a fold writes follow the
/// distinct cells of a minute, not the group commits that appended them.
#[derive(Debug, Default)]
pub struct Overlay {
    slots: Mutex<Slots>,
    entries: AtomicUsize,
}

#[derive(Debug, Default)]
struct Slots {
    by_number: BTreeMap<u64, Slot>,
    /// The slot taking rows, by the time they close: a slot stops taking rows once a fold took it.
    open: HashMap<u64, u64>,
    next_number: u64,
}

#[derive(Debug)]
struct Slot {
    closes_at_ms: u64,
    row_ids: Vec<u64>,
    earliest_minute_ms: u64,
    cells: SlotCells,
}

/// An open slot's merged cells: each resource's minute cells, sorted by minute (a resource has
/// one or two in a slot). Keyed by a hash of the id: an ordered map of (resource, minute) made
/// each cell joining a slot of 100k resources about 17 comparisons of ids sharing their prefix,
/// the largest share of the string comparisons in a profile under load (BENCHMARKS.md).
type OpenCells = foldhash::HashMap<String, Vec<CountCell>>;

#[derive(Debug)]
enum SlotCells {
    Open(OpenCells),
    /// Taken by a fold: no more rows join it, and it stays readable until the fold commits.
    Taken(Arc<InboxRow>),
}

/// A slot a fold took: its rows are claimed together, and its merged cells are what they fold to.
#[derive(Debug, Clone)]
pub struct TakenSlot {
    pub number: u64,
    pub row_ids: Vec<u64>,
    pub cells: Arc<InboxRow>,
}

/// What a read adds of one slot for one resource: the slot's rows and the resource's cells in it.
#[derive(Debug, Clone)]
pub struct HeldCells {
    pub row_ids: Vec<u64>,
    pub cells: InboxRow,
}

impl Slots {
    /// No more rows join slot `number` (if it was the one taking rows that close then).
    fn close(&mut self, number: u64, closes_at_ms: u64) {
        if self.open.get(&closes_at_ms) == Some(&number) {
            self.open.remove(&closes_at_ms);
        }
    }
}

impl Slot {
    fn cells_of(&self, resource_id: &str) -> InboxRow {
        match &self.cells {
            SlotCells::Open(cells) => InboxRow {
                cells: cells
                    .get(resource_id)
                    .into_iter()
                    .flatten()
                    .map(|cell| InboxCell {
                        resource_id: resource_id.to_owned(),
                        minute_ms: cell.bucket_ms,
                        hits: cell.hits,
                        visitors: cell.visitors.clone(),
                    })
                    .collect(),
            },
            SlotCells::Taken(row) => InboxRow {
                cells: row.cells_of(resource_id).to_vec(),
            },
        }
    }

    fn len(&self) -> usize {
        match &self.cells {
            SlotCells::Open(cells) => cells.values().map(Vec::len).sum(),
            SlotCells::Taken(row) => row.len(),
        }
    }

    fn cells(&self) -> Box<dyn Iterator<Item = (&str, u64)> + '_> {
        match &self.cells {
            SlotCells::Open(cells) => Box::new(cells.iter().flat_map(|(resource_id, minutes)| {
                minutes
                    .iter()
                    .map(move |cell| (resource_id.as_str(), cell.bucket_ms))
            })),
            SlotCells::Taken(row) => Box::new(
                row.cells()
                    .iter()
                    .map(|cell| (cell.resource_id.as_str(), cell.minute_ms)),
            ),
        }
    }
}

impl Overlay {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Called after the row's transaction committed and before its batches are answered.
    pub fn insert(&self, id: u64, row: InboxRow) {
        if row.is_empty() {
            return;
        }
        let closes_at_ms = row.closes_at_ms();
        let mut slots = self.slots();
        let slots = &mut *slots;
        let number = *slots.open.entry(closes_at_ms).or_insert_with(|| {
            slots.next_number += 1;
            slots.next_number
        });
        let slot = slots.by_number.entry(number).or_insert_with(|| Slot {
            closes_at_ms,
            row_ids: Vec::new(),
            earliest_minute_ms: u64::MAX,
            cells: SlotCells::Open(OpenCells::default()),
        });
        // Unsorted: group commits that run at once may commit (and arrive here) out of id order.
        slot.row_ids.push(id);
        let SlotCells::Open(cells) = &mut slot.cells else {
            unreachable!("a taken slot leaves `open` when it is taken");
        };
        let mut added = 0;
        for cell in row.cells {
            slot.earliest_minute_ms = slot.earliest_minute_ms.min(cell.minute_ms);
            let minutes = cells.entry(cell.resource_id).or_default();
            match minutes.binary_search_by_key(&cell.minute_ms, |merged| merged.bucket_ms) {
                Ok(index) => minutes[index].add(cell.hits, &cell.visitors),
                Err(index) => {
                    added += 1;
                    minutes.insert(
                        index,
                        CountCell {
                            bucket_ms: cell.minute_ms,
                            hits: cell.hits,
                            visitors: cell.visitors,
                        },
                    );
                }
            }
        }
        self.entries.fetch_add(added, Ordering::Relaxed);
    }

    /// Takes the slots a fold of `scope` folds now: no row joins them any more. Slots taken
    /// before and not yet folded (their fold failed, or another held the fold lock) are
    /// returned again.
    pub fn take_due(&self, now_ms: u64, scope: FoldScope) -> Vec<TakenSlot> {
        let mut slots = self.slots();
        let slots = &mut *slots;
        let mut taken = Vec::new();
        for (number, slot) in &mut slots.by_number {
            let due =
                scope == FoldScope::All || slot.closes_at_ms + MINUTE_CLOSE_GRACE_MS <= now_ms;
            if let SlotCells::Open(cells) = &mut slot.cells {
                if !due {
                    continue;
                }
                if slots.open.get(&slot.closes_at_ms) == Some(number) {
                    slots.open.remove(&slot.closes_at_ms);
                }
                slot.cells = SlotCells::Taken(Arc::new(InboxRow::from_open(std::mem::take(cells))));
            }
            let SlotCells::Taken(cells) = &slot.cells else {
                unreachable!("every slot is open or taken");
            };
            taken.push(TakenSlot {
                number: *number,
                row_ids: slot.row_ids.clone(),
                cells: Arc::clone(cells),
            });
        }
        taken
    }

    /// Forgets a slot once its rows were folded (by this process or another).
    pub fn remove_slot(&self, number: u64) {
        self.remove_slot_locked(&mut self.slots(), number);
    }

    fn remove_slot_locked(&self, slots: &mut Slots, number: u64) {
        if let Some(slot) = slots.by_number.remove(&number) {
            slots.close(number, slot.closes_at_ms);
            let before = self.entries.fetch_sub(slot.len(), Ordering::Relaxed);
            // Added as a cell enters a slot, taken only after it left: never below.
            assert!(
                before >= slot.len(),
                "the overlay's cell count covers every slot it holds, so it never underflows"
            );
        }
    }

    /// Every row id held, in any slot.
    pub fn row_ids(&self) -> std::collections::HashSet<u64> {
        self.slots()
            .by_number
            .values()
            .flat_map(|slot| slot.row_ids.iter().copied())
            .collect()
    }

    /// After looking which of its rows (`looked_for`) are still in the inbox (`present`):
    /// forgets the slots none of whose rows is (another fold took them all), and stops rows
    /// joining a slot only some of whose rows are, so that what reads and its fold must load
    /// from row bodies stays the rows it had. A row that joined a slot after the look was not
    /// looked for, so its slot stays. One lock throughout, so no row joins a slot meanwhile.
    pub fn forget_folded(
        &self,
        looked_for: &std::collections::HashSet<u64>,
        present: &std::collections::HashSet<u64>,
    ) {
        let mut slots = self.slots();
        let mut gone = Vec::new();
        let mut partly = Vec::new();
        for (number, slot) in &slots.by_number {
            let folded = slot
                .row_ids
                .iter()
                .filter(|id| looked_for.contains(id) && !present.contains(id))
                .count();
            if folded == slot.row_ids.len() {
                gone.push(*number);
            } else if folded > 0 {
                partly.push((*number, slot.closes_at_ms));
            }
        }
        for number in gone {
            self.remove_slot_locked(&mut slots, number);
        }
        for (number, closes_at_ms) in partly {
            slots.close(number, closes_at_ms);
        }
    }

    /// The slots holding cells of `resource_id`, each with that resource's cells.
    pub fn held_for(&self, resource_id: &str) -> Vec<HeldCells> {
        self.slots()
            .by_number
            .values()
            .map(|slot| HeldCells {
                row_ids: slot.row_ids.clone(),
                cells: slot.cells_of(resource_id),
            })
            .filter(|held| !held.cells.is_empty())
            .collect()
    }

    /// A deleted resource's cells leave the overlay at once (the fold drops them too), so a
    /// resource made again under the same id does not show them.
    pub fn forget_resource(&self, resource_id: &str) {
        let mut slots = self.slots();
        let mut removed = 0;
        for slot in slots.by_number.values_mut() {
            let before = slot.len();
            match &mut slot.cells {
                SlotCells::Open(cells) => {
                    cells.remove(resource_id);
                }
                SlotCells::Taken(row) => {
                    if row.holds(resource_id) {
                        *row = Arc::new(row.without(resource_id));
                    }
                }
            }
            removed += before - slot.len();
        }
        let before = self.entries.fetch_sub(removed, Ordering::Relaxed);
        assert!(
            before >= removed,
            "the overlay's cell count covers every slot it holds, so it never underflows"
        );
    }

    /// The earliest minute an unfolded row holds: the next fold may change any bucket from it
    /// on, late ones included (`summaries.rs`).
    pub fn earliest_minute_ms(&self) -> Option<u64> {
        self.slots()
            .by_number
            .values()
            .map(|slot| slot.earliest_minute_ms)
            .min()
    }

    /// Every resource with an unfolded cell of a minute in `[start_ms, end_ms)`.
    pub fn resource_ids_between(&self, start_ms: u64, end_ms: u64) -> BTreeSet<String> {
        self.slots()
            .by_number
            .values()
            .flat_map(|slot| {
                slot.cells()
                    .filter(|(_, minute_ms)| (start_ms..end_ms).contains(minute_ms))
                    .map(|(resource_id, _)| resource_id.to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Distinct (resource, minute) cells held now, summed over the slots.
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }
}

impl HeldCells {
    /// The ids of its rows still in the inbox, when only some are (another process folded the
    /// rest): then the merged cells cannot be split, and the read adds those rows' own cells.
    pub(crate) fn partly_present(&self, present: &std::collections::HashSet<u64>) -> Vec<u64> {
        let found: Vec<u64> = self
            .row_ids
            .iter()
            .copied()
            .filter(|id| present.contains(id))
            .collect();
        if found.len() == self.row_ids.len() {
            Vec::new()
        } else {
            found
        }
    }
}

/// The ids a read must load the bodies of: those of slots only partly present in its snapshot.
pub(crate) fn partly_present_ids(
    held: &[Vec<HeldCells>],
    present: &std::collections::HashSet<u64>,
) -> Vec<u64> {
    let mut ids: Vec<u64> = held
        .iter()
        .flatten()
        .flat_map(|held| held.partly_present(present))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What a read adds from this process's unfolded slots: the slots holding each resource read
/// (listed before the read's snapshot), and what that snapshot found of their rows.
pub(crate) struct UnfoldedRead {
    pub held: Vec<Vec<HeldCells>>,
    pub present: std::collections::HashSet<u64>,
    pub loaded: HashMap<u64, InboxRow>,
}

impl UnfoldedRead {
    /// Adds each resource's unfolded cells to its stored `all` cells (one entry per resource id).
    pub(crate) fn add_to(
        &self,
        all: &mut [Vec<CountCell>],
        resource_ids: &[String],
        tier: Tier,
        window_ms: (u64, u64),
        now_ms: u64,
    ) -> Result<(), StoreError> {
        debug_assert_eq!(all.len(), resource_ids.len());
        for ((resource_id, held), cells) in resource_ids.iter().zip(&self.held).zip(all) {
            add_held(
                cells,
                resource_id,
                held,
                &self.present,
                &self.loaded,
                tier,
                window_ms,
                now_ms,
            )?;
        }
        Ok(())
    }
}

/// Adds what a read's snapshot still finds unfolded of `held` (one resource's slots) to `cells`:
/// a slot whose rows are all present adds its merged cells, one none of whose rows is (folded
/// into the cells read) adds nothing, and one only partly present adds the present rows' own
/// cells from `loaded`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_held(
    cells: &mut Vec<CountCell>,
    resource_id: &str,
    held: &[HeldCells],
    present: &std::collections::HashSet<u64>,
    loaded: &HashMap<u64, InboxRow>,
    tier: Tier,
    (start_ms, end_ms): (u64, u64),
    now_ms: u64,
) -> Result<(), StoreError> {
    for slot in held {
        let found = slot
            .row_ids
            .iter()
            .filter(|id| present.contains(id))
            .count();
        if found == slot.row_ids.len() {
            slot.cells
                .add_to(cells, resource_id, tier, start_ms, end_ms, now_ms);
            continue;
        }
        for id in slot.row_ids.iter().filter(|id| present.contains(id)) {
            let row = loaded.get(id).ok_or(StoreError::CorruptInbox(
                "a row present in the read's snapshot was not loaded",
            ))?;
            row.add_to(cells, resource_id, tier, start_ms, end_ms, now_ms);
        }
    }
    Ok(())
}

/// The writes of a fold: every cell of the claimed rows whose resource still exists and whose
/// minute is within its retention, into every tier still kept (as a direct merge would write
/// them at `now_ms`). `retention` holds every existing resource the rows name.
pub(crate) fn fold_rows<'a>(
    rows: impl IntoIterator<Item = &'a InboxRow>,
    retention: &HashMap<String, Option<u32>>,
    rollups: &Rollups,
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
            let minute = minute_writes(&cell.resource_id, cell.minute_ms, rollups, now_ms);
            writes.changed.extend(minute.changed);
            for (tier, bucket_ms) in minute.rows {
                *writes
                    .cells
                    .entry((cell.resource_id.clone(), tier, bucket_ms))
                    .or_default() += cell.hits;
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

/// A fold's writes as whole cells of every tier, visitors united per cell: the fold writes each
/// cell's sketch itself, under the lock that keeps other sketch writers out, instead of
/// appending pending sketches for a compaction to merge later. That is one row written per cell
/// rather than three (the pending row, its deletion and the compaction's update of each tier),
/// and no second pass.
pub(crate) fn whole_cells(writes: GroupWrites) -> Vec<TierCell> {
    let mut cells: BTreeMap<(String, Tier, u64), CountCell> = writes
        .cells
        .into_iter()
        .map(|((resource_id, tier, bucket_ms), hits)| {
            let cell = CountCell {
                bucket_ms,
                hits,
                visitors: Sketch::new(),
            };
            ((resource_id, tier, bucket_ms), cell)
        })
        .collect();
    for ((resource_id, minute_ms), visitors) in writes.sketches {
        for tier in Tier::ALL {
            let bucket_ms = minute_ms / tier.resolution_ms() * tier.resolution_ms();
            // A tier past its retention has no cell: its visitors go as its hits went.
            if let Some(cell) = cells.get_mut(&(resource_id.clone(), tier, bucket_ms)) {
                cell.visitors.merge(&visitors);
            }
        }
    }
    cells
        .into_iter()
        .map(|((resource_id, tier, _), cell)| TierCell {
            resource_id,
            tier,
            cell,
        })
        .collect()
}

/// This process's unfolded slots holding cells of each of `resource_ids`, in order (none
/// without the inbox).
pub(crate) fn held_for_each(
    overlay: Option<&Overlay>,
    resource_ids: &[String],
) -> Vec<Vec<HeldCells>> {
    resource_ids
        .iter()
        .map(|id| {
            overlay
                .map(|overlay| overlay.held_for(id))
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

    /// A group's writes of these (resource, minute ms, hits, visitors) cells, each once, in any
    /// order (a group's are sorted).
    fn writes(cells: &[(&str, u64, u64, &[&str])]) -> GroupWrites {
        let mut cells = cells.to_vec();
        cells.sort_by_key(|(resource_id, minute_ms, _, _)| (*resource_id, *minute_ms));
        let mut writes = GroupWrites::default();
        for (resource_id, minute_ms, hits, visitors) in &cells {
            let mut sketch = Sketch::new();
            for visitor in *visitors {
                sketch.insert(visitor.as_bytes());
            }
            writes.minute_cells.push(InboxCell {
                resource_id: (*resource_id).to_owned(),
                minute_ms: *minute_ms,
                hits: *hits,
                visitors: sketch,
            });
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
            group.minute_cells.push(InboxCell {
                resource_id: format!("r{index:06}"),
                minute_ms: 0,
                hits: 1,
                visitors: Sketch::new(),
            });
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
    fn a_fold_writes_whole_cells_of_every_kept_tier() {
        let hour_ms = Tier::Hour.resolution_ms();
        let now_ms = 400 * DAY_MS;
        let recent = now_ms - hour_ms;
        // A minute old enough that only its day is still kept.
        let old = now_ms - 200 * DAY_MS;
        let rows = InboxRow::from_writes(&mut writes(&[
            ("a", recent, 2, &["x"]),
            ("a", recent + MINUTE_MS, 3, &["y", "z"]),
            ("a", old, 1, &["w"]),
        ]));
        let retention = HashMap::from([("a".to_owned(), None)]);
        let cells = whole_cells(fold_rows(&rows, &retention, &Rollups::none(), now_ms));
        let found: Vec<(Tier, u64, u64, u64)> = cells
            .iter()
            .map(|cell| {
                let bucket = cell.cell.bucket_ms;
                (
                    cell.tier,
                    bucket,
                    cell.cell.hits,
                    cell.cell.visitors.count(),
                )
            })
            .collect();
        let hour = recent / hour_ms * hour_ms;
        let day = |ms: u64| ms / DAY_MS * DAY_MS;
        let mut expected = vec![
            (Tier::Minute, recent, 2, 1),
            (Tier::Minute, recent + MINUTE_MS, 3, 2),
            (Tier::Hour, hour, 5, 3),
            (Tier::Day, day(recent), 5, 3),
            (Tier::Day, day(old), 1, 1),
        ];
        expected.sort_by_key(|(tier, bucket, _, _)| (*tier, *bucket));
        let mut found_sorted = found;
        found_sorted.sort_by_key(|(tier, bucket, _, _)| (*tier, *bucket));
        assert_eq!(found_sorted, expected);
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
    fn the_overlay_merges_rows_that_close_together_and_counts_distinct_cells() {
        let overlay = Overlay::default();
        let first = InboxRow::from_writes(&mut writes(&[("a", 0, 1, &["x"]), ("b", 0, 1, &[])]));
        let second = InboxRow::from_writes(&mut writes(&[("a", 0, 2, &["y"])]));
        let later = InboxRow::from_writes(&mut writes(&[("a", MINUTE_MS, 5, &[])]));
        overlay.insert(1, first[0].clone());
        overlay.insert(2, second[0].clone());
        overlay.insert(3, later[0].clone());
        assert_eq!(overlay.entries(), 3, "(a, 0) is held once for two rows");
        let held = overlay.held_for("a");
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].row_ids, vec![1, 2]);
        assert_eq!(held[0].cells.cells()[0].hits, 3);
        assert_eq!(held[0].cells.cells()[0].visitors.count(), 2);

        assert!(
            overlay
                .take_due(MINUTE_MS + MINUTE_CLOSE_GRACE_MS - 1, FoldScope::Closed)
                .is_empty(),
            "a minute is folded only after its grace"
        );
        let taken = overlay.take_due(MINUTE_MS + MINUTE_CLOSE_GRACE_MS, FoldScope::Closed);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].row_ids, vec![1, 2]);
        assert_eq!(taken[0].cells.len(), 2);
        // A late row of the taken minute starts a new slot; the taken one stays readable.
        overlay.insert(4, second[0].clone());
        assert_eq!(overlay.held_for("a").len(), 3);
        assert_eq!(overlay.earliest_minute_ms(), Some(0));
        overlay.remove_slot(taken[0].number);
        assert_eq!(overlay.entries(), 2);
        assert_eq!(overlay.take_due(0, FoldScope::All).len(), 2);

        overlay.forget_resource("a");
        assert_eq!(overlay.entries(), 0);
        assert!(overlay.held_for("a").is_empty());
    }

    #[test]
    fn a_slot_folded_elsewhere_is_forgotten_and_one_partly_folded_takes_no_more_rows() {
        use std::collections::HashSet;
        let overlay = Overlay::default();
        let row = InboxRow::from_writes(&mut writes(&[("a", 0, 1, &[])])).remove(0);
        overlay.insert(1, row.clone());
        let looked_for = overlay.row_ids();
        overlay.insert(2, row.clone());
        overlay.forget_folded(&looked_for, &HashSet::new());
        assert_eq!(overlay.held_for("a").len(), 1, "row 2 was not looked for");
        overlay.insert(3, row.clone());
        assert_eq!(
            overlay.held_for("a").len(),
            2,
            "a slot partly folded elsewhere takes no more rows"
        );
        overlay.forget_folded(&overlay.row_ids(), &[2].into_iter().collect());
        assert_eq!(
            overlay.held_for("a").len(),
            1,
            "row 2 is still in the inbox"
        );
        overlay.forget_folded(&overlay.row_ids(), &HashSet::new());
        assert!(overlay.held_for("a").is_empty());
        assert_eq!(overlay.entries(), 0);
    }

    #[test]
    fn a_read_adds_a_slot_whole_or_the_rows_its_snapshot_still_holds() {
        let overlay = Overlay::default();
        let first = InboxRow::from_writes(&mut writes(&[("a", 0, 1, &[])])).remove(0);
        let second = InboxRow::from_writes(&mut writes(&[("a", 0, 2, &[])])).remove(0);
        overlay.insert(1, first.clone());
        overlay.insert(2, second.clone());
        let held = overlay.held_for("a");
        let read = |present: &[u64], loaded: &HashMap<u64, InboxRow>| {
            let present = present.iter().copied().collect();
            let mut cells = Vec::new();
            add_held(
                &mut cells,
                "a",
                &held,
                &present,
                loaded,
                Tier::Minute,
                (0, MINUTE_MS),
                0,
            )
            .map(|()| cells.iter().map(|cell| cell.hits).sum::<u64>())
        };
        assert_eq!(read(&[1, 2], &HashMap::new()).unwrap(), 3);
        assert_eq!(read(&[], &HashMap::new()).unwrap(), 0);
        let present = [2].into_iter().collect();
        assert_eq!(
            partly_present_ids(std::slice::from_ref(&held), &present),
            vec![2]
        );
        assert!(
            read(&[2], &HashMap::new()).is_err(),
            "a partly folded slot needs its rows"
        );
        assert_eq!(read(&[2], &HashMap::from([(2, second)])).unwrap(), 2);
    }
}
