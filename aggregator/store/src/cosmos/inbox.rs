//! Cosmos DB's durable inbox: each edge batch becomes one document whose id is the batch's key,
//! so a second delivery is refused by the service itself (409) and a batch is counted once
//! without any transaction across partitions. The document holds the batch's minute cells (the
//! shared inbox row encoding, `crate::inbox`), and the writer's stream folds it later (`fold.rs`).
//!
//! Container `inbox`, partition key `/edge_id`: every delivery of one batch lands in the same
//! logical partition whichever aggregator receives it, which a unique id needs.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::{CosmosStore, classify, read_document};
use crate::group::{GroupWrites, KeyId, Recorded, WriteShape, fold_group, group_resource_ids};
use crate::inbox::{InboxCell, InboxRow};
use crate::records::{ApplyOutcome, GroupCommit, MergeBatch, StoreError, TierCell};
use crate::rollup::Rollups;

pub(super) const INBOX_CONTAINER: &str = "inbox";
/// Base64 characters in one document: a Cosmos DB document holds at most 2 MB. A batch's row
/// longer than this is written as parts, each its own document, before the document that names
/// them (see [`CosmosStore::append`]).
pub const INBOX_PART_CHARS_MAX: usize = 1_500_000;
/// Parts one batch takes at most: a batch is at most `BATCH_BYTES_MAX` (8 MiB) on the wire, and
/// its row is no larger than its body, so 8 MiB in base64 (11.2 million characters) needs eight.
pub const INBOX_PARTS_MAX: usize = 12;
/// A folded row keeps its cells this long after it was written (and after its latest minute),
/// so that a rebuild of the hot tier (its hour, the keys' margin and the edges' clock skew) reads
/// every batch it holds from the inbox.
pub const FOLDED_PAYLOAD_KEEP_MS: u64 = 2 * crate::HOUR_MS;
const _: () = assert!(
    crate::hot::HOT_REBUILD_SPAN_MS + hitcount_wire::CLOCK_SKEW_MS_MAX < FOLDED_PAYLOAD_KEEP_MS,
    "a rebuild of the hot tier finds every row it needs with its cells"
);
/// The partition of an import's documents, followed by the file's SHA-256: `:` is in no edge id.
const IMPORT_PARTITION_PREFIX: &str = "import:";
/// Partition of the rows of direct hits (no edge, no batch key): one per writer.
const DIRECT_PARTITION_PREFIX: &str = "direct.";

const _: () = assert!(
    hitcount_wire::BATCH_BYTES_MAX.div_ceil(3) * 4 <= INBOX_PART_CHARS_MAX * INBOX_PARTS_MAX,
    "the largest batch's row fits its parts"
);
const _: () = assert!(
    hitcount_wire::BATCH_ENTRIES_MAX <= crate::inbox::INBOX_ROW_CELLS_MAX,
    "one batch is one inbox row"
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RowState {
    /// Waiting for its stream's fold.
    Pending,
    /// Folded: kept, without its cells, as the batch's dedupe record until its TTL.
    Folded,
    /// A piece of a large row's payload.
    Part,
    /// An import's minute cells within the hot tier's span, which the import wrote into the count
    /// documents itself: kept only for the hot tier's rebuilds, never folded, deleted after
    /// [`FOLDED_PAYLOAD_KEEP_MS`].
    Imported,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct InboxDocument {
    pub id: String,
    pub edge_id: String,
    /// The stream (an aggregator process) that wrote it and folds it.
    pub writer: String,
    /// The row's number in its writer's stream: what the writer's overlay knows it by.
    pub row: u64,
    /// Hex.
    pub body_sha256: String,
    pub state: RowState,
    pub cells: u64,
    /// 0: the payload is here; otherwise it is in this many part documents.
    pub parts: u32,
    /// The row, postcard-encoded, in base64.
    pub payload: String,
    pub created_at_ms: u64,
    /// The start of the row's latest minute: with `created_at_ms`, what tells whether its cells
    /// can still be in the hot tier's hour (an edge may send minutes ahead of its window).
    #[serde(default)]
    pub last_minute_ms: u64,
    /// Seconds to live once folded (Cosmos DB deletes it then; prune does where TTL is off).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ttl: Option<i64>,
}

/// A row a stream's round takes: where its document is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RowRef {
    pub edge_id: String,
    pub id: String,
    pub row: u64,
    pub cells: u64,
}

/// Where a row's document goes, and in what state.
#[derive(Debug, Clone, Copy)]
struct RowPlace<'a> {
    edge_id: &'a str,
    id: &'a str,
    writer: &'a str,
    number: u64,
    state: RowState,
}

/// The document id of a batch key: the edge id in hex (ids may not hold `/`, `\`, `?` or `#`,
/// which edge ids may), its boot epoch and sequence.
fn batch_document_id(key: &KeyId) -> String {
    let (edge_id, boot_epoch, sequence) = key;
    format!("{}.{boot_epoch}.{sequence}", hex::encode(edge_id))
}

fn part_id(id: &str, writer: &str, part: usize) -> String {
    // The writer in the id: two aggregators writing the same batch at once never share parts.
    format!("{id}.{writer}.{part}")
}

impl CosmosStore {
    /// The inbox shape's group commit: one document per batch, created in order; a batch whose
    /// document exists is a duplicate (same body digest) or a conflict. A failure midway fails
    /// the group: the batches already written are in the inbox (their retries are duplicates)
    /// but in no overlay, so they are counted once, when folded.
    pub(super) async fn append(
        &self,
        batches: Vec<MergeBatch>,
        now_ms: u64,
    ) -> Result<GroupCommit, StoreError> {
        let ids: Vec<String> = group_resource_ids(&batches)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let retention = self.retention_of(ids).await?;
        self.start_stream(now_ms).await?;
        let writer = self.writer();
        let mut stored: HashMap<KeyId, [u8; 32]> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batches.len());
        let mut documents = Vec::with_capacity(batches.len());
        let mut written = Vec::new();
        for batch in batches {
            let key = batch.key.clone();
            if let Some(key) = &key
                && let Some(digest) = stored.get(&key.id())
            {
                outcomes.push(same_body(*digest, key.body_sha256));
                documents.push(None);
                continue;
            }
            let recorded = key
                .iter()
                .map(|key| (key.id(), Recorded::Now { batch: 0 }))
                .collect();
            let mut writes = fold_group(
                std::slice::from_ref(&batch),
                &recorded,
                &retention,
                &Rollups::none(),
                now_ms,
                WriteShape::Inbox,
            );
            let outcome = writes.outcomes[0];
            let row = InboxRow::from_writes(&mut writes).pop().unwrap_or_default();
            let number = self.next_row();
            let (edge_id, id) = match &key {
                Some(key) => (key.edge_id.clone(), batch_document_id(&key.id())),
                None => (
                    format!("{DIRECT_PARTITION_PREFIX}{writer}"),
                    format!("{writer}.{number}"),
                ),
            };
            let digest = key.as_ref().map_or([0; 32], |key| key.body_sha256);
            let place = RowPlace {
                edge_id: &edge_id,
                id: &id,
                writer: &writer,
                number,
                state: RowState::Pending,
            };
            match self.write_row(&place, digest, &row, now_ms).await? {
                None => {
                    outcomes.push(outcome);
                    documents.push(Some(id));
                    written.push((number, row));
                    if let Some(key) = &key {
                        stored.insert(key.id(), digest);
                    }
                }
                Some(existing) => {
                    outcomes.push(same_body(existing, digest));
                    documents.push(None);
                    if let Some(key) = &key {
                        stored.insert(key.id(), existing);
                    }
                }
            }
        }
        for (number, row) in written {
            self.overlay.insert(number, row);
        }
        debug_assert_eq!(
            documents.len(),
            outcomes.len(),
            "a group commit names one document or none per batch"
        );
        Ok(GroupCommit {
            outcomes,
            transaction: None,
            documents,
        })
    }

    /// Keeps an import's recent minute cells (see [`RowState::Imported`]) as documents of the
    /// file's own partition (`import:{sha256}`, a name no edge can have), the same documents
    /// whenever the file is sent.
    pub(super) async fn keep_for_the_hot_tier(
        &self,
        file_sha256: &str,
        cells: &[&TierCell],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        // In (resource, minute) order, each once, as a row holds them.
        let sorted: BTreeMap<(&str, u64), &TierCell> = cells
            .iter()
            .map(|cell| ((cell.resource_id.as_str(), cell.cell.bucket_ms), *cell))
            .collect();
        let mut writes = GroupWrites {
            minute_cells: sorted
                .into_values()
                .map(|cell| InboxCell {
                    resource_id: cell.resource_id.clone(),
                    minute_ms: cell.cell.bucket_ms,
                    hits: cell.cell.hits,
                    visitors: cell.cell.visitors.clone(),
                })
                .collect(),
            ..GroupWrites::default()
        };
        let edge_id = format!("{IMPORT_PARTITION_PREFIX}{file_sha256}");
        let writer = self.writer();
        for (index, row) in InboxRow::from_writes(&mut writes).iter().enumerate() {
            // Unique across partitions too: the hot tier names documents by id alone.
            let id = format!("{file_sha256}.{index}");
            let place = RowPlace {
                edge_id: &edge_id,
                id: &id,
                writer: &writer,
                number: 0,
                state: RowState::Imported,
            };
            // A document already there is this file's, from an earlier send.
            self.write_row(&place, [0; 32], row, now_ms).await?;
        }
        Ok(())
    }

    /// Writes a row's document (its parts first); `Some(digest)` when a document with this id
    /// was there, holding that body digest.
    async fn write_row(
        &self,
        place: &RowPlace<'_>,
        digest: [u8; 32],
        row: &InboxRow,
        now_ms: u64,
    ) -> Result<Option<[u8; 32]>, StoreError> {
        let RowPlace {
            edge_id,
            id,
            writer,
            number,
            state,
        } = *place;
        let payload = BASE64.encode(row.encode());
        let chunks: Vec<&str> = payload
            .as_bytes()
            .chunks(INBOX_PART_CHARS_MAX)
            .map(|chunk| std::str::from_utf8(chunk).expect("base64 is ASCII"))
            .collect();
        if chunks.len() > INBOX_PARTS_MAX {
            return Err(StoreError::CorruptInbox("a row is over its size bound"));
        }
        let parts = if chunks.len() > 1 { chunks.len() } else { 0 };
        let mut document = InboxDocument {
            id: id.to_owned(),
            edge_id: edge_id.to_owned(),
            writer: writer.to_owned(),
            row: number,
            body_sha256: hex::encode(digest),
            state: RowState::Part,
            cells: row.len() as u64,
            parts: 0,
            payload: String::new(),
            created_at_ms: now_ms,
            last_minute_ms: row
                .cells()
                .iter()
                .map(|cell| cell.minute_ms)
                .max()
                .unwrap_or(0),
            ttl: (state == RowState::Imported)
                .then_some(i64::try_from(FOLDED_PAYLOAD_KEEP_MS / 1000).unwrap_or(i64::MAX)),
        };
        if parts > 0 {
            for (index, chunk) in chunks.iter().enumerate() {
                let part = InboxDocument {
                    id: part_id(id, writer, index),
                    payload: (*chunk).to_owned(),
                    ..document.clone()
                };
                // Upserted: a part left by this writer's earlier try is simply written again.
                self.inbox
                    .upsert_item(edge_id.to_owned(), &part.id, &part, None)
                    .await
                    .map_err(classify)?;
            }
        } else {
            document.payload = payload;
        }
        document.state = state;
        document.parts = parts as u32;
        match self
            .inbox
            .create_item(edge_id.to_owned(), id, &document, None)
            .await
        {
            Ok(_) => Ok(None),
            Err(error) if error.status().is_conflict() => {
                let existing = self
                    .read_row_document(edge_id, id)
                    .await?
                    .ok_or(StoreError::CorruptInbox("a batch's document vanished"))?;
                let mut digest = [0; 32];
                hex::decode_to_slice(&existing.body_sha256, &mut digest)
                    .map_err(|_| StoreError::CorruptInbox("a batch digest is not hex"))?;
                Ok(Some(digest))
            }
            Err(error) => Err(classify(error)),
        }
    }

    pub(super) async fn read_row_document(
        &self,
        edge_id: &str,
        id: &str,
    ) -> Result<Option<InboxDocument>, StoreError> {
        read_document(&self.inbox, edge_id.to_owned(), id).await
    }

    /// A pending row's cells, from its document (and parts).
    pub(super) async fn load_row(&self, document: &InboxDocument) -> Result<InboxRow, StoreError> {
        let payload = if document.parts == 0 {
            document.payload.clone()
        } else {
            let mut payload = String::new();
            for index in 0..document.parts as usize {
                let id = part_id(&document.id, &document.writer, index);
                let part = self
                    .read_row_document(&document.edge_id, &id)
                    .await?
                    .ok_or(StoreError::CorruptInbox("a row's part is missing"))?;
                payload.push_str(&part.payload);
            }
            payload
        };
        let bytes = BASE64
            .decode(payload)
            .map_err(|_| StoreError::CorruptInbox("a row's payload is not base64"))?;
        InboxRow::decode(&bytes)
    }

    /// Marks a folded row's document as the batch's dedupe record (a TTL). It keeps its cells
    /// (and parts) while they may be in the hot tier's hour, which is rebuilt from the inbox;
    /// prune clears them after [`FOLDED_PAYLOAD_KEEP_MS`] ([`Self::clear_payload`]).
    pub(super) async fn mark_folded(&self, mut document: InboxDocument) -> Result<(), StoreError> {
        document.state = RowState::Folded;
        document.ttl = Some(i64::try_from(crate::DEDUPE_RETENTION_MS / 1000).unwrap_or(i64::MAX));
        self.inbox
            .replace_item(document.edge_id.clone(), &document.id, &document, None)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Drops a folded row's cells and parts: what is left is the batch's dedupe record.
    pub(super) async fn clear_payload(
        &self,
        mut document: InboxDocument,
    ) -> Result<(), StoreError> {
        debug_assert_eq!(
            document.state,
            RowState::Folded,
            "only a folded row's cells are dropped: a pending one still has to be counted"
        );
        for index in 0..document.parts as usize {
            let id = part_id(&document.id, &document.writer, index);
            match self
                .inbox
                .delete_item(document.edge_id.clone(), &id, None)
                .await
            {
                Ok(_) => {}
                Err(error) if error.status().is_not_found() => {}
                Err(error) => return Err(classify(error)),
            }
        }
        document.payload = String::new();
        document.parts = 0;
        self.inbox
            .replace_item(document.edge_id.clone(), &document.id, &document, None)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Up to `limit` pending rows of one stream, oldest first (a query across partitions: the
    /// inbox is partitioned by edge).
    pub(super) async fn pending_rows(
        &self,
        writer: &str,
        limit: u64,
    ) -> Result<Vec<RowRef>, StoreError> {
        let query = azure_data_cosmos::Query::from(
            "SELECT TOP @limit c.edge_id, c.id, c.row, c.cells FROM c \
             WHERE c.writer = @writer AND c.state = 'pending'",
        )
        .with_parameter("@limit", limit)
        .map_err(classify)?
        .with_parameter("@writer", writer)
        .map_err(classify)?;
        let mut rows: Vec<RowRef> = self
            .inbox
            .query_items::<RowRef>(query, azure_data_cosmos::FeedScope::full_container(), None)
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        rows.sort_by_key(|row| row.row);
        Ok(rows)
    }
}

fn same_body(stored: [u8; 32], body: [u8; 32]) -> ApplyOutcome {
    if stored == body {
        ApplyOutcome::Duplicate
    } else {
        ApplyOutcome::Conflict
    }
}
