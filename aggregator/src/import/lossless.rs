//! The lossless export (`GET /export?format=ndjson`) read back.

use std::collections::{BTreeMap, HashMap};

use super::{ImportError, LineProblem, Parsed};
use crate::catalog::{Catalog, checked_name, retention_valid};
use crate::export::Line;
use crate::query::rfc3339_ms;
use crate::store::{CountCell, IMPORT_CELLS_MAX, ResourceRecord, Tier, TierCell, cell_kept};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hitcount_wire::{CLOCK_SKEW_MS_MAX, Sketch};

/// Reads the lossless export, line by line (blank lines are skipped).
pub(super) fn parse(catalog: &Catalog, body: &[u8], now_ms: u64) -> Result<Parsed, ImportError> {
    let mut resources: BTreeMap<String, ResourceRecord> = BTreeMap::new();
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
                cells.push(TierCell {
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
    Ok(Parsed {
        resources: resources.into_values().collect(),
        cells,
        expired_cells,
        skipped_rows: 0,
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
