//! Export: the cells of the resources under a prefix over a period, as CSV (one row per resource
//! and bucket, uniques estimated) or NDJSON (lossless: each resource's record, then its cells
//! with their sketches). Read [`EXPORT_RESOURCES_PER_READ_MAX`] resources at a time and handed
//! to the HTTP body through a channel of [`EXPORT_CHUNKS_IN_FLIGHT_MAX`] chunks, so memory stays
//! bounded however much is exported, and a slow reader slows the reads instead of filling memory.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::catalog::Catalog;
use crate::query::{self, TimeRange, format_time};
use crate::store::{CountCell, ResourceRecord, Store, StoreError, Tier};

/// Resources read per chunk: a minute tier over 48 hours is up to 2,880 cells a resource.
pub const EXPORT_RESOURCES_PER_READ_MAX: usize = 50;
/// Chunks written but not yet sent to the client.
pub const EXPORT_CHUNKS_IN_FLIGHT_MAX: usize = 4;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `resource_id,start_time,granularity,count,uniques`, one row per resource and bucket.
    #[default]
    Csv,
    /// One JSON object a line: `{"type":"resource",...}` then its `{"type":"cell",...}` lines,
    /// each with its sketch (base64), which `POST /import` takes back.
    Ndjson,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
        }
    }
}

/// What one export writes.
#[derive(Debug, Clone)]
pub struct Export {
    pub format: Format,
    /// The tiers written, finest first: one for CSV, one or all three for NDJSON.
    pub tiers: Vec<Tier>,
    /// The period, `[start_ms, end_ms)`; each tier's cells in it.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// One line of the lossless form.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    Resource {
        resource_id: String,
        name: String,
        retention_days: Option<u32>,
        created_at: String,
    },
    Cell {
        resource_id: String,
        granularity: Tier,
        start_time: String,
        count: u64,
        uniques: u64,
        /// The visitors' sketch (`hitcount_wire::Sketch::to_bytes`), base64.
        sketch: String,
    },
}

/// Starts the export of `resource_ids`: the first chunk is read before this returns, so a store
/// that cannot answer is an error the caller can still answer with; the rest follow through the
/// channel, and a failure later ends it with that error (the response is then cut short, never
/// silently incomplete).
pub async fn start(
    catalog: &Catalog,
    store: Store,
    resource_ids: Vec<String>,
    export: Export,
    now_ms: u64,
) -> Result<mpsc::Receiver<Result<Vec<u8>, StoreError>>, StoreError> {
    let (sender, receiver) = mpsc::channel(EXPORT_CHUNKS_IN_FLIGHT_MAX);
    let records: Vec<ResourceRecord> = resource_ids
        .iter()
        .filter_map(|id| catalog.resource(id))
        .collect();
    let first_end = records.len().min(EXPORT_RESOURCES_PER_READ_MAX);
    let mut first = header(export.format);
    if first_end > 0 {
        first.extend(chunk_bytes(&store, &records[..first_end], &export, now_ms).await?);
    }
    // The channel has room for the first chunk: nothing is waiting on it yet.
    let _ = sender.try_send(Ok(first));
    tokio::spawn(async move {
        for chunk in records[first_end..].chunks(EXPORT_RESOURCES_PER_READ_MAX) {
            let bytes = chunk_bytes(&store, chunk, &export, now_ms).await;
            let failed = bytes.is_err();
            // The client went away: stop reading.
            if sender.send(bytes).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(receiver)
}

fn header(format: Format) -> Vec<u8> {
    match format {
        Format::Csv => b"resource_id,start_time,granularity,count,uniques\n".to_vec(),
        Format::Ndjson => Vec::new(),
    }
}

/// The lines of a chunk of resources, every tier of the export.
async fn chunk_bytes(
    store: &Store,
    records: &[ResourceRecord],
    export: &Export,
    now_ms: u64,
) -> Result<Vec<u8>, StoreError> {
    let ids: Vec<String> = records.iter().map(|record| record.id.clone()).collect();
    let mut per_tier = Vec::with_capacity(export.tiers.len());
    for tier in &export.tiers {
        let (start_ms, end_ms) = aligned(*tier, export.start_ms, export.end_ms);
        let cells = store
            .cells_of_many(ids.clone(), *tier, start_ms, end_ms, now_ms)
            .await?;
        per_tier.push(cells);
    }
    let mut lines = Lines::new(export.format);
    for (index, record) in records.iter().enumerate() {
        lines.resource(record);
        for (tier, cells) in export.tiers.iter().zip(&per_tier) {
            for cell in &cells[index] {
                lines.cell(&record.id, *tier, cell);
            }
        }
    }
    Ok(lines.finish())
}

/// The period widened to whole buckets of `tier`.
fn aligned(tier: Tier, start_ms: u64, end_ms: u64) -> (u64, u64) {
    let resolution = tier.resolution_ms();
    (
        start_ms / resolution * resolution,
        end_ms.div_ceil(resolution) * resolution,
    )
}

/// A chunk's text as it is written: CSV rows through one writer, or JSON lines.
enum Lines {
    // Boxed: the writer holds its state inline, and one `Lines` lives per chunk.
    Csv(Box<csv::Writer<Vec<u8>>>),
    Ndjson(Vec<u8>),
}

impl Lines {
    fn new(format: Format) -> Self {
        match format {
            Format::Csv => Self::Csv(Box::new(
                csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(Vec::new()),
            )),
            Format::Ndjson => Self::Ndjson(Vec::new()),
        }
    }

    /// The lossless form starts each resource with its record; CSV has none.
    fn resource(&mut self, record: &ResourceRecord) {
        if let Self::Ndjson(out) = self {
            write_line(
                out,
                &Line::Resource {
                    resource_id: record.id.clone(),
                    name: record.name.clone(),
                    retention_days: record.retention_days,
                    created_at: format_time(record.created_at_ms),
                },
            );
        }
    }

    fn cell(&mut self, resource_id: &str, tier: Tier, cell: &CountCell) {
        let start_time = format_time(cell.bucket_ms);
        match self {
            Self::Csv(writer) => {
                let count = cell.hits.to_string();
                let uniques = cell.visitors.count().to_string();
                // A writer into memory has no I/O to fail.
                let _ = writer.write_record([
                    resource_id,
                    &start_time,
                    tier.as_str(),
                    &count,
                    &uniques,
                ]);
            }
            Self::Ndjson(out) => write_line(
                out,
                &Line::Cell {
                    resource_id: resource_id.to_owned(),
                    granularity: tier,
                    start_time,
                    count: cell.hits,
                    uniques: cell.visitors.count(),
                    sketch: BASE64.encode(cell.visitors.to_bytes()),
                },
            ),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::Csv(writer) => writer.into_inner().unwrap_or_default(),
            Self::Ndjson(out) => out,
        }
    }
}

fn write_line(out: &mut Vec<u8>, line: &Line) {
    // A `Line` is strings and numbers: it always serializes.
    if serde_json::to_writer(&mut *out, line).is_ok() {
        out.push(b'\n');
    }
}

/// The query of `GET /export`, described like `GET /stats/top`'s.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub window: Option<String>,
    /// CSV: chosen from the period if absent. NDJSON: every tier if absent.
    pub granularity: Option<Tier>,
    /// Only resources whose id starts with this.
    pub prefix: Option<String>,
    pub format: Option<Format>,
}

impl ExportQuery {
    /// What to write, its period and tiers checked as every read's are.
    pub fn export(&self, now_ms: u64) -> Result<Export, crate::error::ApiError> {
        let range = TimeRange::of(&self.window, &self.start_time, &self.end_time);
        let format = self.format.unwrap_or_default();
        if format == Format::Ndjson && self.granularity.is_none() {
            let (start_ms, end_ms) = query::period(range, now_ms)?;
            return Ok(Export {
                format,
                tiers: Tier::ALL.to_vec(),
                start_ms,
                end_ms,
            });
        }
        let plan = query::plan(range, self.granularity, now_ms)?;
        Ok(Export {
            format,
            tiers: vec![plan.tier],
            start_ms: plan.start_ms,
            end_ms: plan.end_ms,
        })
    }
}
