//! Pre-aggregation: many hits in, one entry per (resource, minute) out. Edges use it for their
//! window map and the aggregator for direct `POST /hits`, so both produce identical deltas.

use std::hash::Hasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use siphasher::sip::SipHasher13;

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

/// One resource's counters in a window, sorted by minute. A window of a few seconds touches one
/// or two minutes of a resource; hits dated up to a day back could make it at most about 1,450.
#[derive(Debug, Clone)]
struct ResourceCells {
    resource_id: Box<str>,
    minutes: Vec<(u64, Cell)>,
}

/// Counts for one window, keyed by (resource id, minute), with a bound on distinct keys.
///
/// Resources sit in a hash table keyed with SipHash-1-3 under a key the owner chooses: recording a
/// hit into an existing counter is one short hash and one probe, with no allocation (a B-tree keyed
/// by string took several string comparisons per level, which dominated recording in wasm). The
/// hash key matters because resource ids come from the public: under a key an attacker does not
/// know, they cannot pick ids that collide and turn every probe into a scan. The hash needs no
/// randomness, which would import `wasi:random` into the edge component; order is restored by
/// sorting once per window, in [`WindowCounts::drain`].
#[derive(Debug, Clone)]
pub struct WindowCounts {
    resources: HashTable<ResourceCells>,
    hash_key: [u8; 16],
    /// Distinct (resource, minute) counters.
    len: usize,
    entries_max: usize,
    hits: u64,
}

fn resource_hash(hash_key: &[u8; 16], resource_id: &str) -> u64 {
    let mut hasher = SipHasher13::new_with_key(hash_key);
    hasher.write(resource_id.as_bytes());
    hasher.finish()
}

impl WindowCounts {
    /// A map with a fixed hash key, for callers whose resource ids come from authenticated
    /// clients; use [`WindowCounts::with_hash_key`] for public input. `entries_max` is clamped to
    /// what one batch can carry.
    pub fn new(entries_max: usize) -> Self {
        Self::with_hash_key(entries_max, [0; 16])
    }

    /// A map whose table is keyed with `hash_key`, a secret of the owner's.
    pub fn with_hash_key(entries_max: usize, hash_key: [u8; 16]) -> Self {
        Self {
            resources: HashTable::new(),
            hash_key,
            len: 0,
            entries_max: entries_max.clamp(1, BATCH_ENTRIES_MAX),
            hits: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hits recorded since the last drain.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn entries_max(&self) -> usize {
        self.entries_max
    }

    fn resource(&self, resource_id: &str) -> Option<&ResourceCells> {
        self.resources
            .find(resource_hash(&self.hash_key, resource_id), |cells| {
                &*cells.resource_id == resource_id
            })
    }

    fn cell(&mut self, resource_id: &str, minute: u64) -> Result<&mut Cell, WindowFull> {
        let full = self.len >= self.entries_max;
        let refused = WindowFull {
            entries_max: self.entries_max,
        };
        let hash_key = self.hash_key;
        let entry = self.resources.entry(
            resource_hash(&hash_key, resource_id),
            |cells| &*cells.resource_id == resource_id,
            |cells| resource_hash(&hash_key, &cells.resource_id),
        );
        let cells = match entry {
            Entry::Occupied(occupied) => occupied.into_mut(),
            Entry::Vacant(_) if full => return Err(refused),
            Entry::Vacant(vacant) => vacant
                .insert(ResourceCells {
                    resource_id: resource_id.into(),
                    minutes: Vec::new(),
                })
                .into_mut(),
        };
        let position = match cells
            .minutes
            .binary_search_by_key(&minute, |(cell_minute, _)| *cell_minute)
        {
            Ok(position) => position,
            // A resource is only ever inserted together with its first minute, so refusing here
            // leaves no empty resource behind.
            Err(_) if full => return Err(refused),
            Err(position) => {
                cells.minutes.insert(position, (minute, Cell::default()));
                self.len += 1;
                position
            }
        };
        Ok(&mut cells.minutes[position].1)
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
        self.resource(resource_id).is_some_and(|cells| {
            cells
                .minutes
                .binary_search_by_key(&minute, |(cell_minute, _)| *cell_minute)
                .is_ok()
        })
    }

    /// Hits recorded for one counter, for read-your-writes answers.
    pub fn hits_for(&self, resource_id: &str) -> u64 {
        self.resource(resource_id)
            .map(|cells| cells.minutes.iter().map(|(_, cell)| cell.hits).sum())
            .unwrap_or(0)
    }

    /// Empties the map into entries sorted by (resource id, minute), ready for a
    /// [`crate::DeltaBatch`].
    pub fn drain(&mut self) -> Vec<DeltaEntry> {
        let mut resources: Vec<ResourceCells> = self.resources.drain().collect();
        resources.sort_unstable_by(|a, b| a.resource_id.cmp(&b.resource_id));
        let mut entries = Vec::with_capacity(self.len);
        for cells in resources {
            let resource_id = String::from(cells.resource_id);
            for (minute, cell) in cells.minutes {
                entries.push(DeltaEntry {
                    resource_id: resource_id.clone(),
                    minute,
                    hits: cell.hits,
                    visitors: cell.visitors,
                });
            }
        }
        debug_assert_eq!(entries.len(), self.len);
        self.hits = 0;
        self.len = 0;
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
        // A new minute of a known resource is a new counter too; refusing it changes nothing.
        assert_eq!(
            window.record("a", 2, 1, None),
            Err(WindowFull { entries_max: 2 })
        );
        assert!(!window.contains("a", 2));
        assert_eq!(window.len(), 2);
        assert_eq!(window.drain().len(), 2);
    }

    #[test]
    fn the_counter_bound_is_clamped_to_what_one_batch_carries() {
        assert_eq!(WindowCounts::new(5).entries_max(), 5);
        assert_eq!(WindowCounts::new(0).entries_max(), 1);
        assert_eq!(
            WindowCounts::new(usize::MAX).entries_max(),
            BATCH_ENTRIES_MAX
        );
    }

    #[test]
    fn the_hash_key_changes_nothing_but_the_table_layout() {
        let mut keyed = WindowCounts::with_hash_key(5_000, *b"0123456789abcdef");
        let mut fixed = WindowCounts::new(5_000);
        for index in 0u64..20_000 {
            let resource_id = format!("page-{}", index % 1_500);
            let minute = 100 + (index / 1_500) % 3;
            let visitor = Some(visitor_hash(&index.to_le_bytes()));
            keyed.record(&resource_id, minute, 1, visitor).unwrap();
            fixed.record(&resource_id, minute, 1, visitor).unwrap();
        }
        assert_eq!(keyed.len(), 4_500);
        assert_eq!(keyed.hits_for("page-7"), fixed.hits_for("page-7"));
        assert!(keyed.contains("page-1499", 102));
        assert!(!keyed.contains("page-1500", 100));
        let drained = keyed.drain();
        assert_eq!(drained, fixed.drain());
        assert!(
            drained.windows(2).all(|pair| {
                (&pair[0].resource_id, pair[0].minute) < (&pair[1].resource_id, pair[1].minute)
            }),
            "entries come out sorted by (resource, minute), as the wire format requires"
        );
        assert!(keyed.is_empty());
    }
}
