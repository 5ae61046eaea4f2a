//! Drawing each edge's windows directly, as the edge has them after pre-aggregation.
//!
//! A real edge turns beacons into one entry per (resource, minute): a hit count and a sketch of
//! the visitors' hashes. The aggregator sees only those entries, so drawing them directly gives
//! it exactly the work beacons would: per hit, a resource is drawn from Zipf(s) over the
//! resources (Walker's alias table over the weights `rank^-s`: two random numbers and a table
//! lookup, where rejection sampling would take logarithms and powers per hit) and a visitor
//! uniformly from the visitors; the visitor's hash (the wire crate's `visitor_hash` of its index)
//! goes into that entry's sketch. Counting happens in flat arrays indexed by resource, reused for
//! every window, so no hit costs a hash table probe or an allocation.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hitcount_edge_core::ClosedWindow;
use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch, visitor_hash};
use rand::Rng;
use rand::distr::Distribution;
use rand::seq::index;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::weighted::WeightedAliasIndex;

use crate::edge::Edge;
use crate::{Config, LoadgenError, Shared};

/// Exact visitor sets are bit sets of `--visitors` bits while all of them together fit this;
/// beyond it, hash sets (which grow with the distinct visitors seen instead).
const DISTINCT_BITSETS_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// No sampled slot.
const NOT_SAMPLED: u32 = u32::MAX;
/// The stream of the random numbers that choose the sampled resources (edges use 0..edges).
const SAMPLE_STREAM: u64 = u64::MAX;

/// Resource popularity: Zipf(s) over resource indexes, index 0 the most popular.
#[derive(Debug)]
pub struct Popularity {
    alias: WeightedAliasIndex<f64>,
}

impl Popularity {
    pub fn new(resources: usize, exponent: f64) -> Result<Self, LoadgenError> {
        let weights: Vec<f64> = (1..=resources)
            .map(|rank| (rank as f64).powf(-exponent))
            .collect();
        let alias = WeightedAliasIndex::new(weights).map_err(|error| {
            LoadgenError::Config(format!(
                "no Zipf table for {resources} resources at exponent {exponent}: {error}"
            ))
        })?;
        Ok(Self { alias })
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> usize {
        self.alias.sample(rng)
    }
}

/// When windows close: window `i` covers `[first_window_ms + i * w, + w)` of the wall clock and
/// closes at `origin + (i + 1) * w` of the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub origin: Instant,
    pub first_window_ms: u64,
    pub windows: u64,
}

/// What the generator handed over.
#[derive(Debug, Default)]
pub struct Generated {
    pub hits_offered: u64,
    pub hits_shed: u64,
    /// Offered hits per resource index.
    pub offered: Vec<u64>,
    /// The sampled resources' offered visitors.
    pub distinct: Vec<SampledVisitors>,
}

/// One sampled resource's offered visitors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledVisitors {
    pub resource: usize,
    /// Exactly how many distinct visitors were offered.
    pub distinct: u64,
    /// What the union of their sketches counts: the answer the aggregator owes.
    pub sketched: u64,
}

/// Hits of window `window` over all edges: the integer part of the rate's running total, so
/// that any rate is met exactly over the run.
fn window_hits(hits_per_second: u64, window_ms: u64, window: u64) -> u64 {
    let through = |windows: u64| {
        u128::from(hits_per_second) * u128::from(windows) * u128::from(window_ms) / 1_000
    };
    (through(window + 1) - through(window)) as u64
}

/// One edge's share of a window's hits; the remainder goes to other edges each window.
fn edge_share(total: u64, edges: u64, edge: u64, window: u64) -> u64 {
    let rank = (edge + window) % edges;
    total / edges + u64::from(rank < total % edges)
}

/// An exact set of visitor indexes.
#[derive(Debug)]
enum Distinct {
    Bits(Vec<u64>),
    Set(HashSet<u64>),
}

impl Distinct {
    fn insert(&mut self, visitor: u64) {
        match self {
            Self::Bits(words) => words[(visitor / 64) as usize] |= 1 << (visitor % 64),
            Self::Set(set) => {
                set.insert(visitor);
            }
        }
    }

    fn len(&self) -> u64 {
        match self {
            Self::Bits(words) => words.iter().map(|word| u64::from(word.count_ones())).sum(),
            Self::Set(set) => set.len() as u64,
        }
    }
}

/// The resources whose visitors are kept exactly: the most popular and as many at random. Each
/// also keeps the union of its offered visitors' sketches: a sketch union is a register-wise
/// maximum, the same whatever the order or repetition, so the aggregator must answer exactly its
/// estimate, however it split, merged, folded or cached the entries.
#[derive(Debug)]
struct Sample {
    /// Per resource index, its slot in `sets` or [`NOT_SAMPLED`].
    slots: Vec<u32>,
    sets: Vec<(usize, Distinct)>,
    /// Per slot, the union of its offered visitors.
    sketches: Vec<Sketch>,
}

impl Sample {
    fn choose(config: &Config) -> Self {
        let resources = config.resources;
        let hottest = config.uniques_sample.min(resources);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(SAMPLE_STREAM);
        let random = config.uniques_sample.min(resources - hottest);
        let mut chosen: Vec<usize> = (0..hottest).collect();
        chosen.extend(
            index::sample(&mut rng, resources - hottest, random)
                .into_iter()
                .map(|offset| hottest + offset),
        );
        let bitset_bytes = config.visitors.div_ceil(64) * 8;
        let bitsets =
            bitset_bytes.saturating_mul(chosen.len() as u64) <= DISTINCT_BITSETS_BYTES_MAX;
        let mut slots = vec![NOT_SAMPLED; resources];
        let sets: Vec<(usize, Distinct)> = chosen
            .into_iter()
            .enumerate()
            .map(|(slot, resource)| {
                slots[resource] = slot as u32;
                let set = if bitsets {
                    Distinct::Bits(vec![0; config.visitors.div_ceil(64) as usize])
                } else {
                    Distinct::Set(HashSet::new())
                };
                (resource, set)
            })
            .collect();
        let sketches = vec![Sketch::new(); sets.len()];
        Self {
            slots,
            sets,
            sketches,
        }
    }
}

/// One window being drawn: flat per-resource arrays, reset after every window.
#[derive(Debug)]
struct Scratch {
    hits: Vec<u32>,
    sketches: Vec<Sketch>,
    /// Resource indexes with hits in this window, in first-hit order.
    touched: Vec<u32>,
    /// (sample slot, visitor) of this window's hits to sampled resources.
    sampled: Vec<(u32, u64)>,
}

impl Scratch {
    fn new(resources: usize) -> Self {
        Self {
            hits: vec![0; resources],
            sketches: vec![Sketch::new(); resources],
            touched: Vec::new(),
            sampled: Vec::new(),
        }
    }

    fn draw(
        &mut self,
        rng: &mut ChaCha8Rng,
        popularity: &Popularity,
        visitors: u64,
        sample: &Sample,
        hits: u64,
    ) {
        for _ in 0..hits {
            let resource = popularity.draw(rng);
            let visitor = rng.random_range(0..visitors);
            if self.hits[resource] == 0 {
                self.touched.push(resource as u32);
            }
            self.hits[resource] += 1;
            self.sketches[resource].insert_hash(visitor_hash(&visitor.to_le_bytes()));
            let slot = sample.slots[resource];
            if slot != NOT_SAMPLED {
                self.sampled.push((slot, visitor));
            }
        }
    }

    /// The window's entries in wire order (index order is id order), sketches moved out.
    fn entries(&mut self, ids: &[String], minute: u64) -> Vec<DeltaEntry> {
        self.touched.sort_unstable();
        self.touched
            .iter()
            .map(|resource| {
                let resource = *resource as usize;
                DeltaEntry {
                    resource_id: ids[resource].clone(),
                    minute,
                    hits: u64::from(self.hits[resource]),
                    visitors: std::mem::take(&mut self.sketches[resource]),
                }
            })
            .collect()
    }

    /// The window was taken by the edge: its hits are offered.
    fn accept(&self, offered: &mut [u64], sample: &mut Sample) {
        for resource in &self.touched {
            offered[*resource as usize] += u64::from(self.hits[*resource as usize]);
        }
        for (slot, visitor) in &self.sampled {
            sample.sets[*slot as usize].1.insert(*visitor);
            sample.sketches[*slot as usize].insert_hash(visitor_hash(&visitor.to_le_bytes()));
        }
    }

    fn clear(&mut self) {
        for resource in self.touched.drain(..) {
            self.hits[resource as usize] = 0;
        }
        self.sampled.clear();
    }
}

/// Generates every window on schedule and hands each edge its share. Runs on its own thread: a
/// window of a million hits takes tens of milliseconds to draw, which must not stall the
/// runtime that sends.
pub fn run(
    config: &Config,
    popularity: &Popularity,
    ids: &[String],
    edges: &[Edge],
    shared: &Shared,
    schedule: Schedule,
) -> Generated {
    let mut rngs: Vec<ChaCha8Rng> = (0..edges.len())
        .map(|edge| {
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
            rng.set_stream(edge as u64);
            rng
        })
        .collect();
    let mut sample = Sample::choose(config);
    let mut scratch = Scratch::new(config.resources);
    let mut generated = Generated {
        offered: vec![0; config.resources],
        ..Generated::default()
    };
    let window_ms = config.window_ms;
    for window in 0..schedule.windows {
        let closes = schedule.origin + Duration::from_millis((window + 1) * window_ms);
        std::thread::sleep(closes.saturating_duration_since(Instant::now()));
        let start_ms = schedule.first_window_ms + window * window_ms;
        let total = window_hits(config.hits_per_second, window_ms, window);
        for (index, edge) in edges.iter().enumerate() {
            let hits = edge_share(total, edges.len() as u64, index as u64, window);
            if hits == 0 {
                continue;
            }
            scratch.draw(&mut rngs[index], popularity, config.visitors, &sample, hits);
            let closed = ClosedWindow {
                generation: window + 1,
                start_ms,
                end_ms: start_ms + window_ms,
                hits,
                entries: scratch.entries(ids, start_ms / MINUTE_MS),
            };
            // Before the window is queued: its batch may be acknowledged at once.
            let second = shared.stats.second();
            edge.offered.push(second, hits);
            if edge.add_window(closed) {
                scratch.accept(&mut generated.offered, &mut sample);
                generated.hits_offered += hits;
                shared.stats.offered(second, hits);
                edge.wake.notify_one();
            } else {
                edge.offered.withdraw_last();
                generated.hits_shed += hits;
                shared.stats.shed(hits);
            }
            scratch.clear();
        }
    }
    generated.distinct = sample
        .sets
        .iter()
        .zip(&sample.sketches)
        .map(|((resource, set), sketch)| SampledVisitors {
            resource: *resource,
            distinct: set.len(),
            sketched: sketch.count(),
        })
        .collect();
    generated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rate_is_met_exactly_and_split_over_edges_exactly() {
        for (rate, window_ms) in [(2_000, 1_000), (7, 1_000), (333, 1_500), (1, 100)] {
            let windows = 40;
            let total: u64 = (0..windows)
                .map(|window| window_hits(rate, window_ms, window))
                .sum();
            assert_eq!(
                total,
                rate * windows * window_ms / 1_000,
                "{rate} {window_ms}"
            );
            for window in 0..windows {
                let hits = window_hits(rate, window_ms, window);
                let shares: u64 = (0..3).map(|edge| edge_share(hits, 3, edge, window)).sum();
                assert_eq!(shares, hits);
            }
        }
    }

    #[test]
    fn a_drawn_window_is_sorted_exact_and_its_sketches_hold_its_visitors() {
        use clap::Parser;
        let config = Config::parse_from([
            "hitcount-loadgen",
            "--resources",
            "300",
            "--visitors",
            "50",
            "--uniques-sample",
            "5",
        ]);
        let popularity = Popularity::new(config.resources, config.zipf).unwrap();
        let ids = config.resource_ids();
        let mut sample = Sample::choose(&config);
        assert_eq!(sample.sets.len(), 10);
        let mut scratch = Scratch::new(config.resources);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        scratch.draw(&mut rng, &popularity, config.visitors, &sample, 5_000);
        let entries = scratch.entries(&ids, 7);
        assert_eq!(entries.iter().map(|entry| entry.hits).sum::<u64>(), 5_000);
        assert!(
            entries
                .windows(2)
                .all(|pair| pair[0].resource_id < pair[1].resource_id)
        );
        assert!(
            entries[0].hits > entries.last().unwrap().hits,
            "Zipf: index 0 is hottest"
        );
        let mut offered = vec![0; config.resources];
        scratch.accept(&mut offered, &mut sample);
        assert_eq!(offered[0], entries[0].hits);
        let hottest = &sample.sets[0].1;
        // 700-odd hits over 50 visitors: all of them, estimated within the sketch's error.
        assert_eq!(hottest.len(), 50);
        assert_eq!(entries[0].visitors.count(), 50);
        scratch.clear();
        assert!(scratch.hits.iter().all(|hits| *hits == 0));
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// `cargo test --release -p hitcount-loadgen --lib -- --ignored --nocapture draw_cost`
    #[test]
    #[ignore = "a timing, not a test: run in release"]
    fn draw_cost() {
        use clap::Parser;
        let config = Config::parse_from(["hitcount-loadgen"]);
        let popularity = Popularity::new(config.resources, config.zipf).unwrap();
        let ids = config.resource_ids();
        let sample = Sample::choose(&config);
        let mut scratch = Scratch::new(config.resources);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let windows = 100;
        let hits = 10_000;
        let started = Instant::now();
        let mut entries = 0;
        for _ in 0..windows {
            scratch.draw(&mut rng, &popularity, config.visitors, &sample, hits);
            entries += scratch.entries(&ids, 7).len();
            scratch.clear();
        }
        let elapsed = started.elapsed();
        eprintln!(
            "{} hits in {elapsed:?}: {:.1} ns a hit, {} entries a window",
            windows * hits,
            elapsed.as_nanos() as f64 / (windows * hits) as f64,
            entries / windows as usize
        );
        let mut delivery = hitcount_edge_core::Delivery::new(
            "edge-1",
            1,
            hitcount_wire::BATCH_ENTRIES_MAX,
            [0; 16],
        );
        let started = Instant::now();
        let mut merged = 0;
        for window in 0..10u64 {
            scratch.draw(&mut rng, &popularity, config.visitors, &sample, hits);
            let closed = ClosedWindow {
                generation: window + 1,
                start_ms: window * 1_000,
                end_ms: window * 1_000 + 1_000,
                hits,
                entries: scratch.entries(&ids, 0),
            };
            if delivery.add_window(closed).is_ok() {
                merged += 1;
            }
            scratch.clear();
        }
        let merging = started.elapsed();
        let started = Instant::now();
        let bytes = delivery.next_batch().map_or(0, |batch| batch.bytes.len());
        eprintln!(
            "10 windows drawn and merged into one pending map ({merged} fit) in {merging:?}; sealed ({bytes} bytes) in {:?}",
            started.elapsed()
        );
    }
}
