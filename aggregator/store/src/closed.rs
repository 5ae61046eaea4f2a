//! One resource's cells of closed buckets, decoded once and held in memory under their bucket's
//! generation ([`ClosedCells`]), so a read of 24 hours of minutes or 30 days of hours does not
//! load and decode the same 1,440 or 720 sketches on every request.
//!
//! It rests on the rule bucket summaries rest on (`summaries.rs`): every write that can still
//! change a closed bucket (a late merge or fold, an import, a resource deleted, retention) bumps
//! that bucket's generation in the store, in the write's own transaction. A read first asks for
//! the generations of the closed buckets in its window (one small query), takes each bucket it
//! holds at the generation it finds, reads the others from the store and holds them under the
//! generation read *before* them. A write committed before the read began has bumped a
//! generation the read then finds, so the held cell is never older than what the store would
//! answer; a cell read after a write it was not keyed to is only read again sooner. Nothing has
//! to be invalidated, so it stays exact however many aggregators write the same buckets.
//!
//! A bucket is held only where [`Keeping::may_hold`] allows it (it ended long enough ago that a
//! write into it is a late one, retention has not reached it whatever the clocks, and no row in
//! the durable inbox may still change it on time). With the hot tier, the minutes it holds stay
//! out too: another aggregator's late hit is in the hot tier at once, but bumps the generation
//! only when its inbox row is folded. A held bucket is read again once it is
//! [`HELD_AGE_MS_MAX`] old, so a write that broke the rule (one that committed much later than the
//! clock it decided with, and so bumped nothing) is not answered wrong for longer than that.

use std::sync::Arc;

use crate::records::{CountCell, Tier};
use crate::summaries::{BucketGeneration, Keeping};

/// The most memory held cells take (sketches and keys, estimated from their contents), the least
/// recently used going first past it: 24 hours of minutes of a busy resource (dense sketches,
/// 16 KiB each decoded) weigh about 23 MiB.
pub const CLOSED_CELLS_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// A held bucket is read from the store again once it was read this long ago.
pub const HELD_AGE_MS_MAX: u64 = 10 * hitcount_wire::MINUTE_MS;
/// What a held bucket costs besides its sketch and its resource id.
const ENTRY_OVERHEAD_BYTES: usize = 96;
/// What a held bucket is expected to weigh, for sizing the table only.
const ENTRY_BYTES_EXPECTED: u64 = 4 * 1024;
/// quick_cache splits the weight among its shards and refuses an entry heavier than one shard;
/// with 16, a shard holds 16 MiB, far above one cell.
const CLOSED_CELLS_SHARDS: usize = 16;

/// (resource, tier, bucket).
type BucketKey = (String, Tier, u64);

/// A closed bucket of one resource as a read found it: its cell, if the resource has one there.
#[derive(Debug, Clone)]
struct HeldBucket {
    generation: u64,
    read_at_ms: u64,
    cell: Option<Arc<CountCell>>,
}

#[derive(Debug, Clone)]
struct BucketWeighter;

impl quick_cache::Weighter<BucketKey, HeldBucket> for BucketWeighter {
    fn weight(&self, key: &BucketKey, held: &HeldBucket) -> u64 {
        let sketch_bytes = held
            .cell
            .as_ref()
            .map_or(0, |cell| cell.visitors.heap_bytes());
        (key.0.len() + sketch_bytes + ENTRY_OVERHEAD_BYTES) as u64
    }
}

/// The closed buckets this process's reads decoded, by (resource, tier, bucket), each under the
/// generation it was read at. A crate made for this (`quick_cache`) bounds it by weight and
/// evicts.
pub struct ClosedCells {
    buckets: quick_cache::sync::Cache<BucketKey, HeldBucket, BucketWeighter>,
}

impl std::fmt::Debug for ClosedCells {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClosedCells")
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

impl Default for ClosedCells {
    fn default() -> Self {
        Self {
            buckets: crate::bounded::weighed_table(
                CLOSED_CELLS_BYTES_MAX,
                ENTRY_BYTES_EXPECTED,
                CLOSED_CELLS_SHARDS,
                BucketWeighter,
            ),
        }
    }
}

/// The buckets of `tier` in `[start_ms, end_ms)` a read may hold, as `[from_ms, until_ms)`,
/// none if there is none: those [`Keeping::may_hold`] allows and that end by `hot_from_ms` (the
/// hot tier's first minute; without it `u64::MAX`). They are one span: what bars a bucket is
/// retention for the earliest, and being recent for the latest.
pub fn closed_span(
    tier: Tier,
    (start_ms, end_ms): (u64, u64),
    keeping: &Keeping,
    hot_from_ms: u64,
) -> Option<(u64, u64)> {
    let resolution = tier.resolution_ms();
    // Nothing after now is closed: the walk ends there whatever the window.
    let end_ms = end_ms.min(keeping.now_ms);
    let holds = move |bucket_ms: u64| {
        bucket_ms < end_ms
            && bucket_ms + resolution <= hot_from_ms
            && keeping.may_hold(tier, bucket_ms)
    };
    let mut from_ms = start_ms.div_ceil(resolution) * resolution;
    while from_ms < end_ms && !holds(from_ms) {
        from_ms += resolution;
    }
    let mut until_ms = from_ms;
    while holds(until_ms) {
        until_ms += resolution;
    }
    (until_ms > from_ms).then_some((from_ms, until_ms))
}

/// A read of the closed buckets `[start_ms, until_ms)` of one resource and tier: what was held,
/// and the span left to read from the store.
#[derive(Debug)]
pub struct ClosedRead {
    tier: Tier,
    resource_id: String,
    /// Every bucket of the span, in order, with the generation the store has for it now.
    generations: Vec<(u64, u64)>,
    /// The held cell of each bucket of `generations` held at its generation (`Some(None)`: held,
    /// no cell there), `None` where not held.
    held: Vec<Option<Option<Arc<CountCell>>>>,
    now_ms: u64,
}

impl ClosedCells {
    /// Looks up every bucket of `[start_ms, until_ms)` at the generations just read (`stored`:
    /// the store's rows, a bucket absent from them is at generation 0).
    pub fn look_up(
        &self,
        resource_id: &str,
        tier: Tier,
        (start_ms, until_ms): (u64, u64),
        stored: &[BucketGeneration],
        now_ms: u64,
    ) -> ClosedRead {
        let resolution = tier.resolution_ms();
        let first = start_ms.div_ceil(resolution) * resolution;
        let mut stored = stored.iter().peekable();
        let mut generations = Vec::new();
        let mut held = Vec::new();
        for bucket_ms in (first..until_ms).step_by(resolution as usize) {
            while stored.next_if(|row| row.bucket_ms < bucket_ms).is_some() {}
            let generation = stored
                .next_if(|row| row.bucket_ms == bucket_ms)
                .map_or(0, |row| row.generation);
            let key = (resource_id.to_owned(), tier, bucket_ms);
            held.push(
                self.buckets
                    .get(&key)
                    .filter(|bucket| {
                        bucket.generation == generation
                            && now_ms < bucket.read_at_ms + HELD_AGE_MS_MAX
                    })
                    .map(|bucket| bucket.cell),
            );
            generations.push((bucket_ms, generation));
        }
        ClosedRead {
            tier,
            resource_id: resource_id.to_owned(),
            generations,
            held,
            now_ms,
        }
    }

    /// Holds the cells read for `read`'s missing span (sorted by bucket, every one of the span
    /// that has a cell) under the generations `read` found, and returns every closed cell of
    /// the read in order: the span's as read, the others as held.
    pub fn complete(&self, read: ClosedRead, missing: Vec<CountCell>) -> Vec<CountCell> {
        let span = read.missing_span();
        let mut missing = missing.into_iter().peekable();
        let mut cells = Vec::new();
        let mut served = [0_u64; 2];
        for ((bucket_ms, generation), held) in read.generations.into_iter().zip(read.held) {
            let in_span =
                span.is_some_and(|(start_ms, end_ms)| (start_ms..end_ms).contains(&bucket_ms));
            let cell = match held {
                Some(cell) if !in_span => cell,
                _ => {
                    let cell = missing
                        .next_if(|cell| cell.bucket_ms == bucket_ms)
                        .map(Arc::new);
                    let key = (read.resource_id.clone(), read.tier, bucket_ms);
                    self.buckets.insert(
                        key,
                        HeldBucket {
                            generation,
                            read_at_ms: read.now_ms,
                            cell: cell.clone(),
                        },
                    );
                    cell
                }
            };
            cells.extend(cell.map(|cell| CountCell::clone(&cell)));
            served[usize::from(in_span)] += 1;
        }
        // Buckets, not cells: a bucket held with no cell in it is a read saved too.
        metrics::counter!("hitcount_closed_buckets_read_total", "served" => "memory")
            .increment(served[0]);
        metrics::counter!("hitcount_closed_buckets_read_total", "served" => "store")
            .increment(served[1]);
        debug_assert!(
            missing.next().is_none(),
            "the cells read lie in the span's buckets, in order"
        );
        cells
    }
}

impl ClosedRead {
    /// The span the store must be read for, `[first, last]` not held, as `[start_ms, end_ms)`;
    /// none if every bucket was held.
    pub fn missing_span(&self) -> Option<(u64, u64)> {
        let first = self.held.iter().position(Option::is_none)?;
        let last = self.held.iter().rposition(Option::is_none)?;
        Some((
            self.generations[first].0,
            self.generations[last].0 + self.tier.resolution_ms(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use hitcount_wire::{HOUR_MS, MINUTE_MS};

    use super::*;
    use crate::summaries::SUMMARY_CLOSED_AFTER_MS;

    const NOW_MS: u64 = 1_780_000_000_000 / HOUR_MS * HOUR_MS + 30 * MINUTE_MS;

    fn keeping() -> Keeping {
        Keeping {
            now_ms: NOW_MS,
            inbox_oldest_ms: None,
            unfolded_from_ms: u64::MAX,
        }
    }

    #[test]
    fn the_span_ends_at_what_is_recent_and_starts_after_what_retention_may_take() {
        let minute = |ms: u64| ms / MINUTE_MS * MINUTE_MS;
        let day = (minute(NOW_MS) - 24 * HOUR_MS, NOW_MS + 1);
        let closed_from = minute(NOW_MS - SUMMARY_CLOSED_AFTER_MS);
        assert_eq!(
            closed_span(Tier::Minute, day, &keeping(), u64::MAX),
            Some((day.0, closed_from))
        );
        // The hot tier's hour stays out.
        let hot_from = minute(NOW_MS - HOUR_MS) + MINUTE_MS;
        assert_eq!(
            closed_span(Tier::Minute, day, &keeping(), hot_from),
            Some((day.0, hot_from))
        );
        // Minutes are kept 48 hours: the first ones of a 48 hour window are not held.
        let two_days = (minute(NOW_MS) - 48 * HOUR_MS, NOW_MS + 1);
        let (from_ms, _) = closed_span(Tier::Minute, two_days, &keeping(), u64::MAX).unwrap();
        assert!(from_ms > two_days.0 + crate::summaries::CLOCKS_APART_MS_MAX);
        // This process's unfolded rows, or any process's inbox row appended a minute after a
        // bucket ended, end the span at them.
        let unfolded = Keeping {
            unfolded_from_ms: day.0 + HOUR_MS,
            ..keeping()
        };
        assert_eq!(
            closed_span(Tier::Minute, day, &unfolded, u64::MAX),
            Some((day.0, day.0 + HOUR_MS))
        );
        let inbox = Keeping {
            inbox_oldest_ms: Some(day.0 + HOUR_MS),
            ..keeping()
        };
        assert_eq!(
            closed_span(Tier::Minute, day, &inbox, u64::MAX),
            Some((day.0, day.0 + HOUR_MS - MINUTE_MS))
        );
        // Nothing closed: none.
        assert_eq!(
            closed_span(
                Tier::Hour,
                (NOW_MS / HOUR_MS * HOUR_MS, NOW_MS),
                &keeping(),
                u64::MAX
            ),
            None
        );
    }

    #[test]
    fn a_bucket_is_held_at_its_generation_until_it_is_too_old() {
        let cells = ClosedCells::default();
        let bucket_ms = NOW_MS / HOUR_MS * HOUR_MS - 2 * HOUR_MS;
        let span = (bucket_ms, bucket_ms + MINUTE_MS);
        let at = |generation: u64| {
            vec![BucketGeneration {
                bucket_ms,
                generation,
                kept: false,
            }]
        };
        let read = cells.look_up("site", Tier::Minute, span, &at(3), NOW_MS);
        assert_eq!(read.missing_span(), Some(span));
        let cell = CountCell::empty(bucket_ms);
        assert_eq!(cells.complete(read, vec![cell.clone()]), vec![cell.clone()]);
        let held = |generation: u64, now_ms: u64| {
            let read = cells.look_up("site", Tier::Minute, span, &at(generation), now_ms);
            read.missing_span().is_none()
        };
        assert!(held(3, NOW_MS + HELD_AGE_MS_MAX - 1));
        assert!(!held(4, NOW_MS), "a bumped generation is read again");
        assert!(!held(3, NOW_MS + HELD_AGE_MS_MAX), "too old: read again");
        let other = cells.look_up("other", Tier::Minute, span, &at(3), NOW_MS);
        assert!(other.missing_span().is_some(), "held by resource");
    }
}
