//! The store's vocabulary: tiers, records, outcomes and errors, shared by the contract, both
//! backends, the hot tier and the facade.

use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch};

use crate::snapshot::TransactionSnapshot;
use crate::{DAY_MS, HOUR_MS, HOUR_TIER_RETENTION_MS, MINUTE_TIER_RETENTION_MS};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
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

    /// The tier a stored code names.
    pub(crate) fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|tier| tier.code() == code)
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
    #[error("a bucket summary is corrupt: {0}")]
    CorruptSummary(&'static str),
    /// A stored secret does not open with the keys given (`sealed.rs`).
    #[error(transparent)]
    Sealed(#[from] crate::sealed::SealError),
    #[error("cosmos db: {0}")]
    Cosmos(#[from] azure_data_cosmos::CosmosError),
    #[error("{0:?} is not a Cosmos DB account endpoint (https://ACCOUNT.documents.azure.com:443/)")]
    CosmosEndpoint(String),
    /// The database cannot be reached or is shutting down: nothing was written, retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database is unavailable, and a read across more than
    /// [`crate::STALE_READ_RESOURCES_MAX`] resources, which the hot tier would otherwise answer
    /// alone: a narrower one would answer.
    #[error(
        "the database is unavailable, and a read across {resources} resources is more than the \
         hot tier answers alone"
    )]
    StaleReadTooWide { resources: usize },
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

/// Resources in one `DurableStore::cells_of_many` read: bounds the ids bound to one statement and
/// the cells one snapshot holds in memory. A query over more resources reads them in chunks.
pub const CELLS_READ_RESOURCES_MAX: usize = 500;

/// One minute cell of a durable inbox row (`inbox.rs`), as a group commit merged it
/// (`group.rs`).
#[derive(Debug, Clone)]
pub struct InboxCell {
    pub resource_id: String,
    pub minute_ms: u64,
    pub hits: u64,
    pub visitors: Sketch,
}

/// One stored cell of one tier.
#[derive(Debug, Clone, PartialEq)]
pub struct CountCell {
    pub bucket_ms: u64,
    pub hits: u64,
    pub visitors: Sketch,
}

impl CountCell {
    /// A cell of `bucket_ms` with nothing in it yet.
    pub fn empty(bucket_ms: u64) -> Self {
        Self {
            bucket_ms,
            hits: 0,
            visitors: Sketch::new(),
        }
    }

    /// Adds hits and visitors to it.
    pub fn add(&mut self, hits: u64, visitors: &Sketch) {
        self.hits += hits;
        self.visitors.merge(visitors);
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub count_rows: u64,
    pub dedupe_rows: u64,
}

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
    pub(crate) fn outcome_alone(outcomes: &[ApplyOutcome]) -> ApplyOutcome {
        assert_eq!(outcomes.len(), 1, "one outcome per batch");
        outcomes[0]
    }
}

/// What a group merge returns: one outcome per batch, and what names the commit to the hot tier
/// (`hot.rs`): on PostgreSQL the id of the transaction that committed it (if any batch was
/// applied), which the hot tier compares with rebuild snapshots; on Cosmos DB each batch's inbox
/// document, which the hot tier applies once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCommit {
    pub outcomes: Vec<ApplyOutcome>,
    pub transaction: Option<u64>,
    /// Cosmos DB: per batch, in order, the inbox document it was written to (`None` for a batch
    /// not applied). Empty on the other stores.
    pub documents: Vec<Option<String>>,
}

/// Minute cells for a rebuild of the hot tier: on PostgreSQL read in one snapshot, with which
/// transactions that snapshot sees; on Cosmos DB read from the inbox, with the documents read.
#[derive(Debug, Clone, Default)]
pub struct MinuteCells {
    pub cells: Vec<(String, CountCell)>,
    pub snapshot: Option<TransactionSnapshot>,
    /// Cosmos DB: every inbox document whose cells are in `cells`. Empty on the other stores.
    pub documents: Vec<String>,
}

/// Cells one import writes: bounds its transaction and the memory its file takes.
pub const IMPORT_CELLS_MAX: usize = 1_000_000;

/// One cell of one tier, added to the stored cell: hits summed, visitors united. What an import
/// brings and what a fold of the inbox writes.
#[derive(Debug, Clone)]
pub struct TierCell {
    pub resource_id: String,
    pub tier: Tier,
    pub cell: CountCell,
}

/// A file's counts, imported once (`DurableStore::import`).
#[derive(Debug, Clone)]
pub struct Import {
    /// The file's SHA-256: what makes a second import of the same file change nothing.
    pub file_sha256: [u8; 32],
    /// Created if their id is absent; an existing resource keeps its record.
    pub resources: Vec<ResourceRecord>,
    /// Distinct (resource, tier, bucket), at most [`IMPORT_CELLS_MAX`], each of a resource that
    /// exists or is among `resources`.
    pub cells: Vec<TierCell>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported {
        resources_created: u64,
    },
    /// This file was imported before: nothing changed.
    Duplicate,
    /// A resource of the import neither exists nor could be created (its name belongs to
    /// another resource, or it was deleted meanwhile): nothing changed.
    ResourceMissing(String),
}
