//! The store contract on Cosmos DB: group commits append to the inbox (`inbox.rs`), folds move
//! it into the count documents (`fold.rs`), reads join those with this process's rows
//! (`counts.rs`), and imports, deletions and retention work document by document.

use std::collections::{BTreeMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::counts::{CountDocument, Mark, count_ttl, pages};
use super::inbox::{FOLDED_PAYLOAD_KEEP_MS, InboxDocument};
use super::{CosmosStore, Kind, NameDocument, classify, name_id};
use crate::contract::{CatalogStore, DurableStore};
use crate::group::WriteShape;
use crate::hot::HOT_REBUILD_SPAN_MS;
use crate::inbox;
use crate::patterns::PatternStore;
use crate::records::{
    CountCell, CreateOutcome, GroupCommit, Import, ImportOutcome, MergeBatch, MinuteCells, Pruned,
    StoreError, Tier, TierCell,
};
use crate::rollup::Rollups;
use crate::rules::{RETENTION_DELETE_ROWS_MAX, retention_rules};
use crate::{DEDUPE_RETENTION_MS, HOUR_MS};

/// Count document writes an import keeps in flight.
const IMPORT_WRITES_IN_FLIGHT_MAX: usize = 32;
/// Resources whose documents one read loads at once.
const READS_IN_FLIGHT_MAX: usize = 16;
/// A part of a large row whose document names another writer, or does not exist, this long
/// after it was written, was left by a write that lost or died: prune deletes it.
const PART_ORPHAN_MS: u64 = HOUR_MS;

/// The record of an imported file (catalog, kind `import`, id its SHA-256 in hex).
#[derive(Debug, Serialize, Deserialize)]
struct ImportDocument {
    id: String,
    kind: Kind,
    cells: u64,
    imported_at_ms: u64,
}

/// An id and its partition: what prune deletes.
#[derive(Debug, Deserialize)]
struct Located {
    id: String,
    #[serde(default)]
    edge_id: String,
    #[serde(default)]
    writer: String,
}

#[async_trait::async_trait]
impl DurableStore for CosmosStore {
    async fn apply_group(
        &self,
        batches: Vec<MergeBatch>,
        now_ms: u64,
    ) -> Result<GroupCommit, StoreError> {
        self.append(batches, now_ms).await
    }

    async fn cells_of_many(
        &self,
        resource_ids: Vec<String>,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Vec<CountCell>>, StoreError> {
        futures::stream::iter(resource_ids)
            .map(|id| async move { self.read_cells(&id, tier, start_ms, end_ms, now_ms).await })
            .buffered(READS_IN_FLIGHT_MAX)
            .try_collect()
            .await
    }

    /// Checks every resource first, creates the absent ones, then adds each cell to its
    /// document with the file's mark, and records the file last. There is no transaction
    /// across documents: an import cut short (the service unreachable midway) has some cells
    /// added, and sending the same file again adds the rest (the marks skip those added).
    async fn import(&self, import: Import, now_ms: u64) -> Result<ImportOutcome, StoreError> {
        let file_sha256 = hex::encode(import.file_sha256);
        if self
            .read::<ImportDocument>(Kind::Import, &file_sha256)
            .await?
            .is_some()
        {
            return Ok(ImportOutcome::Duplicate);
        }
        let described: Vec<String> = import.resources.iter().map(|r| r.id.clone()).collect();
        let existing: HashSet<String> = self
            .resources_current(described, None)
            .await?
            .into_iter()
            .map(|record| record.id)
            .collect();
        let absent: Vec<_> = import
            .resources
            .into_iter()
            .filter(|record| !existing.contains(&record.id))
            .collect();
        for record in &absent {
            if let Some(holder) = self
                .read::<NameDocument>(Kind::ResourceName, &name_id(&record.name))
                .await?
                && holder.resource_id != record.id
                && self
                    .read::<super::ResourceDocument>(Kind::Resource, &holder.resource_id)
                    .await?
                    .is_some()
            {
                return Ok(ImportOutcome::ResourceMissing(record.id.clone()));
            }
        }
        let mut named: Vec<String> = import
            .cells
            .iter()
            .map(|cell| cell.resource_id.clone())
            .collect();
        named.sort_unstable();
        named.dedup();
        let known: HashSet<&str> = existing
            .iter()
            .map(String::as_str)
            .chain(absent.iter().map(|record| record.id.as_str()))
            .collect();
        let stored: HashSet<String> = self
            .resources_current(named.clone(), None)
            .await?
            .into_iter()
            .map(|record| record.id)
            .collect();
        if let Some(missing) = named
            .iter()
            .find(|id| !known.contains(id.as_str()) && !stored.contains(*id))
        {
            return Ok(ImportOutcome::ResourceMissing(missing.clone()));
        }
        let mut resources_created = 0;
        for record in absent {
            let id = record.id.clone();
            match self.create_resource(record).await? {
                CreateOutcome::Created => resources_created += 1,
                CreateOutcome::IdTaken => {}
                CreateOutcome::NameTaken => return Ok(ImportOutcome::ResourceMissing(id)),
            }
        }
        let retention = self.retention_of(named).await?;
        let mark = Mark::Import {
            file_sha256: file_sha256.clone(),
        };
        let cells = import.cells.len() as u64;
        let recent: Vec<&TierCell> = import
            .cells
            .iter()
            .filter(|cell| {
                cell.tier == Tier::Minute && cell.cell.bucket_ms + HOT_REBUILD_SPAN_MS >= now_ms
            })
            .collect();
        self.keep_for_the_hot_tier(&file_sha256, &recent, now_ms)
            .await?;
        // Each tier as the file says, and a tier it lacks for a bucket what its finer cells add
        // up to, as on every store (Cosmos DB writes every tier whole: nothing is rolled up).
        let rows = Rollups::none().import_rows(&import.cells);
        let pages = pages(
            rows.iter().map(|cell| {
                (
                    cell.resource_id.as_str(),
                    cell.tier,
                    cell.cell.bucket_ms,
                    cell.cell.hits,
                    &cell.cell.visitors,
                )
            }),
            |resource_id, tier, page_ms| {
                let retention_days = retention.get(resource_id).copied().flatten();
                count_ttl(tier, page_ms, retention_days, now_ms)
            },
        );
        let mark = &mark;
        futures::stream::iter(pages)
            .map(|write| async move { self.add_to_count(&write, mark, now_ms).await })
            .buffer_unordered(IMPORT_WRITES_IN_FLIGHT_MAX)
            .try_collect::<Vec<bool>>()
            .await?;
        let record = ImportDocument {
            id: file_sha256.clone(),
            kind: Kind::Import,
            cells,
            imported_at_ms: now_ms,
        };
        self.create(Kind::Import, &file_sha256, &record).await?;
        Ok(ImportOutcome::Imported { resources_created })
    }

    /// Read from the inbox alone (a query across partitions), not from the count documents: each
    /// batch whose cells can be in the hour is there whole, folded or not
    /// ([`FOLDED_PAYLOAD_KEEP_MS`]), and the documents read name exactly what was counted, which
    /// the hot tier applies once each. Rows of resources that no longer exist are left out.
    async fn minute_cells_since(&self, start_ms: u64) -> Result<MinuteCells, StoreError> {
        let query = azure_data_cosmos::Query::from(
            "SELECT * FROM c WHERE c.state != 'part' \
             AND (c.created_at_ms >= @created OR c.last_minute_ms >= @start)",
        )
        .with_parameter(
            "@created",
            start_ms.saturating_sub(hitcount_wire::CLOCK_SKEW_MS_MAX),
        )
        .map_err(classify)?
        .with_parameter("@start", start_ms)
        .map_err(classify)?;
        let documents = self.inbox_documents(query).await?;
        let names: Vec<String> = documents.iter().map(|row| row.id.clone()).collect();
        let rows: Vec<inbox::InboxRow> = futures::stream::iter(documents)
            .map(|document| async move { self.load_row(&document).await })
            .buffered(READS_IN_FLIGHT_MAX)
            .try_collect()
            .await?;
        let named = inbox::rows_resource_ids(&rows);
        let existing: HashSet<String> = self
            .resources_current(named, None)
            .await?
            .into_iter()
            .map(|record| record.id)
            .collect();
        let mut cells = BTreeMap::new();
        inbox::add_minutes_since(&mut cells, &rows, &existing, start_ms);
        Ok(MinuteCells {
            cells: cells
                .into_iter()
                .map(|((resource_id, _), cell)| (resource_id, cell))
                .collect(),
            snapshot: None,
            documents: names,
        })
    }

    /// Cosmos DB keeps no pending sketches: a fold writes each cell's sketch into its document.
    async fn compact(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn keeps_pending_sketches(&self) -> bool {
        false
    }

    /// Folds this process's rows, deletes the record (later folds of other processes' rows
    /// skip the resource from then on), then every document of its partition.
    async fn delete_resource(&self, id: String, now_ms: u64) -> Result<bool, StoreError> {
        self.fold_streams(now_ms).await?;
        let Some(record) = self
            .read::<super::ResourceDocument>(Kind::Resource, &id)
            .await?
        else {
            return Ok(false);
        };
        self.delete(Kind::Resource, &id).await?;
        let reservation = name_id(&record.name);
        if let Some(holder) = self
            .read::<NameDocument>(Kind::ResourceName, &reservation)
            .await?
            && holder.resource_id == id
        {
            self.delete(Kind::ResourceName, &reservation).await?;
        }
        self.overlay.forget_resource(&id);
        loop {
            let query = azure_data_cosmos::Query::from(
                "SELECT TOP @limit c.id FROM c WHERE c.resource_id = @resource",
            )
            .with_parameter("@limit", RETENTION_DELETE_ROWS_MAX)
            .map_err(classify)?
            .with_parameter("@resource", id.as_str())
            .map_err(classify)?;
            let ids = self.located(&self.counts, query, Some(id.as_str())).await?;
            if ids.is_empty() {
                return Ok(true);
            }
            for document in ids {
                self.delete_located(&self.counts, &id, &document.id).await?;
            }
        }
    }

    /// Deletes count documents past retention (the service's TTL does it too, where it is on)
    /// and dedupe records past theirs, at most `RETENTION_DELETE_ROWS_MAX` of each kind per
    /// query.
    async fn prune(&self, now_ms: u64) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let resources = self.resources().await?;
        for (resource, tier, cutoff_ms) in retention_rules(&resources, now_ms) {
            // A bucket goes when all of it is older than the cutoff; a page whose first bucket
            // went loses its expired cells, or goes whole.
            let newest_expired = cutoff_ms.saturating_sub(tier.resolution_ms());
            let mut text = "SELECT TOP @limit * FROM c \
                            WHERE c.tier = @tier AND c.first_ms <= @newest"
                .to_owned();
            if resource.is_some() {
                text.push_str(" AND c.resource_id = @resource");
            }
            let query = azure_data_cosmos::Query::from(text)
                .with_parameter("@resource", resource.as_deref())
                .map_err(classify)?
                .with_parameter("@limit", RETENTION_DELETE_ROWS_MAX)
                .map_err(classify)?
                .with_parameter("@tier", tier.as_str())
                .map_err(classify)?
                .with_parameter("@newest", newest_expired)
                .map_err(classify)?;
            let scope = match &resource {
                Some(resource) => azure_data_cosmos::FeedScope::partition(resource.clone()),
                None => azure_data_cosmos::FeedScope::full_container(),
            };
            let pages: Vec<CountDocument> = self
                .counts
                .query_items(query, scope, None)
                .await
                .map_err(classify)?
                .try_collect()
                .await
                .map_err(classify)?;
            for page in pages {
                pruned.count_rows += self.trim_page(page, newest_expired).await?;
            }
        }
        let query = azure_data_cosmos::Query::from(
            "SELECT TOP @limit c.id, c.edge_id FROM c \
             WHERE c.state = 'folded' AND c.created_at_ms < @cutoff",
        )
        .with_parameter("@limit", RETENTION_DELETE_ROWS_MAX)
        .map_err(classify)?
        .with_parameter("@cutoff", now_ms.saturating_sub(DEDUPE_RETENTION_MS))
        .map_err(classify)?;
        for document in self.located(&self.inbox, query, None).await? {
            self.delete_located(&self.inbox, &document.edge_id, &document.id)
                .await?;
            pruned.dedupe_rows += 1;
        }
        self.prune_payloads(now_ms).await?;
        self.prune_orphan_parts(now_ms).await?;
        Ok(pruned)
    }

    async fn fold_inbox(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.fold_streams(now_ms).await
    }

    /// Cosmos DB keeps its own overlay (rows with their fold rounds, `overlay.rs`).
    fn overlay(&self) -> Option<&inbox::Overlay> {
        None
    }

    fn unfolded_entries(&self) -> usize {
        self.overlay.unfolded_entries()
    }

    fn write_shape(&self) -> WriteShape {
        WriteShape::Inbox
    }
}

impl CosmosStore {
    /// The ids (and partitions) a query over `container` finds: in one partition, or across
    /// all of them.
    async fn located(
        &self,
        container: &azure_data_cosmos::clients::ContainerClient,
        query: azure_data_cosmos::Query,
        partition: Option<&str>,
    ) -> Result<Vec<Located>, StoreError> {
        let scope = match partition {
            Some(partition) => azure_data_cosmos::FeedScope::partition(partition.to_owned()),
            None => azure_data_cosmos::FeedScope::full_container(),
        };
        container
            .query_items::<Located>(query, scope, None)
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)
    }

    async fn delete_located(
        &self,
        container: &azure_data_cosmos::clients::ContainerClient,
        partition: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        match container.delete_item(partition.to_owned(), id, None).await {
            Ok(_) => Ok(()),
            Err(error) if error.status().is_not_found() => Ok(()),
            Err(error) => Err(classify(error)),
        }
    }

    /// Parts whose row document is missing or names another writer (a write that lost the
    /// race for the batch, or died before its row document), once they are old enough that
    /// no write is still under way.
    /// The inbox documents a query across its partitions finds.
    async fn inbox_documents(
        &self,
        query: azure_data_cosmos::Query,
    ) -> Result<Vec<InboxDocument>, StoreError> {
        self.inbox
            .query_items(query, azure_data_cosmos::FeedScope::full_container(), None)
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)
    }

    /// Drops the cells of folded rows past [`FOLDED_PAYLOAD_KEEP_MS`], and imports' documents for
    /// the hot tier: no rebuild of the hot tier reads them any more.
    async fn prune_payloads(&self, now_ms: u64) -> Result<(), StoreError> {
        let query = azure_data_cosmos::Query::from(
            "SELECT TOP @limit * FROM c WHERE c.state = 'folded' \
             AND (c.payload != '' OR c.parts > 0) \
             AND c.created_at_ms < @cutoff AND c.last_minute_ms < @cutoff",
        )
        .with_parameter("@limit", RETENTION_DELETE_ROWS_MAX)
        .map_err(classify)?
        .with_parameter("@cutoff", now_ms.saturating_sub(FOLDED_PAYLOAD_KEEP_MS))
        .map_err(classify)?;
        for row in self.inbox_documents(query).await? {
            self.clear_payload(row).await?;
        }
        // Imports' documents for the hot tier have a TTL; this is where TTL is off.
        let query = azure_data_cosmos::Query::from(
            "SELECT TOP @limit c.id, c.edge_id FROM c \
             WHERE c.state = 'imported' AND c.created_at_ms < @cutoff",
        )
        .with_parameter("@limit", RETENTION_DELETE_ROWS_MAX)
        .map_err(classify)?
        .with_parameter("@cutoff", now_ms.saturating_sub(FOLDED_PAYLOAD_KEEP_MS))
        .map_err(classify)?;
        for document in self.located(&self.inbox, query, None).await? {
            self.delete_located(&self.inbox, &document.edge_id, &document.id)
                .await?;
        }
        Ok(())
    }

    async fn prune_orphan_parts(&self, now_ms: u64) -> Result<(), StoreError> {
        let query = azure_data_cosmos::Query::from(
            "SELECT TOP @limit c.id, c.edge_id, c.writer FROM c \
             WHERE c.state = 'part' AND c.created_at_ms < @cutoff",
        )
        .with_parameter("@limit", RETENTION_DELETE_ROWS_MAX)
        .map_err(classify)?
        .with_parameter("@cutoff", now_ms.saturating_sub(PART_ORPHAN_MS))
        .map_err(classify)?;
        for part in self.located(&self.inbox, query, None).await? {
            let Some((row_id, _)) = part.id.split_once(&format!(".{}.", part.writer)) else {
                continue;
            };
            let row: Option<InboxDocument> = self.read_row_document(&part.edge_id, row_id).await?;
            // A folded row keeps its parts until prune clears its cells (`prune_payloads`).
            let kept = row.is_some_and(|row| row.writer == part.writer && row.parts > 0);
            if !kept {
                self.delete_located(&self.inbox, &part.edge_id, &part.id)
                    .await?;
            }
        }
        Ok(())
    }
}
