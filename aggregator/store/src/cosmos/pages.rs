//! How a read loads count documents (`read_cells`): each page decoded once and held in memory
//! under the ETag it was read with ([`PageMemo`]). The service gives a document a new ETag on
//! every write, so a page whose ETag a read finds again is, byte for byte, the page this
//! process holds. A read therefore first asks for the ETags of the pages in its window (one
//! small query in one partition) and then loads only the pages it does not hold at that ETag:
//! in the steady state the open hour and the pages written since the last read. Nothing has to
//! be invalidated, so it stays exact however many aggregators write the same documents. This
//! process's own unfolded rows are then added from the overlay (`overlay.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde::Deserialize;

use super::counts::{CountDocument, StreamMark, page_of};
use super::overlay::{HeldRow, OVERLAY_DONE_KEEP_MS};
use super::{CosmosStore, classify};
use crate::records::{CountCell, StoreError, Tier};
use crate::rules::tier_kept;

/// The most memory the decoded pages of one process take (cells, sketches and marks, estimated
/// from their contents), the least recently used going first past it.
pub const PAGE_MEMO_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// What a page is expected to weigh, for sizing the memo's table only (an hour of minute cells
/// with small sketches).
const PAGE_BYTES_EXPECTED: u64 = 8 * 1024;
/// What a cell or a mark costs besides its sketch and its text.
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// The memo's shards. quick_cache splits the weight among its shards and refuses an entry
/// heavier than one shard holds; by default it makes four shards a CPU, which on a large host
/// would leave a shard smaller than a busy hour's page (60 dense sketches, about 1 MiB). With 8,
/// a shard holds 8 MiB.
const PAGE_MEMO_SHARDS: usize = 8;

/// Loads of one resource's documents a read tries before it answers with what the last one
/// found: a load slower than half of [`OVERLAY_DONE_KEEP_MS`] is tried again.
const READ_ATTEMPTS_MAX: u32 = 3;

/// Whether a read that began at `began` loaded its documents quickly enough that every row it
/// may need is still in the overlay (see overlay.rs).
fn read_was_quick(began: Instant) -> bool {
    began.elapsed() < Duration::from_millis(OVERLAY_DONE_KEEP_MS / 2)
}

/// One count document as reads use it: its cells decoded, sorted by bucket.
#[derive(Debug)]
pub(super) struct ReadPage {
    etag: String,
    cells: Vec<CountCell>,
    streams: BTreeMap<String, StreamMark>,
    heap_bytes: usize,
}

impl ReadPage {
    fn decode(document: CountDocument) -> Result<Self, StoreError> {
        let cells = document
            .cells
            .iter()
            .map(|(bucket_ms, cell)| {
                Ok(CountCell {
                    bucket_ms: *bucket_ms,
                    hits: cell.hits,
                    visitors: cell.visitors()?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let heap_bytes = cells
            .iter()
            .map(|cell| cell.visitors.heap_bytes() + ENTRY_OVERHEAD_BYTES)
            .sum::<usize>()
            + document
                .streams
                .keys()
                .map(|stream| stream.len() + ENTRY_OVERHEAD_BYTES)
                .sum::<usize>();
        Ok(Self {
            etag: document.etag.unwrap_or_default(),
            cells,
            streams: document.streams,
            heap_bytes,
        })
    }

    /// Whether the stream's `round` (or a later one) wrote this page; see
    /// [`CountDocument::has_round`].
    pub fn has_round(&self, stream: &str, round: u64) -> bool {
        super::counts::round_marked(&self.streams, stream, round)
    }

    /// Its cells with buckets in `[start_ms, end_ms)`, into `cells`.
    pub fn add_cells_to(&self, cells: &mut BTreeMap<u64, CountCell>, start_ms: u64, end_ms: u64) {
        let first = self.cells.partition_point(|cell| cell.bucket_ms < start_ms);
        for cell in self.cells[first..]
            .iter()
            .take_while(|cell| cell.bucket_ms < end_ms)
        {
            cells.insert(cell.bucket_ms, cell.clone());
        }
    }
}

/// (resource, tier, page).
type PageKey = (String, Tier, u64);

#[derive(Debug, Clone)]
struct PageWeighter;

impl quick_cache::Weighter<PageKey, Arc<ReadPage>> for PageWeighter {
    fn weight(&self, key: &PageKey, page: &Arc<ReadPage>) -> u64 {
        (key.0.len() + page.etag.len() + page.heap_bytes + ENTRY_OVERHEAD_BYTES) as u64
    }
}

/// The pages this process read, decoded, by (resource, tier, page), each with the ETag it was
/// read under. A crate made for this (`quick_cache`) bounds it by weight and evicts.
pub(super) struct PageMemo {
    pages: quick_cache::sync::Cache<PageKey, Arc<ReadPage>, PageWeighter>,
}

impl Default for PageMemo {
    fn default() -> Self {
        Self {
            pages: crate::bounded::weighed_table(
                PAGE_MEMO_BYTES_MAX,
                PAGE_BYTES_EXPECTED,
                PAGE_MEMO_SHARDS,
                PageWeighter,
            ),
        }
    }
}

/// A page's ETag, from the first query of a read.
#[derive(Debug, Deserialize)]
struct PageVersion {
    page_ms: u64,
    #[serde(rename = "_etag")]
    etag: String,
}

impl CosmosStore {
    /// One resource's cells of one tier: its documents, then this process's rows that no
    /// document says it holds yet.
    pub(super) async fn read_cells(
        &self,
        resource_id: &str,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<CountCell>, StoreError> {
        let mut attempt = 0;
        let (documents, rows) = loop {
            attempt += 1;
            let started = Instant::now();
            let documents = self.read_pages(resource_id, tier, start_ms, end_ms).await?;
            // After the documents: a row a round finished meanwhile is still held (see overlay.rs).
            let rows = self.overlay.rows_for(resource_id, started);
            if read_was_quick(started) || attempt == READ_ATTEMPTS_MAX {
                break (documents, rows);
            }
        };
        let mut cells: BTreeMap<u64, CountCell> = BTreeMap::new();
        for page in documents.values() {
            page.add_cells_to(&mut cells, start_ms, end_ms);
        }
        let writer = self.writer();
        for held in rows {
            add_row(
                &mut cells,
                &documents,
                &writer,
                &held,
                resource_id,
                tier,
                (start_ms, end_ms),
                now_ms,
            );
        }
        Ok(cells.into_values().collect())
    }

    /// The pages of one resource and tier holding buckets in `[start_ms, end_ms)`, by page: the
    /// ETags of the window's pages, then those not held at that ETag, each one query in one
    /// partition.
    pub(super) async fn read_pages(
        &self,
        resource_id: &str,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<BTreeMap<u64, Arc<ReadPage>>, StoreError> {
        let versions: Vec<PageVersion> = self
            .query_pages(
                "SELECT c.page_ms, c._etag",
                resource_id,
                tier,
                (start_ms, end_ms),
                None,
            )
            .await?;
        let mut pages = BTreeMap::new();
        let mut missing = Vec::new();
        for version in versions {
            let key = (resource_id.to_owned(), tier, version.page_ms);
            match self.page_memo.pages.get(&key) {
                Some(page) if page.etag == version.etag => {
                    pages.insert(version.page_ms, page);
                }
                _ => missing.push(version.page_ms),
            }
        }
        metrics::counter!("hitcount_cosmos_pages_read_total", "from" => "memory")
            .increment(pages.len() as u64);
        if missing.is_empty() {
            return Ok(pages);
        }
        metrics::counter!("hitcount_cosmos_pages_read_total", "from" => "cosmos")
            .increment(missing.len() as u64);
        // Only what a read uses: not the imports' marks, the TTL or the service's own
        // properties besides the ETag. A page written since its ETag was listed comes newer,
        // with its new ETag, which is as good: the read is of some moment after it began.
        let documents: Vec<CountDocument> = self
            .query_pages(
                "SELECT c.id, c.resource_id, c.tier, c.page_ms, c.cells, c.first_ms, c.streams, c._etag",
                resource_id,
                tier,
                (start_ms, end_ms),
                Some(&missing),
            )
            .await?;
        for document in documents {
            let page_ms = document.page_ms;
            let page = Arc::new(ReadPage::decode(document)?);
            self.page_memo
                .pages
                .insert((resource_id.to_owned(), tier, page_ms), page.clone());
            pages.insert(page_ms, page);
        }
        Ok(pages)
    }

    /// `select` of the documents of one resource and tier with pages in the window (and among
    /// `only`, if given).
    async fn query_pages<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        select: &str,
        resource_id: &str,
        tier: Tier,
        (start_ms, end_ms): (u64, u64),
        only: Option<&[u64]>,
    ) -> Result<Vec<T>, StoreError> {
        let only_clause = if only.is_some() {
            " AND ARRAY_CONTAINS(@pages, c.page_ms)"
        } else {
            ""
        };
        let mut query = azure_data_cosmos::Query::from(format!(
            "{select} FROM c WHERE c.resource_id = @resource AND c.tier = @tier \
             AND c.page_ms >= @start AND c.page_ms < @end{only_clause}"
        ))
        // The partition is named in the query too: a server may apply the scope loosely (the
        // test server does).
        .with_parameter("@resource", resource_id)
        .map_err(classify)?
        .with_parameter("@tier", tier.as_str())
        .map_err(classify)?
        .with_parameter("@start", page_of(tier, start_ms))
        .map_err(classify)?
        .with_parameter("@end", end_ms)
        .map_err(classify)?;
        if let Some(pages) = only {
            query = query.with_parameter("@pages", pages).map_err(classify)?;
        }
        self.counts
            .query_items(
                query,
                azure_data_cosmos::FeedScope::partition(resource_id.to_owned()),
                None,
            )
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)
    }
}

/// Adds a held row's cells of one resource to `cells` (one tier, buckets in `range`), except
/// where the stored document of the cell's page says the row's round wrote it already.
#[allow(clippy::too_many_arguments)]
fn add_row(
    cells: &mut BTreeMap<u64, CountCell>,
    documents: &BTreeMap<u64, Arc<ReadPage>>,
    writer: &str,
    held: &HeldRow,
    resource_id: &str,
    tier: Tier,
    (start_ms, end_ms): (u64, u64),
    now_ms: u64,
) {
    if held.settled {
        return;
    }
    for cell in held.row.cells_of(resource_id) {
        let bucket_ms = cell.minute_ms / tier.resolution_ms() * tier.resolution_ms();
        if bucket_ms < start_ms || bucket_ms >= end_ms || !tier_kept(tier, bucket_ms, now_ms) {
            continue;
        }
        let folded = held.round.is_some_and(|round| {
            documents
                .get(&page_of(tier, bucket_ms))
                .is_some_and(|document| document.has_round(writer, round))
        });
        if folded {
            continue;
        }
        cells
            .entry(bucket_ms)
            .or_insert_with(|| CountCell::empty(bucket_ms))
            .add(cell.hits, &cell.visitors);
    }
}

#[cfg(test)]
mod tests {
    use hitcount_wire::Sketch;

    use super::*;

    fn page(etag: &str, buckets: &[u64]) -> ReadPage {
        let mut visitors = Sketch::new();
        visitors.insert(b"visitor");
        ReadPage {
            etag: etag.to_owned(),
            cells: buckets
                .iter()
                .map(|bucket_ms| CountCell {
                    bucket_ms: *bucket_ms,
                    hits: 1,
                    visitors: visitors.clone(),
                })
                .collect(),
            streams: BTreeMap::new(),
            heap_bytes: 0,
        }
    }

    #[test]
    fn a_page_adds_only_its_cells_in_the_window() {
        let mut cells = BTreeMap::new();
        page("e", &[0, 60_000, 120_000, 180_000]).add_cells_to(&mut cells, 60_000, 180_000);
        assert_eq!(cells.keys().copied().collect::<Vec<_>>(), [60_000, 120_000]);
    }
}
