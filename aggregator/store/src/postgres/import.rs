//! PostgreSQL's part of imports (`DurableStore::import`).

use std::collections::HashSet;

use hitcount_wire::Sketch;
use sqlx::{Postgres, Row, Transaction};

use super::{COMPACTION_LOCK_KEY, signed};
use crate::records::{Import, ImportCell, ImportOutcome};

/// Cells per statement: each statement stays well within the statement timeout.
const IMPORT_CELLS_PER_STATEMENT_MAX: usize = 10_000;

/// The import in `transaction`; the caller commits only `Imported`.
pub(super) async fn import_in(
    transaction: &mut Transaction<'static, Postgres>,
    import: &Import,
    now_ms: u64,
    summaries: bool,
) -> Result<ImportOutcome, sqlx::Error> {
    // Compaction is the only other writer of stored sketches: waiting for its lock means neither
    // overwrites the sketch the other just merged. Merges and folds only add hits and append
    // pending sketches, which an upsert here cannot lose.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(COMPACTION_LOCK_KEY)
        .execute(&mut **transaction)
        .await?;
    // A second import of the file waits here on the primary key until the first commits.
    let recorded = sqlx::query(
        "INSERT INTO imports (file_sha256, imported_at_ms, cells) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(import.file_sha256.as_slice())
    .bind(signed(now_ms))
    .bind(import.cells.len() as i64)
    .execute(&mut **transaction)
    .await?
    .rows_affected();
    if recorded == 0 {
        return Ok(ImportOutcome::Duplicate);
    }
    let resources_created = create_resources(transaction, import).await?;
    if let Some(missing) = missing_resource(transaction, import).await? {
        return Ok(ImportOutcome::ResourceMissing(missing));
    }
    for chunk in import.cells.chunks(IMPORT_CELLS_PER_STATEMENT_MAX) {
        add_cells(transaction, chunk).await?;
    }
    // An import may write any bucket, closed ones included.
    if summaries {
        let buckets = import
            .cells
            .iter()
            .map(|cell| (cell.tier, cell.cell.bucket_ms));
        super::bump_buckets(&mut **transaction, &buckets.collect()).await?;
    }
    Ok(ImportOutcome::Imported { resources_created })
}

/// Inserts the import's resources whose id (and name) is free; returns how many.
async fn create_resources(
    transaction: &mut Transaction<'static, Postgres>,
    import: &Import,
) -> Result<u64, sqlx::Error> {
    let records = &import.resources;
    Ok(sqlx::query(
        "INSERT INTO resources (id, name, retention_days, created_at_ms)
         SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[])
         ON CONFLICT DO NOTHING",
    )
    .bind(records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
    .bind(
        records
            .iter()
            .map(|r| {
                r.retention_days
                    .map(|days| days.min(i32::MAX as u32) as i32)
            })
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|r| signed(r.created_at_ms))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **transaction)
    .await?
    .rows_affected())
}

/// A resource the import's cells name that does not exist, if any.
async fn missing_resource(
    transaction: &mut Transaction<'static, Postgres>,
    import: &Import,
) -> Result<Option<String>, sqlx::Error> {
    let named: HashSet<&str> = import
        .cells
        .iter()
        .map(|cell| cell.resource_id.as_str())
        .collect();
    let named: Vec<&str> = named.into_iter().collect();
    let present: HashSet<String> =
        sqlx::query_scalar("SELECT id FROM resources WHERE id = ANY($1)")
            .bind(&named)
            .fetch_all(&mut **transaction)
            .await?
            .into_iter()
            .collect();
    Ok(named
        .into_iter()
        .find(|id| !present.contains(*id))
        .map(str::to_owned))
}

/// Adds cells to the stored ones: hits summed, the stored sketch (read under the compaction
/// lock) united with the imported one.
async fn add_cells(
    transaction: &mut Transaction<'static, Postgres>,
    cells: &[ImportCell],
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
