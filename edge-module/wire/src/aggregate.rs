//! Pre-aggregation: many hits in, one entry per (resource, minute) out. Edges use it for their
//! window map and the aggregator for direct `POST /hits`, so both produce identical deltas.

use std::collections::BTreeMap;

use crate::batch::{BATCH_ENTRIES_MAX, DeltaEntry, ENTRY_HITS_MAX};
use crate::sketch::Sketch;

/// The window map is full: the caller must flush it before recording more. Nothing was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the window already holds its maximum of {entries_max} distinct counters")]
pub struct WindowFull {
    pub entries_max: usize,
}

#[derive(Debug, Clone, Default)]
struct Cell {
    hits: u64,
    visitors: Sketch,
}

/// Counts for one window, keyed by (resource id, minute), with a bound on distinct keys.
/// A BTreeMap keeps entries in the order the wire format requires and, unlike a default-hashed
/// map, needs no randomness (which would import `wasi:random` into the edge component).
#[derive(Debug, Clone)]
pub struct WindowCounts {
    /// Nested by resource so that recording into an existing counter looks up by `&str` and
    /// allocates nothing.
    cells: BTreeMap<String, BTreeMap<u64, Cell>>,
    /// Distinct (resource, minute) counters in `cells`.
    len: usize,
    entries_max: usize,
    hits: u64,
}

impl WindowCounts {
    /// `entries_max` is clamped to what one batch can carry.
    pub fn new(entries_max: usize) -> Self {
        Self {
            cells: BTreeMap::new(),
            len: 0,
            entries_max: entries_max.clamp(1, BATCH_ENTRIES_MAX),
            hits: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Hits recorded since the last drain.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn entries_max(&self) -> usize {
        self.entries_max
    }

    fn cell(&mut self, resource_id: &str, minute: u64) -> Result<&mut Cell, WindowFull> {
        if !self.contains(resource_id, minute) {
            if self.len >= self.entries_max {
                return Err(WindowFull {
                    entries_max: self.entries_max,
                });
            }
            self.len += 1;
        }
        if !self.cells.contains_key(resource_id) {
            self.cells.insert(resource_id.to_owned(), BTreeMap::new());
        }
        let Some(minutes) = self.cells.get_mut(resource_id) else {
            unreachable!("the resource's map was inserted above")
        };
        Ok(minutes.entry(minute).or_default())
    }

    /// Records `hits` hits (and optionally one visitor) for a resource in a minute. The resource
    /// id must already be valid.
    pub fn record(
        &mut self,
        resource_id: &str,
        minute: u64,
        hits: u64,
        visitor_hash: Option<u64>,
    ) -> Result<(), WindowFull> {
        let cell = self.cell(resource_id, minute)?;
        cell.hits = cell.hits.saturating_add(hits).min(ENTRY_HITS_MAX);
        if let Some(hash) = visitor_hash {
            cell.visitors.insert_hash(hash);
        }
        self.hits = self.hits.saturating_add(hits);
        Ok(())
    }

    /// Adds a whole entry, e.g. a batch that could not be delivered, merged into the next one.
    pub fn merge_entry(&mut self, entry: &DeltaEntry) -> Result<(), WindowFull> {
        let cell = self.cell(&entry.resource_id, entry.minute)?;
        cell.hits = cell.hits.saturating_add(entry.hits).min(ENTRY_HITS_MAX);
        cell.visitors.merge(&entry.visitors);
        self.hits = self.hits.saturating_add(entry.hits);
        Ok(())
    }

    /// Whether a counter for (resource, minute) exists, so callers can check room before merging.
    pub fn contains(&self, resource_id: &str, minute: u64) -> bool {
        self.cells
            .get(resource_id)
            .is_some_and(|minutes| minutes.contains_key(&minute))
    }

    /// Hits recorded for one counter, for read-your-writes answers.
    pub fn hits_for(&self, resource_id: &str) -> u64 {
        self.cells
            .get(resource_id)
            .map(|minutes| minutes.values().map(|cell| cell.hits).sum())
            .unwrap_or(0)
    }

    /// Empties the map into sorted entries, ready for a [`crate::DeltaBatch`].
    pub fn drain(&mut self) -> Vec<DeltaEntry> {
        self.hits = 0;
        self.len = 0;
        let mut entries = Vec::new();
        for (resource_id, minutes) in std::mem::take(&mut self.cells) {
            for (minute, cell) in minutes {
                entries.push(DeltaEntry {
                    resource_id: resource_id.clone(),
                    minute,
                    hits: cell.hits,
                    visitors: cell.visitors,
                });
            }
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visitor_hash;

    #[test]
    fn aggregates_and_drains_sorted() {
        let mut window = WindowCounts::new(10);
        window.record("b", 5, 1, Some(visitor_hash(b"x"))).unwrap();
        window.record("a", 7, 2, None).unwrap();
        window.record("a", 6, 1, Some(visitor_hash(b"y"))).unwrap();
        window.record("a", 6, 1, Some(visitor_hash(b"y"))).unwrap();
        assert_eq!(window.hits(), 5);
        assert_eq!(window.hits_for("a"), 4);
        let entries = window.drain();
        let keys: Vec<_> = entries
            .iter()
            .map(|entry| (entry.resource_id.as_str(), entry.minute, entry.hits))
            .collect();
        assert_eq!(keys, vec![("a", 6, 2), ("a", 7, 2), ("b", 5, 1)]);
        assert_eq!(entries[0].visitors.count(), 1);
        assert!(window.is_empty());
        assert_eq!(window.hits(), 0);
    }

    #[test]
    fn full_window_refuses_new_counters_but_not_existing_ones() {
        let mut window = WindowCounts::new(2);
        window.record("a", 1, 1, None).unwrap();
        window.record("b", 1, 1, None).unwrap();
        assert_eq!(
            window.record("c", 1, 1, None),
            Err(WindowFull { entries_max: 2 })
        );
        window.record("a", 1, 1, None).unwrap();
        assert_eq!(window.hits(), 3);
    }
}
