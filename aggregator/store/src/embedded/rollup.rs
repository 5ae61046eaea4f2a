//! The embedded store's part of rollups (`rollup.rs`): its watermarks and one rollup step.

use rusqlite::{Connection, params};

use super::{add_whole_cells_blocking, millis, tier_rows, unmillis};
use crate::records::{StoreError, Tier};
use crate::rollup::{
    ROLLUP_RESOURCES_MAX, Rollups, Watermark, after_step, due_until, finer_tier, first_watermark,
    rolled_cell, skipped,
};

pub(super) fn read_rollups(connection: &Connection) -> rusqlite::Result<Rollups> {
    let mut rollups = Rollups::none();
    let mut statement = connection.prepare_cached("SELECT tier, until_ms, cursor FROM rollups")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, Option<String>>(2)?,
        ))
    })?;
    for row in rows {
        let (code, until_ms, cursor) = row?;
        if let Some(tier) = Tier::from_code(code).filter(|tier| finer_tier(*tier).is_some()) {
            let until_ms = unmillis(until_ms);
            rollups.set(tier, Watermark { until_ms, cursor });
        }
    }
    Ok(rollups)
}

fn write_watermark(
    connection: &Connection,
    tier: Tier,
    watermark: &Watermark,
) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO rollups (tier, until_ms, cursor) VALUES (?1, ?2, ?3)
         ON CONFLICT (tier) DO UPDATE SET until_ms = excluded.until_ms, cursor = excluded.cursor",
        params![tier.code(), millis(watermark.until_ms), watermark.cursor],
    )?;
    Ok(())
}

/// One rollup transaction of `tier` (hour or day) on the writer, the only writing connection,
/// so no write lands between reading the watermark and moving it. Sets the first watermark,
/// skips buckets without finer rows, or rolls up the next [`ROLLUP_RESOURCES_MAX`] resources of
/// the bucket at the watermark. Returns the coarse cells written, or `None` when nothing is due.
pub(super) fn step_blocking(
    connection: &mut Connection,
    tier: Tier,
    now_ms: u64,
) -> Result<Option<u64>, StoreError> {
    let finer = finer_tier(tier).expect("only hours and days are rolled up");
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let rollups = read_rollups(&transaction)?;
    let Some(mark) = rollups.get(tier).cloned() else {
        let first = first_watermark(tier, &newest_buckets(&transaction)?, now_ms);
        write_watermark(&transaction, tier, &first)?;
        transaction.commit()?;
        return Ok(Some(0));
    };
    let due_ms = due_until(tier, &rollups, now_ms);
    if mark.until_ms >= due_ms {
        return Ok(None);
    }
    if mark.cursor.is_none() {
        let next: Option<i64> = transaction.query_row(
            "SELECT min(bucket_ms) FROM counts WHERE tier = ?1 AND bucket_ms >= ?2",
            params![finer.code(), millis(mark.until_ms)],
            |row| row.get(0),
        )?;
        if let Some(skipped) = skipped(tier, &mark, next.map(unmillis), due_ms) {
            write_watermark(&transaction, tier, &skipped)?;
            transaction.commit()?;
            return Ok(Some(0));
        }
    }
    let ids: Vec<String> = transaction
        .prepare_cached(
            "SELECT id FROM resources WHERE (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2",
        )?
        .query_map(params![mark.cursor, ROLLUP_RESOURCES_MAX as i64], |row| {
            row.get(0)
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut cells = Vec::new();
    for id in &ids {
        let parts = tier_rows(
            &transaction,
            id,
            finer,
            mark.until_ms,
            mark.until_ms + tier.resolution_ms(),
        )?;
        if !parts.is_empty() {
            cells.push(rolled_cell(id, tier, mark.until_ms, &parts));
        }
    }
    add_whole_cells_blocking(&transaction, &cells)?;
    let next = after_step(tier, &mark, &ids);
    write_watermark(&transaction, tier, &next)?;
    transaction.commit()?;
    Ok(Some(cells.len() as u64))
}

/// The newest stored bucket of each tier that has a row.
fn newest_buckets(connection: &Connection) -> rusqlite::Result<Vec<(Tier, u64)>> {
    let mut newest = Vec::new();
    let mut statement =
        connection.prepare_cached("SELECT max(bucket_ms) FROM counts WHERE tier = ?1")?;
    for tier in Tier::ALL {
        let found: Option<i64> = statement.query_row([tier.code()], |row| row.get(0))?;
        if let Some(bucket_ms) = found {
            newest.push((tier, unmillis(bucket_ms)));
        }
    }
    Ok(newest)
}
