//! Reads of many resources for one request (the rankings and series across resources): from the
//! backend, one snapshot per chunk; while it is unavailable, a minute window reaching into the
//! hot tier's hour is answered from the hot tier alone, one read per resource (many in flight),
//! marked stale, as a read of one resource is (`HotTier::cells`).

use futures::{StreamExt, TryStreamExt};

use crate::facade::Store;
use crate::hot::{HotTier, hot_start_ms};
use crate::records::{CountCell, StoreError, Tier};

/// Resources one request may read from the hot tier alone while the database is down. The hot
/// tier answers one resource per read (the backend answers a chunk of them in one), so a
/// request over more is refused (503, [`StoreError::StaleReadTooWide`]) rather than held for
/// seconds.
pub const STALE_READ_RESOURCES_MAX: usize = 1_000;

/// A stale read's hot-tier reads in flight at once. The connection pipelines them (one round
/// trip carries many), so the thousand resources of the widest stale read take a few dozen
/// round trips, not a thousand; the bound keeps one request from filling Redis' queue.
const STALE_READS_IN_FLIGHT_MAX: usize = 32;

/// Where a reader's answer comes from. Decided before the first read and kept: one answer never
/// mixes the backend's whole period for some resources with the hot tier's hour for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Nothing read yet.
    Undecided,
    /// The backend answered: later chunks come from it too, or the read fails.
    Backend,
    /// The hot tier alone, for every chunk.
    HotTier,
}

/// Reads the cells of one request's resources, chunk by chunk, over one tier and window: from
/// the backend, or, when it is unavailable at the first read (to this reader or, moments ago, to
/// any read: the hot tier's breaker), from the hot tier alone for the whole request.
#[derive(Debug)]
pub struct ManyReader<'a> {
    store: &'a Store,
    tier: Tier,
    window_ms: (u64, u64),
    now_ms: u64,
    /// Resources the whole request reads, to refuse a stale answer over too many.
    resources: usize,
    source: Source,
}

impl Store {
    /// A reader for one request that reads `resources` resources in all, over `tier` in
    /// `window_ms` (`[start, end)`).
    pub fn many_reader(
        &self,
        tier: Tier,
        window_ms: (u64, u64),
        now_ms: u64,
        resources: usize,
    ) -> ManyReader<'_> {
        ManyReader {
            store: self,
            tier,
            window_ms,
            now_ms,
            resources,
            source: Source::Undecided,
        }
    }
}

impl ManyReader<'_> {
    /// Whether the answer lacks buckets: it came from the hot tier alone and the window starts
    /// before the hot tier's hour.
    pub fn stale(&self) -> bool {
        self.source == Source::HotTier && self.window_ms.0 < hot_start_ms(self.now_ms)
    }

    /// Whether to read from the hot tier alone: decided at the first call, where the backend was
    /// found unavailable moments ago and the hot tier can answer this request.
    pub fn skips_database(&mut self) -> bool {
        if self.source == Source::Undecided
            && let Some(hot) = self.stand_in()
            && hot.skips_database(self.now_ms)
        {
            self.source = Source::HotTier;
        }
        self.source == Source::HotTier
    }

    /// The backend answered a read the caller made beside this reader (bucket summaries): the
    /// answer is the backend's, and reads that may be stale stop skipping it.
    pub fn database_answered(&mut self) {
        self.source = Source::Backend;
        if let Some(hot) = self.store.hot_tier() {
            hot.database_answered();
        }
    }

    /// The backend answered `error` to a read the caller made beside this reader (bucket
    /// summaries) or to a chunk: `Ok` if the reader goes on from the hot tier alone, else the
    /// error to answer.
    pub fn database_failed(&mut self, error: StoreError) -> Result<(), StoreError> {
        let StoreError::Unavailable(reason) = error else {
            return Err(error);
        };
        let stand_in = match self.source {
            Source::Undecided => self.stand_in(),
            // Part of the answer is the backend's already.
            Source::Backend | Source::HotTier => None,
        };
        let Some(hot) = stand_in else {
            return Err(self.refusal(reason));
        };
        hot.database_unavailable(self.now_ms);
        self.source = Source::HotTier;
        Ok(())
    }

    /// The cells of each of `resource_ids` (distinct, at most `CELLS_READ_RESOURCES_MAX`), in
    /// order, as [`Store::cells_of_many`] reads them, or from the hot tier alone (see the type).
    pub async fn cells_of_many(
        &mut self,
        resource_ids: &[String],
    ) -> Result<Vec<Vec<CountCell>>, StoreError> {
        if !self.skips_database() {
            let (start_ms, end_ms) = self.window_ms;
            let read = self
                .store
                .cells_of_many(
                    resource_ids.to_vec(),
                    self.tier,
                    start_ms,
                    end_ms,
                    self.now_ms,
                )
                .await;
            match read {
                Ok(cells) => {
                    self.database_answered();
                    return Ok(cells);
                }
                Err(error) => self.database_failed(error)?,
            }
        }
        self.cells_alone(resource_ids).await
    }

    async fn cells_alone(
        &self,
        resource_ids: &[String],
    ) -> Result<Vec<Vec<CountCell>>, StoreError> {
        debug_assert_eq!(self.source, Source::HotTier);
        let hot = self
            .stand_in()
            .ok_or_else(|| StoreError::Unavailable("the hot tier became unavailable".to_owned()))?;
        // Collected first: a stream holding the mapping closure makes the request's future not
        // provably `Send` (the closure's lifetimes are higher-ranked).
        let reads: Vec<_> = resource_ids
            .iter()
            .map(|resource_id| hot.cells_alone(resource_id, self.window_ms, self.now_ms))
            .collect();
        // `buffered` keeps the order of `resource_ids`, as the caller expects.
        futures::stream::iter(reads)
            .buffered(STALE_READS_IN_FLIGHT_MAX)
            .try_collect()
            .await
    }

    /// The error to answer when the backend is unavailable and the hot tier cannot stand in:
    /// [`StoreError::StaleReadTooWide`] where only the number of resources kept it from it, so
    /// the client learns that a narrower read would answer.
    fn refusal(&self, reason: String) -> StoreError {
        if self.resources > STALE_READ_RESOURCES_MAX && self.hot_for_window().is_some() {
            tracing::warn!(%reason, "the database is unavailable");
            return StoreError::StaleReadTooWide {
                resources: self.resources,
            };
        }
        StoreError::Unavailable(reason)
    }

    /// The hot tier, if it can answer this request alone: [`Self::hot_for_window`], and the
    /// request small enough.
    fn stand_in(&self) -> Option<&HotTier> {
        self.hot_for_window()
            .filter(|_| self.resources <= STALE_READ_RESOURCES_MAX)
    }

    /// The hot tier, if it is healthy and holds part of the window (minutes reaching into its
    /// hour), however many resources the request reads.
    fn hot_for_window(&self) -> Option<&HotTier> {
        let reaches = self.tier == Tier::Minute && self.window_ms.1 > hot_start_ms(self.now_ms);
        self.store
            .hot_tier()
            .filter(|hot| reaches && hot.is_healthy())
    }
}
