//! From closed windows to numbered, signed-ready batches, exactly once.
//!
//! The rule that keeps counts exact: a batch, once numbered, is only ever resent with the same
//! number and the same bytes, until the aggregator acknowledges it (applied or duplicate). A batch
//! whose response was lost may have been applied, so its entries must never be merged into
//! anything else. New windows merge into one pending map instead, which becomes the next batches
//! only when the sealed ones are acknowledged. During an outage memory therefore holds the sealed
//! batches plus one map bounded by distinct counters, whatever the outage's length.

use std::collections::{BTreeMap, VecDeque};

use hitcount_wire::varint::VARINT_BYTES_MAX;
use hitcount_wire::{
    BATCH_BYTES_MAX, BATCH_ENTRIES_MAX, DeltaBatch, DeltaEntry, DeltaHeader, HEADER_BYTES_MAX,
    WINDOW_SPAN_MS_MAX, WindowCounts,
};

use crate::counter::ClosedWindow;

/// The pending map has no room for a window's new counters. The window is handed back untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entries_max} distinct counters are already waiting for the aggregator")]
pub struct DeliveryFull {
    pub entries_max: usize,
    pub window: ClosedWindow,
}

/// A numbered batch, encoded once and resent byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBatch {
    pub sequence: u64,
    pub hits: u64,
    pub bytes: Vec<u8>,
    /// Hits per resource, for read-your-writes answers while the batch is unacknowledged.
    pub resource_hits: BTreeMap<String, u64>,
    /// Every window up to this generation is in this batch or in one sealed before it.
    pub generation: u64,
}

#[derive(Debug)]
pub struct Delivery {
    edge_id: String,
    boot_epoch: u64,
    next_sequence: u64,
    pending: WindowCounts,
    pending_span: Option<(u64, u64)>,
    /// The last generation merged into `pending`.
    pending_generation: u64,
    sealed: VecDeque<SealedBatch>,
}

impl Delivery {
    /// `boot_epoch` must differ on every start of the edge (its start time in ms does), so that
    /// sequence numbers restarting at 0 are new keys. `map_key` keys the pending map's hash table
    /// (a secret: [`crate::window_map_key`]).
    pub fn new(
        edge_id: &str,
        boot_epoch: u64,
        pending_entries_max: usize,
        map_key: [u8; 16],
    ) -> Self {
        Self {
            edge_id: edge_id.to_owned(),
            boot_epoch,
            next_sequence: 0,
            pending: WindowCounts::with_hash_key(pending_entries_max, map_key),
            pending_span: None,
            pending_generation: 0,
            sealed: VecDeque::new(),
        }
    }

    /// Merges a closed window into the pending map, all of it or (when full) none of it.
    pub fn add_window(&mut self, window: ClosedWindow) -> Result<(), DeliveryFull> {
        let new_counters = window
            .entries
            .iter()
            .filter(|entry| !self.pending.contains(&entry.resource_id, entry.minute))
            .count();
        if self.pending.len() + new_counters > self.pending.entries_max() {
            return Err(DeliveryFull {
                entries_max: self.pending.entries_max(),
                window,
            });
        }
        for entry in &window.entries {
            let merged = self.pending.merge_entry(entry);
            debug_assert!(merged.is_ok(), "room was checked above");
        }
        debug_assert!(
            window.generation > self.pending_generation,
            "windows close in order"
        );
        self.pending_generation = window.generation;
        self.pending_span = Some(match self.pending_span {
            None => (window.start_ms, window.end_ms),
            Some((start, end)) => (start.min(window.start_ms), end.max(window.end_ms)),
        });
        Ok(())
    }

    /// Hits accepted but not yet acknowledged (pending and sealed).
    pub fn unacknowledged_hits(&self) -> u64 {
        self.pending.hits() + self.sealed.iter().map(|batch| batch.hits).sum::<u64>()
    }

    /// Hits for one resource not yet acknowledged (pending and sealed).
    pub fn unacknowledged_hits_for(&self, resource_id: &str) -> u64 {
        self.pending.hits_for(resource_id)
            + self
                .sealed
                .iter()
                .filter_map(|batch| batch.resource_hits.get(resource_id))
                .sum::<u64>()
    }

    /// Every sealed, unacknowledged batch, oldest first.
    pub fn sealed_batches(&self) -> impl Iterator<Item = &SealedBatch> {
        self.sealed.iter()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The batch to send now: the oldest unacknowledged one, sealing the pending map into new
    /// batches first if nothing is in flight.
    pub fn next_batch(&mut self) -> Option<&SealedBatch> {
        if self.sealed.is_empty() && !self.pending.is_empty() {
            self.seal();
        }
        self.sealed.front()
    }

    /// The aggregator answered `applied` or `duplicate` for this sequence.
    pub fn acknowledge(&mut self, sequence: u64) {
        if self
            .sealed
            .front()
            .is_some_and(|batch| batch.sequence == sequence)
        {
            self.sealed.pop_front();
        }
    }

    fn seal(&mut self) {
        let (start_ms, end_ms) = self.pending_span.take().unwrap_or((0, 0));
        // After a week-long outage the window is reported as its last week; the entries keep
        // their own minutes.
        let start_ms = start_ms.max(end_ms.saturating_sub(WINDOW_SPAN_MS_MAX));
        let batches = seal_entries(
            &BatchIdentity {
                edge_id: &self.edge_id,
                boot_epoch: self.boot_epoch,
                first_sequence: self.next_sequence,
                window_start_ms: start_ms,
                window_end_ms: end_ms,
            },
            self.pending.drain(),
            self.pending_generation,
        );
        self.next_sequence += batches.len() as u64;
        self.sealed.extend(batches);
    }
}

/// Who a sealed batch is from and which window it covers; batches of one seal are numbered
/// from `first_sequence` on.
#[derive(Debug, Clone, Copy)]
pub struct BatchIdentity<'a> {
    pub edge_id: &'a str,
    pub boot_epoch: u64,
    pub first_sequence: u64,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
}

/// Encodes entries (sorted and unique by resource and minute) into as many batches as the
/// wire format's byte bound needs, numbered consecutively. The same entries always give the same
/// bytes: what makes a resend after a crash a duplicate, not a new batch.
pub fn seal_entries(
    identity: &BatchIdentity<'_>,
    entries: Vec<DeltaEntry>,
    generation: u64,
) -> Vec<SealedBatch> {
    let mut sealed = Vec::new();
    let mut chunk: Vec<DeltaEntry> = Vec::new();
    let mut chunk_bytes = HEADER_BYTES_MAX;
    for entry in entries {
        let entry_bytes = entry_bytes_max(&entry);
        if !chunk.is_empty()
            && (chunk_bytes + entry_bytes > BATCH_BYTES_MAX || chunk.len() == BATCH_ENTRIES_MAX)
        {
            let sequence = identity.first_sequence + sealed.len() as u64;
            sealed.push(encode(
                identity,
                sequence,
                std::mem::take(&mut chunk),
                generation,
            ));
            chunk_bytes = HEADER_BYTES_MAX;
        }
        chunk_bytes += entry_bytes;
        chunk.push(entry);
    }
    if !chunk.is_empty() {
        let sequence = identity.first_sequence + sealed.len() as u64;
        sealed.push(encode(identity, sequence, chunk, generation));
    }
    sealed
}

/// The most bytes `entry` can take in a batch: its id with a one-byte length (ids are at most 64
/// bytes), the minute and the hits as varints of any length, and its sketch. It overcounts the
/// varints (a few bytes an entry), so a cut batch is a little under the byte bound, never over.
fn entry_bytes_max(entry: &DeltaEntry) -> usize {
    1 + entry.resource_id.len() + 2 * VARINT_BYTES_MAX + entry.visitors.to_bytes().len()
}

fn encode(
    identity: &BatchIdentity<'_>,
    sequence: u64,
    entries: Vec<DeltaEntry>,
    generation: u64,
) -> SealedBatch {
    let batch = DeltaBatch {
        header: DeltaHeader {
            edge_id: identity.edge_id.to_owned(),
            boot_epoch: identity.boot_epoch,
            sequence,
            window_start_ms: identity.window_start_ms,
            window_end_ms: identity.window_end_ms,
        },
        entries,
    };
    let hits = batch.hits();
    let mut resource_hits: BTreeMap<String, u64> = BTreeMap::new();
    for entry in &batch.entries {
        *resource_hits.entry(entry.resource_id.clone()).or_default() += entry.hits;
    }
    match batch.encode() {
        Ok(bytes) => SealedBatch {
            sequence,
            hits,
            bytes,
            resource_hits,
            generation,
        },
        // Entries come from a sorted map of validated ids and the chunk respects the byte
        // bound, so this is a programming error; losing the counts silently would be worse.
        Err(error) => panic!("a sealed batch failed to encode: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hitcount_wire::Sketch;

    fn window(start_ms: u64, entries: &[(&str, u64, u64)]) -> ClosedWindow {
        ClosedWindow {
            // Windows of these tests are a second apart.
            generation: start_ms / 1_000 + 1,
            start_ms,
            end_ms: start_ms + 1_000,
            hits: entries.iter().map(|entry| entry.2).sum(),
            entries: entries
                .iter()
                .map(|(resource_id, minute, hits)| DeltaEntry {
                    resource_id: (*resource_id).to_owned(),
                    minute: *minute,
                    hits: *hits,
                    visitors: Sketch::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_lost_acknowledgement_resends_the_same_bytes_and_merges_nothing_into_them() {
        let mut delivery = Delivery::new("edge-1", 7, 100, [0; 16]);
        delivery.add_window(window(60_000, &[("a", 1, 2)])).unwrap();
        let first = delivery.next_batch().unwrap().clone();
        assert_eq!(first.sequence, 0);
        assert_eq!(first.resource_hits, BTreeMap::from([("a".to_owned(), 2)]));
        // The aggregator is down: more windows arrive while batch 0 is unacknowledged, and it is
        // resent between them; they wait in the pending map, merged, not in batches of their own.
        delivery
            .add_window(window(61_000, &[("a", 1, 3), ("b", 1, 1)]))
            .unwrap();
        assert_eq!(delivery.next_batch().unwrap(), &first, "resent unchanged");
        delivery.add_window(window(62_000, &[("a", 1, 5)])).unwrap();
        assert_eq!(delivery.next_batch().unwrap(), &first, "resent unchanged");
        assert_eq!(delivery.sealed_batches().collect::<Vec<_>>(), [&first]);
        assert_eq!(delivery.pending_len(), 2, "a and b, merged");
        assert_eq!(delivery.unacknowledged_hits(), 11);
        assert_eq!(delivery.unacknowledged_hits_for("a"), 10);
        assert_eq!(delivery.unacknowledged_hits_for("b"), 1);
        delivery.acknowledge(0);
        let second = delivery.next_batch().unwrap().clone();
        assert_eq!(second.sequence, 1);
        assert_eq!(
            second.resource_hits,
            BTreeMap::from([("a".to_owned(), 8), ("b".to_owned(), 1)])
        );
        assert_eq!(delivery.pending_len(), 0);
        let decoded = DeltaBatch::decode(&second.bytes).unwrap();
        assert_eq!(decoded.hits(), 9);
        assert_eq!(
            decoded.entries.len(),
            2,
            "pending windows merged per counter"
        );
        assert_eq!(
            (decoded.header.window_start_ms, decoded.header.window_end_ms),
            (61_000, 63_000)
        );
        delivery.acknowledge(0); // a stale acknowledgement changes nothing
        assert_eq!(delivery.next_batch().unwrap().sequence, 1);
        delivery.acknowledge(1);
        assert!(delivery.next_batch().is_none());
        assert_eq!(delivery.unacknowledged_hits(), 0);
    }

    #[test]
    fn a_full_pending_map_hands_the_window_back_whole() {
        let mut delivery = Delivery::new("edge-1", 7, 2, [0; 16]);
        delivery
            .add_window(window(0, &[("a", 1, 1), ("b", 1, 1)]))
            .unwrap();
        let refused = delivery
            .add_window(window(1_000, &[("a", 1, 1), ("c", 1, 1)]))
            .unwrap_err();
        assert_eq!(refused.window.hits, 2);
        assert_eq!(
            delivery.unacknowledged_hits(),
            2,
            "nothing of the refused window was merged"
        );
        delivery.add_window(window(2_000, &[("a", 1, 4)])).unwrap();
        assert_eq!(delivery.unacknowledged_hits(), 6);
    }

    #[test]
    fn large_pending_maps_split_into_batches_under_the_byte_limit() {
        let mut delivery = Delivery::new("edge-1", 7, hitcount_wire::BATCH_ENTRIES_MAX, [0; 16]);
        let mut entries = Vec::new();
        for resource in 0..1_000u64 {
            let mut visitors = Sketch::new();
            for visitor in 0..6_000u64 {
                visitors.insert(&(resource * 10_000 + visitor).to_le_bytes());
            }
            entries.push(DeltaEntry {
                resource_id: format!("page-{resource:04}"),
                minute: 1,
                hits: 6_000,
                visitors,
            });
        }
        delivery
            .add_window(ClosedWindow {
                generation: 1,
                start_ms: 0,
                end_ms: 1_000,
                hits: 6_000_000,
                entries,
            })
            .unwrap();
        let mut total = 0;
        let mut sequences = Vec::new();
        let mut batches = Vec::new();
        while let Some(batch) = delivery.next_batch().cloned() {
            assert!(batch.bytes.len() <= BATCH_BYTES_MAX);
            let decoded = DeltaBatch::decode(&batch.bytes).unwrap();
            total += decoded.hits();
            sequences.push(batch.sequence);
            batches.push((batch.bytes.len(), decoded));
            delivery.acknowledge(batch.sequence);
        }
        assert_eq!(total, 6_000_000);
        assert_eq!(
            sequences,
            [0, 1],
            "12 MB of dense sketches needs two batches, numbered in order"
        );
        // The first batch is packed up to the bound, less what the size estimate overcounts:
        // the header's bound over this header, and at most two varints' slack an entry.
        let (first_bytes, first) = &batches[0];
        let header_bytes = DeltaBatch {
            header: first.header.clone(),
            entries: Vec::new(),
        }
        .encode()
        .unwrap()
        .len();
        let entries = first.entries.len();
        let entry_bytes = (first_bytes - header_bytes) / entries;
        let packed_least =
            (BATCH_BYTES_MAX - HEADER_BYTES_MAX) / (entry_bytes + 2 * VARINT_BYTES_MAX);
        let packed_most = (BATCH_BYTES_MAX - header_bytes) / entry_bytes;
        assert!(
            (packed_least..=packed_most).contains(&entries),
            "{entries} entries of {entry_bytes} bytes in the first batch, not {packed_least}..={packed_most}"
        );
    }

    /// Whatever the entries' sizes, no sealed batch passes the byte bound: the estimate must
    /// never undercount. Ids of every fourth length with one dense sketch each put the cut
    /// points all over an entry's size, so an estimate a few bytes short overflows some batch.
    #[test]
    fn no_batch_passes_the_byte_bound_whatever_the_id_length() {
        let mut visitors = Sketch::new();
        for visitor in 0..20_000u64 {
            visitors.insert(&visitor.to_le_bytes());
        }
        let identity = BatchIdentity {
            edge_id: "edge-1",
            boot_epoch: 7,
            first_sequence: 0,
            window_start_ms: 60_000,
            window_end_ms: 61_000,
        };
        let entry_bytes = visitors.to_bytes().len();
        for id_length in (4..=hitcount_wire::RESOURCE_ID_BYTES_MAX).step_by(4) {
            let count = BATCH_BYTES_MAX / entry_bytes + 2;
            let entries: Vec<DeltaEntry> = (0..count)
                .map(|index| DeltaEntry {
                    resource_id: format!("{index:0id_length$}"),
                    minute: 1,
                    hits: 1,
                    visitors: visitors.clone(),
                })
                .collect();
            // `encode` panics on a batch over the bound; the sizes are checked here too.
            let sealed = seal_entries(&identity, entries, 1);
            assert_eq!(sealed.len(), 2, "ids of {id_length} bytes");
            assert!(
                sealed
                    .iter()
                    .all(|batch| batch.bytes.len() <= BATCH_BYTES_MAX)
            );
        }
    }

    #[test]
    fn sealing_cuts_at_the_entry_bound_and_numbers_from_the_first_sequence() {
        let entries: Vec<DeltaEntry> = (0..=2 * BATCH_ENTRIES_MAX)
            .map(|index| DeltaEntry {
                resource_id: format!("r{index:05}"),
                minute: 1,
                hits: 1,
                visitors: Sketch::new(),
            })
            .collect();
        let identity = BatchIdentity {
            edge_id: "edge-1",
            boot_epoch: 7,
            first_sequence: 5,
            window_start_ms: 60_000,
            window_end_ms: 61_000,
        };
        let sealed = seal_entries(&identity, entries, 3);
        let shape: Vec<(u64, usize, u64)> = sealed
            .iter()
            .map(|batch| {
                let decoded = DeltaBatch::decode(&batch.bytes).unwrap();
                (batch.sequence, decoded.entries.len(), batch.hits)
            })
            .collect();
        assert_eq!(
            shape,
            [
                (5, BATCH_ENTRIES_MAX, BATCH_ENTRIES_MAX as u64),
                (6, BATCH_ENTRIES_MAX, BATCH_ENTRIES_MAX as u64),
                (7, 1, 1)
            ]
        );
        assert_eq!(
            sealed[2].resource_hits,
            BTreeMap::from([(format!("r{:05}", 2 * BATCH_ENTRIES_MAX), 1)])
        );
        assert!(sealed.iter().all(|batch| batch.generation == 3));
    }
}
