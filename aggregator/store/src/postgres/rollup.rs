//! PostgreSQL's part of rollups (`rollup.rs`): its watermarks, the lock that keeps writers and
//! a rollup apart, one rollup step, and reads of open buckets over many resources.
//!
//! Writers of counts (direct merges, folds, imports) read the watermarks holding
//! `ROLLUP_LOCK_KEY` shared, and keep it until they commit; a rollup step holds it exclusively.
//! So a writer that read a bucket as open has committed its finer row before a rollup of that
//! bucket reads the finer rows (READ COMMITTED: each statement sees what committed before it),
//! and a writer that starts after the step reads the watermark the step moved. Lock order, in
//! every process: the fold lock, then this one, then the compaction lock.

use sqlx::{Postgres, Row, Transaction};

use super::{COMPACTION_LOCK_KEY, add_whole_cells, classify, signed, stored_cells, unsigned};
use crate::records::{CountCell, StoreError, Tier};
use crate::rollup::{
    ROLLUP_RESOURCES_MAX, Rollups, Watermark, add_finer, after_step, due_until, finer_tier,
    first_watermark, rolled_cell, skipped,
};

/// The advisory lock between writers (shared) and a rollup step (exclusive): "hitrolls" in
/// ASCII.
const ROLLUP_LOCK_KEY: i64 = 0x6869_7472_6f6c_6c73;

pub(super) async fn read_rollups<'c>(
    executor: impl sqlx::PgExecutor<'c>,
) -> Result<Rollups, sqlx::Error> {
    let mut rollups = Rollups::none();
    let rows = sqlx::query("SELECT tier, until_ms, cursor FROM rollups")
        .fetch_all(executor)
        .await?;
    for row in rows {
        let code: i16 = row.try_get(0)?;
        if let Some(tier) = Tier::from_code(code.into()).filter(|tier| finer_tier(*tier).is_some())
        {
            let until_ms = unsigned(row.try_get(1)?);
            let cursor: Option<String> = row.try_get(2)?;
            rollups.set(tier, Watermark { until_ms, cursor });
        }
    }
    Ok(rollups)
}

/// Holds the rollup lock shared until `transaction` ends: no rollup step runs meanwhile.
pub(super) async fn hold_shared(
    transaction: &mut Transaction<'static, Postgres>,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(ROLLUP_LOCK_KEY)
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

/// The watermarks a writer decides by, holding the rollup lock shared until it commits.
pub(super) async fn rollups_for_write(
    transaction: &mut Transaction<'static, Postgres>,
) -> Result<Rollups, sqlx::Error> {
    hold_shared(transaction).await?;
    read_rollups(&mut **transaction).await
}

async fn write_watermark(
    transaction: &mut Transaction<'static, Postgres>,
    tier: Tier,
    watermark: &Watermark,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rollups (tier, until_ms, cursor) VALUES ($1, $2, $3)
         ON CONFLICT (tier) DO UPDATE SET until_ms = excluded.until_ms, cursor = excluded.cursor",
    )
    .bind(tier.code() as i16)
    .bind(signed(watermark.until_ms))
    .bind(watermark.cursor.as_deref())
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// One rollup transaction of `tier` (hour or day), as the embedded store's: sets the first
/// watermark, skips buckets without finer rows, or rolls up the next [`ROLLUP_RESOURCES_MAX`]
/// resources of the bucket at the watermark. Returns the coarse cells written, or `None` when
/// nothing is due.
pub(super) async fn step(
    mut transaction: Transaction<'static, Postgres>,
    tier: Tier,
    now_ms: u64,
) -> Result<Option<u64>, StoreError> {
    let finer = finer_tier(tier).expect("only hours and days are rolled up");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROLLUP_LOCK_KEY)
        .execute(&mut *transaction)
        .await
        .map_err(classify)?;
    let rollups = read_rollups(&mut *transaction).await.map_err(classify)?;
    let Some(mark) = rollups.get(tier).cloned() else {
        let newest = newest_buckets(&mut transaction).await.map_err(classify)?;
        write_watermark(
            &mut transaction,
            tier,
            &first_watermark(tier, &newest, now_ms),
        )
        .await
        .map_err(classify)?;
        transaction.commit().await.map_err(classify)?;
        return Ok(Some(0));
    };
    let due_ms = due_until(tier, &rollups, now_ms);
    if mark.until_ms >= due_ms {
        // At once, not when the connection goes back to the pool: writers wait for this lock.
        transaction.rollback().await.map_err(classify)?;
        return Ok(None);
    }
    if mark.cursor.is_none() {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(bucket_ms) FROM hit_counts WHERE tier = $1 AND bucket_ms >= $2",
        )
        .bind(finer.code() as i16)
        .bind(signed(mark.until_ms))
        .fetch_one(&mut *transaction)
        .await
        .map_err(classify)?;
        if let Some(skipped) = skipped(tier, &mark, next.map(unsigned), due_ms) {
            write_watermark(&mut transaction, tier, &skipped)
                .await
                .map_err(classify)?;
            transaction.commit().await.map_err(classify)?;
            return Ok(Some(0));
        }
    }
    // Byte order ("C"), whatever the database's collation: writers and readers compare ids with
    // the cursor in Rust, byte by byte, and both orders must agree on which ids it has passed.
    let ids: Vec<String> = sqlx::query_scalar(
        r#"SELECT id FROM resources WHERE ($1::text IS NULL OR id COLLATE "C" > $1)
           ORDER BY id COLLATE "C" LIMIT $2"#,
    )
    .bind(mark.cursor.as_deref())
    .bind(ROLLUP_RESOURCES_MAX as i64)
    .fetch_all(&mut *transaction)
    .await
    .map_err(classify)?;
    // The finer rows and their pending sketches are read, and the rolled-up rows' sketches
    // read and written back, under the lock every writer of stored sketches holds: a compaction
    // between reading a row and its pending sketches would hide the visitors it moved.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(COMPACTION_LOCK_KEY)
        .execute(&mut *transaction)
        .await
        .map_err(classify)?;
    let bucket_end_ms = mark.until_ms + tier.resolution_ms();
    let finer_cells =
        stored_cells(&mut transaction, &ids, finer, mark.until_ms, bucket_end_ms).await?;
    let cells: Vec<_> = ids
        .iter()
        .zip(&finer_cells)
        .filter(|(_, parts)| !parts.is_empty())
        .map(|(id, parts)| rolled_cell(id, tier, mark.until_ms, parts))
        .collect();
    add_whole_cells(&mut transaction, &cells)
        .await
        .map_err(classify)?;
    let next = after_step(tier, &mark, &ids);
    write_watermark(&mut transaction, tier, &next)
        .await
        .map_err(classify)?;
    transaction.commit().await.map_err(classify)?;
    Ok(Some(cells.len() as u64))
}

/// The newest stored bucket of each tier that has a row.
async fn newest_buckets(
    transaction: &mut Transaction<'static, Postgres>,
) -> Result<Vec<(Tier, u64)>, sqlx::Error> {
    let mut newest = Vec::new();
    for tier in Tier::ALL {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT max(bucket_ms) FROM hit_counts WHERE tier = $1")
                .bind(tier.code() as i16)
                .fetch_one(&mut **transaction)
                .await?;
        if let Some(bucket_ms) = found {
            newest.push((tier, unsigned(bucket_ms)));
        }
    }
    Ok(newest)
}

/// Each resource's cells of `tier` in `[start_ms, end_ms)` (rows read in `all`), with the finer
/// rows of its open buckets added: read for every resource from the earliest watermark, then
/// each resource keeps those from its own (a rollup in progress has passed some of them).
pub(super) async fn add_open_buckets(
    transaction: &mut Transaction<'static, Postgres>,
    rollups: &Rollups,
    resource_ids: &[String],
    tier: Tier,
    (start_ms, end_ms): (u64, u64),
    all: &mut [Vec<CountCell>],
) -> Result<(), StoreError> {
    for (finer, from_ms, to_ms) in rollups.earliest().finer_reads(tier, "", start_ms, end_ms) {
        let finer_cells = stored_cells(transaction, resource_ids, finer, from_ms, to_ms).await?;
        for ((resource_id, cells), finer_of_one) in
            resource_ids.iter().zip(all.iter_mut()).zip(finer_cells)
        {
            let own_from_ms = rollups
                .finer_reads(tier, resource_id, start_ms, end_ms)
                .into_iter()
                .find(|(read, _, _)| *read == finer)
                .map_or(u64::MAX, |(_, from_ms, _)| from_ms);
            let kept: Vec<CountCell> = finer_of_one
                .into_iter()
                .filter(|cell| cell.bucket_ms >= own_from_ms)
                .collect();
            *cells = add_finer(tier, std::mem::take(cells), kept);
        }
    }
    Ok(())
}
