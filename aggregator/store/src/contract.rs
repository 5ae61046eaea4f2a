//! The contract every durable backend keeps, held to it by one conformance suite.

use crate::group::WriteShape;
use crate::inbox;
use crate::patterns::PatternStore;
use crate::records::{
    CountCell, CreateOutcome, GroupCommit, Import, ImportOutcome, MergeBatch, MinuteCells, Pruned,
    ResourceRecord, StoreError, Tier, TokenRecord,
};
use crate::summaries::{BucketGeneration, StoredSummary};

/// The store's catalog: resources (their records, not their counts), API tokens, edge keys and
/// (through [`PatternStore`]) patterns. Every backend keeps it: the embedded store, PostgreSQL
/// and Cosmos DB ([`crate::CosmosStore`]), all held to it by the conformance suite.
#[async_trait::async_trait]
pub trait CatalogStore: PatternStore + std::fmt::Debug + Send + Sync {
    async fn create_resource(&self, record: ResourceRecord) -> Result<CreateOutcome, StoreError>;

    /// Every resource, sorted by id.
    async fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError>;

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

    /// Replaces an edge's stored secret with `replacement` (its creation time kept) only if it
    /// is still `expected`; false if it is not, or the edge has no key. What sealing a stored
    /// secret again relies on, so that a key set meanwhile is never overwritten.
    async fn replace_edge_key_if(
        &self,
        edge_id: String,
        expected: Vec<u8>,
        replacement: Vec<u8>,
    ) -> Result<bool, StoreError>;
}

/// The durable store's contract: the embedded store ([`EmbeddedStore`]), PostgreSQL
/// ([`PgStore`]) and Cosmos DB ([`crate::CosmosStore`]) implement it, and one conformance suite
/// (`aggregator/store/tests/contract.rs`) holds all three to it. Every method means the same for
/// each.
#[async_trait::async_trait]
pub trait DurableStore: CatalogStore + std::fmt::Debug + Send + Sync {
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

    /// The cells of one tier in `[start_ms, end_ms)` of each of `resource_ids` (distinct, at most
    /// [`crate::CELLS_READ_RESOURCES_MAX`]), in the order given, each sorted by bucket with pending
    /// sketches merged, all read in one snapshot. `now_ms` is the reader's clock: unfolded inbox
    /// cells past their tier's retention by then are not counted, as a fold would drop them.
    async fn cells_of_many(
        &self,
        resource_ids: Vec<String>,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Vec<CountCell>>, StoreError>;

    /// [`Self::cells_of_many`] of one resource.
    async fn cells(
        &self,
        resource_id: String,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<CountCell>, StoreError> {
        let cells = self
            .cells_of_many(vec![resource_id], tier, start_ms, end_ms, now_ms)
            .await?;
        Ok(cells.into_iter().next().unwrap_or_default())
    }

    /// Adds an import's cells to the stored ones, so that each tier reads as the file says and a
    /// tier it lacks for a bucket reads what its finer cells add up to (hits summed, visitors
    /// united), and creates its absent resources, in one transaction with the file's record: a
    /// file recorded before is `Duplicate`, and nothing is half-imported. The record is kept for
    /// good (a file can come back any time). Safe beside merges, folds and compactions.
    async fn import(&self, import: Import, now_ms: u64) -> Result<ImportOutcome, StoreError>;

    /// Every minute cell from `start_ms` on with its pending sketches merged, sorted by
    /// (resource, minute): what the hot tier is rebuilt from, so `start_ms` is at most
    /// [`crate::hot::HOT_REBUILD_SPAN_MS`] ago. Read in one snapshot on SQLite and PostgreSQL; on
    /// Cosmos DB from the inbox, naming the documents read ([`MinuteCells::documents`]).
    async fn minute_cells_since(&self, start_ms: u64) -> Result<MinuteCells, StoreError>;

    /// Folds pending sketches into their cells; returns how many pending rows were folded. Safe
    /// to run from several processes on one database at once.
    async fn compact(&self) -> Result<u64, StoreError>;

    /// Whether merges leave sketches pending for [`Self::compact`]: true on SQLite and
    /// PostgreSQL in the direct shape; false with the inbox and on Cosmos DB, whose folds write
    /// each sketch into its cell.
    fn keeps_pending_sketches(&self) -> bool {
        true
    }

    /// Deletes a resource and purges its counts (its unfolded inbox cells are folded first, as of
    /// `now_ms`). False if it did not exist.
    async fn delete_resource(&self, id: String, now_ms: u64) -> Result<bool, StoreError>;

    /// Deletes counts past retention and old dedupe records, in bounded transactions.
    async fn prune(&self, now_ms: u64) -> Result<Pruned, StoreError>;

    /// With the inbox shape, folds every inbox row committed when it looks (this process's and
    /// any other's) into the counters, one folder per database at a time (PostgreSQL's
    /// waits for the fold lock; Cosmos DB leaves a live stream to its writer); returns how many rows were folded (0 without the inbox). Also forgets the
    /// overlay's slots that another process folded.
    async fn fold_inbox(&self, now_ms: u64) -> Result<u64, StoreError>;

    /// The periodic fold: like [`DurableStore::fold_inbox`], but only rows whose minutes have
    /// closed ([`inbox::FoldScope::Closed`]), so that a (resource, minute) cell is written about
    /// once. Backends whose folds do not follow minutes (Cosmos DB) fold everything.
    async fn fold_closed(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.fold_inbox(now_ms).await
    }

    /// Rolls hours up from their minutes and days from their hours, each bucket once it closed
    /// ([`crate::rollup`]), in bounded transactions; returns how many coarse cells it wrote.
    /// Backends that write every tier at once (Cosmos DB) roll nothing up.
    async fn roll_up(&self, _now_ms: u64) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// With the durable inbox, this process's unfolded rows.
    fn overlay(&self) -> Option<&inbox::Overlay>;

    /// Cells this process holds for its unfolded inbox rows (0 without the inbox).
    fn unfolded_entries(&self) -> usize {
        self.overlay().map_or(0, inbox::Overlay::entries)
    }

    /// Whether this backend keeps bucket summaries (`summaries.rs`): SQLite and PostgreSQL do;
    /// Cosmos DB does not, and its reads across resources add up cells.
    fn keeps_bucket_summaries(&self) -> bool {
        false
    }

    /// Every bucket of `tier` in `[start_ms, end_ms)` the store has a row for, sorted: its
    /// generation and whether a summary is kept under it. A bucket absent here has generation 0
    /// and no summary. Read before the cells a summary is computed from, so its generation is
    /// the one to keep it under.
    async fn bucket_generations(
        &self,
        _tier: Tier,
        _start_ms: u64,
        _end_ms: u64,
    ) -> Result<Vec<BucketGeneration>, StoreError> {
        Ok(Vec::new())
    }

    /// The summaries kept of the listed buckets of `tier`, each with the generation it was kept
    /// under (a listed bucket without one is left out).
    async fn bucket_summaries(
        &self,
        _tier: Tier,
        _buckets_ms: Vec<u64>,
    ) -> Result<Vec<StoredSummary>, StoreError> {
        Ok(Vec::new())
    }

    /// When the oldest row still in the durable inbox was appended (any process's, whatever this
    /// one's write shape; none where no process of the store runs the inbox): a bucket that such
    /// a row may still change without it being late is not kept (`summaries.rs`).
    async fn inbox_oldest_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Every resource with a stored cell of `tier` in `[start_ms, end_ms)`, or finer rows a read
    /// of an open bucket there adds (`rollup.rs`; a few more may be named), sorted: those a
    /// bucket summary is summed from (with this process's unfolded inbox rows, which
    /// [`crate::Store::resource_ids_between`] adds). Backends that keep bucket summaries answer
    /// it; the others list none.
    async fn resource_ids_between(
        &self,
        _tier: Tier,
        _start_ms: u64,
        _end_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Keeps `body` as the summary of a closed bucket if its generation is still `generation`
    /// (no write changed the bucket since the reader read that generation); returns whether it
    /// was kept.
    async fn put_bucket_summary(
        &self,
        _tier: Tier,
        _bucket_ms: u64,
        _generation: u64,
        _body: Vec<u8>,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// How this backend's group commits write.
    fn write_shape(&self) -> WriteShape {
        match self.overlay() {
            Some(_) => WriteShape::Inbox,
            None => WriteShape::Direct,
        }
    }
}
