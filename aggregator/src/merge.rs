//! The second aggregation level: edge delta batches that arrive within one merge interval, from
//! any edges, are merged in memory and committed together by [`Store::apply_group`] (one upsert
//! per distinct cell of every tier for the whole group, every batch's dedupe record in the same
//! transaction). Each batch is answered only after that commit, so nothing acknowledged is lost
//! through `kill -9`, and a duplicate or conflicting batch inside a group gets its own answer
//! without failing the others.
//!
//! Durable writes therefore grow with the distinct counters of a merge interval, not with
//! edges x windows: a hundred edges that each touched the same hot resource in one interval
//! cost one row per tier, not a hundred.
//!
//! Bounded: batches wait in a queue limited by entries ([`MERGE_QUEUE_ENTRIES_MAX`]); past the
//! limit a batch is refused at once with [`MergeError::Overloaded`] (503 with Retry-After), and
//! edges resend the same bytes later. Memory does not grow with load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::{ApplyOutcome, BatchKey, MergeBatch, Store, StoreError};
use hitcount_wire::DeltaEntry;

/// Delta entries waiting to be merged, over all batches; past this deltas get 503. At about
/// 200 bytes an entry in memory (id, counts, a sparse sketch) this bounds the queue near 400 MB,
/// about four seconds of the headline load (100 edges sending ~5k entries a second each).
pub const MERGE_QUEUE_ENTRIES_MAX: usize = 2_000_000;
/// Longest a batch should wait in the queue: past what the recent groups merged in this time,
/// batches are refused (503) rather than queued, so an edge hears "later" at once instead of
/// timing out while the store catches up.
pub const MERGE_QUEUE_WAIT_MS_MAX: u64 = 2_000;
/// However slow the store has been, this many entries may always wait (four full batches).
pub const MERGE_QUEUE_ENTRIES_MIN: usize = 4 * hitcount_wire::BATCH_ENTRIES_MAX;
/// Batches waiting to be merged (a second bound, for many tiny batches).
pub const MERGE_QUEUE_BATCHES_MAX: usize = 16_384;
/// Entries in one group commit: bounds the transaction's size and its time.
pub const MERGE_GROUP_ENTRIES_MAX: usize = 400_000;
/// Default time the first batch of a group waits for others to join it.
pub const MERGE_INTERVAL_MS_DEFAULT: u64 = 100;
/// Longest merge interval: acknowledgements (and read-after-write) must stay within a second.
pub const MERGE_INTERVAL_MS_MAX: u64 = 500;
/// Group commits running at once with the durable inbox. Gathering the next group while earlier
/// ones commit keeps the database and this process busy together: an inbox append mostly waits
/// for the database (its resource lookups, its rows, the WAL flush), which a serial merge task
/// adds up. Concurrent appends touch no common row but dedupe records, whose primary key makes
/// a second copy of a batch wait for the first, so nothing counts twice. The direct shape keeps
/// one commit at a time: its groups all write the hot resources' hour and day rows, so they
/// would only wait on each other's row locks (the scale benchmark showed no gain: 18.6k hits/s
/// acknowledged with four at once, 22.2k with one, on PostgreSQL alone; BENCHMARKS.md).
pub const MERGE_COMMITS_IN_FLIGHT_MAX: usize = 4;
/// What a refused batch is told to wait before resending.
pub const MERGE_RETRY_AFTER_S: u64 = 1;

const _: () = assert!(
    hitcount_wire::BATCH_ENTRIES_MAX <= MERGE_GROUP_ENTRIES_MAX
        && MERGE_GROUP_ENTRIES_MAX <= MERGE_QUEUE_ENTRIES_MAX
        && MERGE_QUEUE_ENTRIES_MIN <= MERGE_QUEUE_ENTRIES_MAX,
    "a wire batch fits a group, and a group and the queue's floor fit the queue"
);

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("the merge queue is full")]
    Overloaded,
    #[error("the aggregator is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Request {
    batch: MergeBatch,
    received: Instant,
    reply: oneshot::Sender<Result<ApplyOutcome, Arc<StoreError>>>,
    /// Held until the batch is answered: its entries' room in the queue.
    room: OwnedSemaphorePermit,
}

enum Message {
    Batch(Request),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Merger {
    sender: mpsc::Sender<Message>,
    /// Asked for its unfolded inbox cells, the other bound on what waits in memory.
    store: Store,
    room: Arc<Semaphore>,
    entries_max: usize,
    /// Entries merged per second lately (a moving average kept by the merge task).
    rate: Arc<std::sync::atomic::AtomicU64>,
}

impl Merger {
    /// Starts the merge task. With `interval` zero a group is whatever queued while the previous
    /// commit ran (group commit alone).
    pub fn start(store: Store, interval: Duration) -> (Self, JoinHandle<()>) {
        Self::start_with_room(store, interval, MERGE_QUEUE_ENTRIES_MAX)
    }

    /// Commits in flight for this store's write shape (see [`MERGE_COMMITS_IN_FLIGHT_MAX`]).
    fn commits_in_flight_max(store: &Store) -> usize {
        if store.has_inbox() {
            MERGE_COMMITS_IN_FLIGHT_MAX
        } else {
            1
        }
    }

    /// [`Merger::start`] with room for `entries_max` waiting entries (tests fill a small queue).
    fn start_with_room(
        store: Store,
        interval: Duration,
        entries_max: usize,
    ) -> (Self, JoinHandle<()>) {
        assert!(entries_max <= MERGE_QUEUE_ENTRIES_MAX);
        let (sender, receiver) = mpsc::channel(MERGE_QUEUE_BATCHES_MAX);
        let rate = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(run(
            store.clone(),
            receiver,
            interval,
            Arc::clone(&rate),
            Self::commits_in_flight_max(&store),
        ));
        (
            Self {
                sender,
                store,
                room: Arc::new(Semaphore::new(entries_max)),
                entries_max,
                rate,
            },
            task,
        )
    }

    /// Queues one batch and waits for the commit of its group.
    pub async fn submit(
        &self,
        entries: Vec<DeltaEntry>,
        key: Option<BatchKey>,
    ) -> Result<ApplyOutcome, MergeError> {
        debug_assert!(
            entries.len() <= hitcount_wire::BATCH_ENTRIES_MAX,
            "a submitted batch is one decoded wire batch (at most BATCH_ENTRIES_MAX entries), so \
             a group of it alone is within MERGE_GROUP_ENTRIES_MAX: {} entries",
            entries.len()
        );
        // An empty batch still needs its room of one, for its dedupe record.
        let needed = u32::try_from(entries.len().max(1)).unwrap_or(u32::MAX);
        // What the store merges in the longest wait allowed, but never less than a few batches.
        let rate = self.rate.load(std::sync::atomic::Ordering::Relaxed);
        let waiting_max = (rate.saturating_mul(MERGE_QUEUE_WAIT_MS_MAX) / 1_000)
            .max(MERGE_QUEUE_ENTRIES_MIN as u64);
        let queued = self.queued_entries() as u64;
        if queued > 0 && queued + u64::from(needed) > waiting_max {
            return Err(MergeError::Overloaded);
        }
        // With the durable inbox, committed cells wait in memory until folded: a fold that
        // falls behind slows ingest rather than growing memory.
        if self.store.unfolded_entries() >= crate::store::inbox::UNFOLDED_ENTRIES_MAX {
            return Err(MergeError::Overloaded);
        }
        let permit = Arc::clone(&self.room)
            .try_acquire_many_owned(needed)
            .map_err(|error| match error {
                tokio::sync::TryAcquireError::Closed => MergeError::ShuttingDown,
                tokio::sync::TryAcquireError::NoPermits => MergeError::Overloaded,
            })?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            batch: MergeBatch { entries, key },
            received: Instant::now(),
            reply,
            room: permit,
        };
        self.sender
            .try_send(Message::Batch(request))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => MergeError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => MergeError::ShuttingDown,
            })?;
        match answer.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(error)) => Err(MergeError::Store(shared_error(&error))),
            Err(_) => Err(MergeError::ShuttingDown),
        }
    }

    /// Merges every batch queued before this call, then stops the merge task.
    pub async fn shutdown(&self) {
        let (sender, receiver) = oneshot::channel();
        if self.sender.send(Message::Shutdown(sender)).await.is_ok() {
            let _ = receiver.await;
        }
    }

    /// Entries waiting now (for the metrics gauge and tests).
    pub fn queued_entries(&self) -> usize {
        self.entries_max - self.room.available_permits()
    }
}

/// One store failure answers every batch of its group; each gets an error of the same kind.
fn shared_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Busy => StoreError::Busy,
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The merge task's side of the queue: the batch a full group left over for the next one, and
/// the shutdown requests to answer once every queued batch is merged.
struct Queue {
    receiver: mpsc::Receiver<Message>,
    carried: Option<Request>,
    shutdown_replies: Vec<oneshot::Sender<()>>,
}

impl Queue {
    /// The batch that starts the next group: the one carried over, or the next to arrive;
    /// `None` once the queue is closed and empty.
    async fn first(&mut self) -> Option<Request> {
        if let Some(request) = self.carried.take() {
            return Some(request);
        }
        loop {
            // After `close`, `recv` still yields everything queued, then `None`.
            match self.receiver.recv().await? {
                Message::Batch(request) => return Some(request),
                Message::Shutdown(reply) => self.shut_down(reply),
            }
        }
    }

    /// Stops taking new batches; every one already queued is still merged.
    fn shut_down(&mut self, reply: oneshot::Sender<()>) {
        self.receiver.close();
        self.shutdown_replies.push(reply);
    }

    /// A group starting with `first`: the batches that arrive within `interval` of its arrival
    /// (a batch that queued during the previous commit has waited already, and is committed
    /// with whatever else is queued), up to `MERGE_GROUP_ENTRIES_MAX` entries; with its entries.
    async fn gather(&mut self, first: Request, interval: Duration) -> (Vec<Request>, usize) {
        let deadline = first.received + interval;
        let mut entries = first.batch.entries.len();
        let mut group = vec![first];
        while entries < MERGE_GROUP_ENTRIES_MAX {
            let next = if Instant::now() >= deadline {
                self.receiver.try_recv().ok()
            } else {
                tokio::time::timeout_at(deadline.into(), self.receiver.recv())
                    .await
                    .ok()
                    .flatten()
            };
            match next {
                Some(Message::Batch(request)) => {
                    if entries + request.batch.entries.len() > MERGE_GROUP_ENTRIES_MAX {
                        self.carried = Some(request);
                        break;
                    }
                    entries += request.batch.entries.len();
                    group.push(request);
                }
                Some(Message::Shutdown(reply)) => self.shut_down(reply),
                None => break,
            }
        }
        // Only the first batch is taken unchecked; every later one was checked to fit.
        assert!(
            entries <= MERGE_GROUP_ENTRIES_MAX || group.len() == 1,
            "a group holds at most MERGE_GROUP_ENTRIES_MAX entries unless one batch alone is \
             larger: {entries} entries in {} batches",
            group.len()
        );
        (group, entries)
    }
}

/// How fast the queue drains under this load: entries per second of wall time since the
/// previous commit ended, smoothed.
#[derive(Debug, Clone)]
struct DrainRate {
    rate: Arc<std::sync::atomic::AtomicU64>,
    last_commit: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl DrainRate {
    fn committed(&self, entries: usize) {
        let now = Instant::now();
        let previous = self
            .last_commit
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .replace(now);
        let Some(previous) = previous else {
            return;
        };
        let seconds = now.duration_since(previous).as_secs_f64().max(0.001);
        let measured = entries as f64 / seconds;
        let average = self.rate.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let smoothed = if average == 0.0 {
            measured
        } else {
            0.7 * average + 0.3 * measured
        };
        self.rate
            .store(smoothed as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn run(
    store: Store,
    receiver: mpsc::Receiver<Message>,
    interval: Duration,
    rate: Arc<std::sync::atomic::AtomicU64>,
    commits_in_flight_max: usize,
) {
    assert!((1..=MERGE_COMMITS_IN_FLIGHT_MAX).contains(&commits_in_flight_max));
    let mut queue = Queue {
        receiver,
        carried: None,
        shutdown_replies: Vec::new(),
    };
    let mut in_flight = tokio::task::JoinSet::new();
    let drain = DrainRate {
        rate,
        last_commit: Arc::default(),
    };
    while let Some(first) = queue.first().await {
        let (group, entries) = queue.gather(first, interval).await;
        while in_flight.len() >= commits_in_flight_max {
            let _ = in_flight.join_next().await;
        }
        let store = store.clone();
        let drain = drain.clone();
        in_flight.spawn(async move {
            commit(&store, group, entries).await;
            drain.committed(entries);
        });
        debug_assert!(
            in_flight.len() <= commits_in_flight_max,
            "at most commits_in_flight_max group commits run at once"
        );
    }
    assert!(
        queue.carried.is_none(),
        "the merge task stops only with no batch carried over: every batch taken is answered"
    );
    // Every queued batch is committed and answered before shutdown is confirmed.
    while in_flight.join_next().await.is_some() {}
    for reply in queue.shutdown_replies {
        let _ = reply.send(());
    }
}

async fn commit(store: &Store, group: Vec<Request>, entries: usize) {
    debug_assert_eq!(
        entries,
        group
            .iter()
            .map(|request| request.batch.entries.len())
            .sum::<usize>(),
        "a group's entry count is the sum of its batches' entries"
    );
    debug_assert!(
        group
            .iter()
            .all(|request| request.room.num_permits() == request.batch.entries.len().max(1)),
        "each queued batch holds one permit of queue room per entry (one if empty) until answered"
    );
    let batches_in_group = group.len();
    let mut batches = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    for request in group {
        batches.push(request.batch);
        replies.push((request.reply, request.room));
    }
    let started = Instant::now();
    let result = store.apply_group(batches, crate::now_ms()).await;
    metrics::histogram!("hitcount_merge_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("hitcount_merge_group_batches").record(batches_in_group as f64);
    metrics::counter!("hitcount_merge_groups_total").increment(1);
    metrics::counter!("hitcount_merge_entries_total").increment(entries as u64);
    match result {
        Ok(committed) => {
            assert_eq!(
                committed.outcomes.len(),
                replies.len(),
                "one outcome per batch"
            );
            for ((reply, _room), outcome) in replies.into_iter().zip(committed.outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            tracing::warn!(%error, batches = batches_in_group, entries, "a group merge failed");
            metrics::counter!("hitcount_merge_failures_total").increment(1);
            let error = Arc::new(error);
            for (reply, _room) in replies {
                let _ = reply.send(Err(Arc::clone(&error)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::{ResourceRecord, Tier};
    use hitcount_wire::{MINUTE_MS, Sketch};

    fn entries(count: u64) -> Vec<DeltaEntry> {
        let minute = crate::now_ms() / MINUTE_MS;
        (0..count)
            .map(|offset| DeltaEntry {
                resource_id: "page".to_owned(),
                minute: minute - offset,
                hits: 1,
                visitors: Sketch::new(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_every_queued_batch_is_still_merged() {
        let directory = tempfile::TempDir::new().unwrap();
        let store = Store::open_embedded(directory.path()).unwrap();
        store
            .create_resource(ResourceRecord {
                id: "page".to_owned(),
                name: "page".to_owned(),
                retention_days: None,
                created_at_ms: 0,
            })
            .await
            .unwrap();
        // Another connection holds SQLite's write lock, so the first commit waits for it.
        let blocker =
            rusqlite::Connection::open(directory.path().join("hitcount.sqlite3")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (merger, task) = Merger::start_with_room(store.clone(), Duration::ZERO, 10);
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let merger = merger.clone();
                tokio::spawn(async move { merger.submit(entries(4), None).await })
            })
            .collect();
        while merger.queued_entries() < 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = merger.submit(entries(4), None).await;
        assert!(
            matches!(refused, Err(MergeError::Overloaded)),
            "{refused:?}"
        );
        blocker.execute_batch("ROLLBACK").unwrap();
        for batch in waiting {
            let outcome = batch.await.unwrap().unwrap();
            assert!(matches!(outcome, ApplyOutcome::Applied(applied) if applied.hits == 4));
        }
        assert_eq!(
            merger.queued_entries(),
            0,
            "answered batches give their room back"
        );
        let cells = store
            .cells(
                "page".to_owned(),
                Tier::Day,
                0,
                crate::now_ms() + MINUTE_MS,
                crate::now_ms(),
            )
            .await
            .unwrap();
        assert_eq!(cells.iter().map(|cell| cell.hits).sum::<u64>(), 8);
        merger.shutdown().await;
        task.await.unwrap();
    }
}
