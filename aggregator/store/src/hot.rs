//! The hot tier (`--redis-url`): the last hour of minute counts in Redis, in front of
//! PostgreSQL. Redis is a cache: a merge is acknowledged once PostgreSQL committed it, whatever
//! Redis does, and the hot tier can always be rebuilt from PostgreSQL. Several aggregators share
//! one tier (one `--redis-prefix`), and it stays exact.
//!
//! Keys. Every key starts with the prefix in braces, `{hitcount}`: a Redis Cluster hash tag, so
//! the whole tier is in one slot and every script and pipeline stays on one node (on a cluster
//! the tier lives on the node of that slot; other deployments can use other slots). Per
//! (resource, minute) two keys of the current *generation*:
//! `{prefix}:g{generation}:h:{resource}:{minute_ms}` (INCRBY of the hits) and
//! `...:s:{resource}:{minute_ms}` (RPUSH of the group's sketch, encoded by us), both expiring an
//! hour after their minute. Sketches are merged here, in Rust, when a query reads them: no bytes
//! from an edge ever reach a Redis HyperLogLog command (crafted HLL strings have corrupted Redis
//! memory, CVE-2025-32023), and concurrent merges cannot lose each other's visitors because
//! appending commutes. `{prefix}:epoch` names the current generation and the PostgreSQL snapshot
//! it was rebuilt from (`{generation}|{xmin:xmax:in-progress}`), or says a rebuild is under way
//! (`rebuilding|{owner}|{deadline_ms}`).
//!
//! Writes. A merge's cells are written after its commit by a script that applies them only if
//! the epoch is still the one this process knows (and its lease is alive): all or nothing, in
//! Redis's one thread. A rebuild first marks the epoch `rebuilding`, then reads PostgreSQL in one
//! snapshot, writes a new generation and publishes it. So a write accepted under the old epoch
//! came before the mark, its commit before the snapshot: the new generation has it. A write
//! refused because the epoch changed is settled by the merge's transaction id: if the new
//! epoch's snapshot sees that transaction, the rebuild counted it; if not, the write is made
//! again in the new generation. A write refused during a rebuild waits (bounded) for the new
//! epoch. A write whose outcome is unknown (a timeout: it may have been applied) cannot be
//! repeated; this process then starts a rebuild, whose snapshot sees the merge.
//!
//! Cosmos DB. There are no transaction snapshots; instead each batch is named by its inbox
//! document, and the tier applies each document once: a write sets a key per document of its
//! generation (`...:d:{document}`, `SET NX`) and adds a document's cells only if it set the key,
//! in the same script. A rebuild reads every batch of the hour from the inbox (folded rows keep
//! their cells for that long) and sets the keys of the documents it read. So a write refused by
//! a new epoch is simply written again in the new generation: what the rebuild counted is
//! skipped, document by document, whichever way a batch written during the rebuild's read fell.
//!
//! Membership. Every aggregator holds a lease key renewed each second and is listed in
//! `{prefix}:members`. One that dies between a commit and its Redis write leaves a merge the tier
//! lacks; its lease expires within [`HOT_LEASE_MS`] and whoever notices rebuilds (and removes
//! it). A starting aggregator rebuilds too, since it may be the restart of one that was killed.
//! Until then answers can miss that one group; this is the bound, documented in README.md.
//!
//! Reads. The tier answers queries only while this process knows the current epoch and has no
//! write waiting; otherwise queries go to PostgreSQL. Every read checks the epoch in the same
//! round trip, so a Redis that restarted empty or was flushed is noticed at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch};
use redis::aio::ConnectionManager;

use crate::breaker::DatabaseBreaker;
use crate::contract::DurableStore;
use crate::records::{
    ApplyOutcome, CountCell, GroupCommit, MergeBatch, MinuteCells, StoreError, Tier,
};
use crate::snapshot::TransactionSnapshot;

mod held;

pub use held::HOT_HELD_BYTES_MAX;
use held::{HeldMinute, HeldMinutes};

/// How far back the hot tier holds minutes.
pub const HOT_WINDOW_MS: u64 = 60 * MINUTE_MS;

/// The first minute a read at `now_ms` takes from the hot tier: whole minutes only, so the hot
/// part starts at a minute boundary inside its window.
pub fn hot_start_ms(now_ms: u64) -> u64 {
    (now_ms.saturating_sub(HOT_WINDOW_MS) / MINUTE_MS + 1) * MINUTE_MS
}

/// The cells a read found, and whether they are only the hot tier's: the durable store was
/// unavailable, so buckets before the last [`HOT_WINDOW_MS`] are missing (graceful degradation
/// while PostgreSQL is down; the hot tier holds every minute acknowledged until then).
#[derive(Debug, Clone, Default)]
pub struct CellsRead {
    pub cells: Vec<CountCell>,
    pub stale: bool,
}

impl CellsRead {
    /// Cells the durable store answered (with the hot tier's, if any).
    pub fn fresh(cells: Vec<CountCell>) -> Self {
        Self {
            cells,
            stale: false,
        }
    }
}
/// Keys outlive their window by this much, so a query at the window's edge finds them.
const EXPIRY_MARGIN_MS: u64 = 5 * MINUTE_MS;
/// How far back a rebuild reads minutes: the window and the keys' margin.
pub const HOT_REBUILD_SPAN_MS: u64 = HOT_WINDOW_MS + EXPIRY_MARGIN_MS;
/// A Redis call taking longer than this counts as a failure (a paused or overloaded Redis must
/// not hold up ingest or queries).
pub const HOT_OPERATION_TIMEOUT_MS: u64 = 250;
/// A rebuild may take this long; past it another aggregator may take the rebuild over.
pub const HOT_REBUILD_TIMEOUT_MS: u64 = 30_000;
/// An aggregator's lease: renewed every second, so this is how long a dead one goes unnoticed.
pub const HOT_LEASE_MS: u64 = 3_000;
/// Cells written per script call: one call holds Redis's thread for its whole length.
const WRITE_CELLS_MAX: usize = 2_000;
/// Cells of refused writes kept for the next epoch; past this they are dropped and a rebuild
/// (whose snapshot sees them) is started instead.
pub const HOT_WAITING_CELLS_MAX: usize = 1_000_000;
/// Keys written per command when a rebuild runs.
const REBUILD_KEYS_MAX: usize = 1_000;
/// How long a deleted resource's new incarnation name is kept: past every minute a reader may
/// have held under the old one (`held.rs`), which is at most the hot window old when read.
const INCARNATION_KEPT_MS: u64 = 2 * HOT_REBUILD_SPAN_MS;
/// Lease members, generations and incarnations are named by 64 random bits: two aggregators
/// never pick the same.
const RANDOM_NAME_BYTES: usize = 8;

/// What both write scripts begin with: the epoch and lease checks, and `add_cell`, which adds
/// one cell's hits and sketch (a key's expiry is a function of its minute: set only when the key
/// is new).
macro_rules! write_script_prelude {
    () => {
        r"
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return {0, current} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {2, current} end
local function add_cell(key, argument)
  if redis.call('INCRBY', KEYS[key], ARGV[argument]) == tonumber(ARGV[argument]) then
    redis.call('EXPIREAT', KEYS[key], ARGV[argument + 1])
  end
  if #ARGV[argument + 2] > 0 then
    if redis.call('RPUSH', KEYS[key + 1], ARGV[argument + 2]) == 1 then
      redis.call('EXPIREAT', KEYS[key + 1], ARGV[argument + 1])
    end
  end
end
"
    };
}

/// Applies one merge's cells if the epoch is the expected one and the writer's lease is alive.
/// KEYS: epoch, lease, then per cell its hits key and sketch key. ARGV: the expected epoch, then
/// per cell hits, expiry (Unix seconds), sketch bytes (empty for none). Returns {status, epoch}:
/// 1 applied, 0 the epoch differs, 2 the lease is gone.
const WRITE_SCRIPT: &str = concat!(
    write_script_prelude!(),
    r"
local argument = 2
for key = 3, #KEYS, 2 do
  add_cell(key, argument)
  argument = argument + 3
end
return {1, current}
"
);

/// [`WRITE_SCRIPT`] for writes named by documents (Cosmos DB): each document's cells are added
/// only if its key was not set in this generation. KEYS: epoch, lease, then per document its key
/// followed by its cells' hits and sketch keys. ARGV: the expected epoch, then per document its
/// number of cells and its key's expiry (Unix seconds) followed by each cell's hits, expiry and
/// sketch bytes. Returns as [`WRITE_SCRIPT`] does.
const DOCUMENT_WRITE_SCRIPT: &str = concat!(
    write_script_prelude!(),
    r"
local key = 3
local argument = 2
while key <= #KEYS do
  local cells = tonumber(ARGV[argument])
  local fresh = redis.call('SET', KEYS[key], 1, 'NX', 'EXAT', ARGV[argument + 1])
  key = key + 1
  argument = argument + 2
  for _ = 1, cells do
    if fresh then add_cell(key, argument) end
    key = key + 2
    argument = argument + 3
  end
end
return {1, current}
"
);

/// Deletes a resource's hot keys (`KEYS[2..]`) and names its new incarnation (`KEYS[1]`, set
/// to `ARGV[1]` for `ARGV[2]` ms) at once: a reader never finds one without the other.
const FORGET_SCRIPT: &str = r"
for index = 2, #KEYS do redis.call('DEL', KEYS[index]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Sets the epoch to ARGV[2] if it is ARGV[1] (empty: absent). Returns {1, old} or {0, current}.
const SWAP_EPOCH_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return {0, current} end
redis.call('SET', KEYS[1], ARGV[2])
return {1, current}
";

/// One merge's cells: (resource, minute ms) to hits and visitors.
type Cells = BTreeMap<(String, u64), (u64, Sketch)>;

/// A committed merge whose Redis write is not settled yet.
#[derive(Debug)]
enum Waiting {
    /// PostgreSQL: the merge's cells, named by its transaction.
    Transaction { transaction: u64, cells: Cells },
    /// Cosmos DB: each applied batch's cells, named by its inbox document.
    Documents(Vec<(String, Cells)>),
}

impl Waiting {
    fn cells(&self) -> usize {
        match self {
            Self::Transaction { cells, .. } => cells.len(),
            Self::Documents(documents) => documents.iter().map(|(_, cells)| cells.len()).sum(),
        }
    }

    /// Whether the rebuild whose snapshot is `snapshot` counted this write. Never said of
    /// documents: Redis itself skips those a rebuild counted.
    fn seen_by(&self, snapshot: Option<&TransactionSnapshot>) -> bool {
        match self {
            Self::Transaction { transaction, .. } => {
                snapshot.is_some_and(|snapshot| snapshot.sees(*transaction))
            }
            Self::Documents(_) => false,
        }
    }
}

/// What the epoch key says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Epoch {
    Absent,
    Rebuilding {
        deadline_ms: u64,
    },
    Current {
        generation: String,
        snapshot: Option<TransactionSnapshot>,
    },
}

impl Epoch {
    fn parse(value: &str) -> Self {
        let mut parts = value.split('|');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(""), None, None) | (None, _, _) => Self::Absent,
            (Some("rebuilding"), Some(_owner), Some(deadline)) => Self::Rebuilding {
                deadline_ms: deadline.parse().unwrap_or(0),
            },
            (Some(generation), Some(snapshot), None) => Self::Current {
                generation: generation.to_owned(),
                snapshot: TransactionSnapshot::parse(snapshot),
            },
            // Something this version does not write: treat it as lost and rebuild.
            _ => Self::Absent,
        }
    }
}

/// This process's view of the tier.
#[derive(Debug, Default)]
struct Attachment {
    /// The epoch value writes and reads expect (empty until the first one is learnt).
    epoch: String,
    generation: String,
    /// Refused writes waiting for the next epoch, oldest first.
    waiting: VecDeque<Waiting>,
    waiting_cells: usize,
    /// A write's outcome is unknown, or the tier was found lost: rebuild before serving.
    rebuild_needed: bool,
}

pub struct HotTier {
    connection: HotConnection,
    /// `{prefix}`, braces included: a Redis Cluster hash tag, so that every key of the tier is
    /// in one slot and each script and pipeline stays on one node.
    tag: String,
    prefix: String,
    /// This process's member id (random per start).
    member: String,
    /// Queries may be served from Redis (see the module documentation).
    healthy: AtomicBool,
    /// Whether reads that may be stale skip the durable store (`breaker.rs`).
    database: DatabaseBreaker,
    attachment: Mutex<Attachment>,
    rebuilds: AtomicU64,
    /// This process's merges hold the read side from before their commit until their write is
    /// settled; its rebuilds hold the write side. So no merge of this process commits while its
    /// own rebuild reads PostgreSQL: exact even where one snapshot does not cover every shard
    /// (Citus), which the transaction-id rule below needs (see README.md, Citus).
    order: tokio::sync::RwLock<()>,
    write_script: redis::Script,
    document_write_script: redis::Script,
    swap_epoch_script: redis::Script,
    forget_script: redis::Script,
    held: HeldMinutes,
}

impl std::fmt::Debug for HotTier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HotTier")
            .field("prefix", &self.prefix)
            .field("member", &self.member)
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

async fn within<T>(
    limit_ms: u64,
    work: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_millis(limit_ms), work).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!("no answer within {limit_ms} ms")),
    }
}

/// One minute of a read: its minute, what was held of it, its hits, its list's length and the
/// fragments read after what was held.
type ReadList = (u64, Option<HeldMinute>, u64, usize, Vec<Vec<u8>>);

/// The next value of a pipeline's answer, decoded.
fn next_value<T: redis::FromRedisValue>(
    values: &mut impl Iterator<Item = redis::Value>,
) -> Result<T, String> {
    let value = values
        .next()
        .ok_or("the hot tier's answer is shorter than its pipeline")?;
    redis::from_redis_value(value).map_err(|error| error.to_string())
}

fn add_entry(cells: &mut Cells, entry: DeltaEntry) {
    let cell = cells
        .entry((entry.resource_id, entry.minute * MINUTE_MS))
        .or_default();
    cell.0 += entry.hits;
    cell.1.merge(&entry.visitors);
}

/// Consecutive documents in calls of at most [`WRITE_CELLS_MAX`] cells (a document larger than
/// that, up to a batch's entries, in a call of its own): each call is applied whole.
fn document_chunks(documents: &[(String, Cells)]) -> Vec<&[(String, Cells)]> {
    let mut chunks = Vec::new();
    let (mut first, mut cells) = (0, 0);
    for (index, (_, document_cells)) in documents.iter().enumerate() {
        if index > first && cells + document_cells.len() > WRITE_CELLS_MAX {
            chunks.push(&documents[first..index]);
            (first, cells) = (index, 0);
        }
        cells += document_cells.len();
    }
    if first < documents.len() {
        chunks.push(&documents[first..]);
    }
    chunks
}

fn expire_at_s(minute_ms: u64) -> u64 {
    (minute_ms + HOT_WINDOW_MS + EXPIRY_MARGIN_MS) / 1_000
}

impl HotTier {
    /// Prepares the connection without waiting for Redis: the aggregator starts (on PostgreSQL
    /// alone) even when Redis is down. The tier is unusable until this process has rebuilt it
    /// once ([`HotTier::maintain`], within a second of Redis answering).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|error| StoreError::Unavailable(format!("redis: {error}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(HOT_OPERATION_TIMEOUT_MS * 4)))
            .set_response_timeout(Some(Duration::from_millis(HOT_OPERATION_TIMEOUT_MS)))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| StoreError::Unavailable(format!("redis: {error}")))?;
        Ok(Self::with_connection(
            HotConnection::Single(connection),
            prefix,
        ))
    }

    /// The tier on a Redis Cluster reached through any of `urls` (seed nodes). The connection is
    /// made on first use, so the aggregator starts while the cluster is down too.
    pub async fn connect_cluster(urls: &[String], prefix: &str) -> Result<Self, StoreError> {
        let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(Duration::from_millis(HOT_OPERATION_TIMEOUT_MS * 4))
            .response_timeout(Duration::from_millis(HOT_OPERATION_TIMEOUT_MS))
            .retries(1)
            .build()
            .map_err(|error| StoreError::Unavailable(format!("redis cluster: {error}")))?;
        Ok(Self::with_connection(
            HotConnection::Cluster {
                client: Box::new(client),
                connection: std::sync::Arc::new(tokio::sync::OnceCell::new()),
            },
            prefix,
        ))
    }

    fn with_connection(connection: HotConnection, prefix: &str) -> Self {
        Self {
            connection,
            tag: format!("{{{prefix}}}"),
            prefix: prefix.to_owned(),
            member: crate::random_hex(RANDOM_NAME_BYTES),
            healthy: AtomicBool::new(false),
            database: DatabaseBreaker::default(),
            attachment: Mutex::new(Attachment {
                // It may be the restart of an aggregator killed between a commit and its write.
                rebuild_needed: true,
                ..Attachment::default()
            }),
            rebuilds: AtomicU64::new(0),
            order: tokio::sync::RwLock::new(()),
            write_script: redis::Script::new(WRITE_SCRIPT),
            document_write_script: redis::Script::new(DOCUMENT_WRITE_SCRIPT),
            swap_epoch_script: redis::Script::new(SWAP_EPOCH_SCRIPT),
            forget_script: redis::Script::new(FORGET_SCRIPT),
            held: HeldMinutes::default(),
        }
    }

    async fn connected(&self) -> Result<Connected, String> {
        match &self.connection {
            HotConnection::Single(connection) => Ok(Connected::Single(connection.clone())),
            HotConnection::Cluster { client, connection } => {
                let connection = within(
                    HOT_OPERATION_TIMEOUT_MS * 4,
                    connection.get_or_try_init(|| client.get_async_connection()),
                )
                .await?;
                Ok(Connected::Cluster(connection.clone()))
            }
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn attachment(&self) -> std::sync::MutexGuard<'_, Attachment> {
        self.attachment
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn hits_key(&self, generation: &str, resource_id: &str, minute_ms: u64) -> String {
        debug_assert!(
            minute_ms.is_multiple_of(MINUTE_MS),
            "hot keys name minutes: {minute_ms} is not minute-aligned"
        );
        format!("{}:g{generation}:h:{resource_id}:{minute_ms}", self.tag)
    }

    fn sketch_key(&self, generation: &str, resource_id: &str, minute_ms: u64) -> String {
        format!("{}:g{generation}:s:{resource_id}:{minute_ms}", self.tag)
    }

    /// Names the resource's lists since it was last deleted (`held.rs`); absent until then.
    fn incarnation_key(&self, generation: &str, resource_id: &str) -> String {
        format!("{}:g{generation}:i:{resource_id}", self.tag)
    }

    fn document_key(&self, generation: &str, document: &str) -> String {
        format!("{}:g{generation}:d:{document}", self.tag)
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.tag)
    }

    fn members_key(&self) -> String {
        format!("{}:members", self.tag)
    }

    fn lease_key(&self, member: &str) -> String {
        format!("{}:lease:{member}", self.tag)
    }

    /// Stops serving queries from Redis until the tier is settled again; with `rebuild`, the
    /// next maintenance rebuilds it.
    fn degrade(&self, why: &str, rebuild: bool) {
        if rebuild {
            let mut attachment = self.attachment();
            attachment.rebuild_needed = true;
            attachment.waiting.clear();
            attachment.waiting_cells = 0;
        }
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                reason = why,
                "the hot tier is unusable; queries use PostgreSQL until it is settled"
            );
            metrics::counter!("hitcount_hot_tier_failures_total").increment(1);
        } else {
            // Still unusable (or never was usable): said once above, repeated only at debug.
            tracing::debug!(reason = why, "the hot tier is still unusable");
        }
    }

    /// Merges a group into the backend, then (if that committed) the group's recent applied
    /// entries into Redis, one write per distinct cell.
    pub async fn apply_through(
        &self,
        backend: &dyn DurableStore,
        batches: Vec<MergeBatch>,
        now_ms: u64,
    ) -> Result<GroupCommit, StoreError> {
        let hot_start = now_ms.saturating_sub(HOT_WINDOW_MS);
        let batches_in_group = batches.len();
        let recent: Vec<(usize, DeltaEntry)> = batches
            .iter()
            .enumerate()
            .flat_map(|(index, batch)| {
                batch
                    .entries
                    .iter()
                    .filter(|entry| entry.minute * MINUTE_MS >= hot_start)
                    .map(move |entry| (index, entry.clone()))
            })
            .collect();
        let _order = self.order.read().await;
        let committed = match backend.apply_group(batches, now_ms).await {
            Ok(committed) => {
                self.database.close();
                committed
            }
            Err(error) => {
                if matches!(error, StoreError::Unavailable(_)) {
                    self.database.open(now_ms);
                }
                return Err(error);
            }
        };
        assert_eq!(
            committed.outcomes.len(),
            batches_in_group,
            "a group commit answers each of its batches once: outcomes are indexed by batch"
        );
        let applied = |index: usize| matches!(committed.outcomes[index], ApplyOutcome::Applied(_));
        let recent = recent.into_iter().filter(|(index, _)| applied(*index));
        let write = if committed.documents.is_empty() {
            let mut cells = Cells::new();
            for (_, entry) in recent {
                add_entry(&mut cells, entry);
            }
            committed
                .transaction
                .filter(|_| !cells.is_empty())
                .map(|transaction| Waiting::Transaction { transaction, cells })
        } else {
            assert_eq!(
                committed.documents.len(),
                batches_in_group,
                "documents are indexed by batch, as outcomes are"
            );
            let mut documents: BTreeMap<usize, (String, Cells)> = BTreeMap::new();
            for (index, entry) in recent {
                let Some(document) = &committed.documents[index] else {
                    continue;
                };
                let (_, cells) = documents
                    .entry(index)
                    .or_insert_with(|| (document.clone(), Cells::new()));
                add_entry(cells, entry);
            }
            (!documents.is_empty()).then(|| Waiting::Documents(documents.into_values().collect()))
        };
        if let Some(write) = write {
            self.settle(write).await;
        }
        Ok(committed)
    }

    /// Writes a committed merge's cells under the epoch this process knows, or settles a refusal
    /// (see the module documentation).
    async fn settle(&self, write: Waiting) {
        // Each refusal names a newer epoch; a few in a row mean rebuilds are racing this write.
        for _ in 0..3 {
            let (epoch, generation) = {
                let attachment = self.attachment();
                if attachment.rebuild_needed {
                    // The coming rebuild's snapshot is later than this commit: it counts it.
                    return;
                }
                (attachment.epoch.clone(), attachment.generation.clone())
            };
            match self.write(&epoch, &generation, &write).await {
                Ok(Written::Applied) => return,
                Ok(Written::EpochChanged(current)) => match Epoch::parse(&current) {
                    Epoch::Current {
                        generation,
                        snapshot,
                    } => {
                        if write.seen_by(snapshot.as_ref()) {
                            // The rebuild read this merge: adopt its epoch, nothing to write.
                            self.adopt(&current, &generation);
                            return;
                        }
                        self.adopt(&current, &generation);
                    }
                    Epoch::Rebuilding { .. } => {
                        self.wait(write);
                        return;
                    }
                    Epoch::Absent => {
                        self.degrade("Redis lost the hot tier (restarted or flushed)", true);
                        return;
                    }
                },
                Err(reason) => {
                    self.degrade(&reason, true);
                    return;
                }
            }
            // Around again: all of the write goes to the new generation, chunks an older one
            // took included (they are not in the new one).
        }
        self.degrade("rebuilds kept replacing the epoch during a write", true);
    }

    /// Takes a newer epoch as this process's own. Called only when none of this process's
    /// writes accepted under the old one can be missing from it (they came before its rebuild
    /// began), and before the refused write in hand is settled.
    fn adopt(&self, epoch: &str, generation: &str) {
        debug_assert!(
            matches!(
                Epoch::parse(epoch),
                Epoch::Current { generation: ref named, .. } if named == generation
            ),
            "an adopted generation is the one its epoch names"
        );
        let mut attachment = self.attachment();
        if attachment.epoch != epoch {
            attachment.epoch = epoch.to_owned();
            attachment.generation = generation.to_owned();
            self.healthy.store(false, Ordering::Release);
        }
    }

    fn wait(&self, write: Waiting) {
        let mut attachment = self.attachment();
        attachment.waiting_cells += write.cells();
        attachment.waiting.push_back(write);
        debug_assert_eq!(
            attachment.waiting_cells,
            attachment.waiting.iter().map(Waiting::cells).sum::<usize>(),
            "waiting_cells counts the cells of every write waiting for a rebuild"
        );
        self.healthy.store(false, Ordering::Release);
        if attachment.waiting_cells > HOT_WAITING_CELLS_MAX {
            drop(attachment);
            self.degrade("too many writes waiting for a rebuild", true);
        }
    }

    async fn write(
        &self,
        epoch: &str,
        generation: &str,
        write: &Waiting,
    ) -> Result<Written, String> {
        match write {
            Waiting::Transaction { cells, .. } => {
                let cells: Vec<_> = cells.iter().collect();
                for chunk in cells.chunks(WRITE_CELLS_MAX) {
                    let mut invocation = self.write_script.prepare_invoke();
                    invocation
                        .key(self.epoch_key())
                        .key(self.lease_key(&self.member))
                        .arg(epoch);
                    for (cell, counts) in chunk {
                        self.add_cell(&mut invocation, generation, cell, counts);
                    }
                    if let Some(current) = self.invoke_write(&invocation).await? {
                        return Ok(Written::EpochChanged(current));
                    }
                }
            }
            Waiting::Documents(documents) => {
                for chunk in document_chunks(documents) {
                    let mut invocation = self.document_write_script.prepare_invoke();
                    invocation
                        .key(self.epoch_key())
                        .key(self.lease_key(&self.member))
                        .arg(epoch);
                    for (document, cells) in chunk {
                        // The key lives as long as the document's latest cell.
                        let expire_at = cells
                            .keys()
                            .map(|(_, minute_ms)| expire_at_s(*minute_ms))
                            .max()
                            .unwrap_or(0);
                        invocation
                            .key(self.document_key(generation, document))
                            .arg(cells.len())
                            .arg(expire_at);
                        for (cell, counts) in cells {
                            self.add_cell(&mut invocation, generation, cell, counts);
                        }
                    }
                    if let Some(current) = self.invoke_write(&invocation).await? {
                        return Ok(Written::EpochChanged(current));
                    }
                }
            }
        }
        Ok(Written::Applied)
    }

    /// A cell's two keys and three arguments, as both write scripts take them.
    fn add_cell(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        generation: &str,
        (resource_id, minute_ms): &(String, u64),
        (hits, visitors): &(u64, Sketch),
    ) {
        invocation
            .key(self.hits_key(generation, resource_id, *minute_ms))
            .key(self.sketch_key(generation, resource_id, *minute_ms))
            .arg(*hits)
            .arg(expire_at_s(*minute_ms))
            .arg(if visitors.is_empty() {
                Vec::new()
            } else {
                visitors.to_bytes()
            });
    }

    /// Runs one write script call: `None` when applied, the epoch found when it changed.
    async fn invoke_write(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Option<String>, String> {
        // A lease lost (this process paused past it) is taken again and the same call retried
        // once: the calls before it were applied in this epoch and must not be sent again.
        let mut lease_renewed = false;
        loop {
            let mut connection = self.connected().await?;
            let (status, current): (i64, String) = within(
                HOT_OPERATION_TIMEOUT_MS,
                invocation.invoke_async(&mut connection),
            )
            .await?;
            match status {
                1 => return Ok(None),
                2 if !lease_renewed => {
                    self.renew_lease().await?;
                    lease_renewed = true;
                }
                2 => return Err("the hot tier lease could not be kept".to_owned()),
                _ => return Ok(Some(current)),
            }
        }
    }

    /// Whether reads skip the backend at `now_ms`: it was found unavailable moments ago, so a
    /// read allowed to be stale answers from the hot tier alone without waiting for it.
    pub fn skips_database(&self, now_ms: u64) -> bool {
        self.database.skips(now_ms)
    }

    /// The database answered unavailable at `now_ms` to a read made beside the hot tier (one of
    /// many resources): stale-allowed reads skip it for a while, as after [`HotTier::cells`].
    pub fn database_unavailable(&self, now_ms: u64) {
        self.database.open(now_ms);
    }

    /// The database answered a read made beside the hot tier.
    pub fn database_answered(&self) {
        self.database.close();
    }

    /// The minute cells of `[start_ms, end_ms)` that the hot tier holds (the last hour of the
    /// window), alone: what a stale read answers while the database is down. Counted as
    /// `served="redis_only"`, as [`HotTier::cells`] counts its stale answers.
    pub async fn cells_alone(
        &self,
        resource_id: &str,
        (start_ms, end_ms): (u64, u64),
        now_ms: u64,
    ) -> Result<Vec<CountCell>, StoreError> {
        if !self.is_healthy() {
            return Err(StoreError::Unavailable(
                "the database and the hot tier are both unavailable".to_owned(),
            ));
        }
        let split = start_ms.max(hot_start_ms(now_ms));
        if split >= end_ms {
            return Ok(Vec::new());
        }
        match self.read(resource_id, split, end_ms).await {
            Ok(cells) => {
                metrics::counter!("hitcount_hot_tier_reads_total", "served" => "redis_only")
                    .increment(1);
                Ok(cells)
            }
            Err(reason) => {
                self.degrade(&reason, false);
                Err(StoreError::Unavailable(reason))
            }
        }
    }

    /// Minute cells of the last hour from Redis, older ones and other tiers from the backend.
    /// With `stale_allowed`, a window that reaches into the hot tier is still answered when the
    /// backend is unavailable: from the hot tier alone, marked stale.
    #[allow(clippy::too_many_arguments)]
    pub async fn cells(
        &self,
        backend: &dyn DurableStore,
        resource_id: String,
        tier: Tier,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
        stale_allowed: bool,
    ) -> Result<CellsRead, StoreError> {
        let hot_start = hot_start_ms(now_ms);
        if tier != Tier::Minute || end_ms <= hot_start || !self.is_healthy() {
            metrics::counter!("hitcount_hot_tier_reads_total", "served" => "database").increment(1);
            return backend
                .cells(resource_id, tier, start_ms, end_ms, now_ms)
                .await
                .map(CellsRead::fresh);
        }
        let split = start_ms.max(hot_start);
        match self.read(&resource_id, split, end_ms).await {
            Ok(hot) => {
                let mut stale = false;
                let mut cells = if start_ms >= split {
                    Vec::new()
                } else if stale_allowed && self.database.skips(now_ms) {
                    stale = true;
                    Vec::new()
                } else {
                    match backend
                        .cells(resource_id, tier, start_ms, split, now_ms)
                        .await
                    {
                        Ok(cells) => {
                            self.database.close();
                            cells
                        }
                        Err(StoreError::Unavailable(reason)) if stale_allowed => {
                            // Debug, not warn: the breaker warns once when it opens.
                            tracing::debug!(%reason, "the database is unavailable: answering from the hot tier alone, marked stale");
                            self.database.open(now_ms);
                            stale = true;
                            Vec::new()
                        }
                        Err(error) => return Err(error),
                    }
                };
                if stale {
                    // `served="redis_only"` counts every answer from the hot tier alone.
                    metrics::counter!("hitcount_hot_tier_reads_total", "served" => "redis_only")
                        .increment(1);
                }
                cells.extend(hot);
                debug_assert!(
                    cells
                        .windows(2)
                        .all(|pair| pair[0].bucket_ms < pair[1].bucket_ms),
                    "the database's minutes end where Redis's begin: cells stay sorted by bucket"
                );
                if !stale {
                    metrics::counter!("hitcount_hot_tier_reads_total", "served" => "redis")
                        .increment(1);
                }
                Ok(CellsRead { cells, stale })
            }
            Err(reason) => {
                self.degrade(&reason, false);
                metrics::counter!("hitcount_hot_tier_reads_total", "served" => "database")
                    .increment(1);
                backend
                    .cells(resource_id, tier, start_ms, end_ms, now_ms)
                    .await
                    .map(CellsRead::fresh)
            }
        }
    }

    /// The minute cells of `[start_ms, end_ms)`, each minute's sketch merged from the fragments
    /// appended since this process last read it (`held.rs`); read whole again if one it held
    /// is not there as held.
    async fn read(
        &self,
        resource_id: &str,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<CountCell>, String> {
        match self
            .read_from_held(resource_id, start_ms, end_ms, true)
            .await?
        {
            Some(cells) => Ok(cells),
            None => self
                .read_from_held(resource_id, start_ms, end_ms, false)
                .await?
                .ok_or_else(|| "a read that held nothing found a held minute".to_owned()),
        }
    }

    /// One round trip: the epoch, the resource's incarnation before and after the lists, and
    /// each minute's hits, list length and fragments from the first not held. `None` if a held
    /// minute is not there as held (the resource was deleted, or the list or the hits shrank):
    /// those are dropped, and the caller reads again `with_held: false`.
    async fn read_from_held(
        &self,
        resource_id: &str,
        start_ms: u64,
        end_ms: u64,
        with_held: bool,
    ) -> Result<Option<Vec<CountCell>>, String> {
        let (epoch, generation) = {
            let attachment = self.attachment();
            (attachment.epoch.clone(), attachment.generation.clone())
        };
        let first = start_ms.div_ceil(MINUTE_MS) * MINUTE_MS;
        let minutes: Vec<(u64, Option<HeldMinute>)> = (first..end_ms)
            .step_by(MINUTE_MS as usize)
            .map(|minute_ms| {
                let held = with_held
                    .then(|| self.held.get(resource_id, minute_ms, &generation))
                    .flatten();
                (minute_ms, held)
            })
            .collect();
        let incarnation_key = self.incarnation_key(&generation, resource_id);
        let mut pipeline = redis::pipe();
        pipeline.get(self.epoch_key()).get(&incarnation_key);
        for (minute_ms, held) in &minutes {
            let sketch_key = self.sketch_key(&generation, resource_id, *minute_ms);
            let from = held.as_ref().map_or(0, |held| held.fragments);
            pipeline
                .get(self.hits_key(&generation, resource_id, *minute_ms))
                .llen(&sketch_key)
                .lrange(&sketch_key, from as isize, -1);
        }
        pipeline.get(&incarnation_key);
        let mut connection = self.connected().await?;
        let values: Vec<redis::Value> = within(
            HOT_OPERATION_TIMEOUT_MS,
            pipeline.query_async(&mut connection),
        )
        .await?;
        let mut values = values.into_iter();
        let current: Option<String> = next_value(&mut values)?;
        if current.as_deref() != Some(epoch.as_str()) {
            return Err("the hot tier's epoch changed (rebuilt, restarted or flushed)".to_owned());
        }
        let before: Option<String> = next_value(&mut values)?;
        let mut lists = Vec::with_capacity(minutes.len());
        for (minute_ms, held) in minutes {
            let hits: Option<u64> = next_value(&mut values)?;
            let length: usize = next_value(&mut values)?;
            let fragments: Vec<Vec<u8>> = next_value(&mut values)?;
            lists.push((minute_ms, held, hits.unwrap_or(0), length, fragments));
        }
        let after: Option<String> = next_value(&mut values)?;
        // A deletion between the two (`held.rs`): nothing read now is held.
        let incarnation = (before == after).then(|| before.unwrap_or_default());
        let mut stale = false;
        for (minute_ms, held, hits, length, _) in &lists {
            if let Some(held) = held
                && !held.is_there(incarnation.as_deref(), *hits, *length)
            {
                self.held.forget(resource_id, *minute_ms);
                stale = true;
            }
        }
        if stale {
            return Ok(None);
        }
        self.merge_lists(resource_id, &generation, incarnation, lists)
            .map(Some)
    }

    /// The cells of a read's minutes: each held sketch (if any) with the fragments read after
    /// it; each held again as merged, when the read's incarnation is known.
    fn merge_lists(
        &self,
        resource_id: &str,
        generation: &str,
        incarnation: Option<String>,
        lists: Vec<ReadList>,
    ) -> Result<Vec<CountCell>, String> {
        let mut cells = Vec::new();
        let mut served = [0_u64; 2];
        for (minute_ms, held, hits, _, fragments) in lists {
            if hits == 0 {
                self.held.forget(resource_id, minute_ms);
                continue;
            }
            // A held minute with nothing appended stays held as it is: its hits may have grown
            // (a write with no visitors appends no fragment), and a smaller held count still
            // tells a shrunk list.
            let unchanged = held.is_some() && fragments.is_empty();
            let (mut visitors, held_fragments) = held.map_or_else(
                || (Sketch::new(), 0),
                |held| (held.visitors, held.fragments),
            );
            for fragment in &fragments {
                let sketch = Sketch::from_bytes(fragment)
                    .map_err(|error| format!("a hot sketch is corrupt: {error}"))?;
                visitors.merge(&sketch);
            }
            served[0] += held_fragments as u64;
            served[1] += fragments.len() as u64;
            if let Some(incarnation) = incarnation.as_ref().filter(|_| !unchanged) {
                let held = HeldMinute {
                    generation: generation.to_owned(),
                    incarnation: incarnation.clone(),
                    hits,
                    fragments: held_fragments + fragments.len(),
                    visitors: visitors.clone(),
                };
                self.held.hold(resource_id, minute_ms, held);
            }
            cells.push(CountCell {
                bucket_ms: minute_ms,
                hits,
                visitors,
            });
        }
        metrics::counter!("hitcount_hot_fragments_read_total", "served" => "memory")
            .increment(served[0]);
        metrics::counter!("hitcount_hot_fragments_read_total", "served" => "redis")
            .increment(served[1]);
        Ok(cells)
    }

    /// A deleted resource's hot keys go with it (those of the current generation: no other is
    /// read again), and it gets a new incarnation (`held.rs`), both in one script: if it
    /// cannot run now the tier is rebuilt (without them) instead.
    pub async fn forget_resource(&self, resource_id: &str, now_ms: u64) {
        let generation = self.attachment().generation.clone();
        let now_minute_ms = now_ms / MINUTE_MS * MINUTE_MS;
        let first_ms = now_minute_ms.saturating_sub(HOT_WINDOW_MS + EXPIRY_MARGIN_MS);
        let mut invocation = self.forget_script.prepare_invoke();
        invocation
            .key(self.incarnation_key(&generation, resource_id))
            // A random name never comes back, so a held minute is never taken for one of a
            // later incarnation; the name outlives every minute read under the old one.
            .arg(crate::random_hex(RANDOM_NAME_BYTES))
            .arg(INCARNATION_KEPT_MS);
        // A minute ahead too: edges' clocks may run a little fast.
        for minute_ms in (first_ms..=now_minute_ms + MINUTE_MS).step_by(MINUTE_MS as usize) {
            invocation
                .key(self.hits_key(&generation, resource_id, minute_ms))
                .key(self.sketch_key(&generation, resource_id, minute_ms));
        }
        let forgotten = async {
            let mut connection = self.connected().await?;
            within(
                HOT_OPERATION_TIMEOUT_MS,
                invocation.invoke_async::<()>(&mut connection),
            )
            .await
        };
        if let Err(reason) = forgotten.await {
            self.degrade(&reason, true);
        }
    }

    async fn renew_lease(&self) -> Result<(), String> {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(self.lease_key(&self.member))
            .arg(1)
            .arg("PX")
            .arg(HOT_LEASE_MS)
            .ignore()
            .sadd(self.members_key(), &self.member)
            .ignore();
        let mut connection = self.connected().await?;
        within(
            HOT_OPERATION_TIMEOUT_MS,
            pipeline.query_async::<()>(&mut connection),
        )
        .await
    }

    /// Members whose lease has expired: they may have died between a commit and its write.
    async fn dead_members(&self) -> Result<Vec<String>, String> {
        let mut connection = self.connected().await?;
        let members: Vec<String> = within(
            HOT_OPERATION_TIMEOUT_MS,
            redis::cmd("SMEMBERS")
                .arg(self.members_key())
                .query_async(&mut connection),
        )
        .await?;
        let others: Vec<String> = members
            .into_iter()
            .filter(|member| *member != self.member)
            .collect();
        if others.is_empty() {
            return Ok(others);
        }
        let mut pipeline = redis::pipe();
        for member in &others {
            pipeline.exists(self.lease_key(member));
        }
        let alive: Vec<bool> = within(
            HOT_OPERATION_TIMEOUT_MS,
            pipeline.query_async(&mut connection),
        )
        .await?;
        Ok(others
            .into_iter()
            .zip(alive)
            .filter_map(|(member, alive)| (!alive).then_some(member))
            .collect())
    }

    /// Once a second: renew the lease, notice dead members and a lost tier, settle writes that
    /// waited for a rebuild, rebuild when needed. Returns whether this process rebuilt.
    pub async fn maintain(
        &self,
        backend: &dyn DurableStore,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if let Err(reason) = self.renew_lease().await {
            self.degrade(&reason, true);
            return Ok(false);
        }
        let dead = match self.dead_members().await {
            Ok(dead) => dead,
            Err(reason) => {
                self.degrade(&reason, true);
                return Ok(false);
            }
        };
        let current: Option<String> = match self.get_epoch().await {
            Ok(current) => current,
            Err(reason) => {
                self.degrade(&reason, true);
                return Ok(false);
            }
        };
        let current = current.unwrap_or_default();
        let epoch = Epoch::parse(&current);
        let rebuild_needed = self.attachment().rebuild_needed;
        match epoch {
            Epoch::Rebuilding { deadline_ms } if deadline_ms > now_ms => Ok(false),
            Epoch::Current { .. } if !rebuild_needed && dead.is_empty() => {
                self.settle_waiting(&current).await;
                Ok(false)
            }
            _ => self.rebuild(backend, &current, &dead, now_ms).await,
        }
    }

    /// Cells were written outside a merge (an import): rebuilds now, so the tier holds them.
    /// Until a rebuild whose snapshot sees them is published, this process reads the backend;
    /// if another process's rebuild is under way, the next [`Self::maintain`] rebuilds again.
    pub async fn rebuild_now(
        &self,
        backend: &dyn DurableStore,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.attachment().rebuild_needed = true;
        self.healthy.store(false, Ordering::Release);
        self.maintain(backend, now_ms).await
    }

    async fn get_epoch(&self) -> Result<Option<String>, String> {
        let mut connection = self.connected().await?;
        within(
            HOT_OPERATION_TIMEOUT_MS,
            redis::cmd("GET")
                .arg(self.epoch_key())
                .query_async(&mut connection),
        )
        .await
    }

    /// Settles the writes that waited for a rebuild against the epoch now current, then serves
    /// from Redis again if nothing is left.
    async fn settle_waiting(&self, current: &str) {
        let Epoch::Current {
            generation,
            snapshot,
        } = Epoch::parse(current)
        else {
            return;
        };
        let waiting: Vec<Waiting> = {
            let mut attachment = self.attachment();
            attachment.waiting_cells = 0;
            attachment.waiting.drain(..).collect()
        };
        self.adopt(current, &generation);
        for write in waiting {
            if !write.seen_by(snapshot.as_ref()) {
                self.settle(write).await;
            }
        }
        let attachment = self.attachment();
        if attachment.epoch == current
            && attachment.waiting.is_empty()
            && !attachment.rebuild_needed
            && !self.healthy.swap(true, Ordering::AcqRel)
        {
            tracing::info!("the hot tier serves queries");
        }
    }

    /// Marks the epoch `rebuilding`, writes a new generation from one PostgreSQL snapshot and
    /// publishes it, unless another process changed the epoch first.
    async fn rebuild(
        &self,
        backend: &dyn DurableStore,
        current: &str,
        dead: &[String],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let _order = self.order.write().await;
        let mark = format!(
            "rebuilding|{}|{}",
            self.member,
            now_ms + HOT_REBUILD_TIMEOUT_MS
        );
        debug_assert_eq!(
            Epoch::parse(&mark),
            Epoch::Rebuilding {
                deadline_ms: now_ms + HOT_REBUILD_TIMEOUT_MS
            },
            "the rebuilding mark parses back as written"
        );
        match self.swap_epoch(current, &mark).await {
            Ok(true) => {}
            // Someone else changed it first; the next tick looks again.
            Ok(false) => return Ok(false),
            Err(reason) => {
                self.degrade(&reason, true);
                return Ok(false);
            }
        }
        {
            // From here on this rebuild's snapshot sees every merge this process committed.
            let mut attachment = self.attachment();
            attachment.rebuild_needed = false;
            attachment.waiting.clear();
            attachment.waiting_cells = 0;
        }
        self.healthy.store(false, Ordering::Release);
        let minute_cells = backend
            .minute_cells_since(now_ms.saturating_sub(HOT_REBUILD_SPAN_MS))
            .await;
        let minute_cells = match minute_cells {
            Ok(cells) => cells,
            Err(error) => {
                self.attachment().rebuild_needed = true;
                return Err(error);
            }
        };
        let snapshot = minute_cells
            .snapshot
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let generation = crate::random_hex(RANDOM_NAME_BYTES);
        let published = format!("{generation}|{snapshot}");
        // Writers settle refused writes by the snapshot they parse from the published epoch.
        debug_assert_eq!(
            Epoch::parse(&published),
            Epoch::Current {
                generation: generation.clone(),
                snapshot: minute_cells.snapshot.clone()
            },
            "the published epoch parses back to its generation and snapshot"
        );
        let written = self.rewrite(&generation, &minute_cells, now_ms).await;
        let swapped = match written {
            Ok(()) => self.swap_epoch(&mark, &published).await,
            Err(reason) => Err(reason),
        };
        match swapped {
            Ok(true) => {
                tracing::info!(
                    cells = minute_cells.cells.len(),
                    "the hot tier was rebuilt from PostgreSQL"
                );
                if !dead.is_empty()
                    && let Ok(mut connection) = self.connected().await
                {
                    let _ = within(
                        HOT_OPERATION_TIMEOUT_MS,
                        redis::cmd("SREM")
                            .arg(self.members_key())
                            .arg(dead)
                            .query_async::<()>(&mut connection),
                    )
                    .await;
                }
                self.settle_waiting(&published).await;
                // Counted once the waiting writes are settled, when the tier serves again: a
                // reader that waits for this count then finds it healthy (a test read the
                // database once, counting here before the settling).
                self.rebuilds.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("hitcount_hot_tier_rebuilds_total").increment(1);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(reason) => {
                tracing::warn!(%reason, "rebuilding the hot tier failed; will retry");
                self.attachment().rebuild_needed = true;
                Ok(false)
            }
        }
    }

    async fn swap_epoch(&self, expected: &str, new: &str) -> Result<bool, String> {
        let mut invocation = self.swap_epoch_script.prepare_invoke();
        invocation.key(self.epoch_key()).arg(expected).arg(new);
        let mut connection = self.connected().await?;
        let (swapped, _current): (i64, String) = within(
            HOT_OPERATION_TIMEOUT_MS,
            invocation.invoke_async(&mut connection),
        )
        .await?;
        Ok(swapped == 1)
    }

    /// Writes a new generation: its cells, and on Cosmos DB the keys of the documents they came
    /// from, which live far longer than any write of those documents can wait to be settled.
    async fn rewrite(
        &self,
        generation: &str,
        minute_cells: &MinuteCells,
        now_ms: u64,
    ) -> Result<(), String> {
        let documents_expire_at = (now_ms + HOT_REBUILD_SPAN_MS) / 1_000;
        for chunk in minute_cells.documents.chunks(REBUILD_KEYS_MAX) {
            let mut pipeline = redis::pipe();
            for document in chunk {
                pipeline
                    .cmd("SET")
                    .arg(self.document_key(generation, document))
                    .arg(1)
                    .arg("EXAT")
                    .arg(documents_expire_at)
                    .ignore();
            }
            self.run_rebuild_pipeline(&pipeline).await?;
        }
        for chunk in minute_cells.cells.chunks(REBUILD_KEYS_MAX) {
            let mut pipeline = redis::pipe();
            for (resource_id, cell) in chunk {
                let expire_at = expire_at_s(cell.bucket_ms);
                let hits = self.hits_key(generation, resource_id, cell.bucket_ms);
                pipeline
                    .set(&hits, cell.hits)
                    .ignore()
                    .expire_at(&hits, expire_at as i64)
                    .ignore();
                if !cell.visitors.is_empty() {
                    let sketch = self.sketch_key(generation, resource_id, cell.bucket_ms);
                    pipeline
                        .rpush(&sketch, cell.visitors.to_bytes())
                        .ignore()
                        .expire_at(&sketch, expire_at as i64)
                        .ignore();
                }
            }
            self.run_rebuild_pipeline(&pipeline).await?;
        }
        Ok(())
    }

    async fn run_rebuild_pipeline(&self, pipeline: &redis::Pipeline) -> Result<(), String> {
        let mut connection = self.connected().await?;
        within(
            HOT_REBUILD_TIMEOUT_MS,
            pipeline.query_async::<()>(&mut connection),
        )
        .await
    }

    /// Leaves the membership after the last write (a clean shutdown).
    pub async fn leave(&self) {
        let mut pipeline = redis::pipe();
        pipeline
            .del(self.lease_key(&self.member))
            .ignore()
            .srem(self.members_key(), &self.member)
            .ignore();
        if let Ok(mut connection) = self.connected().await {
            let _ = within(
                HOT_OPERATION_TIMEOUT_MS,
                pipeline.query_async::<()>(&mut connection),
            )
            .await;
        }
    }

    /// Rebuilds this process ran (for tests and benchmarks).
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }
}

/// How the tier reaches Redis: one server (or a proxy in front of many), or a Redis Cluster.
#[derive(Clone)]
enum HotConnection {
    Single(ConnectionManager),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        connection: std::sync::Arc<tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>>,
    },
}

/// A connection of either kind, for one call.
enum Connected {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Plain delegation: the redis crate's commands, pipelines and scripts run on either kind.
impl redis::aio::ConnectionLike for Connected {
    fn req_packed_command<'a>(
        &'a mut self,
        command: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(command),
            Self::Cluster(connection) => connection.req_packed_command(command),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// How a write ended.
#[derive(Debug)]
enum Written {
    Applied,
    EpochChanged(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_parse_as_written() {
        assert_eq!(Epoch::parse(""), Epoch::Absent);
        assert_eq!(
            Epoch::parse("rebuilding|abc|123"),
            Epoch::Rebuilding { deadline_ms: 123 }
        );
        let Epoch::Current {
            generation,
            snapshot,
        } = Epoch::parse("f00d|10:20:12,15")
        else {
            panic!("a current epoch")
        };
        assert_eq!(generation, "f00d");
        let snapshot = snapshot.unwrap_or_else(|| panic!("a snapshot"));
        assert!(snapshot.sees(9) && snapshot.sees(13) && snapshot.sees(19));
        assert!(!snapshot.sees(12) && !snapshot.sees(15) && !snapshot.sees(20));
        assert_eq!(snapshot.to_string(), "10:20:12,15");
        assert_eq!(Epoch::parse("x|y|z|w"), Epoch::Absent);
    }

    #[test]
    fn documents_are_written_in_calls_of_bounded_cells_and_never_split() {
        let document = |name: &str, cells: usize| {
            let cells: Cells = (0..cells)
                .map(|minute| {
                    (
                        (name.to_owned(), minute as u64 * MINUTE_MS),
                        (1, Sketch::new()),
                    )
                })
                .collect();
            (name.to_owned(), cells)
        };
        let half = WRITE_CELLS_MAX / 2;
        let documents = vec![
            document("a", half),
            document("b", half),
            document("c", 1),
            document("d", WRITE_CELLS_MAX + 3),
            document("e", 2),
        ];
        let chunks = document_chunks(&documents);
        let names: Vec<Vec<&str>> = chunks
            .iter()
            .map(|chunk| chunk.iter().map(|(name, _)| name.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
        assert!(document_chunks(&[]).is_empty());
    }
}
