//! The embedded store: one SQLite file under the data directory, in WAL mode with
//! `synchronous=FULL`, so a transaction that returned from commit survives `kill -9` and power
//! loss alike.
//!
//! Counts are kept in three tiers (minute, hour, day). Every merge (or, with the durable inbox,
//! every fold of a closed minute) writes all tiers in the same
//! transaction (a rollup at write time), so the tiers can never disagree and no rollup job has to
//! be made exactly-once; the background job only deletes what retention has expired.
//!
//! Unique-visitor sketches are not rewritten on every merge: a dense sketch is 12 KiB, and
//! rewriting every hot cell's sketch in every group commit made the write-ahead log, not the
//! hits, the cost. A direct merge appends the entry's (usually tiny, sparse) sketch to
//! `pending_sketches` in the same transaction as the counts, and [`EmbeddedStore::compact`] folds pending
//! rows into their cells every 10 s. Queries merge both, so results never depend on
//! whether compaction has run, and the append is as durable as the counts. An inbox fold or an
//! import writes each cell once, so it writes whole cells instead (`add_whole_cells_blocking`).
//!
//! All writes go through one connection behind a mutex (SQLite allows one writer at a time, and
//! one connection avoids `SQLITE_BUSY` between our own writers); reads use a pool of read-only
//! connections, which WAL lets run beside the writer.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hitcount_wire::Sketch;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

fn classify(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Busy
        }
        _ => StoreError::Sqlite(error),
    }
}

// Imports (`embedded/import.rs`).
mod import;
// Resource patterns and resources created on first sight (`embedded/patterns.rs`).
mod patterns;
// Watermarks and rollup steps (`embedded/rollup.rs`).
mod rollup;

use super::inbox::{
    FOLD_ROWS_LISTED_MAX, FOREIGN_FOLD_AFTER_MS, FoldScope, InboxRow, Overlay, TakenSlot,
    UnfoldedRead, add_minutes_since, choose_fold_rows, fold_rows, held_for_each,
    partly_present_ids, rows_resource_ids, whole_cells,
};
use crate::DEDUPE_RETENTION_MS;
use crate::contract::{CatalogStore, DurableStore};
use crate::group::{
    GroupWrites, Recorded, WriteShape, first_occurrences, fold_group, group_resource_ids,
};
use crate::records::{
    ApplyOutcome, CountCell, CreateOutcome, GroupCommit, Import, ImportOutcome, MergeBatch,
    MinuteCells, Pruned, ResourceRecord, StoreError, Tier, TierCell, TokenRecord,
};
use crate::rollup::{Rollups, add_finer};
use crate::rules::{
    COMPACTION_ROWS_MAX, EMPTY_SKETCH, RETENTION_DELETE_ROWS_MAX, check_import, check_read_ids,
    merge_pending, retention_rules,
};
use crate::summaries::{
    BucketGeneration, StoredSummary, late_buckets, stored_buckets, with_coarser,
};

/// Compaction rounds that may find their cells changed underneath before giving up for now.
const COMPACTION_CONFLICTS_MAX: u32 = 5;
/// Read connections in the pool.
const READ_CONNECTIONS_MAX: u32 = 8;
/// How long a statement waits for a lock before reporting `Busy`.
const BUSY_TIMEOUT_MS: u64 = 5_000;
const DATABASE_FILE: &str = "hitcount.sqlite3";

#[derive(Clone)]
pub struct EmbeddedStore {
    writer: Arc<Mutex<Connection>>,
    readers: r2d2::Pool<SqliteConnectionManager>,
    /// With the inbox shape, this process's unfolded rows.
    inbox: Option<Arc<Overlay>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EmbeddedStore")
            .finish_non_exhaustive()
    }
}

/// Schema versions, applied in order and recorded in `PRAGMA user_version`. A hand-written list:
/// the embedded store has one schema and this is all a migration crate would do for it.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE resources (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    retention_days INTEGER,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE counts (
    resource_id TEXT NOT NULL,
    tier INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    hits INTEGER NOT NULL,
    sketch BLOB NOT NULL,
    PRIMARY KEY (resource_id, tier, bucket_ms)
) WITHOUT ROWID;
CREATE INDEX counts_by_tier_and_bucket ON counts (tier, bucket_ms);
CREATE TABLE pending_sketches (
    -- AUTOINCREMENT: ids are never reused, so "delete up to the last id I folded" never deletes a
    -- row that arrived after the fold began.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_id TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    sketch BLOB NOT NULL
);
CREATE INDEX pending_sketches_by_resource ON pending_sketches (resource_id, minute_ms);
CREATE TABLE applied_batches (
    edge_id TEXT NOT NULL,
    boot_epoch INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    body_sha256 BLOB NOT NULL,
    applied_at_ms INTEGER NOT NULL,
    PRIMARY KEY (edge_id, boot_epoch, sequence)
) WITHOUT ROWID;
CREATE INDEX applied_batches_by_time ON applied_batches (applied_at_ms);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 BLOB NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE edge_keys (
    edge_id TEXT PRIMARY KEY,
    secret BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE patterns (
    pattern TEXT PRIMARY KEY,
    resources_max INTEGER NOT NULL,
    retention_days INTEGER,
    refused_hits INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX resources_by_creation ON resources (created_at_ms);
"#,
    r#"
-- The durable inbox (`--fold-interval-ms` above zero; see aggregator/store/src/inbox.rs).
-- AUTOINCREMENT: row ids are never reused, as the overlay's slots list their rows by them.
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at_ms INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    body BLOB NOT NULL
);
"#,
    r#"
-- One row per imported file (POST /import), written in the import's transaction, so a file is
-- imported once. Kept for good: a file may be sent again any time later.
CREATE TABLE imports (
    file_sha256 BLOB PRIMARY KEY,
    imported_at_ms INTEGER NOT NULL,
    cells INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- Summaries of closed buckets over every resource (see aggregator/store/src/summaries.rs): per
-- (tier, bucket) a generation, bumped by every write that changes the bucket late, and the
-- summary a reader kept under it.
CREATE TABLE bucket_summaries (
    tier INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    body BLOB,
    PRIMARY KEY (tier, bucket_ms)
) WITHOUT ROWID;
"#,
    r#"
-- When a row's last minute closes: a fold takes a row only after that (see FoldScope in
-- aggregator/store/src/inbox.rs). Rows of earlier versions have 0, and are folded at once.
ALTER TABLE inbox ADD COLUMN closes_at_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX inbox_by_closing ON inbox (closes_at_ms);
"#,
    r#"
-- Hours rolled up from minutes and days from hours (aggregator/store/src/rollup.rs): per coarse
-- tier, the bucket before which its rows hold every bucket whole, and the last resource of the
-- bucket at it rolled up so far. No row: the tier was never rolled up (written whole).
CREATE TABLE rollups (
    tier INTEGER PRIMARY KEY,
    until_ms INTEGER NOT NULL,
    cursor TEXT
);
"#,
];

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn migrate(connection: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", (index + 1) as i64)?;
        transaction.commit()?;
    }
    Ok(())
}

fn millis(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unmillis(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let mut writer = Connection::open(&path)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        debug_assert_eq!(mode.to_lowercase(), "wal");
        // FULL syncs the WAL on every commit: an acknowledged hit survives power loss too.
        writer.pragma_update(None, "synchronous", "FULL")?;
        configure(&writer)?;
        migrate(&mut writer)?;
        let manager = SqliteConnectionManager::file(&path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(|connection| configure(connection));
        let readers = r2d2::Pool::builder()
            .max_size(READ_CONNECTIONS_MAX)
            .min_idle(Some(1))
            .build(manager)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers,
            inbox: None,
        })
    }

    /// Group commits append to the durable inbox, folded by [`DurableStore::fold_inbox`].
    pub fn with_inbox(mut self) -> Self {
        self.inbox = Some(Arc::new(Overlay::default()));
        self
    }

    /// Folds this process's slots that `scope` takes, each in one transaction from its merged
    /// cells, then the other rows it takes (a stopped run's), in bounded transactions read back
    /// from the inbox.
    async fn fold(&self, now_ms: u64, scope: FoldScope) -> Result<u64, StoreError> {
        // Without the inbox shape no slot is this process's, but rows an earlier run with it
        // left (or a stopped process's) are still folded from their bodies: turning the inbox
        // off must not hide a hit it acknowledged.
        let no_slots = Overlay::default();
        let overlay = self.inbox.as_deref().unwrap_or(&no_slots);
        let mut folded = 0;
        for slot in overlay.take_due(now_ms, scope) {
            let number = slot.number;
            let (rows, cells) = self
                .write(move |connection| fold_slot_blocking(connection, &slot, now_ms))
                .await?;
            overlay.remove_slot(number);
            folded += rows;
            metrics::counter!("hitcount_inbox_folded_cells_total").increment(cells);
        }
        let closed_before_ms = match scope {
            FoldScope::All => u64::MAX,
            FoldScope::Closed => now_ms.saturating_sub(FOREIGN_FOLD_AFTER_MS),
        };
        loop {
            let own = overlay.row_ids();
            let (ids, cells, more) = self
                .write(move |connection| fold_blocking(connection, &own, closed_before_ms, now_ms))
                .await?;
            folded += ids.len() as u64;
            metrics::counter!("hitcount_inbox_folded_cells_total").increment(cells);
            if !more {
                break;
            }
        }
        // Slots another process (or this one's fold of every row) took part of.
        let looked_for = overlay.row_ids();
        if let (Some(first), Some(last)) = (looked_for.iter().min(), looked_for.iter().max()) {
            let (first, last) = (*first, *last);
            let present = self
                .read(move |connection| Ok(inbox_ids_between(connection, first, last)?))
                .await?;
            overlay.forget_folded(&looked_for, &present);
        }
        Ok(folded)
    }

    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || {
            let mut connection = writer
                .lock()
                .map_err(|_| StoreError::Task("the writer lock was poisoned".to_owned()))?;
            work(&mut connection)
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }

    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let connection = readers.get()?;
            work(&connection)
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }
}

#[async_trait::async_trait]
impl DurableStore for EmbeddedStore {
    /// With batch keys, the dedupe records are written in the merge's transaction, so a batch is
    /// applied exactly once even if the process dies at any point.
    async fn apply_group(
        &self,
        batches: Vec<MergeBatch>,
        now_ms: u64,
    ) -> Result<GroupCommit, StoreError> {
        let shape = self.write_shape();
        let (outcomes, appended) = self
            .write(move |connection| {
                apply_group_blocking(connection, &batches, now_ms, shape).map_err(classify)
            })
            .await?;
        if let Some(overlay) = &self.inbox {
            for (id, row) in appended {
                overlay.insert(id, row);
            }
        }
        Ok(GroupCommit {
            outcomes,
            transaction: None,
            documents: Vec::new(),
        })
    }

    /// Every resource's cells and pending sketches are read in one transaction, so a compaction
    /// in between cannot hide or double a visitor.
    async fn cells_of_many(
        &self,
        resource_ids: Vec<String>,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Vec<CountCell>>, StoreError> {
        check_read_ids(&resource_ids);
        // Listed before the snapshot is taken (see the PostgreSQL store's `cells_of_many`).
        let unfolded = held_for_each(self.inbox.as_deref(), &resource_ids);
        self.read(move |connection| {
            let snapshot = connection.unchecked_transaction()?;
            let listed = unfolded.iter().flatten().flat_map(|held| &held.row_ids);
            let present = match (listed.clone().min(), listed.max()) {
                (Some(first), Some(last)) => inbox_ids_between(&snapshot, *first, *last)?,
                _ => HashSet::new(),
            };
            let loaded = inbox_bodies(&snapshot, &partly_present_ids(&unfolded, &present))?;
            let rollups = rollup::read_rollups(&snapshot)?;
            let mut all = Vec::with_capacity(resource_ids.len());
            for resource_id in &resource_ids {
                all.push(stored_cells(
                    &snapshot,
                    &rollups,
                    resource_id,
                    tier,
                    (start_ms, end_ms),
                )?);
            }
            let unfolded = UnfoldedRead {
                held: unfolded,
                present,
                loaded,
            };
            unfolded.add_to(&mut all, &resource_ids, tier, (start_ms, end_ms), now_ms)?;
            snapshot.commit()?;
            Ok(all)
        })
        .await
    }

    async fn import(&self, import: Import, now_ms: u64) -> Result<ImportOutcome, StoreError> {
        check_import(&import);
        self.write(move |connection| {
            import::import_blocking(connection, &import, now_ms).map_err(classify)
        })
        .await
    }

    async fn minute_cells_since(&self, start_ms: u64) -> Result<MinuteCells, StoreError> {
        self.read(move |connection| {
            let snapshot = connection.unchecked_transaction()?;
            let mut cells: BTreeMap<(String, u64), CountCell> = BTreeMap::new();
            {
                let mut statement = snapshot.prepare_cached(
                    "SELECT resource_id, bucket_ms, hits, sketch FROM counts
                     WHERE tier = ?1 AND bucket_ms >= ?2",
                )?;
                let mut rows = statement.query(params![Tier::Minute.code(), millis(start_ms)])?;
                while let Some(row) = rows.next()? {
                    let bucket_ms = unmillis(row.get(1)?);
                    let sketch: Vec<u8> = row.get(3)?;
                    cells.insert(
                        (row.get(0)?, bucket_ms),
                        CountCell {
                            bucket_ms,
                            hits: unmillis(row.get(2)?),
                            visitors: Sketch::from_bytes(&sketch)?,
                        },
                    );
                }
                let mut pending = snapshot.prepare_cached(
                    "SELECT resource_id, minute_ms, sketch FROM pending_sketches
                     WHERE minute_ms >= ?1",
                )?;
                let mut rows = pending.query([millis(start_ms)])?;
                while let Some(row) = rows.next()? {
                    let key: (String, u64) = (row.get(0)?, unmillis(row.get(1)?));
                    let sketch: Vec<u8> = row.get(2)?;
                    if let Some(cell) = cells.get_mut(&key) {
                        cell.visitors.merge(&Sketch::from_bytes(&sketch)?);
                    }
                }
                // Unfolded inbox rows: in this snapshot each is either here or in the cells.
                let mut bodies = snapshot.prepare_cached("SELECT body FROM inbox ORDER BY id")?;
                let rows = bodies
                    .query_map([], |row| row.get::<_, Vec<u8>>(0))?
                    .map(|body| InboxRow::decode(&body?))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                if !rows.is_empty() {
                    let mut exists =
                        snapshot.prepare_cached("SELECT 1 FROM resources WHERE id = ?1")?;
                    let mut existing = std::collections::HashSet::new();
                    for id in rows_resource_ids(&rows) {
                        if exists.exists([&id])? {
                            existing.insert(id);
                        }
                    }
                    add_minutes_since(&mut cells, &rows, &existing, start_ms);
                }
            }
            snapshot.commit()?;
            Ok(MinuteCells {
                cells: cells
                    .into_iter()
                    .map(|((resource_id, _), cell)| (resource_id, cell))
                    .collect(),
                snapshot: None,
                documents: Vec::new(),
            })
        })
        .await
    }

    /// Folds pending sketches into their cells. Returns how many pending rows were folded.
    ///
    /// The merging happens on a read connection, outside the writer lock, so ingest waits only
    /// for the final writes. Those are conditional on each cell's sketch being what was read
    /// (a fold, an import or another process's compaction may have written it since); if any
    /// cell changed, the write is rolled back and the round starts over.
    async fn compact(&self) -> Result<u64, StoreError> {
        let mut folded = 0;
        let mut conflicts = 0;
        loop {
            let plan = self.read(plan_compaction).await?;
            let Some(plan) = plan else {
                return Ok(folded);
            };
            let rows = plan.rows;
            let written = self
                .write(move |connection| write_compaction(connection, &plan).map_err(classify))
                .await?;
            if written {
                folded += rows as u64;
                if rows < COMPACTION_ROWS_MAX {
                    return Ok(folded);
                }
            } else {
                conflicts += 1;
                if conflicts >= COMPACTION_CONFLICTS_MAX {
                    return Err(StoreError::Busy);
                }
            }
        }
    }

    /// Deletes a resource and purges all its counts. Returns false if it did not exist.
    async fn delete_resource(&self, id: String, now_ms: u64) -> Result<bool, StoreError> {
        if let Some(overlay) = &self.inbox {
            // Unfolded hits of the resource go now, not at the next fold.
            self.fold_inbox(now_ms).await?;
            overlay.forget_resource(&id);
        }
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let deleted = transaction.execute("DELETE FROM resources WHERE id = ?1", [&id])?;
            let buckets: Vec<(i64, i64)> = transaction
                .prepare("DELETE FROM counts WHERE resource_id = ?1 RETURNING tier, bucket_ms")?
                .query_map([&id], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            // Open coarse buckets read the deleted finer rows too.
            bump_buckets(&transaction, &with_coarser(stored_buckets(&buckets)))?;
            transaction.execute("DELETE FROM pending_sketches WHERE resource_id = ?1", [&id])?;
            transaction.commit()?;
            Ok(deleted == 1)
        })
        .await
    }

    /// Deletes counts past their tier's or their resource's retention, and old dedupe records,
    /// in transactions of bounded size.
    async fn prune(&self, now_ms: u64) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let resources = self.resources().await?;
        // Read before any deletion: watermarks only move on, so this one is never ahead.
        let rollups = self
            .read(|connection| Ok(rollup::read_rollups(connection)?))
            .await?;
        for (resource, tier, cutoff_ms) in retention_rules(&resources, now_ms) {
            // A bucket goes when all of it is older than the cutoff, and not while it still
            // counts for a coarser bucket that is not rolled up.
            let newest_expired_bucket =
                millis(rollups.prunable_until(tier, cutoff_ms)) - millis(tier.resolution_ms());
            loop {
                let resource = resource.clone();
                let deleted = self
                    .write(move |connection| {
                        let transaction = connection.transaction()?;
                        let buckets: Vec<(i64, i64)> = transaction
                            .prepare_cached(
                                "DELETE FROM counts WHERE (resource_id, tier, bucket_ms) IN (
                                   SELECT resource_id, tier, bucket_ms FROM counts
                                   WHERE (?1 IS NULL OR resource_id = ?1) AND tier = ?2
                                     AND bucket_ms <= ?3 LIMIT ?4)
                                 RETURNING tier, bucket_ms",
                            )?
                            .query_map(
                                params![
                                    resource,
                                    tier.code(),
                                    newest_expired_bucket,
                                    RETENTION_DELETE_ROWS_MAX as i64
                                ],
                                |row| Ok((row.get(0)?, row.get(1)?)),
                            )?
                            .collect::<rusqlite::Result<_>>()?;
                        bump_buckets(&transaction, &stored_buckets(&buckets))?;
                        if resource.is_none() {
                            // The tier's own retention: its buckets' rows go with their counts.
                            transaction.execute(
                                "DELETE FROM bucket_summaries WHERE tier = ?1 AND bucket_ms <= ?2",
                                params![tier.code(), newest_expired_bucket],
                            )?;
                        }
                        transaction.commit()?;
                        Ok(buckets.len())
                    })
                    .await?;
                pruned.count_rows += deleted as u64;
                if deleted < RETENTION_DELETE_ROWS_MAX {
                    break;
                }
            }
        }
        let dedupe_cutoff = millis(now_ms.saturating_sub(DEDUPE_RETENTION_MS));
        loop {
            let deleted = self
                .write(move |connection| {
                    Ok(connection.execute(
                        "DELETE FROM applied_batches WHERE (edge_id, boot_epoch, sequence) IN (
                           SELECT edge_id, boot_epoch, sequence FROM applied_batches
                           WHERE applied_at_ms < ?1 LIMIT ?2)",
                        params![dedupe_cutoff, RETENTION_DELETE_ROWS_MAX as i64],
                    )?)
                })
                .await?;
            pruned.dedupe_rows += deleted as u64;
            if deleted < RETENTION_DELETE_ROWS_MAX {
                break;
            }
        }
        Ok(pruned)
    }

    /// Folds every row. The writer connection is this process's only one, and an immediate
    /// transaction locks the file, so one fold runs at a time; rows are still claimed by
    /// deleting them, as on PostgreSQL.
    async fn fold_inbox(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.fold(now_ms, FoldScope::All).await
    }

    async fn fold_closed(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.fold(now_ms, FoldScope::Closed).await
    }

    async fn roll_up(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut rolled = 0;
        // Hours first: a day is rolled up from its hours once they all are.
        for tier in [Tier::Hour, Tier::Day] {
            while let Some(cells) = self
                .write(move |connection| rollup::step_blocking(connection, tier, now_ms))
                .await?
            {
                rolled += cells;
            }
        }
        Ok(rolled)
    }

    fn overlay(&self) -> Option<&Overlay> {
        self.inbox.as_deref()
    }

    fn keeps_pending_sketches(&self) -> bool {
        self.inbox.is_none()
    }

    fn keeps_bucket_summaries(&self) -> bool {
        true
    }

    async fn bucket_generations(
        &self,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<BucketGeneration>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT bucket_ms, generation, body IS NOT NULL FROM bucket_summaries
                 WHERE tier = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3 ORDER BY bucket_ms",
            )?;
            let rows = statement
                .query_map(
                    params![tier.code(), millis(start_ms), millis(end_ms)],
                    |row| {
                        Ok(BucketGeneration {
                            bucket_ms: unmillis(row.get(0)?),
                            generation: unmillis(row.get(1)?),
                            kept: row.get(2)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
        .await
    }

    async fn bucket_summaries(
        &self,
        tier: Tier,
        buckets_ms: Vec<u64>,
    ) -> Result<Vec<StoredSummary>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT generation, body FROM bucket_summaries
                 WHERE tier = ?1 AND bucket_ms = ?2 AND body IS NOT NULL",
            )?;
            let mut kept = Vec::new();
            for bucket_ms in buckets_ms {
                let found: Option<(i64, Vec<u8>)> = statement
                    .query_row(params![tier.code(), millis(bucket_ms)], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?;
                if let Some((generation, body)) = found {
                    kept.push(StoredSummary {
                        bucket_ms,
                        generation: unmillis(generation),
                        body,
                    });
                }
            }
            Ok(kept)
        })
        .await
    }

    async fn inbox_oldest_ms(&self) -> Result<Option<u64>, StoreError> {
        if self.inbox.is_none() {
            return Ok(None);
        }
        self.read(|connection| {
            let oldest: Option<i64> =
                connection
                    .query_row("SELECT min(created_at_ms) FROM inbox", [], |row| row.get(0))?;
            Ok(oldest.map(unmillis))
        })
        .await
    }

    async fn resource_ids_between(
        &self,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |connection| {
            let snapshot = connection.unchecked_transaction()?;
            let mut statement = snapshot.prepare_cached(
                "SELECT DISTINCT resource_id FROM counts
                 WHERE tier = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3",
            )?;
            // The resources with rows of `tier`, and those whose finer rows count for one of
            // its buckets not rolled up yet (any resource's: the listing may name a few more).
            let rollups = rollup::read_rollups(&snapshot)?.earliest();
            let mut reads = vec![(tier, start_ms, end_ms)];
            reads.extend(rollups.finer_reads(tier, "", start_ms, end_ms));
            let mut ids = BTreeSet::new();
            for (tier, from_ms, to_ms) in reads {
                let rows = statement.query_map(
                    params![tier.code(), millis(from_ms), millis(to_ms)],
                    |row| row.get::<_, String>(0),
                )?;
                for id in rows {
                    ids.insert(id?);
                }
            }
            Ok(ids.into_iter().collect())
        })
        .await
    }

    async fn put_bucket_summary(
        &self,
        tier: Tier,
        bucket_ms: u64,
        generation: u64,
        body: Vec<u8>,
    ) -> Result<bool, StoreError> {
        self.write(move |connection| {
            // One writer: a bump committed since the reader read `generation` is seen here.
            let kept = connection.execute(
                "INSERT INTO bucket_summaries (tier, bucket_ms, generation, body)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tier, bucket_ms) DO UPDATE SET body = excluded.body
                 WHERE generation = excluded.generation",
                params![tier.code(), millis(bucket_ms), millis(generation), body],
            )?;
            Ok(kept == 1)
        })
        .await
    }
}

#[async_trait::async_trait]
impl CatalogStore for EmbeddedStore {
    async fn create_resource(&self, record: ResourceRecord) -> Result<CreateOutcome, StoreError> {
        self.write(move |connection| {
            let result = connection.execute(
                "INSERT INTO resources (id, name, retention_days, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![record.id, record.name, record.retention_days, millis(record.created_at_ms)],
            );
            match result {
                Ok(_) => Ok(CreateOutcome::Created),
                Err(error)
                    if error.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
                {
                    let id_taken: bool = connection
                        .query_row("SELECT 1 FROM resources WHERE id = ?1", [&record.id], |_| Ok(()))
                        .optional()?
                        .is_some();
                    Ok(if id_taken {
                        CreateOutcome::IdTaken
                    } else {
                        CreateOutcome::NameTaken
                    })
                }
                Err(error) => Err(classify(error)),
            }
        })
        .await
    }

    async fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, name, retention_days, created_at_ms FROM resources ORDER BY id",
            )?;
            let rows = statement.query_map([], patterns::resource_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, name, token_sha256, scopes, created_at_ms FROM tokens ORDER BY created_at_ms, id",
            )?;
            let rows = statement.query_map([], |row| {
                let scopes: String = row.get(3)?;
                Ok(TokenRecord::from_stored(
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    &scopes,
                    unmillis(row.get(4)?),
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Inserts a token, or replaces the one with the same id.
    async fn put_token(&self, record: TokenRecord) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection.execute(
                "INSERT INTO tokens (id, name, token_sha256, scopes, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, token_sha256 = excluded.token_sha256,
                 scopes = excluded.scopes, created_at_ms = excluded.created_at_ms",
                params![
                    record.id,
                    record.name,
                    record.token_sha256.as_slice(),
                    record.stored_scopes(),
                    millis(record.created_at_ms)
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_token(&self, id: String) -> Result<bool, StoreError> {
        self.write(move |connection| {
            Ok(connection.execute("DELETE FROM tokens WHERE id = ?1", [&id])? == 1)
        })
        .await
    }

    async fn edge_keys(&self) -> Result<Vec<(String, Vec<u8>, u64)>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare("SELECT edge_id, secret, created_at_ms FROM edge_keys ORDER BY edge_id")?;
            let rows = statement.query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, unmillis(row.get(2)?)))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn put_edge_key(
        &self,
        edge_id: String,
        secret: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection.execute(
                "INSERT INTO edge_keys (edge_id, secret, created_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (edge_id) DO UPDATE SET secret = excluded.secret, created_at_ms = excluded.created_at_ms",
                params![edge_id, secret, millis(now_ms)],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_edge_key(&self, edge_id: String) -> Result<bool, StoreError> {
        self.write(move |connection| {
            Ok(connection.execute("DELETE FROM edge_keys WHERE edge_id = ?1", [&edge_id])? == 1)
        })
        .await
    }

    async fn replace_edge_key_if(
        &self,
        edge_id: String,
        expected: Vec<u8>,
        replacement: Vec<u8>,
    ) -> Result<bool, StoreError> {
        self.write(move |connection| {
            Ok(connection.execute(
                "UPDATE edge_keys SET secret = ?3 WHERE edge_id = ?1 AND secret = ?2",
                params![edge_id, expected, replacement],
            )? == 1)
        })
        .await
    }
}

/// One resource's stored cells of `tier` in `[start_ms, end_ms)`, sorted by bucket: its rows
/// with pending sketches merged in, and for buckets not rolled up yet the finer rows that
/// count for them (`rollup.rs`).
fn stored_cells(
    snapshot: &Connection,
    rollups: &Rollups,
    resource_id: &str,
    tier: Tier,
    (start_ms, end_ms): (u64, u64),
) -> Result<Vec<CountCell>, StoreError> {
    let mut cells = tier_rows(snapshot, resource_id, tier, start_ms, end_ms)?;
    for (finer, from_ms, to_ms) in rollups.finer_reads(tier, resource_id, start_ms, end_ms) {
        let finer_cells = tier_rows(snapshot, resource_id, finer, from_ms, to_ms)?;
        cells = add_finer(tier, cells, finer_cells);
    }
    Ok(cells)
}

/// One resource's rows of `tier` in `[start_ms, end_ms)`, sorted by bucket, with its pending
/// sketches merged in.
fn tier_rows(
    snapshot: &Connection,
    resource_id: &str,
    tier: Tier,
    start_ms: u64,
    end_ms: u64,
) -> Result<Vec<CountCell>, StoreError> {
    let mut cells = Vec::new();
    let mut statement = snapshot.prepare_cached(
        "SELECT bucket_ms, hits, sketch FROM counts
         WHERE resource_id = ?1 AND tier = ?2 AND bucket_ms >= ?3 AND bucket_ms < ?4
         ORDER BY bucket_ms",
    )?;
    let mut rows = statement.query(params![
        resource_id,
        tier.code(),
        millis(start_ms),
        millis(end_ms)
    ])?;
    while let Some(row) = rows.next()? {
        let sketch: Vec<u8> = row.get(2)?;
        cells.push(CountCell {
            bucket_ms: unmillis(row.get(0)?),
            hits: unmillis(row.get(1)?),
            visitors: Sketch::from_bytes(&sketch)?,
        });
    }
    let mut pending = snapshot.prepare_cached(
        "SELECT minute_ms, sketch FROM pending_sketches
         WHERE resource_id = ?1 AND minute_ms >= ?2 AND minute_ms < ?3",
    )?;
    let mut rows = pending.query(params![resource_id, millis(start_ms), millis(end_ms)])?;
    while let Some(row) = rows.next()? {
        let sketch: Vec<u8> = row.get(1)?;
        let minute_ms = unmillis(row.get(0)?);
        merge_pending(&mut cells, tier, minute_ms, &Sketch::from_bytes(&sketch)?);
    }
    Ok(cells)
}

/// Inbox row ids in `[first, last]`.
fn inbox_ids_between(
    connection: &Connection,
    first: u64,
    last: u64,
) -> rusqlite::Result<std::collections::HashSet<u64>> {
    let mut statement =
        connection.prepare_cached("SELECT id FROM inbox WHERE id >= ?1 AND id <= ?2")?;
    statement
        .query_map(params![millis(first), millis(last)], |row| {
            row.get::<_, i64>(0)
        })?
        .map(|id| id.map(unmillis))
        .collect()
}

/// The bodies of inbox rows, by id (those the snapshot still holds).
fn inbox_bodies(
    connection: &Connection,
    ids: &[u64],
) -> Result<HashMap<u64, InboxRow>, StoreError> {
    let mut body = connection.prepare_cached("SELECT body FROM inbox WHERE id = ?1")?;
    let mut rows = HashMap::new();
    for id in ids {
        let found: Option<Vec<u8>> = body.query_row([millis(*id)], |row| row.get(0)).optional()?;
        if let Some(found) = found {
            rows.insert(*id, InboxRow::decode(&found)?);
        }
    }
    Ok(rows)
}

/// Claims inbox rows by deleting them; returns the ids claimed and the latest time one of them
/// was appended.
fn claim_rows(
    transaction: &rusqlite::Transaction<'_>,
    ids: &[u64],
) -> rusqlite::Result<(Vec<u64>, u64)> {
    let mut claim =
        transaction.prepare_cached("DELETE FROM inbox WHERE id = ?1 RETURNING created_at_ms")?;
    let mut claimed = Vec::with_capacity(ids.len());
    let mut appended_ms = 0;
    for id in ids {
        let created: Option<i64> = claim
            .query_row([millis(*id)], |row| row.get(0))
            .optional()?;
        if let Some(created) = created {
            claimed.push(*id);
            appended_ms = appended_ms.max(unmillis(created));
        }
    }
    Ok((claimed, appended_ms))
}

/// Writes claimed rows' cells into every tier as whole cells, in the claiming transaction.
fn write_folded_blocking(
    transaction: &rusqlite::Transaction<'_>,
    rows: &[&InboxRow],
    appended_ms: u64,
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut retention = HashMap::new();
    {
        let mut find_resource =
            transaction.prepare_cached("SELECT retention_days FROM resources WHERE id = ?1")?;
        for id in rows_resource_ids(rows.iter().copied()) {
            let days: Option<Option<u32>> = find_resource
                .query_row([&id], |row| row.get(0))
                .optional()?;
            if let Some(days) = days {
                retention.insert(id, days);
            }
        }
    }
    let rollups = rollup::read_rollups(transaction)?;
    let writes = fold_rows(rows.iter().copied(), &retention, &rollups, now_ms);
    // The fold's clock for what is late (`summaries.rs`): never earlier than a row it folds
    // was appended, however long ago the fold began.
    let late = late_buckets(writes.changed.iter().copied(), now_ms.max(appended_ms));
    add_whole_cells_blocking(transaction, &whole_cells(writes))?;
    bump_buckets(transaction, &late)?;
    Ok(())
}

/// Folds one of this process's slots: claims its rows and writes its merged cells, in one
/// transaction. If some of its rows were folded already (by another process, or by a fold of
/// every row while the row's commit was on its way into the overlay), the
/// merged cells cannot be split, so the rows left are folded from their own bodies instead.
/// Returns the rows and cells folded.
fn fold_slot_blocking(
    connection: &mut Connection,
    slot: &TakenSlot,
    now_ms: u64,
) -> Result<(u64, u64), StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (claimed, appended_ms) = claim_rows(&transaction, &slot.row_ids)?;
    if claimed.len() == slot.row_ids.len() {
        write_folded_blocking(&transaction, &[slot.cells.as_ref()], appended_ms, now_ms)?;
        transaction.commit()?;
        return Ok((claimed.len() as u64, slot.cells.len() as u64));
    }
    transaction.rollback()?;
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let left = inbox_bodies(&transaction, &slot.row_ids)?;
    let ids: Vec<u64> = left.keys().copied().collect();
    let (claimed, appended_ms) = claim_rows(&transaction, &ids)?;
    assert_eq!(
        claimed.len(),
        ids.len(),
        "the one writer reads and claims the rows left in one transaction"
    );
    let rows: Vec<&InboxRow> = left.values().collect();
    write_folded_blocking(&transaction, &rows, appended_ms, now_ms)?;
    transaction.commit()?;
    Ok((
        claimed.len() as u64,
        rows.iter().map(|row| row.len() as u64).sum(),
    ))
}

/// One fold transaction over rows not in this process's slots (`own`) appended and closed by
/// `closed_before_ms` (a live writer's late row of an old minute is still its writer's to fold):
/// returns the rows folded, their cells, and whether rows are left.
fn fold_blocking(
    connection: &mut Connection,
    own: &HashSet<u64>,
    closed_before_ms: u64,
    now_ms: u64,
) -> Result<(Vec<u64>, u64, bool), StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // The own ids as a JSON array, which SQLite's json_each lists: one parameter however many.
    let own_ids = format!(
        "[{}]",
        own.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    );
    let foreign: Vec<(u64, usize)> = {
        let mut statement = transaction.prepare_cached(
            "SELECT id, entries FROM inbox
             WHERE closes_at_ms <= ?1 AND created_at_ms <= ?1
               AND id NOT IN (SELECT value FROM json_each(?2))
             ORDER BY id LIMIT ?3",
        )?;
        statement
            .query_map(
                params![millis(closed_before_ms), own_ids, FOLD_ROWS_LISTED_MAX],
                |row| {
                    Ok((
                        unmillis(row.get(0)?),
                        usize::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    ))
                },
            )?
            .collect::<rusqlite::Result<_>>()?
    };
    let chosen = choose_fold_rows(&foreign);
    if chosen.is_empty() {
        return Ok((Vec::new(), 0, false));
    }
    let loaded = inbox_bodies(&transaction, &chosen)?;
    let (claimed, appended_ms) = claim_rows(&transaction, &chosen)?;
    assert_eq!(claimed.len(), chosen.len(), "a listed row is claimed once");
    let rows: Vec<&InboxRow> = chosen.iter().filter_map(|id| loaded.get(id)).collect();
    write_folded_blocking(&transaction, &rows, appended_ms, now_ms)?;
    transaction.commit()?;
    let cells = rows.iter().map(|row| row.len() as u64).sum();
    let more = chosen.len() < foreign.len() || foreign.len() == FOLD_ROWS_LISTED_MAX as usize;
    Ok((chosen, cells, more))
}

/// One cell a compaction round rewrites, with its encoded sketch before and after.
struct CompactedCell {
    resource_id: String,
    tier: Tier,
    bucket_ms: u64,
    before: Vec<u8>,
    after: Vec<u8>,
}

/// What one compaction round will write.
struct CompactionPlan {
    cells: Vec<CompactedCell>,
    last_id: i64,
    rows: usize,
}

fn plan_compaction(connection: &Connection) -> Result<Option<CompactionPlan>, StoreError> {
    let snapshot = connection.unchecked_transaction()?;
    let mut by_minute: BTreeMap<(String, u64), Sketch> = BTreeMap::new();
    let mut last_id: Option<i64> = None;
    let mut rows = 0;
    {
        let mut select = snapshot.prepare_cached(
            "SELECT id, resource_id, minute_ms, sketch FROM pending_sketches ORDER BY id LIMIT ?1",
        )?;
        let mut query = select.query([COMPACTION_ROWS_MAX as i64])?;
        while let Some(row) = query.next()? {
            let bytes: Vec<u8> = row.get(3)?;
            match Sketch::from_bytes(&bytes) {
                Ok(sketch) => by_minute
                    .entry((row.get(1)?, unmillis(row.get(2)?)))
                    .or_default()
                    .merge(&sketch),
                // Only this program writes these rows, from sketches it encoded itself.
                Err(error) => tracing::error!(%error, "dropping a corrupt pending sketch"),
            }
            last_id = Some(row.get(0)?);
            rows += 1;
        }
    }
    let Some(last_id) = last_id else {
        return Ok(None);
    };
    let mut by_cell: BTreeMap<(String, Tier, u64), Sketch> = BTreeMap::new();
    for ((resource_id, minute_ms), sketch) in by_minute {
        for tier in Tier::ALL {
            let bucket_ms = minute_ms / tier.resolution_ms() * tier.resolution_ms();
            by_cell
                .entry((resource_id.clone(), tier, bucket_ms))
                .or_default()
                .merge(&sketch);
        }
    }
    let mut cells = Vec::with_capacity(by_cell.len());
    {
        let mut read_sketch = snapshot.prepare_cached(
            "SELECT sketch FROM counts WHERE resource_id = ?1 AND tier = ?2 AND bucket_ms = ?3",
        )?;
        for ((resource_id, tier, bucket_ms), pending) in by_cell {
            let stored: Option<Vec<u8>> = read_sketch
                .query_row(
                    params![resource_id, tier.code(), millis(bucket_ms)],
                    |row| row.get(0),
                )
                .optional()?;
            // No cell: retention or a deletion removed it, and its visitors with it.
            let Some(stored) = stored else { continue };
            let mut merged = Sketch::from_bytes(&stored).unwrap_or_else(|error| {
                tracing::error!(%error, %resource_id, "replacing a corrupt stored sketch");
                Sketch::new()
            });
            merged.merge(&pending);
            let after = merged.to_bytes();
            if after != stored {
                cells.push(CompactedCell {
                    resource_id,
                    tier,
                    bucket_ms,
                    before: stored,
                    after,
                });
            }
        }
    }
    snapshot.commit()?;
    Ok(Some(CompactionPlan {
        cells,
        last_id,
        rows,
    }))
}

/// Writes a plan if no cell changed since it was read; returns whether it was written.
fn write_compaction(connection: &mut Connection, plan: &CompactionPlan) -> rusqlite::Result<bool> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut write_sketch = transaction.prepare_cached(
            "UPDATE counts SET sketch = ?5
             WHERE resource_id = ?1 AND tier = ?2 AND bucket_ms = ?3 AND sketch = ?4",
        )?;
        let mut cell_exists = transaction.prepare_cached(
            "SELECT 1 FROM counts WHERE resource_id = ?1 AND tier = ?2 AND bucket_ms = ?3",
        )?;
        for cell in &plan.cells {
            let key = params![cell.resource_id, cell.tier.code(), millis(cell.bucket_ms)];
            let updated = write_sketch.execute(params![
                cell.resource_id,
                cell.tier.code(),
                millis(cell.bucket_ms),
                cell.before,
                cell.after
            ])?;
            // A cell deleted meanwhile needs nothing; a cell whose sketch changed means a fold,
            // an import or another compactor wrote it, and this plan is stale.
            if updated == 0 && cell_exists.exists(key)? {
                return Ok(false);
            }
        }
    }
    transaction.execute(
        "DELETE FROM pending_sketches WHERE id <= ?1",
        [plan.last_id],
    )?;
    transaction.commit()?;
    Ok(true)
}

/// A group's outcomes and, with the inbox shape, the rows it appended.
type Appended = (Vec<ApplyOutcome>, Vec<(u64, InboxRow)>);

fn apply_group_blocking(
    connection: &mut Connection,
    batches: &[MergeBatch],
    now_ms: u64,
    shape: WriteShape,
) -> rusqlite::Result<Appended> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // The writer is alone (one connection, an immediate transaction), so looking a key up and
    // then recording it cannot race another merge.
    let mut recorded = HashMap::new();
    {
        let mut find_key = transaction.prepare_cached(
            "SELECT body_sha256 FROM applied_batches
             WHERE edge_id = ?1 AND boot_epoch = ?2 AND sequence = ?3",
        )?;
        let mut record_key = transaction.prepare_cached(
            "INSERT INTO applied_batches (edge_id, boot_epoch, sequence, body_sha256, applied_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (index, key) in first_occurrences(batches) {
            let id = params![key.edge_id, millis(key.boot_epoch), millis(key.sequence)];
            let stored: Option<Vec<u8>> = find_key.query_row(id, |row| row.get(0)).optional()?;
            let verdict = match stored {
                // A stored digest of the wrong length matches no body: a conflict.
                Some(digest) => Recorded::Before(digest.try_into().unwrap_or([0; 32])),
                None => {
                    record_key.execute(params![
                        key.edge_id,
                        millis(key.boot_epoch),
                        millis(key.sequence),
                        key.body_sha256.as_slice(),
                        millis(now_ms)
                    ])?;
                    Recorded::Now { batch: index }
                }
            };
            recorded.insert(key.id(), verdict);
        }
    }
    // Keyed by the batches' own ids, sized once: a group names up to every resource, and a
    // copy of each id and the table's growth were a share of a group's time under load.
    let ids = group_resource_ids(batches);
    let mut retention: HashMap<&str, Option<u32>> = HashMap::with_capacity(ids.len());
    {
        let mut find_resource =
            transaction.prepare_cached("SELECT retention_days FROM resources WHERE id = ?1")?;
        for id in ids {
            let days: Option<Option<u32>> =
                find_resource.query_row([id], |row| row.get(0)).optional()?;
            if let Some(days) = days {
                retention.insert(id, days);
            }
        }
    }
    // The inbox shape writes no counts here: its folds read the watermarks.
    let rollups = match shape {
        WriteShape::Direct => rollup::read_rollups(&transaction)?,
        WriteShape::Inbox => Rollups::none(),
    };
    let mut writes = fold_group(batches, &recorded, &retention, &rollups, now_ms, shape);
    if !writes.applied_any() {
        // Only duplicates and conflicts: nothing was recorded, nothing to commit.
        return Ok((writes.outcomes, Vec::new()));
    }
    let mut appended = Vec::new();
    match shape {
        WriteShape::Direct => write_cells_blocking(&transaction, &writes, now_ms)?,
        WriteShape::Inbox => {
            let mut append = transaction.prepare_cached(
                "INSERT INTO inbox (created_at_ms, entries, body, closes_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for row in InboxRow::from_writes(&mut writes) {
                append.execute(params![
                    millis(now_ms),
                    row.len() as i64,
                    row.encode(),
                    millis(row.closes_at_ms())
                ])?;
                appended.push((unmillis(transaction.last_insert_rowid()), row));
            }
        }
    }
    transaction.commit()?;
    Ok((writes.outcomes, appended))
}

/// Adds whole cells to the stored ones: hits summed, the stored sketch united with the cell's.
/// Runs on the writer, this process's only writing connection, inside an immediate transaction:
/// nothing else writes a sketch between reading it and writing it back (a compaction planned
/// before notices the changed sketch and plans again).
pub(super) fn add_whole_cells_blocking(
    transaction: &rusqlite::Transaction<'_>,
    cells: &[TierCell],
) -> rusqlite::Result<()> {
    // A cell is inserted first, and read and united with what is stored only when it was there
    // already: a fold writes each minute cell once, when the minute closed, so most of its cells
    // are new, and a read of a row that is not there cost as much as the insert.
    let mut insert_new = transaction.prepare_cached(
        "INSERT INTO counts (resource_id, tier, bucket_ms, hits, sketch) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (resource_id, tier, bucket_ms) DO NOTHING",
    )?;
    let mut read_sketch = transaction.prepare_cached(
        "SELECT sketch FROM counts WHERE resource_id = ?1 AND tier = ?2 AND bucket_ms = ?3",
    )?;
    let mut add = transaction.prepare_cached(
        "UPDATE counts SET hits = hits + ?4, sketch = ?5
         WHERE resource_id = ?1 AND tier = ?2 AND bucket_ms = ?3",
    )?;
    for cell in cells {
        let inserted = insert_new.execute(params![
            cell.resource_id,
            cell.tier.code(),
            millis(cell.cell.bucket_ms),
            millis(cell.cell.hits),
            cell.cell.visitors.to_bytes()
        ])?;
        if inserted == 1 {
            continue;
        }
        let key = params![
            cell.resource_id,
            cell.tier.code(),
            millis(cell.cell.bucket_ms)
        ];
        let stored: Option<Vec<u8>> = read_sketch.query_row(key, |row| row.get(0)).optional()?;
        let mut merged = match stored {
            Some(bytes) => Sketch::from_bytes(&bytes).unwrap_or_else(|error| {
                tracing::error!(%error, resource_id = %cell.resource_id, "replacing a corrupt stored sketch");
                Sketch::new()
            }),
            None => Sketch::new(),
        };
        merged.merge(&cell.cell.visitors);
        add.execute(params![
            cell.resource_id,
            cell.tier.code(),
            millis(cell.cell.bucket_ms),
            millis(cell.cell.hits),
            merged.to_bytes()
        ])?;
    }
    Ok(())
}

/// Adds a direct merge's hits to every tier's cells and appends its pending sketches.
fn write_cells_blocking(
    transaction: &rusqlite::Transaction<'_>,
    writes: &GroupWrites,
    now_ms: u64,
) -> rusqlite::Result<()> {
    {
        let mut add_hits = transaction.prepare_cached(
            "INSERT INTO counts (resource_id, tier, bucket_ms, hits, sketch) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (resource_id, tier, bucket_ms) DO UPDATE SET hits = hits + excluded.hits",
        )?;
        for ((resource_id, tier, bucket_ms), hits) in &writes.cells {
            add_hits.execute(params![
                resource_id,
                tier.code(),
                millis(*bucket_ms),
                millis(*hits),
                EMPTY_SKETCH
            ])?;
        }
        let mut add_pending_sketch = transaction.prepare_cached(
            "INSERT INTO pending_sketches (resource_id, minute_ms, sketch) VALUES (?1, ?2, ?3)",
        )?;
        for ((resource_id, minute_ms), sketch) in &writes.sketches {
            add_pending_sketch.execute(params![
                resource_id,
                millis(*minute_ms),
                sketch.to_bytes()
            ])?;
        }
    }
    let late = late_buckets(writes.changed.iter().copied(), now_ms);
    bump_buckets(transaction, &late)
}

/// Bumps each bucket's generation and drops its summary: what every write that may change a
/// closed bucket does, after its cells (so a reader that read the cells before the write cannot
/// keep what it computed).
pub(super) fn bump_buckets(
    connection: &Connection,
    buckets: &BTreeSet<(Tier, u64)>,
) -> rusqlite::Result<()> {
    let mut bump = connection.prepare_cached(
        "INSERT INTO bucket_summaries (tier, bucket_ms, generation, body) VALUES (?1, ?2, 1, NULL)
         ON CONFLICT (tier, bucket_ms) DO UPDATE SET generation = generation + 1, body = NULL",
    )?;
    for (tier, bucket_ms) in buckets {
        bump.execute(params![tier.code(), millis(*bucket_ms)])?;
    }
    Ok(())
}
