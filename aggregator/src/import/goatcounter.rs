//! GoatCounter's CSV export (version 2, documented at goatcounter.com/help/export): one row per
//! pageview. Each counted row is a hit of the resource its path names (the beacon's rule, so
//! the imported history and new hits meet in one resource) in its hour and its day, its
//! session id the visitor. Events and bots are left out, as GoatCounter's pageview counts leave
//! them out. The `csv` crate reads the file: GoatCounter writes it with Go's `encoding/csv`
//! (quoted fields, doubled quotes, newlines inside quotes), which that crate reads as written.

use std::collections::BTreeMap;

use hitcount_wire::{CLOCK_SKEW_MS_MAX, RESOURCE_ID_BYTES_MAX, Sketch};

use super::{ImportError, LineProblem, Parsed};
use crate::catalog::{Catalog, NAME_CHARS_MAX, checked_name};
use crate::query::rfc3339_ms;
use crate::store::{CountCell, IMPORT_CELLS_MAX, ResourceRecord, Tier, TierCell, cell_kept};

/// The header of version 2, in order (the first field carries the version).
const HEADER: [&str; 14] = [
    "2Path",
    "Title",
    "Event",
    "UserAgent",
    "Browser",
    "System",
    "Session",
    "Bot",
    "Referrer",
    "Referrer scheme",
    "Screen size",
    "Location",
    "FirstVisit",
    "Date",
];
const PATH: usize = 0;
const EVENT: usize = 2;
const SESSION: usize = 6;
const BOT: usize = 7;
const DATE: usize = 13;
/// The tiers a pageview is written to: the issue asks for hits per path and hour; the day
/// tier holds them past the hour tier's retention.
const TIERS: [Tier; 2] = [Tier::Hour, Tier::Day];

/// Hits and visitors by (resource, tier, bucket), in key order.
type Cells = BTreeMap<(String, Tier, u64), (u64, Sketch)>;

pub(super) fn parse(catalog: &Catalog, body: &[u8], now_ms: u64) -> Result<Parsed, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(body);
    let mut records = reader.byte_records();
    let header = match records.next() {
        Some(header) => header.map_err(|error| at_line(1, LineProblem::Csv(error)))?,
        None => return Err(ImportError::Empty),
    };
    if !header
        .iter()
        .eq(HEADER.iter().map(|field| field.as_bytes()))
    {
        return Err(at_line(1, LineProblem::GoatcounterHeader));
    }
    let mut cells = Cells::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut skipped_rows = 0;
    for record in records {
        let record = record.map_err(|error| {
            let line = csv_line(&error);
            at_line(line, LineProblem::Csv(error))
        })?;
        let line = record
            .position()
            .map_or(0, |position| position.line() as usize);
        let field = |index: usize| String::from_utf8_lossy(record.get(index).unwrap_or_default());
        if field(EVENT) == "true" || field(BOT) != "0" {
            skipped_rows += 1;
            continue;
        }
        let path = field(PATH);
        let resource_id = resource_id_of_path(&path);
        hitcount_wire::validate_resource_id(&resource_id)
            .map_err(|error| at_line(line, LineProblem::ResourceId(error)))?;
        let at_ms =
            rfc3339_ms(&field(DATE)).ok_or_else(|| at_line(line, LineProblem::GoatcounterDate))?;
        if at_ms > now_ms + CLOCK_SKEW_MS_MAX {
            return Err(at_line(line, LineProblem::Future));
        }
        if catalog.resource_retention(&resource_id).is_none() {
            names
                .entry(resource_id.clone())
                .or_insert_with(|| name_of_path(&path));
        }
        let session = field(SESSION);
        for tier in TIERS {
            let bucket_ms = at_ms / tier.resolution_ms() * tier.resolution_ms();
            let (hits, visitors) = cells
                .entry((resource_id.clone(), tier, bucket_ms))
                .or_default();
            *hits += 1;
            if !session.is_empty() {
                visitors.insert(session.as_bytes());
            }
        }
    }
    let (cells, expired_cells) = kept_cells(catalog, cells, now_ms)?;
    if cells.is_empty() && expired_cells == 0 && skipped_rows == 0 {
        return Err(ImportError::Empty);
    }
    Ok(Parsed {
        resources: names
            .into_iter()
            .map(|(id, name)| ResourceRecord {
                id,
                name,
                retention_days: None,
                created_at_ms: now_ms,
            })
            .collect(),
        cells,
        expired_cells,
        skipped_rows,
    })
}

/// The cells retention keeps (new resources keep everything), and how many it would delete.
fn kept_cells(
    catalog: &Catalog,
    cells: Cells,
    now_ms: u64,
) -> Result<(Vec<TierCell>, u64), ImportError> {
    let mut kept = Vec::new();
    let mut expired = 0;
    for ((resource_id, tier, bucket_ms), (hits, visitors)) in cells {
        let retention_days = catalog.resource_retention(&resource_id).flatten();
        if !cell_kept(tier, bucket_ms, retention_days, now_ms) {
            expired += 1;
            continue;
        }
        if kept.len() == IMPORT_CELLS_MAX {
            return Err(ImportError::TooManyCells);
        }
        kept.push(TierCell {
            resource_id,
            tier,
            cell: CountCell {
                bucket_ms,
                hits,
                visitors,
            },
        });
    }
    Ok((kept, expired))
}

fn at_line(line: usize, problem: LineProblem) -> ImportError {
    ImportError::Line { line, problem }
}

fn csv_line(error: &csv::Error) -> usize {
    error
        .position()
        .map_or(0, |position| position.line() as usize)
}

/// The beacon's rule (`sdk-js/src/beacon.ts`, `fromPath`): slashes at either end dropped, the
/// others become dots, every other character outside `[A-Za-z0-9_.-]` a dash (one per UTF-16
/// unit, as in JavaScript), at most 64 characters, and `home` for the root.
pub fn resource_id_of_path(path: &str) -> String {
    let mut id = String::with_capacity(path.len());
    for character in path.trim_matches('/').chars() {
        match character {
            '/' => id.push('.'),
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '.' | '-' => id.push(character),
            other => id.extend(std::iter::repeat_n('-', other.len_utf16())),
        }
        if id.len() >= RESOURCE_ID_BYTES_MAX {
            id.truncate(RESOURCE_ID_BYTES_MAX);
            break;
        }
    }
    if id.is_empty() { "home".to_owned() } else { id }
}

/// A new resource is named after its path, as GoatCounter shows it.
fn name_of_path(path: &str) -> String {
    let name: String = path.chars().take(NAME_CHARS_MAX).collect();
    checked_name(&name).unwrap_or_else(|| "/".to_owned())
}

#[cfg(test)]
mod tests {
    use super::resource_id_of_path;

    #[test]
    fn paths_become_the_ids_the_beacon_sends() {
        for (path, id) in [
            ("/", "home"),
            ("", "home"),
            ("//blog/post-1.html/", "blog.post-1.html"),
            ("/a b?c=1", "a-b-c-1"),
            ("/café", "caf-"),
            ("/😀", "--"),
            (&format!("/{}", "x".repeat(80)), &"x".repeat(64)),
        ] {
            assert_eq!(resource_id_of_path(path), id, "{path}");
        }
    }
}
