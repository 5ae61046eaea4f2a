//! `Store`, what the aggregator calls: the durable backend, and the hot tier in front of it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use hitcount_wire::DeltaEntry;

use crate::closed::{self, ClosedCells};
use crate::contract::DurableStore;
use crate::embedded::EmbeddedStore;
use crate::group::WriteShape;
use crate::hot::{CellsRead, HotTier, hot_start_ms};
use crate::patterns::PatternRecord;
use crate::postgres::PgStore;
use crate::records::{
    ApplyOutcome, BatchKey, CountCell, CreateOutcome, GroupCommit, Import, ImportOutcome,
    MergeBatch, Pruned, ResourceRecord, StoreError, Tier, TokenRecord,
};
use crate::sealed::{Opened, SecretKeys};
use crate::summaries::{BucketGeneration, BucketSummary, Keeping, KeptSummaries, SummaryMemo};

/// A resource created under a name another resource has gets this many random bytes, in hex,
/// after it: enough that two renames of one name do not meet.
const RENAME_SUFFIX_BYTES: usize = 4;

/// What the rest of the aggregator uses: the durable backend, and with `--redis-url` the hot
/// tier in front of it for recent minute counts.
#[derive(Debug, Clone)]
pub struct Store {
    /// `patterns.rs` adds the patterns' methods on the same backend.
    pub(crate) backend: Arc<dyn DurableStore>,
    hot: Option<Arc<HotTier>>,
    /// Bucket summaries this process decoded (`summaries.rs`).
    memo: Arc<SummaryMemo>,
    /// One resource's closed buckets this process decoded (`closed.rs`).
    closed: Arc<ClosedCells>,
    /// What seals the edge secrets it stores (`sealed.rs`); none: stored as they are.
    secrets: Arc<SecretKeys>,
}

impl Store {
    /// A store over the given backend, without a hot tier.
    pub fn new(backend: Arc<dyn DurableStore>) -> Self {
        Self {
            backend,
            hot: None,
            memo: Arc::default(),
            closed: Arc::default(),
            secrets: Arc::default(),
        }
    }

    /// The embedded store in `data_dir`.
    pub fn open_embedded(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(Arc::new(EmbeddedStore::open(data_dir)?)))
    }

    /// PostgreSQL at `url`, migrated to the current schema.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        Ok(Self::new(Arc::new(PgStore::connect(url).await?)))
    }

    /// The durable store behind the hot tier (what the conformance suite and tools use directly).
    pub fn durable(&self) -> &dyn DurableStore {
        self.backend.as_ref()
    }

    /// Puts the hot tier in front (of PostgreSQL or Cosmos DB).
    pub fn with_hot_tier(mut self, hot: HotTier) -> Self {
        self.hot = Some(Arc::new(hot));
        self
    }

    pub fn hot_tier(&self) -> Option<&HotTier> {
        self.hot.as_deref()
    }

    /// Merges delta entries into every tier in one transaction, with the batch's dedupe record;
    /// with a hot tier, then into Redis (a delta is acknowledged once the backend committed it,
    /// whatever Redis does).
    pub async fn apply(
        &self,
        entries: Vec<DeltaEntry>,
        key: Option<BatchKey>,
        now_ms: u64,
    ) -> Result<ApplyOutcome, StoreError> {
        let committed = self
            .apply_group(MergeBatch::alone(entries, key), now_ms)
            .await?;
        Ok(MergeBatch::outcome_alone(&committed.outcomes))
    }

    /// [`DurableStore::apply_group`], then with a hot tier one Redis write for the group's
    /// applied entries.
    pub async fn apply_group(
        &self,
        batches: Vec<MergeBatch>,
        now_ms: u64,
    ) -> Result<GroupCommit, StoreError> {
        match &self.hot {
            Some(hot) => {
                hot.apply_through(self.backend.as_ref(), batches, now_ms)
                    .await
            }
            None => self.backend.apply_group(batches, now_ms).await,
        }
    }

    /// The cells of one tier in `[start_ms, end_ms)`, sorted by bucket, pending sketches merged;
    /// recent minutes from the hot tier when it is healthy.
    pub async fn cells(
        &self,
        resource_id: String,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<CountCell>, StoreError> {
        self.read_cells(resource_id, tier, (start_ms, end_ms), now_ms, false)
            .await
            .map(|read| read.cells)
    }

    /// As [`Store::cells`], but while the durable store is unavailable a window reaching into
    /// the hot tier is answered from it alone, marked stale ([`CellsRead`]).
    pub async fn cells_or_stale(
        &self,
        resource_id: String,
        tier: Tier,
        window_ms: (u64, u64),
        now_ms: u64,
    ) -> Result<CellsRead, StoreError> {
        self.read_cells(resource_id, tier, window_ms, now_ms, true)
            .await
    }

    /// The cells of closed buckets from memory where this process read them before at the
    /// generation the store has now (`closed.rs`), the others and the open tail as
    /// [`Store::read_fresh`] reads them.
    async fn read_cells(
        &self,
        resource_id: String,
        tier: Tier,
        (start_ms, end_ms): (u64, u64),
        now_ms: u64,
        stale_allowed: bool,
    ) -> Result<CellsRead, StoreError> {
        // A database found down moments ago is not waited for: the hot tier answers, stale.
        let skipped = stale_allowed
            && self
                .hot
                .as_ref()
                .is_some_and(|hot| hot.skips_database(now_ms));
        let held = match skipped {
            true => Ok(None),
            false => {
                self.read_closed(&resource_id, tier, (start_ms, end_ms), now_ms)
                    .await
            }
        };
        let (until_ms, mut cells) = match held {
            Ok(Some(held)) => held,
            Ok(None) => {
                return self
                    .read_fresh(resource_id, tier, (start_ms, end_ms), now_ms, stale_allowed)
                    .await;
            }
            // The database is down, even if only since the generations were read: what the hot
            // tier holds is still answered, stale, as if nothing were held.
            Err(StoreError::Unavailable(_)) if stale_allowed => {
                return self
                    .read_fresh(resource_id, tier, (start_ms, end_ms), now_ms, true)
                    .await;
            }
            Err(error) => return Err(error),
        };
        if until_ms >= end_ms {
            return Ok(CellsRead::fresh(cells));
        }
        let tail = self
            .read_fresh(resource_id, tier, (until_ms, end_ms), now_ms, stale_allowed)
            .await?;
        cells.extend(tail.cells);
        Ok(CellsRead {
            cells,
            stale: tail.stale,
        })
    }

    /// The cells of the window up to where the closed buckets a read may hold end, and that
    /// end; none if it holds none. Buckets before the span (near retention) and those not held
    /// at the generation the store has now are read from the store, the others from memory.
    async fn read_closed(
        &self,
        resource_id: &str,
        tier: Tier,
        (start_ms, end_ms): (u64, u64),
        now_ms: u64,
    ) -> Result<Option<(u64, Vec<CountCell>)>, StoreError> {
        let Some((from_ms, until_ms, stored)) = self
            .closed_generations(tier, (start_ms, end_ms), now_ms)
            .await?
        else {
            return Ok(None);
        };
        let mut cells = Vec::new();
        if from_ms > start_ms {
            let window = (start_ms, from_ms);
            let head = self
                .read_fresh(resource_id.to_owned(), tier, window, now_ms, false)
                .await?;
            cells.extend(head.cells);
        }
        let read = self
            .closed
            .look_up(resource_id, tier, (from_ms, until_ms), &stored, now_ms);
        let missing = match read.missing_span() {
            Some(span) => {
                self.read_fresh(resource_id.to_owned(), tier, span, now_ms, false)
                    .await?
                    .cells
            }
            None => Vec::new(),
        };
        cells.extend(self.closed.complete(read, missing));
        Ok(Some((until_ms, cells)))
    }

    /// The span of closed buckets a read may hold (`closed::closed_span`) and their
    /// generations in the store; none where there are none (or the backend keeps no
    /// generations).
    async fn closed_generations(
        &self,
        tier: Tier,
        window_ms: (u64, u64),
        now_ms: u64,
    ) -> Result<Option<(u64, u64, Vec<BucketGeneration>)>, StoreError> {
        if !self.backend.keeps_bucket_summaries() {
            return Ok(None);
        }
        // Only minutes are read from the hot tier.
        let hot_from_ms = match (&self.hot, tier) {
            (Some(_), Tier::Minute) => hot_start_ms(now_ms),
            _ => u64::MAX,
        };
        // Without the inbox's oldest row first (it can only narrow the span): a window with
        // nothing closed, such as the last hour's, costs no query.
        let widest = self.keeping_but_the_inbox(now_ms);
        if closed::closed_span(tier, window_ms, &widest, hot_from_ms).is_none() {
            return Ok(None);
        }
        let keeping = Keeping {
            inbox_oldest_ms: self.inbox_oldest_ms().await?,
            ..widest
        };
        let Some((from_ms, until_ms)) = closed::closed_span(tier, window_ms, &keeping, hot_from_ms)
        else {
            return Ok(None);
        };
        let stored = self
            .backend
            .bucket_generations(tier, from_ms, until_ms)
            .await?;
        Ok(Some((from_ms, until_ms, stored)))
    }

    /// The cells as the store holds them now: recent minutes from the hot tier when it is
    /// healthy, the rest from the backend.
    async fn read_fresh(
        &self,
        resource_id: String,
        tier: Tier,
        (start_ms, end_ms): (u64, u64),
        now_ms: u64,
        stale_allowed: bool,
    ) -> Result<CellsRead, StoreError> {
        match &self.hot {
            Some(hot) => {
                hot.cells(
                    self.backend.as_ref(),
                    resource_id,
                    tier,
                    start_ms,
                    end_ms,
                    now_ms,
                    stale_allowed,
                )
                .await
            }
            None => self
                .backend
                .cells(resource_id, tier, start_ms, end_ms, now_ms)
                .await
                .map(CellsRead::fresh),
        }
    }

    /// The cells of one tier in `[start_ms, end_ms)` of each of `resource_ids` (distinct, at most
    /// `CELLS_READ_RESOURCES_MAX`), in order, read in one snapshot of the backend. The hot tier
    /// answers one resource at a time, so a read of many goes to the backend whole; it holds
    /// every hit acknowledged through this process (and, without the inbox, through every
    /// aggregator).
    pub async fn cells_of_many(
        &self,
        resource_ids: Vec<String>,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Vec<CountCell>>, StoreError> {
        self.backend
            .cells_of_many(resource_ids, tier, start_ms, end_ms, now_ms)
            .await
    }

    /// [`DurableStore::keeps_bucket_summaries`].
    pub fn keeps_bucket_summaries(&self) -> bool {
        self.backend.keeps_bucket_summaries()
    }

    /// The earliest minute of this process's unfolded inbox rows, if any: kept summaries of
    /// buckets from it on may miss what the next fold adds.
    pub fn earliest_unfolded_minute_ms(&self) -> Option<u64> {
        self.backend
            .overlay()
            .and_then(crate::inbox::Overlay::earliest_minute_ms)
    }

    /// What is kept of `tier`'s buckets in `[start_ms, end_ms)`: every bucket's generation and
    /// the summaries kept under them, decoded, from memory when this process read them before.
    /// Read before any cell a new summary is computed from.
    pub async fn kept_summaries(
        &self,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<KeptSummaries, StoreError> {
        let rows = self
            .backend
            .bucket_generations(tier, start_ms, end_ms)
            .await?;
        let mut kept = KeptSummaries::default();
        let mut wanted = Vec::new();
        for row in &rows {
            kept.generations.insert(row.bucket_ms, row.generation);
            if !row.kept {
                continue;
            }
            match self.memo.get(tier, row.bucket_ms, row.generation) {
                Some(summary) => {
                    kept.summaries.insert(row.bucket_ms, summary);
                }
                None => wanted.push(row.bucket_ms),
            }
        }
        if wanted.is_empty() {
            return Ok(kept);
        }
        // A body kept under a later generation than the one just read is as good: it equals the
        // bucket's cells as of its keeping, which is after that read.
        for stored in self.backend.bucket_summaries(tier, wanted).await? {
            match BucketSummary::decode(&stored.body) {
                Ok(summary) => {
                    let summary = Arc::new(summary);
                    self.memo
                        .insert(tier, stored.bucket_ms, stored.generation, summary.clone());
                    kept.summaries.insert(stored.bucket_ms, summary);
                }
                Err(error) => {
                    tracing::warn!(%error, bucket_ms = stored.bucket_ms, "a kept summary is summed again");
                }
            }
        }
        Ok(kept)
    }

    /// What a read at `now_ms` may keep of closed buckets ([`Keeping`]): read before any
    /// generation or cell.
    pub async fn keeping(&self, now_ms: u64) -> Result<Keeping, StoreError> {
        Ok(Keeping {
            inbox_oldest_ms: self.inbox_oldest_ms().await?,
            ..self.keeping_but_the_inbox(now_ms)
        })
    }

    /// [`Store::keeping`] without the inbox's oldest row (no query): it allows at least as much.
    fn keeping_but_the_inbox(&self, now_ms: u64) -> Keeping {
        Keeping {
            now_ms,
            inbox_oldest_ms: None,
            unfolded_from_ms: self.earliest_unfolded_minute_ms().unwrap_or(u64::MAX),
        }
    }

    /// [`DurableStore::inbox_oldest_ms`].
    pub async fn inbox_oldest_ms(&self) -> Result<Option<u64>, StoreError> {
        self.backend.inbox_oldest_ms().await
    }

    /// [`DurableStore::resource_ids_between`], and the resources of this process's unfolded
    /// inbox rows in the period, sorted and each once.
    pub async fn resource_ids_between(
        &self,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let stored = self
            .backend
            .resource_ids_between(tier, start_ms, end_ms)
            .await?;
        let Some(overlay) = self.backend.overlay() else {
            return Ok(stored);
        };
        let mut ids = overlay.resource_ids_between(start_ms, end_ms);
        ids.extend(stored);
        Ok(ids.into_iter().collect())
    }

    /// [`DurableStore::put_bucket_summary`].
    pub async fn put_bucket_summary(
        &self,
        tier: Tier,
        bucket_ms: u64,
        generation: u64,
        body: Vec<u8>,
    ) -> Result<bool, StoreError> {
        self.backend
            .put_bucket_summary(tier, bucket_ms, generation, body)
            .await
    }

    /// [`DurableStore::import`]; with a hot tier and minute cells in the import, then a rebuild
    /// of the tier (only merges write to it otherwise; the rebuild reads just its window).
    pub async fn import(&self, import: Import, now_ms: u64) -> Result<ImportOutcome, StoreError> {
        let recent = import.cells.iter().any(|cell| cell.tier == Tier::Minute);
        let outcome = self.backend.import(import, now_ms).await?;
        if let (Some(hot), ImportOutcome::Imported { .. }, true) = (&self.hot, &outcome, recent) {
            // The import is committed whatever Redis does; a failed rebuild is retried by
            // `repair_hot_tier`, and reads use the backend meanwhile.
            if let Err(error) = hot.rebuild_now(self.backend.as_ref(), now_ms).await {
                tracing::warn!(%error, "rebuilding the hot tier after an import failed");
            }
        }
        Ok(outcome)
    }

    /// Keeps the hot tier in step: renews this process's lease, resolves its writes that a
    /// rebuild interrupted, and rebuilds from the backend when the tier is not known to be
    /// complete (Redis was unreachable, restarted or flushed, or an aggregator died between a
    /// commit and its Redis write). Returns whether this process ran a rebuild.
    pub async fn repair_hot_tier(&self, now_ms: u64) -> Result<bool, StoreError> {
        match &self.hot {
            Some(hot) => hot.maintain(self.backend.as_ref(), now_ms).await,
            None => Ok(false),
        }
    }

    /// Leaves the hot tier's membership (at a clean shutdown, after the last write), so the
    /// others need not rebuild for this process.
    pub async fn leave_hot_tier(&self) {
        if let Some(hot) = &self.hot {
            hot.leave().await;
        }
    }

    /// Folds pending sketches into their cells; returns how many pending rows were folded.
    pub async fn compact(&self) -> Result<u64, StoreError> {
        self.backend.compact().await
    }

    /// [`DurableStore::roll_up`].
    pub async fn roll_up(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.backend.roll_up(now_ms).await
    }

    /// [`DurableStore::fold_inbox`].
    pub async fn fold_inbox(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.backend.fold_inbox(now_ms).await
    }

    /// [`DurableStore::fold_closed`].
    pub async fn fold_closed(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.backend.fold_closed(now_ms).await
    }

    /// True when group commits append to the durable inbox.
    pub fn has_inbox(&self) -> bool {
        self.backend.write_shape() == WriteShape::Inbox
    }

    /// [`DurableStore::unfolded_entries`].
    pub fn unfolded_entries(&self) -> usize {
        self.backend.unfolded_entries()
    }

    pub async fn create_resource(
        &self,
        record: ResourceRecord,
    ) -> Result<CreateOutcome, StoreError> {
        self.backend.create_resource(record).await
    }

    pub async fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError> {
        self.backend.resources().await
    }

    /// Deletes a resource and purges its counts (in the hot tier too). False if it did not exist.
    pub async fn delete_resource(&self, id: String, now_ms: u64) -> Result<bool, StoreError> {
        let deleted = self.backend.delete_resource(id.clone(), now_ms).await?;
        if let Some(hot) = &self.hot {
            hot.forget_resource(&id, now_ms).await;
        }
        Ok(deleted)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.backend.tokens().await
    }

    /// Inserts a token, or replaces the one with the same id.
    pub async fn put_token(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.backend.put_token(record).await
    }

    pub async fn delete_token(&self, id: String) -> Result<bool, StoreError> {
        self.backend.delete_token(id).await
    }

    /// Seals the edge secrets it stores with `keys` (`--secret-key-file`) and opens them with
    /// them.
    pub fn with_secret_keys(mut self, keys: SecretKeys) -> Self {
        self.secrets = Arc::new(keys);
        self
    }

    /// Every stored edge key, opened: (edge id, secret, created at). A secret stored plain or
    /// under the previous key is sealed again with the current one in the same pass, only if it
    /// is still as read (a key another aggregator set meanwhile is kept): so after a rotation,
    /// and after an aggregator still on the old key stored one, the next start or reload leaves
    /// every secret under the current key. Fails whole, naming the edge, if one does not open,
    /// so that a caller keeps the keys it has rather than lose some.
    pub async fn edge_keys(&self) -> Result<Vec<(String, Vec<u8>, u64)>, StoreError> {
        let mut keys = self.backend.edge_keys().await?;
        for (edge_id, secret, _) in &mut keys {
            let stored = std::mem::take(secret);
            *secret = match self.secrets.open(edge_id, stored.clone())? {
                Opened::Current(plain) => plain,
                Opened::Reseal(plain) => {
                    let sealed = self.secrets.seal(edge_id, plain.clone())?;
                    if self
                        .backend
                        .replace_edge_key_if(edge_id.clone(), stored, sealed)
                        .await?
                    {
                        tracing::info!(%edge_id, "stored edge key sealed with --secret-key-file");
                    }
                    plain
                }
            };
        }
        Ok(keys)
    }

    /// Stores an edge's secret, sealed if there is a key.
    pub async fn put_edge_key(
        &self,
        edge_id: String,
        secret: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let stored = self.secrets.seal(&edge_id, secret)?;
        self.backend.put_edge_key(edge_id, stored, now_ms).await
    }

    pub async fn delete_edge_key(&self, edge_id: String) -> Result<bool, StoreError> {
        self.backend.delete_edge_key(edge_id).await
    }

    /// Deletes counts past retention and old dedupe records, in bounded transactions.
    pub async fn prune(&self, now_ms: u64) -> Result<Pruned, StoreError> {
        self.backend.prune(now_ms).await
    }
}

// The patterns' part of the store, on the same backend.
impl Store {
    pub async fn patterns(&self) -> Result<Vec<PatternRecord>, StoreError> {
        self.backend.patterns().await
    }

    /// Stores a new pattern; false if one with the same text exists.
    pub async fn create_pattern(&self, record: PatternRecord) -> Result<bool, StoreError> {
        self.backend.create_pattern(record).await
    }

    /// Deletes a pattern (the resources it created stay); false if it did not exist.
    pub async fn delete_pattern(&self, pattern: String) -> Result<bool, StoreError> {
        self.backend.delete_pattern(pattern).await
    }

    /// Adds refused hits to the patterns' stored counters (patterns deleted meanwhile are
    /// skipped), in one transaction.
    pub async fn add_refused_hits(&self, counts: Vec<(String, u64)>) -> Result<(), StoreError> {
        self.backend.add_refused_hits(counts).await
    }

    /// The stored resources among `ids`, and (if asked) every resource created since
    /// `created_since_ms`: what a cache reloaded a few seconds ago may lack.
    pub async fn resources_current(
        &self,
        ids: Vec<String>,
        created_since_ms: Option<u64>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        self.backend.resources_current(ids, created_since_ms).await
    }

    /// Creates the resources that do not exist yet and returns the stored record of every id
    /// asked for: the new ones, and those another aggregator created first (creating an id twice
    /// is one resource, not an error). A record whose name another resource already has is
    /// created under its name with a random suffix, since names are unique too.
    pub async fn create_resources_if_absent(
        &self,
        records: Vec<ResourceRecord>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        let mut stored = self
            .backend
            .insert_resources_if_absent(records.clone())
            .await?;
        // By a set of the stored ids: a pattern creates up to a batch's thousands of ids in one
        // call, and searching the stored list for each was quadratic (16 of the group bench's 32
        // billion instructions, creating 100,000 resources in calls of 10,000; BENCHMARKS.md,
        // "The group path").
        let stored_ids: HashSet<&str> = stored.iter().map(|record| record.id.as_str()).collect();
        let renamed: Vec<ResourceRecord> = records
            .into_iter()
            .filter(|record| !stored_ids.contains(record.id.as_str()))
            .map(|record| ResourceRecord {
                name: format!(
                    "{} ({})",
                    record.name,
                    crate::random_hex(RENAME_SUFFIX_BYTES)
                ),
                ..record
            })
            .collect();
        if !renamed.is_empty() {
            stored.extend(self.backend.insert_resources_if_absent(renamed).await?);
        }
        Ok(stored)
    }
}
