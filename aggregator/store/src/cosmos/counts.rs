//! Cosmos DB's count documents in container `counts`, partitioned by resource: one per
//! (resource, tier, page), a page being one hour or day cell, or an hour of minute cells (so that
//! a day of minutes is 24 or 25 documents to read, not 1,440). Each holds its cells (hits and
//! sketch) and the marks that make every write to it happen once: for each fold stream, the last
//! round that wrote it, and the imports it holds.
//! A write reads the document, returns if its mark is there, and otherwise replaces it with the
//! mark added, on the ETag it read (a concurrent writer makes it read again).

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hitcount_wire::Sketch;
use serde::{Deserialize, Serialize};

use super::{CosmosStore, classify, read_document};
use crate::DAY_MS;
use crate::records::{StoreError, Tier};

pub(super) const COUNTS_CONTAINER: &str = "counts";
/// Tries of one document write that lost to a concurrent writer (412) before the write fails:
/// one fold stream writes a document once per round, so more than a few means something loops.
pub const COUNT_WRITE_ATTEMPTS_MAX: u32 = 8;
/// A stream's mark is dropped from a document this long after it was written: by then that
/// round finished long ago (a round that a crash cut short is finished within
/// `STREAM_ORPHAN_MS`), so no write can need it again.
const STREAM_MARK_KEEP_MS: u64 = DAY_MS;
/// The last round of one stream that wrote a document.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct StreamMark {
    pub round: u64,
    pub at_ms: u64,
}

/// The buckets one count document holds: an hour of minute cells, or one hour or day cell.
pub(super) fn page_length_ms(tier: Tier) -> u64 {
    match tier {
        Tier::Minute => crate::HOUR_MS,
        Tier::Hour | Tier::Day => tier.resolution_ms(),
    }
}

/// The first bucket of the page holding `bucket_ms`.
pub(super) fn page_of(tier: Tier, bucket_ms: u64) -> u64 {
    bucket_ms / page_length_ms(tier) * page_length_ms(tier)
}

/// One cell of a page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StoredCell {
    pub hits: u64,
    /// Base64 of the sketch's encoding; empty for no visitors.
    #[serde(default)]
    pub sketch: String,
}

impl StoredCell {
    pub(super) fn visitors(&self) -> Result<Sketch, StoreError> {
        if self.sketch.is_empty() {
            return Ok(Sketch::new());
        }
        let bytes = BASE64
            .decode(&self.sketch)
            .map_err(|_| StoreError::CorruptInbox("a stored sketch is not base64"))?;
        Ok(Sketch::from_bytes(&bytes)?)
    }

    fn add(&mut self, hits: u64, visitors: &Sketch) -> Result<(), StoreError> {
        self.hits += hits;
        if !visitors.is_empty() {
            let mut stored = self.visitors()?;
            stored.merge(visitors);
            self.sketch = BASE64.encode(stored.to_bytes());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CountDocument {
    /// `<tier>.<page_ms>`.
    pub id: String,
    pub resource_id: String,
    pub tier: Tier,
    /// The page's first bucket.
    pub page_ms: u64,
    /// Its cells by bucket (JSON object keys are strings: serde writes and reads the numbers).
    pub cells: BTreeMap<u64, StoredCell>,
    /// Its earliest cell's bucket: what retention looks for (a page whose early cells expired
    /// keeps its later ones).
    pub first_ms: u64,
    #[serde(default)]
    pub streams: BTreeMap<String, StreamMark>,
    /// Hex SHA-256 of each file imported into it.
    #[serde(default)]
    pub imports: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ttl: Option<i64>,
    #[serde(rename = "_etag", skip_serializing, default)]
    pub etag: Option<String>,
}

impl CountDocument {
    /// Whether the stream's `round` wrote this document, or a later round (which runs only
    /// after `round` finished, so `round` wrote it before if it had anything for it).
    pub fn has_round(&self, stream: &str, round: u64) -> bool {
        round_marked(&self.streams, stream, round)
    }
}

/// Whether `streams` says the stream's `round`, or a later one, wrote the page they mark.
pub(super) fn round_marked(
    streams: &BTreeMap<String, StreamMark>,
    stream: &str,
    round: u64,
) -> bool {
    streams.get(stream).is_some_and(|mark| mark.round >= round)
}

pub(super) fn count_document_id(tier: Tier, page_ms: u64) -> String {
    format!("{}.{page_ms}", tier.as_str())
}

/// What makes one write happen once.
#[derive(Debug, Clone)]
pub(super) enum Mark {
    Round { stream: String, round: u64 },
    Import { file_sha256: String },
}

/// A cell a page write adds: (bucket, hits, visitors).
pub(super) type CellWrite = (u64, u64, Sketch);

/// One write to a count document: cells of one page.
#[derive(Debug)]
pub(super) struct PageWrite {
    pub resource_id: String,
    pub tier: Tier,
    pub page_ms: u64,
    /// Each bucket in the page.
    pub cells: Vec<CellWrite>,
    /// Seconds the document lives from this write; `None` for ever.
    pub ttl: Option<i64>,
}

/// Cells (resource, tier, bucket, hits, visitors) grouped by page, as one [`PageWrite`] per
/// (resource, tier, page), each living as `ttl` says for its page.
pub(super) fn pages<'a>(
    cells: impl IntoIterator<Item = (&'a str, Tier, u64, u64, &'a Sketch)>,
    ttl: impl Fn(&str, Tier, u64) -> Option<i64>,
) -> Vec<PageWrite> {
    let mut pages: BTreeMap<(&str, Tier, u64), Vec<CellWrite>> = BTreeMap::new();
    for (resource_id, tier, bucket_ms, hits, visitors) in cells {
        pages
            .entry((resource_id, tier, page_of(tier, bucket_ms)))
            .or_default()
            .push((bucket_ms, hits, visitors.clone()));
    }
    pages
        .into_iter()
        .map(|((resource_id, tier, page_ms), cells)| PageWrite {
            resource_id: resource_id.to_owned(),
            tier,
            page_ms,
            cells,
            ttl: ttl(resource_id, tier, page_ms),
        })
        .collect()
}

impl CosmosStore {
    /// Adds to one document unless `mark` is in it already; true if it added.
    pub(super) async fn add_to_count(
        &self,
        write: &PageWrite,
        mark: &Mark,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        debug_assert!(
            write
                .cells
                .iter()
                .all(|(bucket_ms, _, _)| page_of(write.tier, *bucket_ms) == write.page_ms),
            "a page write's cells are all of its page"
        );
        let id = count_document_id(write.tier, write.page_ms);
        for _ in 0..COUNT_WRITE_ATTEMPTS_MAX {
            let stored: Option<CountDocument> =
                read_document(&self.counts, write.resource_id.clone(), &id).await?;
            let mut document = match stored {
                Some(document) if marked(&document, mark) => return Ok(false),
                Some(document) => document,
                None => CountDocument {
                    id: id.clone(),
                    resource_id: write.resource_id.clone(),
                    tier: write.tier,
                    page_ms: write.page_ms,
                    cells: BTreeMap::new(),
                    first_ms: u64::MAX,
                    streams: BTreeMap::new(),
                    imports: Vec::new(),
                    ttl: None,
                    etag: None,
                },
            };
            for (bucket_ms, hits, visitors) in &write.cells {
                document
                    .cells
                    .entry(*bucket_ms)
                    .or_default()
                    .add(*hits, visitors)?;
            }
            document.first_ms = document.cells.keys().next().copied().unwrap_or(u64::MAX);
            document.ttl = write.ttl;
            document
                .streams
                .retain(|_, stream| stream.at_ms + STREAM_MARK_KEEP_MS > now_ms);
            match mark {
                Mark::Round { stream, round } => {
                    let mark = StreamMark {
                        round: *round,
                        at_ms: now_ms,
                    };
                    document.streams.insert(stream.clone(), mark);
                }
                Mark::Import { file_sha256 } => document.imports.push(file_sha256.clone()),
            }
            let result = match &document.etag {
                None => {
                    self.counts
                        .create_item(write.resource_id.clone(), &id, &document, None)
                        .await
                }
                Some(etag) => {
                    let precondition = azure_data_cosmos::options::Precondition::if_match(
                        azure_core::http::Etag::from(etag.clone()),
                    );
                    let options = azure_data_cosmos::options::ItemWriteOptions::default()
                        .with_precondition(precondition);
                    self.counts
                        .replace_item(write.resource_id.clone(), &id, &document, Some(options))
                        .await
                }
            };
            match result {
                Ok(_) => return Ok(true),
                // Another writer got there first: read again.
                Err(error)
                    if error.status().is_conflict() || error.status().is_precondition_failed() => {}
                Err(error) => return Err(classify(error)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "cosmos db: a count document kept changing under {COUNT_WRITE_ATTEMPTS_MAX} writes"
        )))
    }

    /// Removes a page's cells with buckets up to `newest_expired` (the whole page if that is
    /// all of them); returns how many cells went. A page written meanwhile is left for the
    /// next run.
    pub(super) async fn trim_page(
        &self,
        mut page: CountDocument,
        newest_expired: u64,
    ) -> Result<u64, StoreError> {
        let kept = page.cells.split_off(&(newest_expired + 1));
        let expired = page.cells.len() as u64;
        let precondition = azure_data_cosmos::options::Precondition::if_match(
            azure_core::http::Etag::from(page.etag.clone().unwrap_or_default()),
        );
        let options =
            azure_data_cosmos::options::ItemWriteOptions::default().with_precondition(precondition);
        let partition = page.resource_id.clone();
        let result = if kept.is_empty() {
            self.counts
                .delete_item(partition, &page.id, Some(options))
                .await
        } else {
            page.cells = kept;
            page.first_ms = page.cells.keys().next().copied().unwrap_or(u64::MAX);
            self.counts
                .replace_item(partition, &page.id, &page, Some(options))
                .await
        };
        match result {
            Ok(_) => Ok(expired),
            Err(error)
                if error.status().is_precondition_failed() || error.status().is_not_found() =>
            {
                Ok(0)
            }
            Err(error) => Err(classify(error)),
        }
    }
}

fn marked(document: &CountDocument, mark: &Mark) -> bool {
    match mark {
        Mark::Round { stream, round } => document.has_round(stream, *round),
        Mark::Import { file_sha256 } => document.imports.contains(file_sha256),
    }
}

/// The retention of each of `records`, as the shared fold and merge rules take it.
pub(super) fn retention_map(
    records: Vec<crate::records::ResourceRecord>,
) -> HashMap<String, Option<u32>> {
    records
        .into_iter()
        .map(|record| (record.id, record.retention_days))
        .collect()
}

/// Seconds the document of this page lives from now: until its tier's retention or its
/// resource's ends its last cell (what prune deletes where TTL is off); `None` for ever.
pub(super) fn count_ttl(
    tier: Tier,
    page_ms: u64,
    retention_days: Option<u32>,
    now_ms: u64,
) -> Option<i64> {
    let end = page_ms + page_length_ms(tier);
    let tier_end = tier.retention_ms().map(|retention| end + retention);
    let resource_end = retention_days.map(|days| end + u64::from(days) * DAY_MS);
    let expires_ms = match (tier_end, resource_end) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    let seconds = expires_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
    Some(i64::try_from(seconds).unwrap_or(i64::MAX))
}
