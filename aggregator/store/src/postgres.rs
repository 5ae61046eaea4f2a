//! The PostgreSQL store (`--database-url`): the embedded store's rules (its tables are
//! `hit_counts` with `hit_count` where the embedded store has `counts` with `hits`),
//! through a pooled connection (sqlx), schema managed by the migrations in `aggregator/store/migrations`
//! (run at start).
//!
//! A merge is one transaction: the batch's dedupe record first (its primary key serialises two
//! deliveries of the same batch), the resources' retention, one `INSERT ... SELECT FROM unnest(...)
//! ON CONFLICT DO UPDATE` for all tiers' counts and one `INSERT ... SELECT FROM unnest(...)` for the
//! pending sketches. Rows are written in key order, so concurrent merges cannot deadlock. Every
//! statement is valid on Citus with `hit_counts` and `pending_sketches` distributed by
//! `resource_id` (see README.md).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use hitcount_wire::Sketch;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

// Imports (`postgres/import.rs`).
mod import;
// Resource patterns and resources created on first sight (`postgres/patterns.rs`).
mod patterns;
// Watermarks, the rollup lock and rollup steps (`postgres/rollup.rs`).
mod rollup;

use super::inbox::{
    FOLD_ROWS_LISTED_MAX, FOREIGN_FOLD_AFTER_MS, FoldScope, InboxRow, Overlay, TakenSlot,
    UnfoldedRead, add_minutes_since, choose_fold_rows, fold_rows, held_for_each,
    partly_present_ids, rows_resource_ids, whole_cells,
};
use crate::DEDUPE_RETENTION_MS;
use crate::contract::{CatalogStore, DurableStore};
use crate::group::{
    GroupWrites, KeyId, Recorded, WriteShape, first_occurrences, fold_group, group_resource_ids,
};
use crate::records::{
    BatchKey, CountCell, CreateOutcome, GroupCommit, Import, ImportOutcome, MergeBatch,
    MinuteCells, Pruned, ResourceRecord, StoreError, Tier, TierCell, TokenRecord,
};
use crate::rollup::Rollups;
use crate::rules::{
    COMPACTION_ROWS_MAX, EMPTY_SKETCH, RETENTION_DELETE_ROWS_MAX, check_import, check_read_ids,
    merge_pending, retention_rules,
};
use crate::snapshot::TransactionSnapshot;
use crate::summaries::{
    BucketGeneration, StoredSummary, late_buckets, stored_buckets, with_coarser,
};
use std::sync::Arc;

/// Pooled connections. Merges are short; more connections than this only add lock waits.
pub const POOL_CONNECTIONS_MAX: u32 = 16;
/// How long a request waits for a connection before the store reports itself unavailable (a
/// stopped database must give 503 quickly, not hang every request).
pub const POOL_ACQUIRE_TIMEOUT_MS: u64 = 2_000;
/// The advisory lock compactors take (see `compact`): "hitcount" in ASCII.
const COMPACTION_LOCK_KEY: i64 = 0x6869_7463_6f75_6e74;
/// The advisory lock folders take (see `fold_inbox`): "hitfolds" in ASCII.
const FOLD_LOCK_KEY: i64 = 0x6869_7466_6f6c_6473;
/// Whole cells (`add_whole_cells`) per statement: each statement stays well within the statement
/// timeout.
const WHOLE_CELLS_PER_STATEMENT_MAX: usize = 10_000;
/// Statements that run longer than this are cancelled by the server.
pub const STATEMENT_TIMEOUT_MS: u64 = 30_000;

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Errors that mean "not now" (the server is down, restarting, overloaded, or chose this
/// transaction as a deadlock victim) become `Unavailable`: nothing was committed, retry.
fn classify(error: sqlx::Error) -> StoreError {
    let transient = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            // 08: connection exception, 57P: operator intervention (shutdown), 53: insufficient
            // resources, 40001/40P01: serialization failure, deadlock.
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    };
    if transient {
        StoreError::Unavailable(error.to_string())
    } else {
        StoreError::Postgres(error)
    }
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// With the inbox shape, this process's unfolded rows.
    inbox: Option<Arc<Overlay>>,
    /// The database is Citus: it makes a commit visible node by node, so a reader could see a
    /// summary's bump before the cells it follows, and bucket summaries are not kept.
    citus: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("PgStore").finish_non_exhaustive()
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl PgStore {
    /// Connects and runs the migrations not yet applied.
    ///
    /// Every statement is planned for the values it is given (`plan_cache_mode`), never from a
    /// connection's cached generic plan: the tables start empty and grow while the aggregator
    /// runs, and a plan made early is kept until an ANALYZE (which PostgreSQL without autovacuum
    /// never runs). Seen: a read of one resource's buckets scanning every resource's rows of the
    /// window, 190,000 rows a read (72 reads a second instead of 3,400), and the lookup of a
    /// batch's unknown resource ids scanning every resource and comparing it with every id (1 to
    /// 2.8 s a lookup while a pattern filled 100,000 resources) (BENCHMARKS.md).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = url.parse::<PgConnectOptions>().map_err(classify)?.options([
            ("statement_timeout", STATEMENT_TIMEOUT_MS.to_string()),
            ("plan_cache_mode", "force_custom_plan".to_owned()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
            .connect_with(options)
            .await
            .map_err(classify)?;
        MIGRATOR.run(&pool).await?;
        let citus: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
        )
        .fetch_one(&pool)
        .await
        .map_err(classify)?;
        Ok(Self {
            pool,
            inbox: None,
            citus,
        })
    }

    /// The buckets of stored (tier, bucket) rows a write must bump: none where summaries are
    /// not kept (Citus), so its replicated table is never written.
    fn summarised(&self, rows: &[(i16, i64)]) -> BTreeSet<(Tier, u64)> {
        if self.keeps_bucket_summaries() {
            stored_buckets(rows)
        } else {
            BTreeSet::new()
        }
    }

    /// Group commits append to the durable inbox, folded by [`DurableStore::fold_inbox`].
    pub fn with_inbox(mut self) -> Self {
        self.inbox = Some(Arc::new(Overlay::default()));
        self
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(classify)
    }

    /// A read-only transaction with one snapshot for every statement in it, so a compaction or
    /// a fold in between cannot hide or double a hit or a visitor.
    async fn begin_reading(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut transaction = self.begin().await?;
        sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *transaction)
            .await
            .map_err(classify)?;
        Ok(transaction)
    }

    /// A transaction holding the folders' advisory lock, or none if another process holds it
    /// (that one does the work; this process's slots wait for its next fold). A fold of every
    /// row (`FoldScope::All`: at start, at a stop, before a deletion) waits for the lock
    /// instead, as what it folds must be folded before it returns.
    async fn begin_fold(
        &self,
        scope: FoldScope,
    ) -> Result<Option<Transaction<'static, Postgres>>, StoreError> {
        let mut transaction = self.begin().await?;
        let locked: bool = match scope {
            FoldScope::Closed => sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)"),
            FoldScope::All => sqlx::query_scalar("SELECT true FROM pg_advisory_xact_lock($1)"),
        }
        .bind(FOLD_LOCK_KEY)
        .fetch_one(&mut *transaction)
        .await
        .map_err(classify)?;
        if locked {
            Ok(Some(transaction))
        } else {
            transaction.rollback().await.map_err(classify)?;
            Ok(None)
        }
    }

    /// Folds this process's slots that `scope` takes, each in one transaction from its merged
    /// cells; then the other rows it takes (a stopped process's), read back from the inbox in
    /// bounded transactions; then forgets the slots another process folded. Every transaction
    /// takes the folders' advisory lock and claims its rows by deleting them, so even two
    /// folders could not fold one row twice.
    async fn fold(&self, now_ms: u64, scope: FoldScope) -> Result<u64, StoreError> {
        // Without the inbox shape no slot is this process's, but rows an earlier run with it
        // left (or a stopped process's) are still folded from their bodies: turning the inbox
        // off must not hide a hit it acknowledged.
        let no_slots = Overlay::default();
        let overlay = self.inbox.as_deref().unwrap_or(&no_slots);
        let mut folded = 0;
        for slot in overlay.take_due(now_ms, scope) {
            let Some(rows) = self.fold_slot(&slot, now_ms, scope).await? else {
                return Ok(folded);
            };
            overlay.remove_slot(slot.number);
            folded += rows;
        }
        let closed_before_ms = match scope {
            FoldScope::All => u64::MAX,
            FoldScope::Closed => now_ms.saturating_sub(FOREIGN_FOLD_AFTER_MS),
        };
        loop {
            let own: Vec<i64> = overlay.row_ids().into_iter().map(signed).collect();
            match self
                .fold_foreign(&own, closed_before_ms, now_ms, scope)
                .await?
            {
                Some((rows, true)) => folded += rows,
                Some((rows, false)) => {
                    folded += rows;
                    break;
                }
                None => break,
            }
        }
        let looked_for = overlay.row_ids();
        if !looked_for.is_empty() {
            let ids: Vec<i64> = looked_for.iter().map(|id| signed(*id)).collect();
            let mut connection = self.pool.acquire().await.map_err(classify)?;
            let present = inbox_ids_present(&mut connection, &ids).await?;
            overlay.forget_folded(&looked_for, &present);
        }
        Ok(folded)
    }

    /// Folds one of this process's slots: claims its rows and writes its merged cells, in one
    /// transaction. If another process folded some of its rows already, the merged cells
    /// cannot be split, so the rows left are folded from their own bodies. Returns the rows
    /// folded, or none if another process holds the fold.
    async fn fold_slot(
        &self,
        slot: &TakenSlot,
        now_ms: u64,
        scope: FoldScope,
    ) -> Result<Option<u64>, StoreError> {
        let ids: Vec<i64> = slot.row_ids.iter().map(|id| signed(*id)).collect();
        let Some(mut transaction) = self.begin_fold(scope).await? else {
            return Ok(None);
        };
        let claimed: Vec<i64> =
            sqlx::query_scalar("DELETE FROM inbox WHERE id = ANY($1) RETURNING created_at_ms")
                .bind(&ids)
                .fetch_all(&mut *transaction)
                .await
                .map_err(classify)?;
        if claimed.len() == ids.len() {
            let appended_ms = claimed.iter().map(|ms| unsigned(*ms)).max().unwrap_or(0);
            self.write_folded(
                &mut transaction,
                &[slot.cells.as_ref()],
                appended_ms,
                now_ms,
            )
            .await?;
            transaction.commit().await.map_err(classify)?;
            return Ok(Some(ids.len() as u64));
        }
        transaction.rollback().await.map_err(classify)?;
        let Some(mut transaction) = self.begin_fold(scope).await? else {
            return Ok(None);
        };
        let (rows, appended_ms) = claim_bodies(&mut transaction, &ids).await?;
        let refs: Vec<&InboxRow> = rows.iter().collect();
        self.write_folded(&mut transaction, &refs, appended_ms, now_ms)
            .await?;
        transaction.commit().await.map_err(classify)?;
        Ok(Some(rows.len() as u64))
    }

    /// One transaction over rows not in this process's slots (`own`) appended and closed
    /// by `closed_before_ms` (a live writer's late row of an old minute is still its writer's to
    /// fold): the rows folded and whether more are left, or none if another process holds the
    /// fold.
    async fn fold_foreign(
        &self,
        own: &[i64],
        closed_before_ms: u64,
        now_ms: u64,
        scope: FoldScope,
    ) -> Result<Option<(u64, bool)>, StoreError> {
        let Some(mut transaction) = self.begin_fold(scope).await? else {
            return Ok(None);
        };
        let listed: Vec<(i64, i32)> = sqlx::query_as(
            "SELECT id, entries FROM inbox
             WHERE closes_at_ms <= $1 AND created_at_ms <= $1 AND NOT id = ANY($2)
             ORDER BY id LIMIT $3",
        )
        .bind(signed(closed_before_ms))
        .bind(own)
        .bind(FOLD_ROWS_LISTED_MAX)
        .fetch_all(&mut *transaction)
        .await
        .map_err(classify)?;
        let chosen = choose_fold_rows(
            &listed
                .iter()
                .map(|(id, entries)| (unsigned(*id), usize::try_from(*entries).unwrap_or(0)))
                .collect::<Vec<_>>(),
        );
        if chosen.is_empty() {
            transaction.rollback().await.map_err(classify)?;
            return Ok(Some((0, false)));
        }
        let ids: Vec<i64> = chosen.iter().map(|id| signed(*id)).collect();
        let (rows, appended_ms) = claim_bodies(&mut transaction, &ids).await?;
        assert_eq!(rows.len(), ids.len(), "a listed row is claimed once");
        let refs: Vec<&InboxRow> = rows.iter().collect();
        self.write_folded(&mut transaction, &refs, appended_ms, now_ms)
            .await?;
        transaction.commit().await.map_err(classify)?;
        let more = chosen.len() < listed.len() || listed.len() == FOLD_ROWS_LISTED_MAX as usize;
        Ok(Some((rows.len() as u64, more)))
    }

    /// Writes claimed rows' cells into every tier as whole cells, in the claiming transaction.
    async fn write_folded(
        &self,
        transaction: &mut Transaction<'static, Postgres>,
        rows: &[&InboxRow],
        appended_ms: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let retention = resource_retention(transaction, &rows_resource_ids(rows.iter().copied()))
            .await
            .map_err(classify)?;
        let rollups = rollup::rollups_for_write(transaction)
            .await
            .map_err(classify)?;
        let writes = fold_rows(rows.iter().copied(), &retention, &rollups, now_ms);
        // The fold's clock for what is late (`summaries.rs`): never earlier than a row it
        // folds was appended, however long ago the fold began.
        let late = late_buckets(writes.changed.iter().copied(), now_ms.max(appended_ms));
        let cells = whole_cells(writes);
        // Compaction and imports read a stored sketch and write it back under this lock; the
        // fold does too. Taken after the fold and rollup locks, never before, by every process.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(COMPACTION_LOCK_KEY)
            .execute(&mut **transaction)
            .await
            .map_err(classify)?;
        add_whole_cells(transaction, &cells)
            .await
            .map_err(classify)?;
        if self.keeps_bucket_summaries() {
            bump_buckets(&mut **transaction, &late)
                .await
                .map_err(classify)?;
        }
        metrics::counter!("hitcount_inbox_folded_cells_total")
            .increment(rows.iter().map(|row| row.len() as u64).sum());
        Ok(())
    }
}

/// The ids among `ids` still in the inbox.
async fn inbox_ids_present(
    connection: &mut sqlx::PgConnection,
    ids: &[i64],
) -> Result<HashSet<u64>, StoreError> {
    let present: Vec<i64> = sqlx::query_scalar("SELECT id FROM inbox WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(connection)
        .await
        .map_err(classify)?;
    Ok(present.into_iter().map(unsigned).collect())
}

/// The bodies of the inbox rows among `ids` still there, by id.
async fn inbox_bodies(
    connection: &mut sqlx::PgConnection,
    ids: &[u64],
) -> Result<HashMap<u64, InboxRow>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<i64> = ids.iter().map(|id| signed(*id)).collect();
    let found: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, body FROM inbox WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(connection)
            .await
            .map_err(classify)?;
    found
        .into_iter()
        .map(|(id, body)| Ok((unsigned(id), InboxRow::decode(&body)?)))
        .collect()
}

/// Claims the inbox rows among `ids` still there by deleting them: their bodies, and the latest
/// time one of them was appended.
async fn claim_bodies(
    transaction: &mut Transaction<'static, Postgres>,
    ids: &[i64],
) -> Result<(Vec<InboxRow>, u64), StoreError> {
    let claimed: Vec<(Vec<u8>, i64)> =
        sqlx::query_as("DELETE FROM inbox WHERE id = ANY($1) RETURNING body, created_at_ms")
            .bind(ids)
            .fetch_all(&mut **transaction)
            .await
            .map_err(classify)?;
    let appended_ms = claimed
        .iter()
        .map(|(_, ms)| unsigned(*ms))
        .max()
        .unwrap_or(0);
    let rows = claimed
        .iter()
        .map(|(body, _)| InboxRow::decode(body))
        .collect::<Result<_, _>>()?;
    Ok((rows, appended_ms))
}

#[async_trait::async_trait]
impl DurableStore for PgStore {
    async fn apply_group(
        &self,
        batches: Vec<MergeBatch>,
        now_ms: u64,
    ) -> Result<GroupCommit, StoreError> {
        let mut transaction = self.begin().await?;
        let summaries = self.keeps_bucket_summaries();
        let mut writes = apply_group_in(
            &mut transaction,
            &batches,
            now_ms,
            self.write_shape(),
            summaries,
        )
        .await
        .map_err(classify)?;
        if !writes.applied_any() {
            transaction.rollback().await.map_err(classify)?;
            return Ok(GroupCommit {
                outcomes: writes.outcomes,
                transaction: None,
                documents: Vec::new(),
            });
        }
        let mut appended = Vec::new();
        if self.inbox.is_some() {
            for row in InboxRow::from_writes(&mut writes) {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO inbox (created_at_ms, entries, body, closes_at_ms)
                     VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(signed(now_ms))
                .bind(i32::try_from(row.len()).unwrap_or(i32::MAX))
                .bind(row.encode())
                .bind(signed(row.closes_at_ms()))
                .fetch_one(&mut *transaction)
                .await
                .map_err(classify)?;
                appended.push((unsigned(id), row));
            }
        }
        // The id rebuilds of the hot tier compare with their snapshot (see `store/hot.rs`).
        let id: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
            .fetch_one(&mut *transaction)
            .await
            .map_err(classify)?;
        transaction.commit().await.map_err(classify)?;
        if let Some(overlay) = &self.inbox {
            for (id, row) in appended {
                overlay.insert(id, row);
            }
        }
        Ok(GroupCommit {
            outcomes: writes.outcomes,
            transaction: id.parse().ok(),
            documents: Vec::new(),
        })
    }

    async fn cells_of_many(
        &self,
        resource_ids: Vec<String>,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Vec<CountCell>>, StoreError> {
        check_read_ids(&resource_ids);
        // This process's unfolded rows of the resources, listed before the snapshot is taken: a
        // row listed is committed in the snapshot, so it is either still in the inbox there
        // (and added below) or folded into the cells read (and not added).
        let unfolded = held_for_each(self.inbox.as_deref(), &resource_ids);
        let mut transaction = self.begin_reading().await?;
        let mut all = stored_cells(&mut transaction, &resource_ids, tier, start_ms, end_ms).await?;
        let rollups = rollup::read_rollups(&mut *transaction)
            .await
            .map_err(classify)?;
        let range = (start_ms, end_ms);
        rollup::add_open_buckets(
            &mut transaction,
            &rollups,
            &resource_ids,
            tier,
            range,
            &mut all,
        )
        .await?;
        let mut listed: Vec<i64> = unfolded
            .iter()
            .flatten()
            .flat_map(|held| held.row_ids.iter().map(|id| signed(*id)))
            .collect();
        listed.sort_unstable();
        listed.dedup();
        if !listed.is_empty() {
            let present: HashSet<u64> = inbox_ids_present(&mut transaction, &listed).await?;
            let partly = partly_present_ids(&unfolded, &present);
            let loaded = inbox_bodies(&mut transaction, &partly).await?;
            let unfolded = UnfoldedRead {
                held: unfolded,
                present,
                loaded,
            };
            unfolded.add_to(&mut all, &resource_ids, tier, (start_ms, end_ms), now_ms)?;
        }
        transaction.commit().await.map_err(classify)?;
        Ok(all)
    }

    /// Every minute cell from `start_ms` on, with its pending sketches merged, read in one
    /// snapshot (what the hot tier is rebuilt from).
    async fn import(&self, import: Import, now_ms: u64) -> Result<ImportOutcome, StoreError> {
        check_import(&import);
        let mut transaction = self.begin().await?;
        let summaries = self.keeps_bucket_summaries();
        let outcome = import::import_in(&mut transaction, &import, now_ms, summaries)
            .await
            .map_err(classify)?;
        match outcome {
            ImportOutcome::Imported { .. } => transaction.commit().await,
            _ => transaction.rollback().await,
        }
        .map_err(classify)?;
        Ok(outcome)
    }

    async fn minute_cells_since(&self, start_ms: u64) -> Result<MinuteCells, StoreError> {
        let mut transaction = self.begin_reading().await?;
        // The transaction's first statement takes its snapshot; this one also says which
        // transactions it sees.
        let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&mut *transaction)
            .await
            .map_err(classify)?;
        let mut cells: BTreeMap<(String, u64), CountCell> = BTreeMap::new();
        let rows = sqlx::query(
            "SELECT resource_id, bucket_ms, hit_count, sketch FROM hit_counts
             WHERE tier = $1 AND bucket_ms >= $2",
        )
        .bind(Tier::Minute.code() as i16)
        .bind(signed(start_ms))
        .fetch_all(&mut *transaction)
        .await
        .map_err(classify)?;
        for row in rows {
            let resource_id: String = row.try_get(0).map_err(classify)?;
            let bucket_ms = unsigned(row.try_get(1).map_err(classify)?);
            let sketch: Vec<u8> = row.try_get(3).map_err(classify)?;
            cells.insert(
                (resource_id, bucket_ms),
                CountCell {
                    bucket_ms,
                    hits: unsigned(row.try_get(2).map_err(classify)?),
                    visitors: Sketch::from_bytes(&sketch)?,
                },
            );
        }
        let pending = sqlx::query(
            "SELECT resource_id, minute_ms, sketch FROM pending_sketches WHERE minute_ms >= $1",
        )
        .bind(signed(start_ms))
        .fetch_all(&mut *transaction)
        .await
        .map_err(classify)?;
        for row in pending {
            let resource_id: String = row.try_get(0).map_err(classify)?;
            let minute_ms = unsigned(row.try_get(1).map_err(classify)?);
            let sketch: Vec<u8> = row.try_get(2).map_err(classify)?;
            if let Some(cell) = cells.get_mut(&(resource_id, minute_ms)) {
                cell.visitors.merge(&Sketch::from_bytes(&sketch)?);
            }
        }
        // Unfolded inbox rows (of any process) are counted as well: in this snapshot each is
        // either here or in the cells above.
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM inbox ORDER BY id")
            .fetch_all(&mut *transaction)
            .await
            .map_err(classify)?;
        if !bodies.is_empty() {
            let rows = bodies
                .iter()
                .map(|body| InboxRow::decode(body))
                .collect::<Result<Vec<_>, _>>()?;
            let existing: std::collections::HashSet<String> =
                sqlx::query_scalar("SELECT id FROM resources WHERE id = ANY($1)")
                    .bind(rows_resource_ids(&rows))
                    .fetch_all(&mut *transaction)
                    .await
                    .map_err(classify)?
                    .into_iter()
                    .collect();
            add_minutes_since(&mut cells, &rows, &existing, start_ms);
        }
        transaction.commit().await.map_err(classify)?;
        Ok(MinuteCells {
            cells: cells
                .into_iter()
                .map(|((resource_id, _), cell)| (resource_id, cell))
                .collect(),
            snapshot: TransactionSnapshot::parse(&snapshot),
            documents: Vec::new(),
        })
    }

    /// Folds pending sketches into their cells, a bounded number of rows per transaction. One
    /// compactor per database at a time: each transaction first takes a transaction-scoped
    /// advisory lock, and a process that does not get it leaves the work to the one that has it.
    /// Row locks (`FOR UPDATE`) would do the same on one server, but Citus refuses them across
    /// shards, and every other writer of stored sketches (an inbox fold, an import) holds the
    /// same lock while it does, so the lock is all the exclusion needed: direct merges change
    /// `hit_count` alone, which the compactor's update leaves as it finds it.
    async fn compact(&self) -> Result<u64, StoreError> {
        let mut folded = 0;
        loop {
            let mut transaction = self.begin().await?;
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(COMPACTION_LOCK_KEY)
                .fetch_one(&mut *transaction)
                .await
                .map_err(classify)?;
            if !locked {
                transaction.rollback().await.map_err(classify)?;
                return Ok(folded);
            }
            let rows = compact_in(&mut transaction).await.map_err(classify)?;
            transaction.commit().await.map_err(classify)?;
            folded += rows as u64;
            if rows < COMPACTION_ROWS_MAX {
                return Ok(folded);
            }
        }
    }

    async fn delete_resource(&self, id: String, now_ms: u64) -> Result<bool, StoreError> {
        if let Some(overlay) = &self.inbox {
            // Unfolded hits of the resource go now, not at the next fold, so that a resource
            // made again under this id soon after does not get them.
            self.fold_inbox(now_ms).await?;
            overlay.forget_resource(&id);
        }
        let mut transaction = self.begin().await?;
        // A fold of any process reads which resources exist under the fold lock, in the
        // transaction that writes their cells: holding it here, a fold either committed before
        // this delete (whose statements then remove its cells) or finds the resource gone. Without
        // it a fold could write a deleted resource's cells and sketches back, for a resource made
        // again under this id to inherit.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FOLD_LOCK_KEY)
            .execute(&mut *transaction)
            .await
            .map_err(classify)?;
        // And the rollup lock: a rollup step in flight could otherwise write back an hour or
        // day row of the resource from the minutes it read before this delete committed.
        rollup::hold_shared(&mut transaction)
            .await
            .map_err(classify)?;
        let deleted = sqlx::query("DELETE FROM resources WHERE id = $1")
            .bind(&id)
            .execute(&mut *transaction)
            .await
            .map_err(classify)?
            .rows_affected();
        // The buckets as the delete found them: a late merge committed before it is among them.
        let buckets: Vec<(i16, i64)> = sqlx::query_as(
            "DELETE FROM hit_counts WHERE resource_id = $1 RETURNING tier, bucket_ms",
        )
        .bind(&id)
        .fetch_all(&mut *transaction)
        .await
        .map_err(classify)?;
        sqlx::query("DELETE FROM pending_sketches WHERE resource_id = $1")
            .bind(&id)
            .execute(&mut *transaction)
            .await
            .map_err(classify)?;
        // Open coarse buckets read the deleted finer rows too.
        let buckets = with_coarser(self.summarised(&buckets));
        bump_buckets(&mut *transaction, &buckets)
            .await
            .map_err(classify)?;
        transaction.commit().await.map_err(classify)?;
        Ok(deleted == 1)
    }

    async fn prune(&self, now_ms: u64) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let resources = self.resources().await?;
        let limit = RETENTION_DELETE_ROWS_MAX as i64;
        // Read before any deletion: watermarks only move on, so this one is never ahead.
        let rollups = rollup::read_rollups(&self.pool).await.map_err(classify)?;
        for (resource, tier, cutoff_ms) in retention_rules(&resources, now_ms) {
            // A bucket goes when all of it is older than the cutoff, and not while it still
            // counts for a coarser bucket that is not rolled up.
            let newest_expired_bucket =
                signed(rollups.prunable_until(tier, cutoff_ms)) - signed(tier.resolution_ms());
            loop {
                // The delete and its bump commit together: a bump lost after its delete would
                // never be made again.
                let mut transaction = self.begin().await?;
                let deleted: Vec<(i16, i64)> = sqlx::query_as(
                    "DELETE FROM hit_counts WHERE (resource_id, tier, bucket_ms) IN (
                       SELECT resource_id, tier, bucket_ms FROM hit_counts
                       WHERE ($1::text IS NULL OR resource_id = $1) AND tier = $2 AND bucket_ms <= $3
                       LIMIT $4)
                     RETURNING tier, bucket_ms",
                )
                .bind(resource.as_deref())
                .bind(tier.code() as i16)
                .bind(newest_expired_bucket)
                .bind(limit)
                .fetch_all(&mut *transaction)
                .await
                .map_err(classify)?;
                // After the delete, as every bump: a summary computed before it is not kept.
                bump_buckets(&mut *transaction, &self.summarised(&deleted))
                    .await
                    .map_err(classify)?;
                transaction.commit().await.map_err(classify)?;
                pruned.count_rows += deleted.len() as u64;
                if deleted.len() < RETENTION_DELETE_ROWS_MAX {
                    break;
                }
            }
            if resource.is_none() {
                // The tier's own retention: its buckets' rows go with their counts.
                sqlx::query("DELETE FROM bucket_summaries WHERE tier = $1 AND bucket_ms <= $2")
                    .bind(tier.code() as i16)
                    .bind(newest_expired_bucket)
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
            }
        }
        let dedupe_cutoff = signed(now_ms.saturating_sub(DEDUPE_RETENTION_MS));
        loop {
            let deleted = sqlx::query(
                "DELETE FROM applied_batches WHERE (edge_id, boot_epoch, sequence) IN (
                   SELECT edge_id, boot_epoch, sequence FROM applied_batches
                   WHERE applied_at_ms < $1 LIMIT $2)",
            )
            .bind(dedupe_cutoff)
            .bind(limit)
            .execute(&self.pool)
            .await
            .map_err(classify)?
            .rows_affected();
            pruned.dedupe_rows += deleted;
            if deleted < RETENTION_DELETE_ROWS_MAX as u64 {
                break;
            }
        }
        Ok(pruned)
    }

    /// Folds every row (see `fold`).
    async fn fold_inbox(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.fold(now_ms, FoldScope::All).await
    }

    async fn roll_up(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut rolled = 0;
        // Hours first: a day is rolled up from its hours once they all are.
        for tier in [Tier::Hour, Tier::Day] {
            while let Some(cells) = rollup::step(self.begin().await?, tier, now_ms).await? {
                rolled += cells;
            }
        }
        Ok(rolled)
    }

    async fn fold_closed(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.fold(now_ms, FoldScope::Closed).await
    }

    fn overlay(&self) -> Option<&Overlay> {
        self.inbox.as_deref()
    }

    fn keeps_pending_sketches(&self) -> bool {
        self.inbox.is_none()
    }

    fn keeps_bucket_summaries(&self) -> bool {
        !self.citus
    }

    /// Asked of the table whatever this process's write shape: other aggregators of the
    /// database may run the inbox (a deployment changing shape, or mixed), and their rows still
    /// change buckets on time.
    async fn inbox_oldest_ms(&self) -> Result<Option<u64>, StoreError> {
        let oldest: Option<i64> = sqlx::query_scalar("SELECT min(created_at_ms) FROM inbox")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(oldest.map(unsigned))
    }

    async fn bucket_generations(
        &self,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<BucketGeneration>, StoreError> {
        let rows: Vec<(i64, i64, bool)> = sqlx::query_as(
            "SELECT bucket_ms, generation, body IS NOT NULL FROM bucket_summaries
             WHERE tier = $1 AND bucket_ms >= $2 AND bucket_ms < $3 ORDER BY bucket_ms",
        )
        .bind(tier.code() as i16)
        .bind(signed(start_ms))
        .bind(signed(end_ms))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(bucket_ms, generation, kept)| BucketGeneration {
                bucket_ms: unsigned(bucket_ms),
                generation: unsigned(generation),
                kept,
            })
            .collect())
    }

    async fn bucket_summaries(
        &self,
        tier: Tier,
        buckets_ms: Vec<u64>,
    ) -> Result<Vec<StoredSummary>, StoreError> {
        let buckets: Vec<i64> = buckets_ms.into_iter().map(signed).collect();
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT bucket_ms, generation, body FROM bucket_summaries
             WHERE tier = $1 AND bucket_ms = ANY($2) AND body IS NOT NULL ORDER BY bucket_ms",
        )
        .bind(tier.code() as i16)
        .bind(&buckets)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(bucket_ms, generation, body)| StoredSummary {
                bucket_ms: unsigned(bucket_ms),
                generation: unsigned(generation),
                body,
            })
            .collect())
    }

    async fn resource_ids_between(
        &self,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut transaction = self.begin_reading().await?;
        // The resources with rows of `tier`, and those whose finer rows count for one of its
        // buckets not rolled up yet (any resource's: the listing may name a few more).
        let rollups = rollup::read_rollups(&mut *transaction)
            .await
            .map_err(classify)?
            .earliest();
        let mut reads = vec![(tier, start_ms, end_ms)];
        reads.extend(rollups.finer_reads(tier, "", start_ms, end_ms));
        let mut ids = BTreeSet::new();
        for (tier, from_ms, to_ms) in reads {
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT resource_id FROM hit_counts
                 WHERE tier = $1 AND bucket_ms >= $2 AND bucket_ms < $3",
            )
            .bind(tier.code() as i16)
            .bind(signed(from_ms))
            .bind(signed(to_ms))
            .fetch_all(&mut *transaction)
            .await
            .map_err(classify)?;
            ids.extend(found);
        }
        transaction.commit().await.map_err(classify)?;
        Ok(ids.into_iter().collect())
    }

    async fn put_bucket_summary(
        &self,
        tier: Tier,
        bucket_ms: u64,
        generation: u64,
        body: Vec<u8>,
    ) -> Result<bool, StoreError> {
        // The conflict's WHERE sees the row as committed now (locked), not as of a snapshot: a
        // bump committed since the reader read `generation` leaves the row unchanged.
        let kept = sqlx::query(
            "INSERT INTO bucket_summaries (tier, bucket_ms, generation, body)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tier, bucket_ms) DO UPDATE SET body = excluded.body
             WHERE bucket_summaries.generation = excluded.generation",
        )
        .bind(tier.code() as i16)
        .bind(signed(bucket_ms))
        .bind(signed(generation))
        .bind(body)
        .execute(&self.pool)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(kept == 1)
    }
}

#[async_trait::async_trait]
impl CatalogStore for PgStore {
    async fn create_resource(&self, record: ResourceRecord) -> Result<CreateOutcome, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO resources (id, name, retention_days, created_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(&record.id)
        .bind(&record.name)
        .bind(record.retention_days.map(|days| days as i32))
        .bind(signed(record.created_at_ms))
        .execute(&self.pool)
        .await
        .map_err(classify)?
        .rows_affected();
        if inserted == 1 {
            return Ok(CreateOutcome::Created);
        }
        let id_taken = sqlx::query("SELECT 1 FROM resources WHERE id = $1")
            .bind(&record.id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?
            .is_some();
        Ok(if id_taken {
            CreateOutcome::IdTaken
        } else {
            CreateOutcome::NameTaken
        })
    }

    async fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, retention_days, created_at_ms FROM resources ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        patterns::resource_rows(rows)
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, token_sha256, scopes, created_at_ms FROM tokens
             ORDER BY created_at_ms, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.into_iter()
            .map(|row| {
                let scopes: String = row.try_get(3)?;
                Ok(TokenRecord::from_stored(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    &scopes,
                    unsigned(row.try_get(4)?),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
    }

    async fn put_token(&self, record: TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, name, token_sha256, scopes, created_at_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, token_sha256 = excluded.token_sha256,
             scopes = excluded.scopes, created_at_ms = excluded.created_at_ms",
        )
        .bind(&record.id)
        .bind(&record.name)
        .bind(record.token_sha256.as_slice())
        .bind(record.stored_scopes())
        .bind(signed(record.created_at_ms))
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn delete_token(&self, id: String) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM tokens WHERE id = $1")
            .bind(&id)
            .execute(&self.pool)
            .await
            .map_err(classify)?
            .rows_affected();
        Ok(deleted == 1)
    }

    async fn edge_keys(&self) -> Result<Vec<(String, Vec<u8>, u64)>, StoreError> {
        let rows =
            sqlx::query("SELECT edge_id, secret, created_at_ms FROM edge_keys ORDER BY edge_id")
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
        rows.into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, unsigned(row.try_get(2)?))))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
    }

    async fn put_edge_key(
        &self,
        edge_id: String,
        secret: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO edge_keys (edge_id, secret, created_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (edge_id) DO UPDATE SET secret = excluded.secret,
             created_at_ms = excluded.created_at_ms",
        )
        .bind(&edge_id)
        .bind(&secret)
        .bind(signed(now_ms))
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn delete_edge_key(&self, edge_id: String) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM edge_keys WHERE edge_id = $1")
            .bind(&edge_id)
            .execute(&self.pool)
            .await
            .map_err(classify)?
            .rows_affected();
        Ok(deleted == 1)
    }

    async fn replace_edge_key_if(
        &self,
        edge_id: String,
        expected: Vec<u8>,
        replacement: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let replaced =
            sqlx::query("UPDATE edge_keys SET secret = $3 WHERE edge_id = $1 AND secret = $2")
                .bind(&edge_id)
                .bind(&expected)
                .bind(&replacement)
                .execute(&self.pool)
                .await
                .map_err(classify)?
                .rows_affected();
        Ok(replaced == 1)
    }
}

/// The retention of every existing resource among `resource_ids`.
async fn resource_retention(
    transaction: &mut Transaction<'static, Postgres>,
    resource_ids: &[impl AsRef<str> + Sync],
) -> Result<HashMap<String, Option<u32>>, sqlx::Error> {
    let ids: Vec<&str> = resource_ids.iter().map(AsRef::as_ref).collect();
    sqlx::query("SELECT id, retention_days FROM resources WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_all(&mut **transaction)
        .await?
        .into_iter()
        .map(|row| {
            let days: Option<i32> = row.try_get(1)?;
            Ok((row.try_get(0)?, days.map(|days| days.max(0) as u32)))
        })
        .collect()
}

async fn apply_group_in(
    transaction: &mut Transaction<'static, Postgres>,
    batches: &[MergeBatch],
    now_ms: u64,
    shape: WriteShape,
    summaries: bool,
) -> Result<GroupWrites, sqlx::Error> {
    let recorded = record_keys(transaction, batches, now_ms).await?;
    let retention = resource_retention(transaction, &group_resource_ids(batches)).await?;
    // The inbox shape writes no counts here: its folds read the watermarks.
    let rollups = match shape {
        WriteShape::Direct => rollup::rollups_for_write(transaction).await?,
        WriteShape::Inbox => Rollups::none(),
    };
    let writes = fold_group(batches, &recorded, &retention, &rollups, now_ms, shape);
    if writes.applied_any() && shape == WriteShape::Direct {
        write_cells(transaction, &writes, summaries.then_some(now_ms)).await?;
    }
    Ok(writes)
}

/// Adds a direct merge's hits to every tier's cells and appends its pending sketches;
/// with a clock (where summaries are kept), bumps the buckets it changes late by that clock
/// (`summaries.rs`).
async fn write_cells(
    transaction: &mut Transaction<'static, Postgres>,
    writes: &GroupWrites,
    bump_clock_ms: Option<u64>,
) -> Result<(), sqlx::Error> {
    if !writes.cells.is_empty() {
        let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((resource_id, tier, bucket_ms), hits) in &writes.cells {
            columns.0.push(resource_id.as_str());
            columns.1.push(tier.code() as i16);
            columns.2.push(signed(*bucket_ms));
            columns.3.push(signed(*hits));
        }
        sqlx::query(
            "INSERT INTO hit_counts (resource_id, tier, bucket_ms, hit_count, sketch)
             SELECT resource_id, tier, bucket_ms, hit_count, $5
             FROM unnest($1::text[], $2::int2[], $3::int8[], $4::int8[])
                  AS cell(resource_id, tier, bucket_ms, hit_count)
             ON CONFLICT (resource_id, tier, bucket_ms)
             DO UPDATE SET hit_count = hit_counts.hit_count + excluded.hit_count",
        )
        .bind(&columns.0)
        .bind(&columns.1)
        .bind(&columns.2)
        .bind(&columns.3)
        .bind(EMPTY_SKETCH)
        .execute(&mut **transaction)
        .await?;
    }
    if !writes.sketches.is_empty() {
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for ((resource_id, minute_ms), sketch) in &writes.sketches {
            columns.0.push(resource_id.as_str());
            columns.1.push(signed(*minute_ms));
            columns.2.push(sketch.to_bytes());
        }
        sqlx::query(
            "INSERT INTO pending_sketches (resource_id, minute_ms, sketch)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])",
        )
        .bind(&columns.0)
        .bind(&columns.1)
        .bind(&columns.2)
        .execute(&mut **transaction)
        .await?;
    }
    let Some(clock_ms) = bump_clock_ms else {
        return Ok(());
    };
    let late = late_buckets(writes.changed.iter().copied(), clock_ms);
    bump_buckets(&mut **transaction, &late).await
}

/// Adds whole cells to the stored ones, in statements of at most
/// [`WHOLE_CELLS_PER_STATEMENT_MAX`]: hits summed, the stored sketch united with the cell's. The
/// caller holds the compaction lock, which every writer of stored sketches takes.
pub(super) async fn add_whole_cells(
    transaction: &mut Transaction<'static, Postgres>,
    cells: &[TierCell],
) -> Result<(), sqlx::Error> {
    for chunk in cells.chunks(WHOLE_CELLS_PER_STATEMENT_MAX) {
        add_whole_cells_in_one_statement(transaction, chunk).await?;
    }
    Ok(())
}

async fn add_whole_cells_in_one_statement(
    transaction: &mut Transaction<'static, Postgres>,
    cells: &[TierCell],
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = cells.iter().map(|c| c.resource_id.as_str()).collect();
    let tiers: Vec<i16> = cells.iter().map(|c| c.tier.code() as i16).collect();
    let buckets: Vec<i64> = cells.iter().map(|c| signed(c.cell.bucket_ms)).collect();
    let stored = sqlx::query(
        "SELECT c.resource_id, c.tier, c.bucket_ms, c.sketch
         FROM hit_counts c
         JOIN unnest($1::text[], $2::int2[], $3::int8[]) AS k(resource_id, tier, bucket_ms)
           ON c.resource_id = k.resource_id AND c.tier = k.tier AND c.bucket_ms = k.bucket_ms",
    )
    .bind(&ids)
    .bind(&tiers)
    .bind(&buckets)
    .fetch_all(&mut **transaction)
    .await?;
    let mut stored_sketches = std::collections::HashMap::new();
    for row in stored {
        let key: (String, i16, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        stored_sketches.insert(key, row.try_get::<Vec<u8>, _>(3)?);
    }
    let mut sketches = Vec::with_capacity(cells.len());
    for (index, cell) in cells.iter().enumerate() {
        let key = (cell.resource_id.clone(), tiers[index], buckets[index]);
        let mut merged = match stored_sketches.get(&key) {
            Some(bytes) => Sketch::from_bytes(bytes).unwrap_or_else(|error| {
                tracing::error!(%error, resource_id = %cell.resource_id, "replacing a corrupt stored sketch");
                Sketch::new()
            }),
            None => Sketch::new(),
        };
        merged.merge(&cell.cell.visitors);
        sketches.push(merged.to_bytes());
    }
    sqlx::query(
        "INSERT INTO hit_counts (resource_id, tier, bucket_ms, hit_count, sketch)
         SELECT * FROM unnest($1::text[], $2::int2[], $3::int8[], $4::int8[], $5::bytea[])
         ON CONFLICT (resource_id, tier, bucket_ms)
         DO UPDATE SET hit_count = hit_counts.hit_count + excluded.hit_count,
                       sketch = excluded.sketch",
    )
    .bind(&ids)
    .bind(&tiers)
    .bind(&buckets)
    .bind(
        cells
            .iter()
            .map(|c| signed(c.cell.hits))
            .collect::<Vec<_>>(),
    )
    .bind(&sketches)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Bumps each bucket's generation and drops its summary: what every write that may change a
/// closed bucket does, after its cells (so a reader that read the cells before the write cannot
/// keep what it computed).
pub(super) async fn bump_buckets<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    buckets: &BTreeSet<(Tier, u64)>,
) -> Result<(), sqlx::Error> {
    if buckets.is_empty() {
        return Ok(());
    }
    let tiers: Vec<i16> = buckets.iter().map(|(tier, _)| tier.code() as i16).collect();
    let starts: Vec<i64> = buckets
        .iter()
        .map(|(_, bucket_ms)| signed(*bucket_ms))
        .collect();
    sqlx::query(
        "INSERT INTO bucket_summaries (tier, bucket_ms, generation, body)
         SELECT tier, bucket_ms, 1, NULL FROM unnest($1::int2[], $2::int8[]) AS b(tier, bucket_ms)
         ON CONFLICT (tier, bucket_ms)
         DO UPDATE SET generation = bucket_summaries.generation + 1, body = NULL",
    )
    .bind(&tiers)
    .bind(&starts)
    .execute(executor)
    .await?;
    Ok(())
}

/// Writes the dedupe record of every distinct key of the group (in key order, so that groups of
/// several aggregators wait for each other's rows in one order) and reads the digest of those
/// recorded before. A key another transaction is recording waits for it and then counts as
/// recorded before: its primary key serialises two deliveries of one batch.
async fn record_keys(
    transaction: &mut Transaction<'static, Postgres>,
    batches: &[MergeBatch],
    now_ms: u64,
) -> Result<HashMap<KeyId, Recorded>, sqlx::Error> {
    let firsts = first_occurrences(batches);
    let mut recorded = HashMap::with_capacity(firsts.len());
    if firsts.is_empty() {
        return Ok(recorded);
    }
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (_, key) in &firsts {
        columns.0.push(key.edge_id.as_str());
        columns.1.push(signed(key.boot_epoch));
        columns.2.push(signed(key.sequence));
        columns.3.push(key.body_sha256.as_slice());
    }
    let inserted = sqlx::query(
        "INSERT INTO applied_batches (edge_id, boot_epoch, sequence, body_sha256, applied_at_ms)
         SELECT edge_id, boot_epoch, sequence, body_sha256, $5
         FROM unnest($1::text[], $2::int8[], $3::int8[], $4::bytea[])
              AS batch(edge_id, boot_epoch, sequence, body_sha256)
         ON CONFLICT DO NOTHING
         RETURNING edge_id, boot_epoch, sequence",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .bind(&columns.3)
    .bind(signed(now_ms))
    .fetch_all(&mut **transaction)
    .await?;
    let first_index: HashMap<KeyId, usize> = firsts
        .iter()
        .map(|(index, key)| (key.id(), *index))
        .collect();
    for row in inserted {
        let id: KeyId = (
            row.try_get(0)?,
            unsigned(row.try_get(1)?),
            unsigned(row.try_get(2)?),
        );
        if let Some(index) = first_index.get(&id) {
            recorded.insert(id, Recorded::Now { batch: *index });
        }
    }
    if recorded.len() < firsts.len() {
        let missing: Vec<&BatchKey> = firsts
            .iter()
            .map(|(_, key)| *key)
            .filter(|key| !recorded.contains_key(&key.id()))
            .collect();
        let stored = sqlx::query(
            "SELECT a.edge_id, a.boot_epoch, a.sequence, a.body_sha256 FROM applied_batches a
             JOIN unnest($1::text[], $2::int8[], $3::int8[]) AS k(edge_id, boot_epoch, sequence)
               ON a.edge_id = k.edge_id AND a.boot_epoch = k.boot_epoch AND a.sequence = k.sequence",
        )
        .bind(missing.iter().map(|key| key.edge_id.as_str()).collect::<Vec<_>>())
        .bind(missing.iter().map(|key| signed(key.boot_epoch)).collect::<Vec<_>>())
        .bind(missing.iter().map(|key| signed(key.sequence)).collect::<Vec<_>>())
        .fetch_all(&mut **transaction)
        .await?;
        for row in stored {
            let digest: Vec<u8> = row.try_get(3)?;
            recorded.insert(
                (
                    row.try_get(0)?,
                    unsigned(row.try_get(1)?),
                    unsigned(row.try_get(2)?),
                ),
                // A stored digest of the wrong length matches no body: a conflict.
                Recorded::Before(digest.try_into().unwrap_or([0; 32])),
            );
        }
        for key in missing {
            // Neither inserted nor found: only a row deleted in between (retention of a record
            // past the age limit, which the handler refuses) could do it. Refuse as a conflict
            // rather than count twice.
            recorded
                .entry(key.id())
                .or_insert(Recorded::Before([0; 32]));
        }
    }
    Ok(recorded)
}

/// Pending sketches merged by the cell of every tier they fall in.
type PendingByCell = BTreeMap<(String, Tier, i64), Sketch>;
/// The keys (resource ids, ids) of the pending rows a compaction folded.
type FoldedPending = (Vec<String>, Vec<i64>);
/// Columns of rows to write with one `unnest` statement.
type SketchUpdates = (Vec<String>, Vec<i16>, Vec<i64>, Vec<Vec<u8>>);

async fn compact_in(
    transaction: &mut Transaction<'static, Postgres>,
) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT resource_id, id, minute_ms, sketch FROM pending_sketches
         ORDER BY id LIMIT $1",
    )
    .bind(COMPACTION_ROWS_MAX as i64)
    .fetch_all(&mut **transaction)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (by_cell, folded) = pending_by_cell(&rows)?;
    let keys = (
        by_cell.keys().map(|key| key.0.as_str()).collect::<Vec<_>>(),
        by_cell
            .keys()
            .map(|key| key.1.code() as i16)
            .collect::<Vec<_>>(),
        by_cell.keys().map(|key| key.2).collect::<Vec<_>>(),
    );
    let stored = sqlx::query(
        "SELECT c.resource_id, c.tier, c.bucket_ms, c.sketch
         FROM hit_counts c
         JOIN unnest($1::text[], $2::int2[], $3::int8[]) AS k(resource_id, tier, bucket_ms)
           ON c.resource_id = k.resource_id AND c.tier = k.tier AND c.bucket_ms = k.bucket_ms
         ORDER BY c.resource_id, c.tier, c.bucket_ms",
    )
    .bind(&keys.0)
    .bind(&keys.1)
    .bind(&keys.2)
    .fetch_all(&mut **transaction)
    .await?;
    let updates = merged_sketches(&stored, &by_cell)?;
    if !updates.0.is_empty() {
        sqlx::query(
            "UPDATE hit_counts c SET sketch = u.sketch
             FROM unnest($1::text[], $2::int2[], $3::int8[], $4::bytea[])
                  AS u(resource_id, tier, bucket_ms, sketch)
             WHERE c.resource_id = u.resource_id AND c.tier = u.tier AND c.bucket_ms = u.bucket_ms",
        )
        .bind(&updates.0)
        .bind(&updates.1)
        .bind(&updates.2)
        .bind(&updates.3)
        .execute(&mut **transaction)
        .await?;
    }
    sqlx::query(
        "DELETE FROM pending_sketches p
         USING unnest($1::text[], $2::int8[]) AS f(resource_id, id)
         WHERE p.resource_id = f.resource_id AND p.id = f.id",
    )
    .bind(&folded.0)
    .bind(&folded.1)
    .execute(&mut **transaction)
    .await?;
    Ok(rows.len())
}

/// The pending rows' sketches merged by cell of every tier, and the rows' keys (resource ids and
/// ids) to delete once they are folded.
fn pending_by_cell(
    rows: &[sqlx::postgres::PgRow],
) -> Result<(PendingByCell, FoldedPending), sqlx::Error> {
    let mut by_cell = PendingByCell::new();
    let mut folded: FoldedPending = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for row in rows {
        let resource_id: String = row.try_get(0)?;
        let minute_ms = unsigned(row.try_get(2)?);
        let bytes: Vec<u8> = row.try_get(3)?;
        match Sketch::from_bytes(&bytes) {
            Ok(sketch) => {
                for tier in Tier::ALL {
                    let bucket_ms = minute_ms / tier.resolution_ms() * tier.resolution_ms();
                    by_cell
                        .entry((resource_id.clone(), tier, signed(bucket_ms)))
                        .or_default()
                        .merge(&sketch);
                }
            }
            // Only this program writes these rows, from sketches it encoded itself.
            Err(error) => tracing::error!(%error, "dropping a corrupt pending sketch"),
        }
        folded.1.push(row.try_get::<i64, _>(1)?);
        folded.0.push(resource_id);
    }
    Ok((by_cell, folded))
}

/// The stored cells' sketches with their pending ones merged in, those that changed.
fn merged_sketches(
    stored: &[sqlx::postgres::PgRow],
    by_cell: &PendingByCell,
) -> Result<SketchUpdates, sqlx::Error> {
    let mut updates = SketchUpdates::default();
    for row in stored {
        let resource_id: String = row.try_get(0)?;
        let tier_code: i16 = row.try_get(1)?;
        let bucket_ms: i64 = row.try_get(2)?;
        let bytes: Vec<u8> = row.try_get(3)?;
        let Some(tier) = Tier::ALL
            .into_iter()
            .find(|tier| tier.code() as i16 == tier_code)
        else {
            continue;
        };
        // No cell for a pending sketch: retention or a deletion removed it, and its visitors.
        let Some(pending) = by_cell.get(&(resource_id.clone(), tier, bucket_ms)) else {
            continue;
        };
        let mut merged = Sketch::from_bytes(&bytes).unwrap_or_else(|error| {
            tracing::error!(%error, %resource_id, "replacing a corrupt stored sketch");
            Sketch::new()
        });
        merged.merge(pending);
        let after = merged.to_bytes();
        if after != bytes {
            updates.0.push(resource_id);
            updates.1.push(tier_code);
            updates.2.push(bucket_ms);
            updates.3.push(after);
        }
    }
    Ok(updates)
}

/// The stored cells of `tier` in `[start_ms, end_ms)` of each of `resource_ids`, in order, each
/// sorted by bucket with its pending sketches merged in.
async fn stored_cells(
    transaction: &mut Transaction<'static, Postgres>,
    resource_ids: &[String],
    tier: Tier,
    start_ms: u64,
    end_ms: u64,
) -> Result<Vec<Vec<CountCell>>, StoreError> {
    let index: HashMap<&str, usize> = resource_ids
        .iter()
        .enumerate()
        .map(|(index, id)| (id.as_str(), index))
        .collect();
    let mut all = vec![Vec::new(); resource_ids.len()];
    let rows = sqlx::query(
        "SELECT resource_id, bucket_ms, hit_count, sketch FROM hit_counts
         WHERE resource_id = ANY($1) AND tier = $2 AND bucket_ms >= $3 AND bucket_ms < $4
         ORDER BY resource_id, bucket_ms",
    )
    .bind(resource_ids)
    .bind(tier.code() as i16)
    .bind(signed(start_ms))
    .bind(signed(end_ms))
    .fetch_all(&mut **transaction)
    .await
    .map_err(classify)?;
    for row in rows {
        let resource_id: String = row.try_get(0).map_err(classify)?;
        let sketch: Vec<u8> = row.try_get(3).map_err(classify)?;
        if let Some(&at) = index.get(resource_id.as_str()) {
            all[at].push(CountCell {
                bucket_ms: unsigned(row.try_get(1).map_err(classify)?),
                hits: unsigned(row.try_get(2).map_err(classify)?),
                visitors: Sketch::from_bytes(&sketch)?,
            });
        }
    }
    let pending = sqlx::query(
        "SELECT resource_id, minute_ms, sketch FROM pending_sketches
         WHERE resource_id = ANY($1) AND minute_ms >= $2 AND minute_ms < $3",
    )
    .bind(resource_ids)
    .bind(signed(start_ms))
    .bind(signed(end_ms))
    .fetch_all(&mut **transaction)
    .await
    .map_err(classify)?;
    for row in pending {
        let resource_id: String = row.try_get(0).map_err(classify)?;
        let sketch: Vec<u8> = row.try_get(2).map_err(classify)?;
        let minute_ms = unsigned(row.try_get(1).map_err(classify)?);
        if let Some(&at) = index.get(resource_id.as_str()) {
            merge_pending(&mut all[at], tier, minute_ms, &Sketch::from_bytes(&sketch)?);
        }
    }
    Ok(all)
}
