//! PostgreSQL's part of imports (`DurableStore::import`).

use std::collections::HashSet;

use sqlx::{Postgres, Transaction};

use super::{COMPACTION_LOCK_KEY, signed};
use crate::records::{Import, ImportOutcome};
use crate::summaries::with_coarser;

/// The import in `transaction`; the caller commits only `Imported`.
pub(super) async fn import_in(
    transaction: &mut Transaction<'static, Postgres>,
    import: &Import,
    now_ms: u64,
    summaries: bool,
) -> Result<ImportOutcome, sqlx::Error> {
    // Compaction and folds are the other writers of stored sketches, and hold this lock while
    // they do: waiting for it means none overwrites the sketch another just merged. Direct
    // merges only add hits and append pending sketches, which an upsert here cannot lose.
    // Rollup steps move the watermarks the import's coarse cells are decided by (`rollup.rs`):
    // held shared until commit, taken before the compaction lock as by every writer.
    let rollups = super::rollup::rollups_for_write(transaction).await?;
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
    // Each tier reads as the file says, rolled up or not (`Rollups::import_rows`).
    super::add_whole_cells(transaction, &rollups.import_rows(&import.cells)).await?;
    // An import may change any bucket, closed ones included, and the coarser ones reading them.
    if summaries {
        let buckets = with_coarser(
            import
                .cells
                .iter()
                .map(|cell| (cell.tier, cell.cell.bucket_ms)),
        );
        super::bump_buckets(&mut **transaction, &buckets).await?;
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
