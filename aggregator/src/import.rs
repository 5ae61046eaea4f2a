//! Import: a file's counts taken into the store once. The file is the lossless export
//! (`GET /export?format=ndjson`: each resource's line, then its cells with their sketches).
//! Every line is checked before anything is written, and a bad one is reported by its number;
//! then the store writes the whole file in one transaction with the file's SHA-256, so a file
//! sent twice is counted once and a failure leaves nothing half-imported.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hitcount_wire::{Sketch, WireError};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::catalog::{Catalog, NAME_CHARS_MAX, RETENTION_DAYS_MAX, checked_name, retention_valid};
use crate::export::Line;
use crate::query::rfc3339_ms;
use crate::store::{
    CountCell, IMPORT_CELLS_MAX, Import, ImportCell, ImportOutcome, ResourceRecord, Store,
    StoreError, Tier, cell_kept,
};
use hitcount_wire::CLOCK_SKEW_MS_MAX;

/// The largest file `POST /import` takes: a bigger store is moved in parts (`prefix`).
pub const IMPORT_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The formats `POST /import` reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    /// The lossless export of `GET /export?format=ndjson`.
    #[default]
    Ndjson,
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
        ImportFormat::Ndjson => parse_ndjson(catalog, body, now_ms)?,
    };
    let ids: Vec<String> = parsed
        .import
        .resources
        .iter()
        .map(|record| record.id.clone())
        .collect();
    let mut report = ImportReport {
        status: ImportStatus::Imported,
        resources_created: 0,
        cells: parsed.import.cells.len() as u64,
        hits: parsed.import.cells.iter().map(|cell| cell.cell.hits).sum(),
        expired_cells: parsed.expired_cells,
    };
    match store.import(parsed.import, now_ms).await? {
        ImportOutcome::Imported { resources_created } => {
            report.resources_created = resources_created;
            if resources_created > 0 {
                catalog.insert_resources(store.resources_current(ids, None).await?);
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
        }),
        ImportOutcome::ResourceMissing(id) => Err(ImportError::ResourceMissing(id)),
    }
}

/// A checked file: what the store writes, and the cells left out.
struct Parsed {
    import: Import,
    expired_cells: u64,
}

/// Reads the lossless export, line by line (blank lines are skipped).
fn parse_ndjson(catalog: &Catalog, body: &[u8], now_ms: u64) -> Result<Parsed, ImportError> {
    let mut resources: HashMap<String, ResourceRecord> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut seen_cells: HashMap<(String, Tier, u64), usize> = HashMap::new();
    let mut cells = Vec::new();
    let mut expired_cells = 0;
    for (index, bytes) in body.split(|byte| *byte == b'\n').enumerate() {
        let line = index + 1;
        let at = |problem| ImportError::Line { line, problem };
        let text = std::str::from_utf8(bytes).map_err(|_| at(LineProblem::NotUtf8))?;
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(text).map_err(|error| at(LineProblem::Json(error)))? {
            Line::Resource {
                resource_id,
                name,
                retention_days,
                created_at,
            } => {
                let record =
                    resource_record(resource_id, &name, retention_days, &created_at).map_err(at)?;
                if resources.contains_key(&record.id) {
                    return Err(at(LineProblem::DuplicateResource(record.id)));
                }
                order.push(record.id.clone());
                resources.insert(record.id.clone(), record);
            }
            Line::Cell {
                resource_id,
                granularity,
                start_time,
                count,
                uniques: _,
                sketch,
            } => {
                let retention_days = match resources.get(&resource_id) {
                    Some(record) => record.retention_days,
                    None => catalog
                        .resource_retention(&resource_id)
                        .ok_or_else(|| at(LineProblem::UnknownResource(resource_id.clone())))?,
                };
                let cell =
                    count_cell(granularity, &start_time, count, &sketch, now_ms).map_err(at)?;
                let key = (resource_id.clone(), granularity, cell.bucket_ms);
                if let Some(first) = seen_cells.insert(key, line) {
                    return Err(at(LineProblem::DuplicateCell(first)));
                }
                if !cell_kept(granularity, cell.bucket_ms, retention_days, now_ms) {
                    expired_cells += 1;
                    continue;
                }
                if cells.len() == IMPORT_CELLS_MAX {
                    return Err(ImportError::TooManyCells);
                }
                cells.push(ImportCell {
                    resource_id,
                    tier: granularity,
                    cell,
                });
            }
        }
    }
    if resources.is_empty() && cells.is_empty() && expired_cells == 0 {
        return Err(ImportError::Empty);
    }
    let resources = order
        .into_iter()
        .filter_map(|id| resources.remove(&id))
        .collect();
    Ok(Parsed {
        import: Import {
            file_sha256: sha2::Sha256::digest(body).into(),
            resources,
            cells,
        },
        expired_cells,
    })
}

fn resource_record(
    id: String,
    name: &str,
    retention_days: Option<u32>,
    created_at: &str,
) -> Result<ResourceRecord, LineProblem> {
    hitcount_wire::validate_resource_id(&id).map_err(LineProblem::ResourceId)?;
    let name = checked_name(name).ok_or(LineProblem::Name)?;
    if !retention_valid(retention_days) {
        return Err(LineProblem::Retention);
    }
    let created_at_ms = rfc3339_ms(created_at).ok_or(LineProblem::Time("created_at"))?;
    Ok(ResourceRecord {
        id,
        name,
        retention_days,
        created_at_ms,
    })
}

fn count_cell(
    tier: Tier,
    start_time: &str,
    count: u64,
    sketch: &str,
    now_ms: u64,
) -> Result<CountCell, LineProblem> {
    let bucket_ms = rfc3339_ms(start_time).ok_or(LineProblem::Time("start_time"))?;
    if !bucket_ms.is_multiple_of(tier.resolution_ms()) {
        return Err(LineProblem::Unaligned(tier.as_str()));
    }
    if bucket_ms > now_ms + CLOCK_SKEW_MS_MAX {
        return Err(LineProblem::Future);
    }
    if count == 0 {
        return Err(LineProblem::ZeroCount);
    }
    let bytes = BASE64
        .decode(sketch)
        .map_err(|_| LineProblem::SketchEncoding)?;
    let visitors = Sketch::from_bytes(&bytes).map_err(LineProblem::Sketch)?;
    Ok(CountCell {
        bucket_ms,
        hits: count,
        visitors,
    })
}
