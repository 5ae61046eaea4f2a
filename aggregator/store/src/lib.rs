//! The stores counts live in. [`Store`] is what the rest of the aggregator uses; behind it is
//! either the embedded store (`embedded.rs`, SQLite in one file in the data directory) or
//! PostgreSQL (`postgres.rs`, which is also what Azure Cosmos DB for PostgreSQL / Citus speaks).
//! Both keep the same rules (their table and column names differ, see ARCHITECTURE.md): three tiers written in the merge's transaction, the dedupe
//! record in that same transaction, sketches appended to `pending_sketches` and folded later.

mod embedded;
pub mod hot;
pub mod inbox;
mod postgres;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use hot::HotTier;

use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch};

pub use embedded::EmbeddedStore;
pub use postgres::PgStore;

/// `bytes` random bytes from the OS, hex-encoded: ids of tokens, resources and hot-tier
/// generations, and the suffix that tells a renamed resource apart.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The OS random source failing is not something a server can continue through.
    getrandom::fill(&mut buffer).unwrap_or_else(|error| panic!("OS random source failed: {error}"));
    hex::encode(buffer)
}

pub use hitcount_wire::{DAY_MS, HOUR_MS};
/// Minute counts are kept for 48 hours.
pub const MINUTE_TIER_RETENTION_MS: u64 = 48 * HOUR_MS;
/// Hour counts are kept for 90 days; day counts are kept until the resource's retention ends.
pub const HOUR_TIER_RETENTION_MS: u64 = 90 * DAY_MS;
/// Deltas whose window ended longer ago than this are refused: their dedupe records may be gone.
pub const DELTA_AGE_MS_MAX: u64 = 7 * DAY_MS;
/// Dedupe records outlive the age limit by a day, so every batch that can be accepted is checked.
pub const DEDUPE_RETENTION_MS: u64 = DELTA_AGE_MS_MAX + DAY_MS;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Minute,
    Hour,
    Day,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Minute, Tier::Hour, Tier::Day];

    pub fn resolution_ms(self) -> u64 {
        match self {
            Self::Minute => MINUTE_MS,
            Self::Hour => HOUR_MS,
            Self::Day => DAY_MS,
        }
    }

    /// How long this tier's counts are kept, if not forever.
    pub fn retention_ms(self) -> Option<u64> {
        match self {
            Self::Minute => Some(MINUTE_TIER_RETENTION_MS),
            Self::Hour => Some(HOUR_TIER_RETENTION_MS),
            Self::Day => None,
        }
    }

    /// The name used in the API (`granularity=minute`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            Self::Minute => 0,
            Self::Hour => 1,
            Self::Day => 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is busy")]
    Busy,
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("could not create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("a stored sketch is corrupt: {0}")]
    CorruptSketch(#[from] hitcount_wire::WireError),
    #[error("a store task failed: {0}")]
    Task(String),
    #[error("postgresql: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("postgresql migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("an inbox row is corrupt: {0}")]
    CorruptInbox(&'static str),
    #[error("an inbox row does not decode: {0}")]
    InboxEncoding(#[from] postcard::Error),
    /// The database cannot be reached or is shutting down: nothing was written, retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

/// The idempotency key of an edge batch and a digest of its body.
#[derive(Debug, Clone)]
pub struct BatchKey {
    pub edge_id: String,
    pub boot_epoch: u64,
    pub sequence: u64,
    pub body_sha256: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    pub entries: u64,
    pub hits: u64,
    /// Entries for resources that do not exist (never created, or deleted): not counted.
    pub unknown_resource_entries: u64,
    /// The hits of those entries.
    pub unknown_resource_hits: u64,
    /// Entries older than their resource's retention: not counted.
    pub expired_entries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied(Applied),
    /// The same batch was applied before; nothing changed.
    Duplicate,
    /// A batch with the same key but a different body was applied before; nothing changed.
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRecord {
    pub id: String,
    pub name: String,
    pub retention_days: Option<u32>,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub token_sha256: [u8; 32],
    pub scopes: Vec<String>,
    pub created_at_ms: u64,
}

impl TokenRecord {
    /// A token as both backends store it: the hash as bytes and the scopes comma-separated
    /// ([`TokenRecord::stored_scopes`]). A hash of the wrong length (never written here) becomes
    /// all zeroes, which no token hashes to, so such a row authenticates nobody.
    pub(crate) fn from_stored(
        id: String,
        name: String,
        token_sha256: Vec<u8>,
        scopes: &str,
        created_at_ms: u64,
    ) -> Self {
        Self {
            id,
            name,
            token_sha256: token_sha256.try_into().unwrap_or([0; 32]),
            scopes: scopes.split(',').map(str::to_owned).collect(),
            created_at_ms,
        }
    }

    pub(crate) fn stored_scopes(&self) -> String {
        self.scopes.join(",")
    }
}

/// One stored cell of one tier.
#[derive(Debug, Clone)]
pub struct CountCell {
    pub bucket_ms: u64,
    pub hits: u64,
    pub visitors: Sketch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub count_rows: u64,
    pub dedupe_rows: u64,
}

/// The retention job deletes at most this many rows per transaction, so ingest never waits long.
pub(crate) const RETENTION_DELETE_ROWS_MAX: usize = 10_000;
/// Pending sketch rows folded into cells per compaction transaction: small transactions, so that
/// merges wait little for the cells' row locks.
pub(crate) const COMPACTION_ROWS_MAX: usize = 10_000;
/// The encoding of an empty sketch.
pub(crate) const EMPTY_SKETCH: &[u8] = &[0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    IdTaken,
    NameTaken,
}

/// One batch of a group merge: an edge's delta batch with its idempotency key, or a window of
/// direct hits without one.
#[derive(Debug, Clone)]
pub struct MergeBatch {
    pub entries: Vec<DeltaEntry>,
    pub key: Option<BatchKey>,
}

impl MergeBatch {
    /// A group of one batch.
    pub fn alone(entries: Vec<DeltaEntry>, key: Option<BatchKey>) -> Vec<Self> {
        vec![Self { entries, key }]
    }

    /// The outcome of a group of one.
    fn outcome_alone(outcomes: &[ApplyOutcome]) -> ApplyOutcome {
        assert_eq!(outcomes.len(), 1, "one outcome per batch");
        outcomes[0]
    }
}

/// The durable store's contract: the embedded store ([`EmbeddedStore`]) and PostgreSQL
/// ([`PgStore`]) implement it, and one conformance suite (`aggregator/tests/store_contract.rs`)
/// holds both to it. Every method means the same for both.
#[async_trait::async_trait]
pub trait DurableStore: PatternStore + std::fmt::Debug + Send + Sync {
    /// Merges a group of batches in one transaction: every batch's dedupe record, one upsert per
    /// distinct cell of every tier for the whole group, one pending sketch per distinct
    /// (resource, minute). Returns one outcome per batch, in order. A batch applied before (in
    /// an earlier transaction or earlier in this group) is `Duplicate` with the same body and
    /// `Conflict` with another, and changes nothing; it does not fail the others.
    async fn apply_group(
        &self,
        batches: Vec<MergeBatch>,
        now_ms: u64,
    ) -> Result<GroupCommit, StoreError>;

    /// The cells of one tier in `[start_ms, end_ms)`, sorted by bucket, pending sketches merged,
    /// read in one snapshot. `now_ms` is the reader's clock: unfolded inbox cells past their
    /// tier's retention by then are not counted, as a fold would drop them.
    async fn cells(
        &self,
        resource_id: String,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<CountCell>, StoreError>;

    /// Every minute cell from `start_ms` on with its pending sketches merged, read in one
    /// snapshot, sorted by (resource, minute): what the hot tier is rebuilt from.
    async fn minute_cells_since(&self, start_ms: u64) -> Result<MinuteCells, StoreError>;

    /// Folds pending sketches into their cells; returns how many pending rows were folded. Safe
    /// to run from several processes on one database at once.
    async fn compact(&self) -> Result<u64, StoreError>;

    async fn create_resource(&self, record: ResourceRecord) -> Result<CreateOutcome, StoreError>;

    /// Every resource, sorted by id.
    async fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError>;

    /// Deletes a resource and purges its counts (its unfolded inbox cells are folded first, as of
    /// `now_ms`). False if it did not exist.
    async fn delete_resource(&self, id: String, now_ms: u64) -> Result<bool, StoreError>;

    /// Every token, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Inserts a token, or replaces the one with the same id.
    async fn put_token(&self, record: TokenRecord) -> Result<(), StoreError>;

    async fn delete_token(&self, id: String) -> Result<bool, StoreError>;

    /// Every stored edge key as (edge id, secret, created at), sorted by edge id.
    async fn edge_keys(&self) -> Result<Vec<(String, Vec<u8>, u64)>, StoreError>;

    /// Inserts an edge key, or replaces the one of the same edge.
    async fn put_edge_key(
        &self,
        edge_id: String,
        secret: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), StoreError>;

    async fn delete_edge_key(&self, edge_id: String) -> Result<bool, StoreError>;

    /// Deletes counts past retention and old dedupe records, in bounded transactions.
    async fn prune(&self, now_ms: u64) -> Result<Pruned, StoreError>;

    /// With the inbox shape, folds every inbox row (this process's and any other's) into the
    /// counters, in bounded transactions, one folder per database at a time; returns how many
    /// rows were folded (0 when another process holds the fold, or without the inbox). Also
    /// forgets the overlay's rows that another process folded.
    async fn fold_inbox(&self, now_ms: u64) -> Result<u64, StoreError>;

    /// With the durable inbox, this process's unfolded rows.
    fn overlay(&self) -> Option<&inbox::Overlay>;

    /// Cells this process holds for its unfolded inbox rows (0 without the inbox).
    fn unfolded_entries(&self) -> usize {
        self.overlay().map_or(0, inbox::Overlay::entries)
    }

    /// How this backend's group commits write.
    fn write_shape(&self) -> WriteShape {
        WriteShape::of(self.overlay())
    }
}

mod patterns;
pub use patterns::{PatternRecord, PatternStore};

/// What a group merge returns: one outcome per batch, and on PostgreSQL the id of the transaction
/// that committed them (if any batch was applied), which the hot tier compares with rebuild
/// snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCommit {
    pub outcomes: Vec<ApplyOutcome>,
    pub transaction: Option<u64>,
}

/// Minute cells read in one snapshot, and on PostgreSQL which transactions that snapshot sees.
#[derive(Debug, Clone, Default)]
pub struct MinuteCells {
    pub cells: Vec<(String, CountCell)>,
    pub snapshot: Option<TransactionSnapshot>,
}

/// Which transactions a PostgreSQL snapshot sees, as `pg_current_snapshot()` writes it
/// (`xmin:xmax:in-progress,...`): every transaction below `xmin`, and those below `xmax` that
/// were not in progress. Ids are 64-bit (`xid8`), so they never wrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSnapshot {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
}

impl TransactionSnapshot {
    /// Parses `pg_current_snapshot()::text`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
        };
        if parts.next().is_some() || xmin > xmax {
            return None;
        }
        Some(Self {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// True when the transaction had committed (or aborted) before the snapshot was taken.
    pub fn sees(&self, transaction: u64) -> bool {
        transaction < self.xmin
            || (transaction < self.xmax && !self.in_progress.contains(&transaction))
    }
}

impl std::fmt::Display for TransactionSnapshot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let in_progress: Vec<String> = self.in_progress.iter().map(u64::to_string).collect();
        write!(
            formatter,
            "{}:{}:{}",
            self.xmin,
            self.xmax,
            in_progress.join(",")
        )
    }
}

/// A batch key as the dedupe table keys it.
pub(crate) type KeyId = (String, u64, u64);

impl BatchKey {
    pub(crate) fn id(&self) -> KeyId {
        (self.edge_id.clone(), self.boot_epoch, self.sequence)
    }
}

/// What the dedupe table says about a key of the group, once the group's records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// This transaction recorded the key, for the group's batch at this index.
    Now { batch: usize },
    /// The key was recorded by an earlier transaction, with this body digest.
    Before([u8; 32]),
}

/// The group's distinct keys in key order (so concurrent groups lock dedupe rows in the same
/// order), each with the index of the first batch that carries it.
pub(crate) fn first_occurrences(batches: &[MergeBatch]) -> Vec<(usize, &BatchKey)> {
    let mut firsts: BTreeMap<KeyId, (usize, &BatchKey)> = BTreeMap::new();
    for (index, batch) in batches.iter().enumerate() {
        if let Some(key) = &batch.key {
            firsts.entry(key.id()).or_insert((index, key));
        }
    }
    firsts.into_values().collect()
}

/// How a group commit writes its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteShape {
    /// Every tier's cells in the group's transaction (`--fold-interval-ms 0`).
    #[default]
    Direct,
    /// The group's minute cells as inbox rows, folded into the tiers later (see `inbox.rs`).
    Inbox,
}

impl WriteShape {
    /// The shape of a backend with this overlay (the inbox's), or none.
    pub(crate) fn of(overlay: Option<&inbox::Overlay>) -> Self {
        match overlay {
            Some(_) => Self::Inbox,
            None => Self::Direct,
        }
    }
}

/// What one group merge writes, and each batch's answer.
#[derive(Debug, Default)]
pub(crate) struct GroupWrites {
    pub outcomes: Vec<ApplyOutcome>,
    /// Hits to add per cell of every tier, in key order (concurrent merges cannot deadlock);
    /// written by the direct shape and by folds.
    pub cells: BTreeMap<(String, Tier, u64), u64>,
    /// Hits per (resource, minute ms): what the inbox shape appends instead of `cells`.
    pub minutes: BTreeMap<(String, u64), u64>,
    /// Visitors per (resource, minute ms), merged across the group: one pending row each.
    pub sketches: BTreeMap<(String, u64), Sketch>,
}

impl GroupWrites {
    pub fn applied_any(&self) -> bool {
        self.outcomes
            .iter()
            .any(|outcome| matches!(outcome, ApplyOutcome::Applied(_)))
    }
}

/// Decides every batch of a group from the dedupe records (`recorded` holds every key of the
/// group) and folds the entries of those to apply into the group's writes. `retention` holds
/// the retention of every existing resource the group names; a resource missing from it does
/// not exist and its entries are not counted.
pub(crate) fn fold_group(
    batches: &[MergeBatch],
    recorded: &HashMap<KeyId, Recorded>,
    retention: &HashMap<String, Option<u32>>,
    now_ms: u64,
    shape: WriteShape,
) -> GroupWrites {
    let mut writes = GroupWrites::default();
    for (index, batch) in batches.iter().enumerate() {
        if let Some(key) = &batch.key {
            let digest_kept = match recorded.get(&key.id()) {
                Some(Recorded::Now { batch }) if *batch == index => None,
                Some(Recorded::Now { batch }) => {
                    batches[*batch].key.as_ref().map(|first| first.body_sha256)
                }
                Some(Recorded::Before(digest)) => Some(*digest),
                None => unreachable!("every key of the group was recorded or looked up"),
            };
            if let Some(digest) = digest_kept {
                writes.outcomes.push(if digest == key.body_sha256 {
                    ApplyOutcome::Duplicate
                } else {
                    ApplyOutcome::Conflict
                });
                continue;
            }
        }
        let mut applied = Applied::default();
        for entry in &batch.entries {
            let Some(retention_days) = retention.get(&entry.resource_id) else {
                applied.unknown_resource_entries += 1;
                applied.unknown_resource_hits += entry.hits;
                continue;
            };
            let Some(buckets) = entry_buckets(entry, *retention_days, now_ms) else {
                applied.expired_entries += 1;
                continue;
            };
            match shape {
                WriteShape::Direct => {
                    for (tier, bucket_ms) in buckets {
                        *writes
                            .cells
                            .entry((entry.resource_id.clone(), tier, bucket_ms))
                            .or_default() += entry.hits;
                    }
                }
                WriteShape::Inbox => {
                    *writes
                        .minutes
                        .entry((entry.resource_id.clone(), entry.minute * MINUTE_MS))
                        .or_default() += entry.hits;
                }
            }
            if !entry.visitors.is_empty() {
                writes
                    .sketches
                    .entry((entry.resource_id.clone(), entry.minute * MINUTE_MS))
                    .or_default()
                    .merge(&entry.visitors);
            }
            applied.entries += 1;
            applied.hits += entry.hits;
        }
        writes.outcomes.push(ApplyOutcome::Applied(applied));
    }
    writes
}

/// Every resource id a group names, each once, sorted.
pub(crate) fn group_resource_ids(batches: &[MergeBatch]) -> Vec<&str> {
    let ids: BTreeSet<&str> = batches
        .iter()
        .flat_map(|batch| batch.entries.iter().map(|entry| entry.resource_id.as_str()))
        .collect();
    ids.into_iter().collect()
}

/// What the rest of the aggregator uses: the durable backend, and with `--redis-url` the hot
/// tier in front of it for recent minute counts.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn DurableStore>,
    hot: Option<Arc<HotTier>>,
}

impl Store {
    /// A store over the given backend, without a hot tier.
    pub fn new(backend: Arc<dyn DurableStore>) -> Self {
        Self { backend, hot: None }
    }

    /// The embedded store in `data_dir`.
    pub fn open_embedded(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Arc::new(EmbeddedStore::open(data_dir)?),
            hot: None,
        })
    }

    /// PostgreSQL at `url`, migrated to the current schema.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Arc::new(PgStore::connect(url).await?),
            hot: None,
        })
    }

    /// The durable store behind the hot tier (what the conformance suite and tools use directly).
    pub fn durable(&self) -> &dyn DurableStore {
        self.backend.as_ref()
    }

    /// Puts the hot tier in front (PostgreSQL only).
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
        match &self.hot {
            Some(hot) => {
                hot.cells(
                    self.backend.as_ref(),
                    resource_id,
                    tier,
                    start_ms,
                    end_ms,
                    now_ms,
                )
                .await
            }
            None => {
                self.backend
                    .cells(resource_id, tier, start_ms, end_ms, now_ms)
                    .await
            }
        }
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

    /// [`DurableStore::fold_inbox`].
    pub async fn fold_inbox(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.backend.fold_inbox(now_ms).await
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

    pub async fn edge_keys(&self) -> Result<Vec<(String, Vec<u8>, u64)>, StoreError> {
        self.backend.edge_keys().await
    }

    pub async fn put_edge_key(
        &self,
        edge_id: String,
        secret: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.backend.put_edge_key(edge_id, secret, now_ms).await
    }

    pub async fn delete_edge_key(&self, edge_id: String) -> Result<bool, StoreError> {
        self.backend.delete_edge_key(edge_id).await
    }

    /// Deletes counts past retention and old dedupe records, in bounded transactions.
    pub async fn prune(&self, now_ms: u64) -> Result<Pruned, StoreError> {
        self.backend.prune(now_ms).await
    }
}

/// Retention rules for `prune`: (resource or all, tier, cutoff) for every tier with a retention
/// and every resource with its own.
pub(crate) fn retention_rules(
    resources: &[ResourceRecord],
    now_ms: u64,
) -> Vec<(Option<String>, Tier, u64)> {
    let mut rules = Vec::new();
    for tier in Tier::ALL {
        if let Some(retention) = tier.retention_ms() {
            rules.push((None, tier, now_ms.saturating_sub(retention)));
        }
    }
    for resource in resources {
        if let Some(days) = resource.retention_days {
            let cutoff = now_ms.saturating_sub(u64::from(days) * DAY_MS);
            for tier in Tier::ALL {
                rules.push((Some(resource.id.clone()), tier, cutoff));
            }
        }
    }
    rules
}

/// What a merge writes for one entry: the bucket of each tier still kept, or nothing when the
/// entry is past its resource's retention.
pub(crate) fn entry_buckets(
    entry: &DeltaEntry,
    retention_days: Option<u32>,
    now_ms: u64,
) -> Option<Vec<(Tier, u64)>> {
    let entry_ms = entry.minute * MINUTE_MS;
    if let Some(days) = retention_days
        && entry_ms + MINUTE_MS <= now_ms.saturating_sub(u64::from(days) * DAY_MS)
    {
        return None;
    }
    Some(
        Tier::ALL
            .into_iter()
            .map(|tier| (tier, entry_ms / tier.resolution_ms() * tier.resolution_ms()))
            .filter(|(tier, bucket_ms)| tier_kept(*tier, *bucket_ms, now_ms))
            .collect(),
    )
}

/// False for a bucket the retention job would delete next: writing it is wasted work.
pub(crate) fn tier_kept(tier: Tier, bucket_ms: u64, now_ms: u64) -> bool {
    !tier.retention_ms().is_some_and(|retention| {
        bucket_ms + tier.resolution_ms() <= now_ms.saturating_sub(retention)
    })
}

/// Merges pending sketches (by minute) into cells of `tier` sorted by bucket.
pub(crate) fn merge_pending(cells: &mut [CountCell], tier: Tier, minute_ms: u64, sketch: &Sketch) {
    let bucket_ms = minute_ms / tier.resolution_ms() * tier.resolution_ms();
    // A pending sketch whose cell retention already removed has nothing to join.
    if let Ok(index) = cells.binary_search_by_key(&bucket_ms, |cell| cell.bucket_ms) {
        cells[index].visitors.merge(sketch);
    }
}
