//! Azure Cosmos DB for NoSQL, the third durable backend (issue 13): the account's database with
//! its containers (created at start if missing) and the catalog (resources, tokens, edge keys,
//! patterns) here; the counts in the submodules: the inbox of batches (`inbox.rs`), its fold
//! (`fold.rs`) into the count documents (`counts.rs`), which reads load through a memory of
//! decoded pages (`pages.rs`), this process's unfolded rows (`overlay.rs`) and the store
//! contract over them (`durable.rs`). ARCHITECTURE.md ("Cosmos DB") holds the data model.
//!
//! Through Microsoft's SDK (`azure_data_cosmos`) only. Cosmos DB has no transaction across
//! documents of different partitions, so every operation here that writes two documents is
//! ordered so that a crash between them leaves a state the next call repairs (see
//! [`CosmosStore::create_resource`]).

mod counts;
mod durable;
mod fold;
mod inbox;
mod overlay;
mod pages;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use azure_core::credentials::Secret;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::{
    ContainerProperties, IndexingPolicy, PartitionKeyDefinition, PatchInstructions, PatchOperation,
    TimeToLive,
};
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, OperationOptions, OperationOptionsBuilder,
    PatchItemOptions, PatchStrategy, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosError, CosmosRuntime, FeedScope, Query,
    RoutingStrategy,
};
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::contract::CatalogStore;
use crate::patterns::{PatternRecord, PatternStore};
use crate::records::{CreateOutcome, ResourceRecord, StoreError, TokenRecord};
use counts::COUNTS_CONTAINER;
use inbox::INBOX_CONTAINER;
use overlay::Overlay;

pub use counts::COUNT_WRITE_ATTEMPTS_MAX;
pub use fold::STREAM_ORPHAN_MS;
pub use inbox::{FOLDED_PAYLOAD_KEEP_MS, INBOX_PART_CHARS_MAX, INBOX_PARTS_MAX};
pub use overlay::OVERLAY_DONE_KEEP_MS;

/// The container of everything else (resources, tokens, edge keys, patterns), partitioned by
/// kind: small, read whole at start and every few seconds.
const CATALOG_CONTAINER: &str = "catalog";
/// Random bytes of a new fold stream's id.
const STREAM_ID_BYTES: usize = 8;
/// A stream's row numbers start at its start time in ms times this, so that a process that
/// resumes its stream after a restart never reuses a number of the rows it left (at most this
/// many rows a millisecond: each row is a create the process waits for, far slower).
const ROW_NUMBERS_PER_MS: u64 = 1_000;
/// The largest integer a JSON document keeps exactly: Cosmos DB (and its test server) hold
/// numbers as doubles, so every integer written stays at or below it (row numbers reach about
/// 1.8e15 until the year 2255).
const JSON_INTEGER_MAX: u64 = (1 << 53) - 1;
/// The region named when the account does not say otherwise; routing only orders the account's
/// own regions by it.
const ROUTING_REGION: &str = "South Central US";
/// Retries of a request the service throttled (429, past the partition's request units) before
/// the store answers `Unavailable` (503 to the client, which retries later): throttling that
/// lasts is the account's throughput running short, which waiting here would not fix.
pub const COSMOS_THROTTLE_RETRIES_MAX: u32 = 3;
/// The longest the retries of one request wait in all (the service's `x-ms-retry-after-ms` says
/// how long each): well within a delta's or a query's time budget.
pub const COSMOS_THROTTLE_WAIT_MS_MAX: u64 = 2_000;
/// A name reserved this long ago by a resource that does not exist was left by a create that
/// died between its two writes: it is free again. Younger, a create may still be under way.
const NAME_RESERVATION_MS: u64 = 60_000;

/// Where the account is and how to reach it (`--cosmos-endpoint`, `--cosmos-key-file`,
/// `--cosmos-database`).
#[derive(Clone)]
pub struct CosmosSettings {
    pub endpoint: String,
    pub key: String,
    pub database: String,
    /// The fold stream this process writes into and folds: the one an earlier run of this same
    /// process left (whose rows it then folds at once, as after a restart), or `None` for a
    /// new one.
    pub stream: Option<ResumedStream>,
}

/// A fold stream to resume, with the locked file that names it: the store holds the lock while
/// it lives, so that two live processes never share a stream (a second process on the same
/// data directory finds the file locked and takes a new stream).
#[derive(Debug, Clone)]
pub struct ResumedStream {
    pub id: String,
    pub lock: std::sync::Arc<std::fs::File>,
}

impl std::fmt::Debug for CosmosSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        formatter
            .debug_struct("CosmosSettings")
            .field("endpoint", &self.endpoint)
            .field("database", &self.database)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// The catalog's partitions: one per kind of document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Resource,
    /// A resource name's reservation: names are unique, and a document id cannot hold every
    /// character a name may have, so its id is the name's SHA-256.
    ResourceName,
    Token,
    EdgeKey,
    Pattern,
    /// An aggregator process's fold stream (`fold.rs`).
    FoldStream,
    /// An imported file's record: a second import of it changes nothing.
    Import,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Resource => "resource",
            Self::ResourceName => "resource_name",
            Self::Token => "token",
            Self::EdgeKey => "edge_key",
            Self::Pattern => "pattern",
            Self::FoldStream => "fold_stream",
            Self::Import => "import",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ResourceDocument {
    id: String,
    kind: Kind,
    name: String,
    retention_days: Option<u32>,
    created_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct NameDocument {
    id: String,
    kind: Kind,
    resource_id: String,
    reserved_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenDocument {
    id: String,
    kind: Kind,
    name: String,
    /// Hex.
    token_sha256: String,
    scopes: Vec<String>,
    created_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct EdgeKeyDocument {
    id: String,
    kind: Kind,
    /// Hex.
    secret: String,
    created_at_ms: u64,
    #[serde(rename = "_etag", skip_serializing, default)]
    etag: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PatternDocument {
    /// The pattern's text, e.g. `blog.*`.
    id: String,
    kind: Kind,
    resources_max: u64,
    retention_days: Option<u32>,
    refused_hits: u64,
    created_at_ms: u64,
}

impl From<ResourceDocument> for ResourceRecord {
    fn from(document: ResourceDocument) -> Self {
        Self {
            id: document.id,
            name: document.name,
            retention_days: document.retention_days,
            created_at_ms: document.created_at_ms,
        }
    }
}

/// A Cosmos DB answer as a store error: throttling, timeouts and an unreachable service mean
/// "nothing was written, retry later" (503), as a stopped PostgreSQL does.
fn classify(error: CosmosError) -> StoreError {
    let status = error.status();
    if status.is_throttled()
        || status.is_transient()
        || status.is_timeout()
        || status.is_service_unavailable()
    {
        StoreError::Unavailable(format!("cosmos db: {error}"))
    } else {
        StoreError::Cosmos(error)
    }
}

/// [`COSMOS_THROTTLE_RETRIES_MAX`] and [`COSMOS_THROTTLE_WAIT_MS_MAX`] as the SDK's options (its
/// defaults, 9 retries within 30 s, would hold a request for half a minute).
fn throttle_bounds() -> OperationOptions {
    let throttling = ThrottlingRetryOptionsBuilder::new()
        .with_max_retry_count(COSMOS_THROTTLE_RETRIES_MAX)
        .with_max_retry_wait_time(Duration::from_millis(COSMOS_THROTTLE_WAIT_MS_MAX))
        .build();
    OperationOptionsBuilder::new()
        .with_throttling_retry_options(throttling)
        .build()
}

/// A point read of one document; `None` when there is none.
async fn read_document<T: DeserializeOwned>(
    container: &ContainerClient,
    partition: String,
    id: &str,
) -> Result<Option<T>, StoreError> {
    match container.read_item(partition, id, None).await {
        Ok(response) => Ok(Some(response.into_model().map_err(classify)?)),
        Err(error) if error.status().is_not_found() => Ok(None),
        Err(error) => Err(classify(error)),
    }
}

/// The SDK's client as the store makes it: HTTP/1.1, documents as JSON text, throttling retried
/// within [`COSMOS_THROTTLE_RETRIES_MAX`] and [`COSMOS_THROTTLE_WAIT_MS_MAX`]. Public for tools
/// that measure the account beside the store (the Cosmos DB benchmark's baselines).
pub async fn cosmos_client(settings: &CosmosSettings) -> Result<CosmosClient, StoreError> {
    let endpoint: AccountEndpoint = settings
        .endpoint
        .parse()
        .map_err(|_| StoreError::CosmosEndpoint(settings.endpoint.clone()))?;
    // HTTP/1.1: the service speaks both; the test server only the first.
    let pool = ConnectionPoolOptions::builder()
        .with_is_http2_allowed(false)
        .build()
        .map_err(classify)?;
    let runtime = CosmosRuntime::builder()
        .with_connection_pool(pool)
        .build()
        .await
        .map_err(classify)?;
    let account =
        AccountReference::with_authentication_key(endpoint, Secret::from(settings.key.clone()));
    let client = CosmosClient::builder()
        .with_runtime(runtime)
        // Documents as JSON text: what every server of the protocol speaks.
        .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false))
        .with_default_operation_options(throttle_bounds())
        .build(account, RoutingStrategy::ProximityTo(ROUTING_REGION.into()))
        .await
        .map_err(classify)?;
    Ok(client)
}

fn name_id(name: &str) -> String {
    hex::encode(sha2::Sha256::digest(name.as_bytes()))
}

pub struct CosmosStore {
    catalog: ContainerClient,
    counts: ContainerClient,
    inbox: ContainerClient,
    /// This process's fold stream: the writer of its inbox rows (a new one if another process
    /// ever takes this one over).
    writer: Mutex<String>,
    /// Whether this process's stream has its document (`fold.rs`).
    stream_started: AtomicBool,
    /// The number of this process's next row in its stream.
    next_row: AtomicU64,
    overlay: Overlay,
    /// The count documents reads loaded, decoded (`pages.rs`).
    page_memo: pages::PageMemo,
    /// Held while the store lives (see [`ResumedStream`]).
    _stream_lock: Option<std::sync::Arc<std::fs::File>>,
}

impl std::fmt::Debug for CosmosStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CosmosStore")
            .finish_non_exhaustive()
    }
}

impl CosmosStore {
    /// Connects with the account key, and creates the database and its containers if missing.
    pub async fn connect(settings: &CosmosSettings) -> Result<Self, StoreError> {
        let client = cosmos_client(settings).await?;
        match client.create_database(&settings.database, None).await {
            Ok(_) => tracing::info!(database = %settings.database, "cosmos db database created"),
            Err(error) if error.status().is_conflict() => {}
            Err(error) => return Err(classify(error)),
        }
        let database = client.database_client(&settings.database);
        let containers = [
            ContainerProperties::new(CATALOG_CONTAINER, PartitionKeyDefinition::from("/kind")),
            // Cells (hits and sketches) are read whole, never searched: indexing them would only
            // cost request units on every write.
            // Per-document TTL on, no default: each count document expires with its retention.
            ContainerProperties::new(
                COUNTS_CONTAINER,
                PartitionKeyDefinition::from("/resource_id"),
            )
            .with_indexing_policy(IndexingPolicy::default().with_excluded_path("/cells/*"))
            .with_default_ttl(TimeToLive::NoDefault),
            // Partitioned by edge: every delivery of a batch meets the same unique id. Rows'
            // payloads are read whole, never searched.
            ContainerProperties::new(INBOX_CONTAINER, PartitionKeyDefinition::from("/edge_id"))
                .with_indexing_policy(IndexingPolicy::default().with_excluded_path("/payload/?"))
                .with_default_ttl(TimeToLive::NoDefault),
        ];
        for properties in containers {
            let name = properties.id.clone();
            match database.create_container(properties, None).await {
                Ok(_) => tracing::info!(container = %name, "cosmos db container created"),
                Err(error) if error.status().is_conflict() => {}
                Err(error) => return Err(classify(error)),
            }
        }
        let mut containers = Vec::new();
        for name in [CATALOG_CONTAINER, COUNTS_CONTAINER, INBOX_CONTAINER] {
            containers.push(
                database
                    .container_client(name, None)
                    .await
                    .map_err(classify)?,
            );
        }
        let [catalog, counts, inbox] = <[ContainerClient; 3]>::try_from(containers)
            .unwrap_or_else(|_| unreachable!("three containers were asked for"));
        Ok(Self {
            catalog,
            counts,
            inbox,
            writer: Mutex::new(settings.stream.as_ref().map_or_else(
                || crate::random_hex(STREAM_ID_BYTES),
                |stream| stream.id.clone(),
            )),
            _stream_lock: settings.stream.as_ref().map(|stream| stream.lock.clone()),
            stream_started: AtomicBool::new(false),
            next_row: AtomicU64::new(0),
            overlay: Overlay::default(),
            page_memo: pages::PageMemo::default(),
        })
    }

    /// This process's stream.
    fn writer(&self) -> String {
        self.writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Starts a new stream for this process's next rows.
    fn rotate_writer(&self) {
        *self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = crate::random_hex(STREAM_ID_BYTES);
        self.stream_started.store(false, Ordering::Release);
    }

    fn next_row(&self) -> u64 {
        let number = self.next_row.fetch_add(1, Ordering::Relaxed);
        assert!(
            number <= JSON_INTEGER_MAX,
            "row numbers stay exact in JSON: {number}"
        );
        number
    }

    /// The retention of each of `ids` that exists (one query in the catalog's resource
    /// partition): what the merge and fold rules take.
    async fn retention_of(
        &self,
        ids: Vec<String>,
    ) -> Result<HashMap<String, Option<u32>>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(counts::retention_map(
            self.resources_current(ids, None).await?,
        ))
    }

    /// Every document of one catalog partition.
    async fn all_of<T: DeserializeOwned + Send + 'static>(
        &self,
        kind: Kind,
    ) -> Result<Vec<T>, StoreError> {
        self.query_kind(kind, "", Vec::new()).await
    }

    /// The documents of one catalog partition that `condition` (SQL over `c`, with the named
    /// parameters) holds for; all of them for an empty condition.
    async fn query_kind<T: DeserializeOwned + Send + 'static>(
        &self,
        kind: Kind,
        condition: &str,
        parameters: Vec<(&str, serde_json::Value)>,
    ) -> Result<Vec<T>, StoreError> {
        // The partition is named in the query too: a server may apply the scope loosely.
        let mut text = "SELECT * FROM c WHERE c.kind = @kind".to_owned();
        if !condition.is_empty() {
            text.push_str(&format!(" AND ({condition})"));
        }
        let mut query = Query::from(text)
            .with_parameter("@kind", kind.as_str())
            .map_err(classify)?;
        for (name, value) in parameters {
            query = query.with_parameter(name, value).map_err(classify)?;
        }
        let items = self
            .catalog
            .query_items::<T>(query, FeedScope::partition(kind.as_str()), None)
            .await
            .map_err(classify)?;
        items.try_collect().await.map_err(classify)
    }

    async fn read<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        read_document(&self.catalog, kind.as_str().to_owned(), id).await
    }

    /// Creates; false when a document with this id exists.
    async fn create<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        document: &T,
    ) -> Result<bool, StoreError> {
        match self
            .catalog
            .create_item(kind.as_str(), id, document, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error.status().is_conflict() => Ok(false),
            Err(error) => Err(classify(error)),
        }
    }

    async fn upsert<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        document: &T,
    ) -> Result<(), StoreError> {
        self.catalog
            .upsert_item(kind.as_str(), id, document, None)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Deletes; false when there was nothing to delete.
    async fn delete(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        match self.catalog.delete_item(kind.as_str(), id, None).await {
            Ok(_) => Ok(true),
            Err(error) if error.status().is_not_found() => Ok(false),
            Err(error) => Err(classify(error)),
        }
    }
}

#[async_trait::async_trait]
impl CatalogStore for CosmosStore {
    /// Reserves the name, then creates the resource. A reservation held by a resource id that
    /// does not exist, made more than [`NAME_RESERVATION_MS`] before this create, was left by a
    /// create that died between its two writes (or lost the id to another): it is taken over.
    async fn create_resource(&self, record: ResourceRecord) -> Result<CreateOutcome, StoreError> {
        if self
            .read::<ResourceDocument>(Kind::Resource, &record.id)
            .await?
            .is_some()
        {
            return Ok(CreateOutcome::IdTaken);
        }
        let reservation = NameDocument {
            id: name_id(&record.name),
            kind: Kind::ResourceName,
            resource_id: record.id.clone(),
            reserved_at_ms: record.created_at_ms,
        };
        if !self
            .create(Kind::ResourceName, &reservation.id, &reservation)
            .await?
        {
            let Some(holder) = self
                .read::<NameDocument>(Kind::ResourceName, &reservation.id)
                .await?
            else {
                return Ok(CreateOutcome::NameTaken);
            };
            let holder_exists = self
                .read::<ResourceDocument>(Kind::Resource, &holder.resource_id)
                .await?
                .is_some();
            let abandoned = holder.reserved_at_ms + NAME_RESERVATION_MS <= record.created_at_ms;
            if holder.resource_id != record.id && (holder_exists || !abandoned) {
                return Ok(CreateOutcome::NameTaken);
            }
            self.upsert(Kind::ResourceName, &reservation.id, &reservation)
                .await?;
        }
        let document = ResourceDocument {
            id: record.id.clone(),
            kind: Kind::Resource,
            name: record.name,
            retention_days: record.retention_days,
            created_at_ms: record.created_at_ms,
        };
        if self.create(Kind::Resource, &record.id, &document).await? {
            Ok(CreateOutcome::Created)
        } else {
            Ok(CreateOutcome::IdTaken)
        }
    }

    async fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError> {
        let mut records: Vec<ResourceRecord> = self
            .all_of::<ResourceDocument>(Kind::Resource)
            .await?
            .into_iter()
            .map(ResourceRecord::from)
            .collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut records: Vec<TokenRecord> = self
            .all_of::<TokenDocument>(Kind::Token)
            .await?
            .into_iter()
            .map(|document| TokenRecord {
                id: document.id,
                name: document.name,
                // A hash that does not decode authenticates nobody (see `TokenRecord::from_stored`).
                token_sha256: hex::decode(&document.token_sha256)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .unwrap_or([0; 32]),
                scopes: document.scopes,
                created_at_ms: document.created_at_ms,
            })
            .collect();
        records.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(records)
    }

    async fn put_token(&self, record: TokenRecord) -> Result<(), StoreError> {
        let document = TokenDocument {
            id: record.id.clone(),
            kind: Kind::Token,
            name: record.name,
            token_sha256: hex::encode(record.token_sha256),
            scopes: record.scopes,
            created_at_ms: record.created_at_ms,
        };
        self.upsert(Kind::Token, &record.id, &document).await
    }

    async fn delete_token(&self, id: String) -> Result<bool, StoreError> {
        self.delete(Kind::Token, &id).await
    }

    async fn edge_keys(&self) -> Result<Vec<(String, Vec<u8>, u64)>, StoreError> {
        let mut keys: Vec<(String, Vec<u8>, u64)> = self
            .all_of::<EdgeKeyDocument>(Kind::EdgeKey)
            .await?
            .into_iter()
            .filter_map(|document| {
                let secret = hex::decode(&document.secret).ok()?;
                Some((document.id, secret, document.created_at_ms))
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn put_edge_key(
        &self,
        edge_id: String,
        secret: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let document = EdgeKeyDocument {
            id: edge_id.clone(),
            kind: Kind::EdgeKey,
            secret: hex::encode(secret),
            created_at_ms: now_ms,
            etag: None,
        };
        self.upsert(Kind::EdgeKey, &edge_id, &document).await
    }

    async fn delete_edge_key(&self, edge_id: String) -> Result<bool, StoreError> {
        self.delete(Kind::EdgeKey, &edge_id).await
    }

    /// Reads the key's document and replaces it on the ETag read: a write in between makes the
    /// replace fail (412), and the key is then no longer the one expected.
    async fn replace_edge_key_if(
        &self,
        edge_id: String,
        expected: Vec<u8>,
        replacement: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let Some(mut document) = self
            .read::<EdgeKeyDocument>(Kind::EdgeKey, &edge_id)
            .await?
        else {
            return Ok(false);
        };
        if hex::decode(&document.secret).ok().as_deref() != Some(expected.as_slice()) {
            return Ok(false);
        }
        let precondition = azure_data_cosmos::options::Precondition::if_match(
            azure_core::http::Etag::from(document.etag.take().unwrap_or_default()),
        );
        let options =
            azure_data_cosmos::options::ItemWriteOptions::default().with_precondition(precondition);
        document.secret = hex::encode(replacement);
        match self
            .catalog
            .replace_item(Kind::EdgeKey.as_str(), &edge_id, &document, Some(options))
            .await
        {
            Ok(_) => Ok(true),
            Err(error)
                if error.status().is_precondition_failed() || error.status().is_not_found() =>
            {
                Ok(false)
            }
            Err(error) => Err(classify(error)),
        }
    }
}

#[async_trait::async_trait]
impl PatternStore for CosmosStore {
    async fn patterns(&self) -> Result<Vec<PatternRecord>, StoreError> {
        let mut records: Vec<PatternRecord> = self
            .all_of::<PatternDocument>(Kind::Pattern)
            .await?
            .into_iter()
            .map(|document| PatternRecord {
                pattern: document.id,
                resources_max: document.resources_max,
                retention_days: document.retention_days,
                refused_hits: document.refused_hits,
                created_at_ms: document.created_at_ms,
            })
            .collect();
        records.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        Ok(records)
    }

    async fn create_pattern(&self, record: PatternRecord) -> Result<bool, StoreError> {
        let document = PatternDocument {
            id: record.pattern.clone(),
            kind: Kind::Pattern,
            resources_max: record.resources_max,
            retention_days: record.retention_days,
            refused_hits: 0,
            created_at_ms: record.created_at_ms,
        };
        self.create(Kind::Pattern, &record.pattern, &document).await
    }

    async fn delete_pattern(&self, pattern: String) -> Result<bool, StoreError> {
        self.delete(Kind::Pattern, &pattern).await
    }

    /// One server-side increment per pattern: Cosmos DB has no transaction across documents
    /// outside a batch, and a batch of patches is what the test server refuses, so a failure
    /// midway leaves the counters before it added. They are a report (how many hits a full
    /// pattern refused), not counts.
    async fn add_refused_hits(&self, counts: Vec<(String, u64)>) -> Result<(), StoreError> {
        for (pattern, hits) in counts {
            let increment = PatchInstructions::new().with_operation(PatchOperation::increment(
                "/refused_hits",
                i64::try_from(hits).unwrap_or(i64::MAX),
            ));
            let options = PatchItemOptions::default().with_strategy(PatchStrategy::ServerSide);
            match self
                .catalog
                .patch_item(Kind::Pattern.as_str(), &pattern, increment, Some(options))
                .await
            {
                Ok(_) => {}
                // Deleted meanwhile: its refusals no longer matter.
                Err(error) if error.status().is_not_found() => {}
                Err(error) => return Err(classify(error)),
            }
        }
        Ok(())
    }

    async fn resources_current(
        &self,
        ids: Vec<String>,
        created_since_ms: Option<u64>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        let documents: Vec<ResourceDocument> = self
            .query_kind(
                Kind::Resource,
                "ARRAY_CONTAINS(@ids, c.id) OR c.created_at_ms >= @since",
                vec![
                    ("@ids", serde_json::json!(ids)),
                    // Without a time, a bound no resource reaches.
                    (
                        "@since",
                        serde_json::json!(created_since_ms.unwrap_or(u64::MAX)),
                    ),
                ],
            )
            .await?;
        Ok(documents.into_iter().map(ResourceRecord::from).collect())
    }

    /// Each through [`CatalogStore::create_resource`] (one whose id or name is taken is left
    /// as it is), then the stored records of every id asked for.
    async fn insert_resources_if_absent(
        &self,
        records: Vec<ResourceRecord>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        let ids: Vec<String> = records.iter().map(|record| record.id.clone()).collect();
        for record in records {
            self.create_resource(record).await?;
        }
        self.resources_current(ids, None).await
    }
}
