//! This process's inbox rows, kept in memory until a read can no longer need them, each with the
//! fold round of this process's stream that takes it (see `fold.rs`).
//!
//! A read adds a row's cell to the stored cell unless the stored document already says the
//! row's round wrote it. Nothing here is a snapshot, so a row leaves only
//! [`OVERLAY_DONE_KEEP_MS`] after its round finished: a read that loaded a document before the
//! round wrote it still finds the row when it looks at the overlay afterwards, as long as the
//! read itself took less than that (reads check, see `counts.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::inbox::InboxRow;

/// How long a row stays after its fold round finished: far longer than any read's documents
/// take to load (reads past half of it start again).
pub const OVERLAY_DONE_KEEP_MS: u64 = 60_000;

#[derive(Debug)]
struct Held {
    row: Arc<InboxRow>,
    /// The round of this process's stream that folds the row, once one took it.
    round: Option<u64>,
    /// When that round finished.
    done_at: Option<Instant>,
}

impl Held {
    fn seen(&self, read_began: Instant) -> HeldRow {
        HeldRow {
            row: Arc::clone(&self.row),
            round: self.round,
            settled: self.done_at.is_some_and(|done| done <= read_began),
        }
    }
}

/// A row as a read sees it.
#[derive(Debug, Clone)]
pub(super) struct HeldRow {
    pub row: Arc<InboxRow>,
    pub round: Option<u64>,
    /// Its round finished before the read began: every document the read loads has it (or
    /// was deleted since, by retention or a resource's deletion), so the read skips it.
    pub settled: bool,
}

#[derive(Debug, Default)]
pub(super) struct Overlay {
    rows: Mutex<BTreeMap<u64, Held>>,
    /// Cells of rows no round has finished: what waits to be folded (the backpressure bound
    /// `UNFOLDED_ENTRIES_MAX` applies to it).
    unfolded: AtomicUsize,
}

impl Overlay {
    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Held>> {
        self.rows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Called once the row's inbox document exists, before its batch is answered.
    pub fn insert(&self, id: u64, row: InboxRow) {
        self.unfolded.fetch_add(row.len(), Ordering::Relaxed);
        let held = Held {
            row: Arc::new(row),
            round: None,
            done_at: None,
        };
        let previous = self.rows().insert(id, held);
        assert!(previous.is_none(), "row ids of one writer are never reused");
    }

    /// A round took these rows: from now on a read asks each document whether it has them.
    pub fn assign(&self, ids: &[u64], round: u64) {
        let mut rows = self.rows();
        for id in ids {
            if let Some(held) = rows.get_mut(id) {
                held.round = Some(round);
            }
        }
    }

    /// Every round up to `round` finished: their rows are in every document they touch. Rows
    /// finished long enough ago leave.
    pub fn finish_through(&self, round: u64) {
        let now = Instant::now();
        let mut rows = self.rows();
        for held in rows.values_mut() {
            if held.round.is_some_and(|taken| taken <= round) && held.done_at.is_none() {
                held.done_at = Some(now);
                self.unfolded.fetch_sub(held.row.len(), Ordering::Relaxed);
            }
        }
        let keep = Duration::from_millis(OVERLAY_DONE_KEEP_MS);
        rows.retain(|_, held| held.done_at.is_none_or(|done| now - done < keep));
    }

    /// The rows holding cells of `resource_id`, as a read that began at `read_began` sees them.
    pub fn rows_for(&self, resource_id: &str, read_began: Instant) -> Vec<HeldRow> {
        self.rows()
            .values()
            .filter(|held| held.row.holds(resource_id))
            .map(|held| held.seen(read_began))
            .collect()
    }

    /// A deleted resource's cells leave at once (folds drop them too).
    pub fn forget_resource(&self, resource_id: &str) {
        let mut rows = self.rows();
        for held in rows.values_mut() {
            if held.row.holds(resource_id) {
                let kept = held.row.without(resource_id);
                if held.done_at.is_none() {
                    self.unfolded
                        .fetch_sub(held.row.len() - kept.len(), Ordering::Relaxed);
                }
                held.row = Arc::new(kept);
            }
        }
    }

    /// Forgets everything: another process took this stream over, so which of its rows are
    /// folded is no longer known here (reads see them once folded).
    pub fn clear(&self) {
        self.rows().clear();
        self.unfolded.store(0, Ordering::Relaxed);
    }

    pub fn unfolded_entries(&self) -> usize {
        self.unfolded.load(Ordering::Relaxed)
    }
}
