//! `cargo bench -p hitcount-aggregator --bench group`: the store's group path alone, with a fixed
//! input, so that its cost can be counted in instructions (`valgrind --tool=callgrind`), which
//! stay the same from run to run where CPU seconds on a shared two-core box vary by a third.
//!
//! The embedded store with the durable inbox (the aggregator's default write shape), 100,000
//! resources; [`GROUPS`] group commits of [`BATCHES_PER_GROUP`] batches, each batch
//! [`ENTRIES_PER_BATCH`] distinct resources of one minute drawn uniformly (an edge's window over a
//! site of 100,000 pages), one visitor each; then the fold of that minute. Every input is derived
//! from the indices, so two builds get the same bytes. Prints each phase's wall time; under
//! callgrind, `callgrind_annotate --inclusive=yes` gives each phase's instructions
//! (`apply_group_blocking`, `Overlay::insert`, `Overlay::take_due`, `fold_slot_blocking`).
//! BENCHMARKS.md has the commands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use hitcount_aggregator::now_ms;
use hitcount_aggregator::store::inbox::MINUTE_CLOSE_GRACE_MS;
use hitcount_aggregator::store::{BatchKey, EmbeddedStore, MergeBatch, ResourceRecord, Store};
use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch};

// The same allocator as the hitcount-aggregator binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RESOURCES: u64 = 100_000;
/// Resources written per store call while setting up.
const RESOURCE_CHUNK: u64 = 10_000;
const GROUPS: u64 = 20;
const BATCHES_PER_GROUP: u64 = 20;
const ENTRIES_PER_BATCH: usize = 1_000;

/// SplitMix64: a fixed, well-spread sequence from an index, so both builds draw the same input.
fn spread(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn resource_id(index: u64) -> String {
    format!("site-page-{index:06}")
}

/// Batch `number`: [`ENTRIES_PER_BATCH`] distinct resources of `minute`, sorted, as an edge sends.
fn batch(number: u64, minute: u64) -> MergeBatch {
    let mut chosen = BTreeSet::new();
    let mut draw = number * 1_000_003;
    while chosen.len() < ENTRIES_PER_BATCH {
        chosen.insert(spread(draw) % RESOURCES);
        draw += 1;
    }
    let mut entries: Vec<DeltaEntry> = chosen
        .into_iter()
        .map(|resource| {
            let mut visitors = Sketch::new();
            visitors.insert_hash(spread(number ^ (resource << 20)));
            DeltaEntry {
                resource_id: resource_id(resource),
                minute,
                hits: 1 + resource % 3,
                visitors,
            }
        })
        .collect();
    // Sorted by id, as the wire decoder hands batches over (the ids' order, not the indices').
    entries.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
    MergeBatch {
        entries,
        key: Some(BatchKey {
            edge_id: format!("edge-{:03}", number % 100),
            boot_epoch: 1,
            sequence: number,
            body_sha256: [(number % 251) as u8; 32],
        }),
    }
}

fn main() {
    // `cargo test` runs benches with `--bench` absent; only a real `cargo bench` measures.
    if !std::env::args().any(|argument| argument == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(measure());
}

async fn measure() {
    println!("# the store's group path (embedded store, durable inbox)");
    println!("machine: {}", hitcount_bench_support::machine());
    let directory = tempfile::TempDir::new().unwrap();
    let store = Store::new(Arc::new(
        EmbeddedStore::open(directory.path()).unwrap().with_inbox(),
    ));
    let started = Instant::now();
    for first in (0..RESOURCES).step_by(RESOURCE_CHUNK as usize) {
        let records = (first..first + RESOURCE_CHUNK)
            .map(|index| ResourceRecord {
                id: resource_id(index),
                name: resource_id(index),
                retention_days: None,
                created_at_ms: 0,
            })
            .collect();
        store.create_resources_if_absent(records).await.unwrap();
    }
    println!("set-up, {RESOURCES} resources: {:?}", started.elapsed());
    let now = now_ms();
    let minute = now / MINUTE_MS - 1;
    let groups: Vec<Vec<MergeBatch>> = (0..GROUPS)
        .map(|group| {
            (0..BATCHES_PER_GROUP)
                .map(|index| batch(group * BATCHES_PER_GROUP + index, minute))
                .collect()
        })
        .collect();
    let entries = GROUPS * BATCHES_PER_GROUP * ENTRIES_PER_BATCH as u64;
    let started = Instant::now();
    for group in groups {
        let commit = store.apply_group(group, now).await.unwrap();
        assert_eq!(commit.outcomes.len(), BATCHES_PER_GROUP as usize);
    }
    let applied = started.elapsed();
    println!(
        "{GROUPS} group commits, {entries} entries: {applied:?} ({:.0} entries/s); cells held: {}",
        entries as f64 / applied.as_secs_f64(),
        store.unfolded_entries()
    );
    let started = Instant::now();
    let folded = store
        .fold_closed(now.max((minute + 1) * MINUTE_MS + MINUTE_CLOSE_GRACE_MS))
        .await
        .unwrap();
    println!(
        "the minute's fold: {:?}, {folded} inbox rows",
        started.elapsed()
    );
    assert_eq!(store.unfolded_entries(), 0, "the fold took every cell");
}
