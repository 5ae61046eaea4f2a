//! Import: a file's counts taken into the store once. The file is the lossless export
//! (`GET /export?format=ndjson`: each resource's line, then its cells with their sketches;
//! `lossless.rs`) or GoatCounter's CSV export of pageviews (`goatcounter.rs`). Every line is
//! checked before anything is written, and a bad one is reported by its number; then the store
//! writes the whole file in one transaction with the file's SHA-256, so a file sent twice is
//! counted once and a failure leaves nothing half-imported.

mod goatcounter;
mod lossless;

use hitcount_wire::WireError;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, NAME_CHARS_MAX, RETENTION_DAYS_MAX};
use sha2::Digest;

use crate::store::{
    IMPORT_CELLS_MAX, Import, ImportOutcome, ResourceRecord, Store, StoreError, TierCell,
};

/// The largest file `POST /import` takes: a bigger store is moved in parts (`prefix`).
pub const IMPORT_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The formats `POST /import` reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    /// The lossless export of `GET /export?format=ndjson`.
    #[default]
    Ndjson,
    /// GoatCounter's CSV export (version 2): its pageviews become hits per path and hour.
    Goatcounter,
}

/// Why a file was not imported. Nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: LineProblem },
    #[error("the file holds no counts")]
    Empty,
    #[error(
        "the file holds more than {IMPORT_CELLS_MAX} cells; export and import it in parts (by prefix)"
    )]
    TooManyCells,
    #[error(
        "resource {0:?} could not be created: another resource has its name, or it was deleted meanwhile"
    )]
    ResourceMissing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What is wrong with one line.
#[derive(Debug, thiserror::Error)]
pub enum LineProblem {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("not a line of the lossless export: {0}")]
    Json(serde_json::Error),
    #[error("{0}")]
    ResourceId(WireError),
    #[error(
        "the name must be 1 to {NAME_CHARS_MAX} characters, not all whitespace, without control characters"
    )]
    Name,
    #[error("retention_days must be between 1 and {RETENTION_DAYS_MAX}")]
    Retention,
    #[error("{0} is not an RFC 3339 time")]
    Time(&'static str),
    #[error("start_time is not the start of a {0} bucket")]
    Unaligned(&'static str),
    #[error("start_time is in the future")]
    Future,
    #[error("a second line for resource {0:?}")]
    DuplicateResource(String),
    #[error("resource {0:?} does not exist and no line before this one describes it")]
    UnknownResource(String),
    #[error("a second line for this cell (the first is line {0})")]
    DuplicateCell(usize),
    #[error("count must be at least 1")]
    ZeroCount,
    #[error("the sketch is not base64")]
    SketchEncoding,
    #[error("the sketch does not decode: {0}")]
    Sketch(WireError),
    #[error("not a CSV record: {0}")]
    Csv(csv::Error),
    #[error(
        "not the header of a GoatCounter export of version 2 (2Path,Title,Event,UserAgent,...); export again from GoatCounter"
    )]
    GoatcounterHeader,
    #[error("Date is not an RFC 3339 time")]
    GoatcounterDate,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// `imported`, or `duplicate` when this very file was imported before (nothing changed).
    pub status: ImportStatus,
    /// Resources the file described that did not exist.
    pub resources_created: u64,
    /// Cells added to the stored ones.
    pub cells: u64,
    /// Hits in those cells.
    pub hits: u64,
    /// Cells past their tier's or their resource's retention: skipped, as retention would
    /// delete them.
    pub expired_cells: u64,
    /// GoatCounter rows not counted: events and bots (GoatCounter's own pageview counts leave
    /// them out too).
    pub skipped_rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportStatus {
    Imported,
    Duplicate,
}

/// Checks every line of `body`, then imports it (see the module comment).
pub async fn import(
    catalog: &Catalog,
    store: &Store,
    format: ImportFormat,
    body: &[u8],
    now_ms: u64,
) -> Result<ImportReport, ImportError> {
    let parsed = match format {
        ImportFormat::Ndjson => lossless::parse(catalog, body, now_ms)?,
        ImportFormat::Goatcounter => goatcounter::parse(catalog, body, now_ms)?,
    };
    let ids: Vec<String> = parsed
        .resources
        .iter()
        .map(|record| record.id.clone())
        .collect();
    let mut report = ImportReport {
        status: ImportStatus::Imported,
        resources_created: 0,
        cells: parsed.cells.len() as u64,
        hits: parsed.cells.iter().map(|cell| cell.cell.hits).sum(),
        expired_cells: parsed.expired_cells,
        skipped_rows: parsed.skipped_rows,
    };
    let import = Import {
        file_sha256: sha2::Sha256::digest(body).into(),
        resources: parsed.resources,
        cells: parsed.cells,
    };
    match store.import(import, now_ms).await? {
        ImportOutcome::Imported { resources_created } => {
            report.resources_created = resources_created;
            if resources_created > 0 {
                // The import is committed: a failed read here must not answer it as failed
                // (a retry would be a duplicate). The cache's periodic reload finds them too.
                match store.resources_current(ids, None).await {
                    Ok(records) => catalog.insert_resources(records),
                    Err(error) => tracing::warn!(%error, "caching the imported resources failed"),
                }
            }
            tracing::info!(cells = report.cells, hits = report.hits, "file imported");
            Ok(report)
        }
        ImportOutcome::Duplicate => Ok(ImportReport {
            status: ImportStatus::Duplicate,
            resources_created: 0,
            cells: 0,
            hits: 0,
            expired_cells: 0,
            skipped_rows: 0,
        }),
        ImportOutcome::ResourceMissing(id) => Err(ImportError::ResourceMissing(id)),
    }
}

/// A checked file: the resources and cells the store writes, and what was left out.
struct Parsed {
    resources: Vec<ResourceRecord>,
    cells: Vec<TierCell>,
    expired_cells: u64,
    skipped_rows: u64,
}
