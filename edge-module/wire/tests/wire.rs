//! Format tests for the delta batch: round trips, pinned bytes and every kind of malformed input.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use hitcount_wire::{
    BATCH_ENTRIES_MAX, DeltaBatch, DeltaEntry, DeltaHeader, FORMAT_VERSION, KEY_NUMBER_MAX,
    MINUTE_MS, Sketch, WINDOW_SPAN_MS_MAX, WindowCounts, WireError, visitor_hash,
};
use proptest::prelude::*;

const WINDOW_START_MS: u64 = 1_700_000_040_000;

fn header() -> DeltaHeader {
    DeltaHeader {
        edge_id: "edge-1".to_owned(),
        boot_epoch: 1_700_000_000_000,
        sequence: 7,
        window_start_ms: WINDOW_START_MS,
        window_end_ms: WINDOW_START_MS + 1_000,
    }
}

fn sketch(visitors: &[&str]) -> Sketch {
    let mut sketch = Sketch::new();
    for visitor in visitors {
        sketch.insert(visitor.as_bytes());
    }
    sketch
}

fn golden_batch() -> DeltaBatch {
    let minute = WINDOW_START_MS / MINUTE_MS;
    DeltaBatch {
        header: header(),
        entries: vec![
            DeltaEntry {
                resource_id: "home".to_owned(),
                minute,
                hits: 3,
                visitors: sketch(&["alice", "bob"]),
            },
            DeltaEntry {
                resource_id: "home".to_owned(),
                minute: minute + 1,
                hits: 1,
                visitors: Sketch::new(),
            },
            DeltaEntry {
                resource_id: "pricing".to_owned(),
                minute: minute - 1,
                hits: 200,
                visitors: sketch(&["carol"]),
            },
        ],
    }
}

/// These bytes are the format. If this test fails, the change broke every deployed edge: bump
/// FORMAT_VERSION and keep a decoder for version 1 instead of editing the expected bytes.
#[test]
fn golden_bytes_pin_version_one() {
    let encoded = golden_batch().encode().unwrap();
    let expected = concat!(
        "48434442", // magic "HCDB"
        "01",       // version
        "06",
        "656467652d31", // edge id "edge-1"
        "80d095ffbc31", // boot epoch
        "07",           // sequence
        "c08898ffbc31", // window start ms
        "e807",         // window length 1000 ms
        "03",           // three entries
        "04",
        "686f6d65",
        "00",
        "03", // "home", minute +0, 3 hits
        "01",
        "02",
        "878728",
        "c1a303", // sparse sketch of two visitors
        "00",
        "02",
        "01",
        "00", // same resource, minute +1, 1 hit, empty sketch
        "07",
        "70726963696e67",
        "01",
        "c801", // "pricing", minute -1, 200 hits
        "01",
        "01",
        "82822e", // sparse sketch of one visitor
    );
    assert_eq!(to_hex(&encoded), expected);
    assert_eq!(DeltaBatch::decode(&encoded).unwrap(), golden_batch());
    assert_eq!(FORMAT_VERSION, 1);
}

/// The visitor hash is part of the format: sketches from old edges must keep merging.
#[test]
fn visitor_hash_is_pinned() {
    assert_eq!(visitor_hash(b"alice"), 0xad57_000d_6b28_c2cb);
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn every_malformation_has_its_own_error() {
    let good = golden_batch().encode().unwrap();
    let decode = |bytes: &[u8]| DeltaBatch::decode(bytes).unwrap_err();

    assert_eq!(decode(b"NOPE\x01"), WireError::BadMagic);
    assert_eq!(decode(b"HC"), WireError::BadMagic);

    let mut wrong_version = good.clone();
    wrong_version[4] = 9;
    assert_eq!(
        decode(&wrong_version),
        WireError::UnsupportedVersion {
            found: 9,
            supported: 1
        }
    );

    for cut in [5, 12, 30, good.len() - 1] {
        assert!(
            matches!(decode(&good[..cut]), WireError::Truncated { .. }),
            "cut at {cut}"
        );
    }

    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(decode(&trailing), WireError::TrailingBytes { .. }));

    let mut bad_edge = golden_batch();
    bad_edge.header.edge_id = "has space".to_owned();
    assert!(matches!(
        bad_edge.encode(),
        Err(WireError::InvalidIdentifier { .. })
    ));

    let mut backwards = golden_batch();
    backwards.header.window_end_ms = WINDOW_START_MS - 1;
    assert!(matches!(
        backwards.encode(),
        Err(WireError::InvalidWindow { .. })
    ));
    let mut too_long = golden_batch();
    too_long.header.window_end_ms = WINDOW_START_MS + WINDOW_SPAN_MS_MAX + 1;
    assert!(matches!(
        too_long.encode(),
        Err(WireError::InvalidWindow { .. })
    ));

    let mut zero_hits = golden_batch();
    zero_hits.entries[1].hits = 0;
    assert!(matches!(
        zero_hits.encode(),
        Err(WireError::InvalidHitCount { index: 1, .. })
    ));

    let mut unsorted = golden_batch();
    unsorted.entries.swap(0, 2);
    assert!(matches!(
        unsorted.encode(),
        Err(WireError::EntriesNotSorted { .. })
    ));

    let mut duplicated = golden_batch();
    duplicated.entries[1].minute = duplicated.entries[0].minute;
    assert!(matches!(
        duplicated.encode(),
        Err(WireError::EntriesNotSorted { index: 1 })
    ));
}

#[test]
fn hostile_lengths_are_rejected_before_allocation() {
    // A header claiming a 2^60-byte edge id.
    let mut bytes = b"HCDB\x01".to_vec();
    hitcount_wire::varint::put_u64(&mut bytes, 1 << 60);
    assert!(matches!(
        DeltaBatch::decode(&bytes).unwrap_err(),
        WireError::TooLong { .. }
    ));

    // A valid header claiming more entries than the limit.
    let mut bytes = golden_batch().encode().unwrap();
    let count_at = bytes.len() - golden_entries_len();
    bytes.truncate(count_at - 1);
    hitcount_wire::varint::put_u64(&mut bytes, BATCH_ENTRIES_MAX as u64 + 1);
    assert!(matches!(
        DeltaBatch::decode(&bytes).unwrap_err(),
        WireError::TooLong {
            what: "entry count",
            ..
        }
    ));

    // A count within the limit that the remaining input cannot possibly hold.
    bytes.truncate(count_at - 1);
    hitcount_wire::varint::put_u64(&mut bytes, 1_000);
    assert!(matches!(
        DeltaBatch::decode(&bytes).unwrap_err(),
        WireError::Truncated { .. }
    ));

    let oversized = vec![0u8; hitcount_wire::BATCH_BYTES_MAX + 1];
    assert!(matches!(
        DeltaBatch::decode(&oversized).unwrap_err(),
        WireError::BatchTooLarge { .. }
    ));
}

fn golden_entries_len() -> usize {
    let full = golden_batch().encode().unwrap();
    let empty = DeltaBatch {
        header: header(),
        entries: Vec::new(),
    }
    .encode()
    .unwrap();
    full.len() - empty.len()
}

/// Bytes per entry for a typical batch: 1,000 pages, a few visitors each. Printed so the figure in
/// BENCHMARKS.md can be re-derived with `cargo test -p hitcount-wire -- --nocapture bytes_per`.
#[test]
fn bytes_per_entry_for_a_typical_batch() {
    let mut window = WindowCounts::new(BATCH_ENTRIES_MAX);
    let minute = WINDOW_START_MS / MINUTE_MS;
    let mut visitor = 0u64;
    for page in 0..1_000u64 {
        // Most pages get a handful of hits from a handful of visitors in one second.
        for _ in 0..(1 + page % 5) {
            visitor += 1;
            window
                .record(
                    &format!("page-{page:04}"),
                    minute,
                    1 + visitor % 3,
                    Some(visitor_hash(&visitor.to_le_bytes())),
                )
                .unwrap();
        }
    }
    let hits = window.hits();
    let entries = window.drain();
    let batch = DeltaBatch {
        header: header(),
        entries,
    };
    let encoded = batch.encode().unwrap();
    let per_entry = encoded.len() as f64 / batch.entries.len() as f64;
    println!(
        "typical batch: {} entries, {hits} hits, {} bytes, {per_entry:.1} bytes per entry",
        batch.entries.len(),
        encoded.len()
    );
    // Resource id (~10 bytes) + minute + hits + three sparse registers: well under 32 bytes.
    assert!(per_entry < 32.0, "{per_entry} bytes per entry");
    assert_eq!(batch.hits(), hits);
}

fn arbitrary_entry() -> impl Strategy<Value = (String, u64, u64, Vec<u64>)> {
    (
        "[a-zA-Z0-9._-]{1,64}",
        0u64..200,
        1u64..1_000_000,
        proptest::collection::vec(any::<u64>(), 0..40),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trips(
        edge_id in "[a-zA-Z0-9._-]{1,64}",
        boot_epoch in 0..=KEY_NUMBER_MAX,
        sequence in 0..=KEY_NUMBER_MAX,
        window_start_minute in 0u64..100_000_000,
        span_ms in 0u64..=WINDOW_SPAN_MS_MAX,
        raw_entries in proptest::collection::vec(arbitrary_entry(), 0..60),
    ) {
        let mut window = WindowCounts::new(BATCH_ENTRIES_MAX);
        for (resource_id, minute_offset, hits, visitors) in &raw_entries {
            let minute = (window_start_minute + minute_offset).saturating_sub(100);
            window.record(resource_id, minute, *hits, None).unwrap();
            for visitor in visitors {
                window.record(resource_id, minute, 0, Some(*visitor)).unwrap();
            }
        }
        let batch = DeltaBatch {
            header: DeltaHeader {
                edge_id,
                boot_epoch,
                sequence,
                window_start_ms: window_start_minute * MINUTE_MS,
                window_end_ms: window_start_minute * MINUTE_MS + span_ms,
            },
            entries: window.drain(),
        };
        let encoded = batch.encode().unwrap();
        let decoded = DeltaBatch::decode(&encoded).unwrap();
        prop_assert_eq!(&decoded, &batch);
        prop_assert_eq!(decoded.encode().unwrap(), encoded);
    }

    /// The decoder never panics on arbitrary bytes, with or without a valid prefix.
    #[test]
    fn decoder_survives_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = DeltaBatch::decode(&tail);
        let mut prefixed = b"HCDB\x01".to_vec();
        prefixed.extend_from_slice(&tail);
        let _ = DeltaBatch::decode(&prefixed);
    }

    /// Flipping any byte of a valid batch either fails cleanly or decodes to a valid batch.
    #[test]
    fn decoder_survives_mutations(position in any::<prop::sample::Index>(), value in any::<u8>()) {
        let mut bytes = golden_batch().encode().unwrap();
        let index = position.index(bytes.len());
        bytes[index] = value;
        if let Ok(batch) = DeltaBatch::decode(&bytes) {
            prop_assert!(batch.encode().is_ok());
        }
    }
}

/// One operation on a window map, for the model test below. Few resources and minutes, so that
/// operations meet the same counters and the bound.
#[derive(Debug, Clone)]
enum WindowOperation {
    Record {
        resource: u8,
        minute: u8,
        hits: u64,
        visitor: Option<u64>,
    },
    Merge {
        resource: u8,
        minute: u8,
        hits: u64,
        visitors: Vec<u64>,
    },
    Drain,
}

fn window_operation() -> impl Strategy<Value = WindowOperation> {
    prop_oneof![
        8 => (0u8..12, 0u8..4, 0u64..5, proptest::option::of(any::<u64>())).prop_map(
            |(resource, minute, hits, visitor)| WindowOperation::Record { resource, minute, hits, visitor }
        ),
        2 => (0u8..12, 0u8..4, 0u64..5, proptest::collection::vec(any::<u64>(), 0..4)).prop_map(
            |(resource, minute, hits, visitors)| WindowOperation::Merge { resource, minute, hits, visitors }
        ),
        1 => Just(WindowOperation::Drain),
    ]
}

/// What a window map must behave like: a sorted map of (resource, minute) to (hits, sketch).
#[derive(Default)]
struct WindowModel {
    cells: std::collections::BTreeMap<(String, u64), (u64, Sketch)>,
    hits: u64,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The hash-table window map answers like a sorted map, under any key, through the bound:
    /// the same refusals, counts, lookups and drained entries in wire order.
    #[test]
    fn window_map_matches_a_sorted_map(
        operations in proptest::collection::vec(window_operation(), 1..200),
        entries_max in 1usize..30,
        hash_key in any::<[u8; 16]>(),
    ) {
        let mut window = WindowCounts::with_hash_key(entries_max, hash_key);
        let mut model = WindowModel::default();
        for operation in operations {
            match operation {
                WindowOperation::Record { resource, minute, hits, visitor } => {
                    let resource_id = format!("page-{resource}");
                    let key = (resource_id.clone(), u64::from(minute));
                    let expected_full =
                        !model.cells.contains_key(&key) && model.cells.len() >= entries_max;
                    let recorded = window.record(&resource_id, u64::from(minute), hits, visitor);
                    prop_assert_eq!(recorded.is_err(), expected_full);
                    if !expected_full {
                        let cell = model.cells.entry(key).or_default();
                        cell.0 += hits;
                        if let Some(hash) = visitor {
                            cell.1.insert_hash(hash);
                        }
                        model.hits += hits;
                    }
                }
                WindowOperation::Merge { resource, minute, hits, visitors } => {
                    let resource_id = format!("page-{resource}");
                    let mut sketch = Sketch::new();
                    for hash in &visitors {
                        sketch.insert_hash(*hash);
                    }
                    let entry = DeltaEntry {
                        resource_id: resource_id.clone(),
                        minute: u64::from(minute),
                        hits,
                        visitors: sketch.clone(),
                    };
                    let key = (resource_id, u64::from(minute));
                    let expected_full =
                        !model.cells.contains_key(&key) && model.cells.len() >= entries_max;
                    prop_assert_eq!(window.merge_entry(&entry).is_err(), expected_full);
                    if !expected_full {
                        let cell = model.cells.entry(key).or_default();
                        cell.0 += hits;
                        cell.1.merge(&sketch);
                        model.hits += hits;
                    }
                }
                WindowOperation::Drain => {
                    let drained = window.drain();
                    let expected: Vec<DeltaEntry> = std::mem::take(&mut model.cells)
                        .into_iter()
                        .map(|((resource_id, minute), (hits, visitors))| DeltaEntry {
                            resource_id,
                            minute,
                            hits,
                            visitors,
                        })
                        .collect();
                    prop_assert_eq!(drained, expected);
                    model.hits = 0;
                }
            }
            prop_assert_eq!(window.len(), model.cells.len());
            prop_assert_eq!(window.hits(), model.hits);
            prop_assert_eq!(window.is_empty(), model.cells.is_empty());
            for resource in 0u8..12 {
                let resource_id = format!("page-{resource}");
                let expected_hits: u64 = model
                    .cells
                    .iter()
                    .filter(|((id, _), _)| *id == resource_id)
                    .map(|(_, (hits, _))| hits)
                    .sum();
                prop_assert_eq!(window.hits_for(&resource_id), expected_hits);
                for minute in 0u64..4 {
                    prop_assert_eq!(
                        window.contains(&resource_id, minute),
                        model.cells.contains_key(&(resource_id.clone(), minute))
                    );
                }
            }
        }
    }
}
