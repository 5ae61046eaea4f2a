//! Reads of many resources for one request (the rankings and series across resources): from the
//! backend, one snapshot per chunk; while it is unavailable, a minute window reaching into the
//! hot tier's hour is answered from the hot tier alone, one resource at a time, marked stale, as
//! a read of one resource is (`HotTier::cells`).

use crate::facade::Store;
use crate::hot::{HotTier, hot_start_ms};
use crate::records::{CountCell, StoreError, Tier};

/// Resources one request may read from the hot tier alone while the database is down. The hot
/// tier answers one resource per round trip (the backend answers a chunk of them in one), so a
/// request over more is refused (503) rather than held for seconds.
pub const STALE_READ_RESOURCES_MAX: usize = 1_000;

/// Reads the cells of one request's resources, chunk by chunk, over one tier and window.
/// Once the backend answered unavailable (to this reader or, moments ago, to any read: the hot
/// tier's breaker), every later chunk comes from the hot tier alone and the answer is stale.
#[derive(Debug)]
pub struct ManyReader<'a> {
    store: &'a Store,
    tier: Tier,
    window_ms: (u64, u64),
    now_ms: u64,
    /// Resources the whole request reads, to refuse a stale answer over too many.
    resources: usize,
    stale: bool,
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
            stale: false,
        }
    }
}

impl ManyReader<'_> {
    /// Whether what this reader answered so far is the hot tier's alone.
    pub fn stale(&self) -> bool {
        self.stale
    }

    /// Whether a read of the backend should be skipped: it was found unavailable moments ago
    /// and the hot tier can answer this window.
    pub fn skips_database(&mut self) -> bool {
        if !self.stale
            && let Some(hot) = self.hot_for_window()
            && self.resources <= STALE_READ_RESOURCES_MAX
            && hot.skips_database(self.now_ms)
        {
            self.stale = true;
        }
        self.stale
    }

    /// The backend answered a read the caller made beside this reader: reads that may be stale
    /// stop skipping it (the hot tier's breaker closes).
    pub fn database_answered(&self) {
        if let Some(hot) = self.hot_for_window() {
            hot.database_answered();
        }
    }

    /// The backend answered `error` to a read the caller made beside this reader (bucket
    /// summaries): `Ok` if the reader goes on from the hot tier alone, else the error to answer.
    pub fn database_failed(&mut self, error: StoreError) -> Result<(), StoreError> {
        let StoreError::Unavailable(reason) = error else {
            return Err(error);
        };
        let Some(hot) = self.hot_for_window() else {
            return Err(StoreError::Unavailable(reason));
        };
        hot.database_unavailable(self.now_ms);
        if self.resources > STALE_READ_RESOURCES_MAX {
            return Err(StoreError::Unavailable(format!(
                "{reason}; the hot tier answers at most {STALE_READ_RESOURCES_MAX} resources \
                 alone, and this request selects {}: narrow it with a prefix",
                self.resources
            )));
        }
        self.stale = true;
        Ok(())
    }

    /// The cells of each of `resource_ids` (distinct, at most `CELLS_READ_RESOURCES_MAX`), in
    /// order, as [`Store::cells_of_many`] reads them, or from the hot tier alone (see the type).
    pub async fn cells_of_many(
        &mut self,
        resource_ids: Vec<String>,
    ) -> Result<Vec<Vec<CountCell>>, StoreError> {
        if !self.skips_database() {
            // The ids again if the backend fails and the hot tier answers instead.
            let kept = self.hot_for_window().map(|_| resource_ids.clone());
            let (start_ms, end_ms) = self.window_ms;
            let read = self
                .store
                .cells_of_many(resource_ids, self.tier, start_ms, end_ms, self.now_ms)
                .await;
            match (read, kept) {
                (Ok(cells), _) => {
                    self.database_answered();
                    return Ok(cells);
                }
                (Err(error), Some(kept)) => {
                    self.database_failed(error)?;
                    return self.cells_alone(&kept).await;
                }
                (Err(error), None) => return Err(error),
            }
        }
        self.cells_alone(&resource_ids).await
    }

    async fn cells_alone(
        &self,
        resource_ids: &[String],
    ) -> Result<Vec<Vec<CountCell>>, StoreError> {
        debug_assert!(
            self.stale,
            "only a stale read answers from the hot tier alone"
        );
        let hot = self
            .hot_for_window()
            .expect("a stale reader has a hot tier that holds its window");
        let mut cells = Vec::with_capacity(resource_ids.len());
        for resource_id in resource_ids {
            cells.push(
                hot.cells_alone(resource_id, self.window_ms, self.now_ms)
                    .await?,
            );
        }
        Ok(cells)
    }

    /// The hot tier, if it holds part of this read's window: minutes reaching into its hour.
    fn hot_for_window(&self) -> Option<&HotTier> {
        let reaches = self.tier == Tier::Minute && self.window_ms.1 > hot_start_ms(self.now_ms);
        self.store.hot.as_deref().filter(|_| reaches)
    }
}
