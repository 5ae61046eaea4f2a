//! The embedded store's part of imports (`DurableStore::import`).

use std::collections::BTreeSet;

use rusqlite::{Connection, params};

use super::millis;
use crate::records::{Import, ImportOutcome};
use crate::summaries::with_coarser;

/// The import in one immediate transaction on the writer, this process's only writing
/// connection: no merge, fold or compaction writes between reading a stored sketch and writing
/// it back (a compaction planned before notices the changed sketch and plans again).
pub(super) fn import_blocking(
    connection: &mut Connection,
    import: &Import,
    now_ms: u64,
) -> rusqlite::Result<ImportOutcome> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let recorded = transaction.execute(
        "INSERT INTO imports (file_sha256, imported_at_ms, cells) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        params![
            import.file_sha256.as_slice(),
            millis(now_ms),
            import.cells.len() as i64
        ],
    )?;
    if recorded == 0 {
        return Ok(ImportOutcome::Duplicate);
    }
    let mut resources_created = 0;
    {
        let mut create = transaction.prepare_cached(
            "INSERT INTO resources (id, name, retention_days, created_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?;
        for record in &import.resources {
            resources_created += create.execute(params![
                record.id,
                record.name,
                record.retention_days,
                millis(record.created_at_ms)
            ])? as u64;
        }
        let mut exists = transaction.prepare_cached("SELECT 1 FROM resources WHERE id = ?1")?;
        let named: BTreeSet<&str> = import
            .cells
            .iter()
            .map(|cell| cell.resource_id.as_str())
            .collect();
        for id in named {
            if !exists.exists([id])? {
                return Ok(ImportOutcome::ResourceMissing(id.to_owned()));
            }
        }
    }
    // Each tier reads as the file says, rolled up or not (`Rollups::import_rows`).
    let rows = super::rollup::read_rollups(&transaction)?.import_rows(&import.cells);
    super::add_whole_cells_blocking(&transaction, &rows)?;
    // An import may change any bucket, closed ones included, and the coarser ones reading them.
    let buckets = with_coarser(
        import
            .cells
            .iter()
            .map(|cell| (cell.tier, cell.cell.bucket_ms)),
    );
    super::bump_buckets(&transaction, &buckets)?;
    transaction.commit()?;
    Ok(ImportOutcome::Imported { resources_created })
}
