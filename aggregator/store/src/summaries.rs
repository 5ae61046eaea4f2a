//! Summaries of closed buckets: one bucket of one tier over every resource (its hits, the union
//! of its visitors, and each resource's hits), kept so a read across thousands of resources
//! (`GET /stats/top`) adds up a few dozen summaries instead of every resource's cells.
//!
//! A reader computes a summary from the cells the first time it needs one and keeps it, if the
//! bucket is closed ([`bucket_closed`]). Every write that can still change a closed bucket
//! (a late merge or fold, an import, a resource deleted, retention) bumps the bucket's
//! generation in the store and drops its summary; a reader keeps a summary only under the
//! generation it read *before* reading the cells ([`crate::DurableStore::put_bucket_summary`]),
//! so a summary computed from cells that a write changed in between is never kept. A bucket still
//! open is never kept, and writes to it bump nothing: the ingest path pays nothing for
//! summaries while data arrives on time.

use std::collections::BTreeSet;

use hitcount_wire::{MINUTE_MS, Sketch};

use crate::records::{StoreError, Tier};

/// A write into a bucket that ended at least this long before the writer's clock bumps the
/// bucket's generation (a late write); writes into later buckets bump nothing.
pub const SUMMARY_LATE_AFTER_MS: u64 = MINUTE_MS;
/// Readers keep summaries only of buckets that ended at least this long ago. The gap to
/// [`SUMMARY_LATE_AFTER_MS`] covers the clocks of several aggregators disagreeing and a merge
/// committing later than the clock it decided with: a write that is not late for its writer
/// can only reach a bucket no reader has kept yet.
pub const SUMMARY_CLOSED_AFTER_MS: u64 = 10 * MINUTE_MS;
const _: () = assert!(SUMMARY_CLOSED_AFTER_MS >= SUMMARY_LATE_AFTER_MS + CLOCKS_APART_MS_MAX);
/// How far the clocks of several aggregators may disagree (and a commit land after the clock it
/// decided with) for the rules of closed buckets to hold.
pub const CLOCKS_APART_MS_MAX: u64 = 5 * MINUTE_MS;
/// Resources one summary lists; a bucket with more is not summarised (read from its cells).
pub const SUMMARY_RESOURCES_MAX: usize = 200_000;
/// Bytes of an encoded summary: every listed resource at its longest, and a dense sketch.
pub const SUMMARY_BYTES_MAX: usize = SUMMARY_RESOURCES_MAX * 80 + 16 * 1024;

/// One bucket over every resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketSummary {
    /// Hits of every resource together.
    pub hits: u64,
    /// Visitors of every resource, united.
    pub visitors: Sketch,
    /// Each resource with hits in the bucket, and its hits, sorted by id.
    pub resources: Vec<(String, u64)>,
}

/// The encoded form (postcard, as the inbox's rows).
#[derive(serde::Serialize, serde::Deserialize)]
struct EncodedSummary {
    hits: u64,
    visitors: Vec<u8>,
    resources: Vec<(String, u64)>,
}

impl BucketSummary {
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.resources.len() <= SUMMARY_RESOURCES_MAX,
            "a summary lists at most SUMMARY_RESOURCES_MAX resources"
        );
        let encoded = EncodedSummary {
            hits: self.hits,
            visitors: self.visitors.to_bytes(),
            resources: self.resources.clone(),
        };
        postcard::to_allocvec(&encoded).expect("plain fields encode")
    }

    /// Decodes a summary this program encoded; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() > SUMMARY_BYTES_MAX {
            return Err(StoreError::CorruptSummary("over its size bound"));
        }
        let encoded: EncodedSummary = postcard::from_bytes(bytes)
            .map_err(|_| StoreError::CorruptSummary("does not decode"))?;
        if encoded.resources.len() > SUMMARY_RESOURCES_MAX {
            return Err(StoreError::CorruptSummary("too many resources"));
        }
        if !encoded
            .resources
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0)
        {
            return Err(StoreError::CorruptSummary("resources out of order"));
        }
        Ok(Self {
            hits: encoded.hits,
            visitors: Sketch::from_bytes(&encoded.visitors)?,
            resources: encoded.resources,
        })
    }
}

/// A bucket's generation, and whether a summary is kept under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketGeneration {
    pub bucket_ms: u64,
    pub generation: u64,
    pub kept: bool,
}

/// A kept summary, encoded, with the generation it was kept under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSummary {
    pub bucket_ms: u64,
    pub generation: u64,
    pub body: Vec<u8>,
}

/// What is kept of a period's buckets ([`crate::Store::kept_summaries`]): every bucket's
/// generation (absent: 0), and the summaries kept under them.
#[derive(Debug, Default)]
pub struct KeptSummaries {
    pub generations: std::collections::HashMap<u64, u64>,
    pub summaries: std::collections::BTreeMap<u64, std::sync::Arc<BucketSummary>>,
}

/// Bytes of decoded summaries one process holds in memory (as counted by [`memo_bytes`]).
pub const SUMMARY_MEMO_BYTES_MAX: usize = 128 * 1024 * 1024;

/// What a decoded summary is counted as in memory: each listed resource's id and its
/// bookkeeping, and a dense sketch (the most a sketch takes), whatever form it is in.
fn memo_bytes(summary: &BucketSummary) -> usize {
    const PAIR_OVERHEAD_BYTES: usize = 64;
    const ENTRY_BYTES: usize = 16 * 1024 + 256;
    ENTRY_BYTES
        + summary
            .resources
            .iter()
            .map(|(id, _)| id.len() + PAIR_OVERHEAD_BYTES)
            .sum::<usize>()
}

/// Decoded summaries this process read before, one generation per (tier, bucket): a summary
/// kept under a generation never changes (a write that would change it bumps the generation), so
/// a reader that finds the same generation again needs neither the body nor its decoding. Holds
/// at most [`SUMMARY_MEMO_BYTES_MAX`], forgetting the oldest first.
#[derive(Debug, Default)]
pub struct SummaryMemo {
    held: std::sync::Mutex<MemoEntries>,
}

#[derive(Debug, Default)]
struct MemoEntries {
    /// (tier, bucket) -> (generation, summary, its bytes).
    by_bucket: std::collections::HashMap<(Tier, u64), (u64, std::sync::Arc<BucketSummary>, usize)>,
    /// Insertion order; a bucket inserted again is found here twice, the older one stale.
    order: std::collections::VecDeque<(Tier, u64, u64)>,
    bytes: usize,
}

impl SummaryMemo {
    fn entries(&self) -> std::sync::MutexGuard<'_, MemoEntries> {
        self.held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn get(
        &self,
        tier: Tier,
        bucket_ms: u64,
        generation: u64,
    ) -> Option<std::sync::Arc<BucketSummary>> {
        match self.entries().by_bucket.get(&(tier, bucket_ms)) {
            Some((held, summary, _)) if *held == generation => Some(summary.clone()),
            _ => None,
        }
    }

    pub fn insert(
        &self,
        tier: Tier,
        bucket_ms: u64,
        generation: u64,
        summary: std::sync::Arc<BucketSummary>,
    ) {
        let bytes = memo_bytes(&summary);
        if bytes > SUMMARY_MEMO_BYTES_MAX {
            return;
        }
        let mut entries = self.entries();
        if let Some((_, _, replaced)) = entries.by_bucket.remove(&(tier, bucket_ms)) {
            entries.bytes -= replaced;
        }
        while entries.bytes + bytes > SUMMARY_MEMO_BYTES_MAX {
            let Some((old_tier, old_bucket, old_generation)) = entries.order.pop_front() else {
                break;
            };
            let current = entries
                .by_bucket
                .get(&(old_tier, old_bucket))
                .is_some_and(|(held, _, _)| *held == old_generation);
            if current && let Some((_, _, gone)) = entries.by_bucket.remove(&(old_tier, old_bucket))
            {
                entries.bytes -= gone;
            }
        }
        entries
            .by_bucket
            .insert((tier, bucket_ms), (generation, summary, bytes));
        entries.order.push_back((tier, bucket_ms, generation));
        entries.bytes += bytes;
        // Stale order entries (buckets inserted again) are bounded by the live ones.
        if entries.order.len() > 2 * entries.by_bucket.len() + 16 {
            let live = &entries.by_bucket;
            let kept: std::collections::VecDeque<_> = entries
                .order
                .iter()
                .filter(|(t, b, g)| live.get(&(*t, *b)).is_some_and(|(held, _, _)| held == g))
                .copied()
                .collect();
            entries.order = kept;
        }
        assert!(
            entries.bytes <= SUMMARY_MEMO_BYTES_MAX,
            "the memo stays within its bound"
        );
    }
}

/// What a reader may keep of closed buckets (a summary, or one resource's cells in `closed.rs`):
/// read before any generation or cell.
#[derive(Debug, Clone, Copy)]
pub struct Keeping {
    pub now_ms: u64,
    /// When the oldest row still in the durable inbox was appended (any process's): a bucket
    /// such a row may still change on time is not kept.
    pub inbox_oldest_ms: Option<u64>,
    /// The earliest minute of this process's unfolded rows: the cells it reads include them,
    /// the other processes' reads do not, so buckets from it on are not kept.
    pub unfolded_from_ms: u64,
}

impl Keeping {
    /// Whether the bucket at `bucket_ms` is closed, no unfolded row may change it on time, and
    /// retention leaves it whole for another day: a kept summary outlives the read that kept it.
    pub fn may_keep(&self, tier: Tier, bucket_ms: u64) -> bool {
        self.may_hold(tier, bucket_ms) && bucket_closed(tier, bucket_ms, self.now_ms)
    }

    /// As [`Keeping::may_keep`], but retention only has to have left the bucket whole by now
    /// (whatever the clocks of the processes that run it): what a read may hold in memory for
    /// itself and for later reads, which each check it again at their own clock (`closed.rs`).
    pub fn may_hold(&self, tier: Tier, bucket_ms: u64) -> bool {
        let ended_ms = bucket_ms + tier.resolution_ms();
        let whole = tier.retention_ms().is_none_or(|retention_ms| {
            bucket_ms > (self.now_ms + CLOCKS_APART_MS_MAX).saturating_sub(retention_ms)
        });
        ended_ms + SUMMARY_CLOSED_AFTER_MS <= self.now_ms
            && whole
            && ended_ms <= self.unfolded_from_ms
            && self
                .inbox_oldest_ms
                .is_none_or(|oldest_ms| ended_ms + SUMMARY_LATE_AFTER_MS <= oldest_ms)
    }
}

/// Whether a reader may keep the summary of `bucket_ms`: it ended at least
/// [`SUMMARY_CLOSED_AFTER_MS`] ago, and retention will not reach it within a day (retention
/// deletes such rows without asking readers).
pub fn bucket_closed(tier: Tier, bucket_ms: u64, now_ms: u64) -> bool {
    let ended_ms = bucket_ms + tier.resolution_ms();
    ended_ms + SUMMARY_CLOSED_AFTER_MS <= now_ms && far_from_retention(tier, bucket_ms, now_ms)
}

/// Whether retention leaves the bucket at `bucket_ms` whole for at least another day.
pub fn far_from_retention(tier: Tier, bucket_ms: u64, now_ms: u64) -> bool {
    tier.retention_ms().is_none_or(|retention| {
        bucket_ms
            > now_ms
                .saturating_sub(retention)
                .saturating_add(hitcount_wire::DAY_MS)
    })
}

/// The buckets among `cells` ((tier, bucket)) that a write at `now_ms` changes late: those whose
/// generation it bumps. Sorted, each once.
pub(crate) fn late_buckets(
    cells: impl IntoIterator<Item = (Tier, u64)>,
    now_ms: u64,
) -> BTreeSet<(Tier, u64)> {
    cells
        .into_iter()
        .filter(|(tier, bucket_ms)| {
            bucket_ms + tier.resolution_ms() + SUMMARY_LATE_AFTER_MS <= now_ms
        })
        .collect()
}

/// `buckets` and every coarser bucket holding one of them: what a write that may change a
/// bucket's finer rows bumps, since an open coarse bucket reads them (`rollup.rs`).
pub(crate) fn with_coarser(
    buckets: impl IntoIterator<Item = (Tier, u64)>,
) -> BTreeSet<(Tier, u64)> {
    let mut all = BTreeSet::new();
    for (tier, bucket_ms) in buckets {
        for coarser in Tier::ALL {
            if coarser.resolution_ms() >= tier.resolution_ms() {
                all.insert((coarser, crate::rollup::bucket_of(coarser, bucket_ms)));
            }
        }
    }
    all
}

/// Stored (tier code, bucket) rows as buckets, each once; unknown codes are skipped (no cell
/// has one).
pub(crate) fn stored_buckets<C: Into<i64> + Copy>(rows: &[(C, i64)]) -> BTreeSet<(Tier, u64)> {
    rows.iter()
        .filter_map(|(code, bucket_ms)| {
            Some((
                Tier::from_code((*code).into())?,
                u64::try_from(*bucket_ms).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hitcount_wire::HOUR_MS;

    #[test]
    fn a_summary_round_trips_and_bad_bytes_are_errors() {
        let mut visitors = Sketch::new();
        visitors.insert(b"a");
        let summary = BucketSummary {
            hits: 7,
            visitors,
            resources: vec![("a".into(), 3), ("b".into(), 4)],
        };
        assert_eq!(BucketSummary::decode(&summary.encode()).unwrap(), summary);
        assert!(BucketSummary::decode(b"\xff\xff\xff").is_err());
        let unsorted = BucketSummary {
            resources: vec![("b".into(), 1), ("a".into(), 1)],
            ..BucketSummary::default()
        };
        assert!(BucketSummary::decode(&unsorted.encode()).is_err());
    }

    #[test]
    fn the_memo_holds_one_generation_a_bucket_and_forgets_the_oldest_past_its_bound() {
        let memo = SummaryMemo::default();
        let empty = std::sync::Arc::new(BucketSummary::default());
        memo.insert(Tier::Hour, 0, 1, empty.clone());
        assert!(memo.get(Tier::Hour, 0, 1).is_some());
        memo.insert(Tier::Hour, 0, 2, empty.clone());
        assert!(
            memo.get(Tier::Hour, 0, 1).is_none(),
            "the older generation went"
        );
        assert!(memo.get(Tier::Hour, 0, 2).is_some());
        // Empty summaries still count (their sketch): the bound holds however many there are.
        let fits = SUMMARY_MEMO_BYTES_MAX / memo_bytes(&empty);
        for bucket in 0..fits as u64 + 10 {
            memo.insert(Tier::Minute, bucket * MINUTE_MS, 1, empty.clone());
        }
        assert!(memo.entries().bytes <= SUMMARY_MEMO_BYTES_MAX);
        assert!(
            memo.get(Tier::Hour, 0, 2).is_none(),
            "the oldest went first"
        );
        assert!(
            memo.get(Tier::Minute, (fits as u64 + 9) * MINUTE_MS, 1)
                .is_some()
        );
        let entries = memo.entries();
        assert!(entries.order.len() <= 2 * entries.by_bucket.len() + 16);
    }

    #[test]
    fn only_writes_into_buckets_ended_a_while_ago_are_late() {
        let now = 100 * HOUR_MS;
        let late = late_buckets(
            [
                (Tier::Hour, 99 * HOUR_MS),
                (Tier::Hour, 98 * HOUR_MS),
                (Tier::Minute, now - 2 * MINUTE_MS),
                (Tier::Minute, now - MINUTE_MS),
            ],
            now,
        );
        assert_eq!(
            late.into_iter().collect::<Vec<_>>(),
            [
                (Tier::Minute, now - 2 * MINUTE_MS),
                (Tier::Hour, 98 * HOUR_MS)
            ]
        );
    }

    #[test]
    fn a_bucket_is_closed_well_after_its_end_and_well_before_retention() {
        let now = 100 * HOUR_MS;
        assert!(!bucket_closed(Tier::Hour, 99 * HOUR_MS, now));
        assert!(!bucket_closed(
            Tier::Hour,
            99 * HOUR_MS,
            now + 9 * MINUTE_MS
        ));
        assert!(bucket_closed(
            Tier::Hour,
            99 * HOUR_MS,
            now + 10 * MINUTE_MS
        ));
        // The minute tier keeps 48 hours: a minute 47.5 hours old is too close to going.
        assert!(!bucket_closed(
            Tier::Minute,
            now - 47 * HOUR_MS - 30 * MINUTE_MS,
            now
        ));
        assert!(bucket_closed(Tier::Minute, now - 20 * HOUR_MS, now));
    }
}
