//! The hot tier (`--redis-url`): the last hour of minute counts in Redis, in front of
//! PostgreSQL. Redis is a cache: a merge is acknowledged once PostgreSQL committed it, whatever
//! Redis does, and the hot tier can always be rebuilt from PostgreSQL.
//!
//! Per (resource, minute) two keys, written with one pipelined round trip per merge after the
//! commit: `{prefix}:h:{resource}:{minute_ms}` (INCRBY of the hits) and
//! `{prefix}:s:{resource}:{minute_ms}` (RPUSH of the entry's sketch, encoded by us). Both expire
//! an hour after their minute. Sketches are merged here, in Rust, when a query reads them: no
//! bytes from an edge ever reach a Redis HyperLogLog command (crafted HLL strings have corrupted
//! Redis memory, CVE-2025-32023), and concurrent merges cannot lose each other's visitors because
//! appending commutes.
//!
//! The tier answers queries only while it is known to be complete. Any failed or timed-out write
//! or read marks it unusable (queries go to PostgreSQL); the maintenance task then rebuilds it
//! from PostgreSQL once Redis answers again. `{prefix}:epoch` holds the id of the last rebuild,
//! checked by every read and write, so a Redis that restarted empty or was flushed is noticed.
//! A rebuild holds the write side of `order` while it snapshots PostgreSQL and rewrites Redis;
//! merges hold the read side from their commit until their Redis write, so no merge is in the
//! snapshot and then written again, or missed by both.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch};
use redis::aio::ConnectionManager;
use tokio::sync::RwLock;

use super::{ApplyOutcome, CountCell, DurableStore, MergeBatch, StoreError, Tier};

/// How far back the hot tier holds minutes.
pub const HOT_WINDOW_MS: u64 = 60 * MINUTE_MS;
/// Keys outlive their window by this much, so a query at the window's edge finds them.
const EXPIRY_MARGIN_MS: u64 = 5 * MINUTE_MS;
/// A Redis call taking longer than this counts as a failure (a paused or overloaded Redis must
/// not hold up ingest or queries).
pub const HOT_OPERATION_TIMEOUT_MS: u64 = 250;
/// A rebuild may take this long before it is abandoned and tried again.
pub const HOT_REBUILD_TIMEOUT_MS: u64 = 30_000;
/// Keys deleted per command when a rebuild clears the tier.
const REBUILD_DELETE_KEYS_MAX: usize = 1_000;

pub struct HotTier {
    connection: ConnectionManager,
    prefix: String,
    /// The hot tier holds every merge since the last rebuild.
    healthy: AtomicBool,
    /// The id of the rebuild Redis must still hold (see the module documentation).
    epoch: AtomicU64,
    order: RwLock<()>,
}

impl std::fmt::Debug for HotTier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HotTier")
            .field("prefix", &self.prefix)
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn redis_error(error: redis::RedisError) -> String {
    error.to_string()
}

async fn within<T>(
    limit_ms: u64,
    work: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_millis(limit_ms), work).await {
        Ok(result) => result.map_err(redis_error),
        Err(_) => Err(format!("no answer within {limit_ms} ms")),
    }
}

fn random_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap_or_else(|error| panic!("OS random source failed: {error}"));
    u64::from_le_bytes(bytes) | 1
}

impl HotTier {
    /// Prepares the connection without waiting for Redis: the aggregator starts (on PostgreSQL
    /// alone) even when Redis is down. The tier is unusable until the first rebuild, which the
    /// maintenance task runs within a second of Redis answering ([`HotTier::repair_if_needed`]).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|error| StoreError::Unavailable(format!("redis: {error}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(HOT_OPERATION_TIMEOUT_MS * 4)))
            .set_response_timeout(Some(Duration::from_millis(HOT_OPERATION_TIMEOUT_MS)))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| StoreError::Unavailable(format!("redis: {error}")))?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            healthy: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            order: RwLock::new(()),
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn hits_key(&self, resource_id: &str, minute_ms: u64) -> String {
        format!("{}:h:{resource_id}:{minute_ms}", self.prefix)
    }

    fn sketch_key(&self, resource_id: &str, minute_ms: u64) -> String {
        format!("{}:s:{resource_id}:{minute_ms}", self.prefix)
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    fn degrade(&self, why: &str) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                reason = why,
                "the hot tier is unusable; queries use PostgreSQL until it is rebuilt"
            );
            metrics::counter!("hitcount_hot_tier_failures_total").increment(1);
        }
    }

    /// Merges a group into the backend, then (if that committed and the tier is usable) the
    /// group's recent applied entries into Redis, one pipelined write per distinct cell.
    pub async fn apply_through(
        &self,
        backend: &dyn DurableStore,
        batches: Vec<MergeBatch>,
        now_ms: u64,
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        let hot_start = now_ms.saturating_sub(HOT_WINDOW_MS);
        let recent: Vec<(usize, DeltaEntry)> = batches
            .iter()
            .enumerate()
            .flat_map(|(index, batch)| {
                batch
                    .entries
                    .iter()
                    .filter(|entry| entry.minute * MINUTE_MS >= hot_start)
                    .map(move |entry| (index, entry.clone()))
            })
            .collect();
        let _order = self.order.read().await;
        let outcomes = backend.apply_group(batches, now_ms).await?;
        let mut cells: BTreeMap<(String, u64), (u64, Sketch)> = BTreeMap::new();
        for (index, entry) in recent {
            if matches!(outcomes[index], ApplyOutcome::Applied(_)) {
                let cell = cells
                    .entry((entry.resource_id, entry.minute * MINUTE_MS))
                    .or_default();
                cell.0 += entry.hits;
                cell.1.merge(&entry.visitors);
            }
        }
        if !cells.is_empty()
            && self.is_healthy()
            && let Err(reason) = self.write(&cells).await
        {
            self.degrade(&reason);
        }
        Ok(outcomes)
    }

    async fn write(&self, cells: &BTreeMap<(String, u64), (u64, Sketch)>) -> Result<(), String> {
        let mut pipeline = redis::pipe();
        pipeline.get(self.epoch_key());
        for ((resource_id, minute_ms), (hits, visitors)) in cells {
            let expire_at_s = ((minute_ms + HOT_WINDOW_MS + EXPIRY_MARGIN_MS) / 1_000) as i64;
            let hits_key = self.hits_key(resource_id, *minute_ms);
            pipeline
                .incr(&hits_key, *hits)
                .ignore()
                .expire_at(&hits_key, expire_at_s)
                .ignore();
            if !visitors.is_empty() {
                let sketch = self.sketch_key(resource_id, *minute_ms);
                pipeline
                    .rpush(&sketch, visitors.to_bytes())
                    .ignore()
                    .expire_at(&sketch, expire_at_s)
                    .ignore();
            }
        }
        let mut connection = self.connection.clone();
        let (epoch,): (Option<u64>,) = within(
            HOT_OPERATION_TIMEOUT_MS,
            pipeline.query_async(&mut connection),
        )
        .await?;
        if epoch != Some(self.epoch.load(Ordering::Acquire)) {
            return Err("Redis lost the hot tier (restarted or flushed)".to_owned());
        }
        Ok(())
    }

    /// Minute cells of the last hour from Redis, older ones and other tiers from the backend.
    pub async fn cells(
        &self,
        backend: &dyn DurableStore,
        resource_id: String,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<CountCell>, StoreError> {
        let now = crate::now_ms();
        // Whole minutes only: the hot part starts at a minute boundary inside the window.
        let hot_start = (now.saturating_sub(HOT_WINDOW_MS) / MINUTE_MS + 1) * MINUTE_MS;
        if tier != Tier::Minute || end_ms <= hot_start || !self.is_healthy() {
            metrics::counter!("hitcount_hot_tier_reads_total", "served" => "database").increment(1);
            return backend.cells(resource_id, tier, start_ms, end_ms).await;
        }
        let split = start_ms.max(hot_start);
        match self.read(&resource_id, split, end_ms).await {
            Ok(hot) => {
                let mut cells = if start_ms < split {
                    backend.cells(resource_id, tier, start_ms, split).await?
                } else {
                    Vec::new()
                };
                cells.extend(hot);
                metrics::counter!("hitcount_hot_tier_reads_total", "served" => "redis")
                    .increment(1);
                Ok(cells)
            }
            Err(reason) => {
                self.degrade(&reason);
                metrics::counter!("hitcount_hot_tier_reads_total", "served" => "database")
                    .increment(1);
                backend.cells(resource_id, tier, start_ms, end_ms).await
            }
        }
    }

    async fn read(
        &self,
        resource_id: &str,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<CountCell>, String> {
        let first = start_ms.div_ceil(MINUTE_MS) * MINUTE_MS;
        let minutes: Vec<u64> = (first..end_ms).step_by(MINUTE_MS as usize).collect();
        let mut pipeline = redis::pipe();
        pipeline.get(self.epoch_key());
        for minute_ms in &minutes {
            pipeline.get(self.hits_key(resource_id, *minute_ms)).lrange(
                self.sketch_key(resource_id, *minute_ms),
                0,
                -1,
            );
        }
        let mut connection = self.connection.clone();
        let values: Vec<redis::Value> = within(
            HOT_OPERATION_TIMEOUT_MS,
            pipeline.query_async(&mut connection),
        )
        .await?;
        let mut values = values.into_iter();
        let epoch: Option<u64> = values
            .next()
            .map(|value| redis::from_redis_value(value).unwrap_or(None))
            .unwrap_or(None);
        if epoch != Some(self.epoch.load(Ordering::Acquire)) {
            return Err("Redis lost the hot tier (restarted or flushed)".to_owned());
        }
        let mut cells = Vec::new();
        for minute_ms in minutes {
            let hits: Option<u64> = values
                .next()
                .map(redis::from_redis_value)
                .transpose()
                .map_err(|error| error.to_string())?
                .flatten();
            let fragments: Vec<Vec<u8>> = values
                .next()
                .map(redis::from_redis_value)
                .transpose()
                .map_err(|error| error.to_string())?
                .unwrap_or_default();
            let Some(hits) = hits.filter(|hits| *hits > 0) else {
                continue;
            };
            let mut visitors = Sketch::new();
            for fragment in fragments {
                let sketch = Sketch::from_bytes(&fragment)
                    .map_err(|error| format!("a hot sketch is corrupt: {error}"))?;
                visitors.merge(&sketch);
            }
            cells.push(CountCell {
                bucket_ms: minute_ms,
                hits,
                visitors,
            });
        }
        Ok(cells)
    }

    /// A deleted resource's hot keys go with it; if they cannot be deleted now the tier is
    /// rebuilt (without them) instead.
    pub async fn forget_resource(&self, resource_id: &str) {
        let _order = self.order.write().await;
        let pattern = format!("{}:*:{resource_id}:*", self.prefix);
        if let Err(reason) = self.delete_matching(&pattern).await {
            self.degrade(&reason);
        }
    }

    async fn delete_matching(&self, pattern: &str) -> Result<(), String> {
        let mut connection = self.connection.clone();
        let keys: Vec<String> = within(HOT_REBUILD_TIMEOUT_MS, async {
            let mut keys = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(REBUILD_DELETE_KEYS_MAX)
                    .query_async(&mut connection)
                    .await?;
                keys.extend(batch);
                if next == 0 {
                    return Ok(keys);
                }
                cursor = next;
            }
        })
        .await?;
        for chunk in keys.chunks(REBUILD_DELETE_KEYS_MAX) {
            let mut connection = self.connection.clone();
            within(
                HOT_OPERATION_TIMEOUT_MS,
                redis::cmd("DEL")
                    .arg(chunk)
                    .query_async::<()>(&mut connection),
            )
            .await?;
        }
        Ok(())
    }

    /// Rebuilds from the backend when the tier is unusable and Redis answers. Returns whether a
    /// rebuild ran.
    pub async fn repair_if_needed(
        &self,
        backend: &dyn DurableStore,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if self.is_healthy() {
            return Ok(false);
        }
        let mut connection = self.connection.clone();
        if within(
            HOT_OPERATION_TIMEOUT_MS,
            redis::cmd("PING").query_async::<String>(&mut connection),
        )
        .await
        .is_err()
        {
            return Ok(false);
        }
        let _order = self.order.write().await;
        let cells = backend
            .minute_cells_since(now_ms.saturating_sub(HOT_WINDOW_MS + EXPIRY_MARGIN_MS))
            .await?;
        let rebuilt = self.rewrite(&cells).await;
        match rebuilt {
            Ok(epoch) => {
                self.epoch.store(epoch, Ordering::Release);
                self.healthy.store(true, Ordering::Release);
                metrics::counter!("hitcount_hot_tier_rebuilds_total").increment(1);
                tracing::info!(
                    cells = cells.len(),
                    "the hot tier was rebuilt from PostgreSQL"
                );
                Ok(true)
            }
            Err(reason) => {
                tracing::warn!(%reason, "rebuilding the hot tier failed; will retry");
                Ok(false)
            }
        }
    }

    async fn rewrite(&self, cells: &[(String, CountCell)]) -> Result<u64, String> {
        // The old epoch goes first, so a half-done rebuild is never taken for a complete tier.
        let mut connection = self.connection.clone();
        within(
            HOT_OPERATION_TIMEOUT_MS,
            redis::cmd("DEL")
                .arg(self.epoch_key())
                .query_async::<()>(&mut connection),
        )
        .await?;
        self.delete_matching(&format!("{}:[hs]:*", self.prefix))
            .await?;
        for chunk in cells.chunks(REBUILD_DELETE_KEYS_MAX) {
            let mut pipeline = redis::pipe();
            for (resource_id, cell) in chunk {
                let expire_at_s =
                    ((cell.bucket_ms + HOT_WINDOW_MS + EXPIRY_MARGIN_MS) / 1_000) as i64;
                let hits = self.hits_key(resource_id, cell.bucket_ms);
                pipeline
                    .set(&hits, cell.hits)
                    .ignore()
                    .expire_at(&hits, expire_at_s)
                    .ignore();
                if !cell.visitors.is_empty() {
                    let sketch = self.sketch_key(resource_id, cell.bucket_ms);
                    pipeline
                        .rpush(&sketch, cell.visitors.to_bytes())
                        .ignore()
                        .expire_at(&sketch, expire_at_s)
                        .ignore();
                }
            }
            let mut connection = self.connection.clone();
            within(
                HOT_REBUILD_TIMEOUT_MS,
                pipeline.query_async::<()>(&mut connection),
            )
            .await?;
        }
        let epoch = random_epoch();
        let mut connection = self.connection.clone();
        within(
            HOT_OPERATION_TIMEOUT_MS,
            redis::cmd("SET")
                .arg(self.epoch_key())
                .arg(epoch)
                .query_async::<()>(&mut connection),
        )
        .await?;
        Ok(epoch)
    }
}
