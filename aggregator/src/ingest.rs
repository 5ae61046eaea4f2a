//! The direct-hit write path: `POST /hits` requests are queued, pre-aggregated into a window of
//! delta entries, and merged by the same `Store::apply` that merges edge deltas.
//!
//! Group commit: while one commit is in flight, new requests queue up; the next commit takes all
//! of them at once. Latency under load is therefore about two commits, and throughput grows with
//! concurrency instead of being bounded by one fsync per request.

use std::time::{Duration, Instant};

use hitcount_wire::text::duration_text;
use hitcount_wire::{
    BATCH_ENTRIES_MAX, CLOCK_SKEW_MS_MAX, DAY_MS, MINUTE_MS, WindowCounts, WireError, visitor_hash,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::AckMode;
use crate::now_ms;
use crate::store::{ApplyOutcome, DELTA_AGE_MS_MAX, Store};

/// Requests waiting to be committed; past this `POST /hits` answers 503 instead of queueing more.
pub const INGEST_QUEUE_REQUESTS_MAX: usize = 16_384;
/// Hits in one commit; bounds the transaction and the time the writer lock is held.
pub const COMMIT_HITS_MAX: u64 = 100_000;

/// Longest visitor id, in characters (what JSON Schema's `maxLength` counts); longer ones are
/// almost certainly not ids.
pub const VISITOR_ID_CHARS_MAX: usize = 256;

/// Why a direct hit was refused. One refused hit refuses its whole request: nothing is counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HitError {
    #[error("{0}")]
    InvalidResourceId(WireError),
    #[error("no resource with id {0:?}")]
    UnknownResource(String),
    #[error(
        "timestamp must be within the last {} and at most {} ahead",
        duration_text(DELTA_AGE_MS_MAX),
        duration_text(CLOCK_SKEW_MS_MAX)
    )]
    OutOfRange,
    #[error("timestamp is older than this resource's retention of {0} days")]
    OlderThanRetention(u32),
    #[error("visitor_id must be at most {VISITOR_ID_CHARS_MAX} characters")]
    VisitorIdTooLong,
}

/// The resource a hit names must be a valid id of a resource that exists (`retention` is `None`
/// when it does not); returns that resource's retention in days.
pub fn check_target(
    resource_id: &str,
    retention: Option<Option<u32>>,
) -> Result<Option<u32>, HitError> {
    hitcount_wire::validate_resource_id(resource_id).map_err(HitError::InvalidResourceId)?;
    retention.ok_or_else(|| HitError::UnknownResource(resource_id.to_owned()))
}

/// Checks a hit to a resource that exists: its time within the window deltas are taken in and
/// the resource's retention, its visitor id within bounds (hashed here, never kept).
pub fn check_hit(
    resource_id: String,
    retention_days: Option<u32>,
    timestamp_ms: u64,
    visitor_id: Option<&str>,
    now_ms: u64,
) -> Result<ValidHit, HitError> {
    if timestamp_ms + DELTA_AGE_MS_MAX < now_ms || timestamp_ms > now_ms + CLOCK_SKEW_MS_MAX {
        return Err(HitError::OutOfRange);
    }
    if let Some(days) = retention_days
        && timestamp_ms + u64::from(days) * DAY_MS < now_ms
    {
        return Err(HitError::OlderThanRetention(days));
    }
    let visitor_hash = match visitor_id {
        Some(visitor) if visitor.chars().count() > VISITOR_ID_CHARS_MAX => {
            return Err(HitError::VisitorIdTooLong);
        }
        Some(visitor) => Some(visitor_hash(visitor.as_bytes())),
        None => None,
    };
    Ok(ValidHit {
        resource_id,
        minute: timestamp_ms / MINUTE_MS,
        visitor_hash,
    })
}

/// A hit that passed validation.
#[derive(Debug, Clone)]
pub struct ValidHit {
    pub resource_id: String,
    pub minute: u64,
    pub visitor_hash: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the ingest queue is full")]
    Overloaded,
    #[error("the store could not commit the hits")]
    CommitFailed,
    #[error("the aggregator is shutting down")]
    ShuttingDown,
}

enum Message {
    Hits {
        hits: Vec<ValidHit>,
        ack: Option<oneshot::Sender<Result<(), IngestError>>>,
    },
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Ingestor {
    sender: mpsc::Sender<Message>,
    ack: AckMode,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hits { hits, .. } => write!(formatter, "Hits({})", hits.len()),
            Self::Shutdown(_) => write!(formatter, "Shutdown"),
        }
    }
}

impl Ingestor {
    /// In fast mode hits are gathered for `flush_interval` before each commit (the bound on what
    /// a crash can lose); in durable mode a commit starts as soon as the previous one ends.
    pub fn start(store: Store, ack: AckMode, flush_interval: Duration) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(INGEST_QUEUE_REQUESTS_MAX);
        let gather = match ack {
            AckMode::Durable => None,
            AckMode::Fast => Some(flush_interval),
        };
        let task = tokio::spawn(run(store, receiver, gather));
        (Self { sender, ack }, task)
    }

    /// Queues hits; in durable mode, returns once they are committed.
    pub async fn submit(&self, hits: Vec<ValidHit>) -> Result<(), IngestError> {
        assert!(!hits.is_empty(), "callers never submit an empty request");
        let (ack, committed) = match self.ack {
            AckMode::Durable => {
                let (sender, receiver) = oneshot::channel();
                (Some(sender), Some(receiver))
            }
            AckMode::Fast => (None, None),
        };
        self.sender
            .try_send(Message::Hits { hits, ack })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
            })?;
        match committed {
            Some(receiver) => receiver.await.unwrap_or(Err(IngestError::ShuttingDown)),
            None => Ok(()),
        }
    }

    /// Commits everything queued before this call, then stops the ingest task.
    pub async fn shutdown(&self) {
        let (sender, receiver) = oneshot::channel();
        if self.sender.send(Message::Shutdown(sender)).await.is_ok() {
            let _ = receiver.await;
        }
    }
}

/// A key for the gather map's hash table that only this process knows. Resource ids here come
/// from token holders, and a key nobody can learn keeps even them from choosing colliding ids.
fn random_map_key() -> [u8; 16] {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&state.hash_one(1u8).to_le_bytes());
    key[8..].copy_from_slice(&state.hash_one(2u8).to_le_bytes());
    key
}

fn fits(window: &WindowCounts, hits: &[ValidHit]) -> bool {
    window.len() + hits.len() <= window.entries_max()
}

async fn run(store: Store, mut receiver: mpsc::Receiver<Message>, gather: Option<Duration>) {
    let map_key = random_map_key();
    let mut carried: Option<Message> = None;
    let mut shutdown_replies = Vec::new();
    loop {
        let first = match carried.take() {
            Some(message) => message,
            // After `close`, `recv` still yields everything queued, then `None`.
            None => match receiver.recv().await {
                Some(message) => message,
                None => break,
            },
        };
        let deadline = gather.map(|interval| Instant::now() + interval);
        let mut window = WindowCounts::with_hash_key(BATCH_ENTRIES_MAX, map_key);
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Hits { hits, ack } => {
                    if !window.is_empty() && !fits(&window, &hits) {
                        carried = Some(Message::Hits { hits, ack });
                        break;
                    }
                    for hit in &hits {
                        // `fits` guaranteed room for every new counter of this request.
                        let recorded =
                            window.record(&hit.resource_id, hit.minute, 1, hit.visitor_hash);
                        debug_assert!(recorded.is_ok());
                    }
                    acks.extend(ack);
                }
                Message::Shutdown(reply) => {
                    // Stop taking new requests but commit every one already queued.
                    receiver.close();
                    shutdown_replies.push(reply);
                }
            }
            if window.hits() >= COMMIT_HITS_MAX {
                break;
            }
            next = match deadline {
                None => receiver.try_recv().ok(),
                // Gathering: wait for more until the deadline; `None` from a closed channel ends it.
                Some(deadline) => tokio::time::timeout_at(deadline.into(), receiver.recv())
                    .await
                    .ok()
                    .flatten(),
            };
        }
        let result = commit(&store, &mut window).await;
        for ack in acks {
            let _ = ack.send(result);
        }
    }
    for reply in shutdown_replies {
        let _ = reply.send(());
    }
}

async fn commit(store: &Store, window: &mut WindowCounts) -> Result<(), IngestError> {
    if window.is_empty() {
        return Ok(());
    }
    let hits = window.hits();
    let started = Instant::now();
    let outcome = store.apply(window.drain(), None, now_ms()).await;
    metrics::histogram!("hitcount_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(ApplyOutcome::Applied(applied)) => {
            metrics::counter!("hitcount_hits_committed_total").increment(applied.hits);
            if applied.unknown_resource_hits > 0 {
                // The resource was deleted between validation and commit.
                metrics::counter!("hitcount_resources_refused_total", "reason" => "deleted")
                    .increment(applied.unknown_resource_hits);
            }
            Ok(())
        }
        Ok(ApplyOutcome::Duplicate | ApplyOutcome::Conflict) => {
            unreachable!("direct hits are applied without a batch key")
        }
        Err(error) => {
            tracing::error!(%error, hits, "committing hits failed");
            metrics::counter!("hitcount_ingest_commit_failures_total").increment(1);
            Err(IngestError::CommitFailed)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW_MS: u64 = 1_800_000_000_000;

    #[test]
    fn a_hit_names_a_valid_id_of_a_resource_that_exists() {
        assert_eq!(check_target("home", Some(Some(30))), Ok(Some(30)));
        assert_eq!(check_target("home", Some(None)), Ok(None));
        assert_eq!(
            check_target("home", None),
            Err(HitError::UnknownResource("home".to_owned()))
        );
        assert!(matches!(
            check_target("a/b", Some(None)),
            Err(HitError::InvalidResourceId(_))
        ));
    }

    #[test]
    fn a_hit_is_taken_from_the_dedupe_horizon_to_the_clock_skew() {
        let at = |timestamp_ms| check_hit("home".to_owned(), None, timestamp_ms, None, NOW_MS);
        let oldest = NOW_MS - DELTA_AGE_MS_MAX;
        let latest = NOW_MS + CLOCK_SKEW_MS_MAX;
        assert_eq!(at(oldest).unwrap().minute, oldest / MINUTE_MS);
        assert_eq!(at(latest).unwrap().minute, latest / MINUTE_MS);
        assert_eq!(at(oldest - 1).unwrap_err(), HitError::OutOfRange);
        assert_eq!(at(latest + 1).unwrap_err(), HitError::OutOfRange);
    }

    #[test]
    fn a_hit_older_than_its_resource_s_retention_is_refused() {
        let at = |timestamp_ms| check_hit("home".to_owned(), Some(2), timestamp_ms, None, NOW_MS);
        assert!(at(NOW_MS - 2 * DAY_MS).is_ok());
        assert_eq!(
            at(NOW_MS - 2 * DAY_MS - 1).unwrap_err(),
            HitError::OlderThanRetention(2)
        );
    }

    #[test]
    fn visitor_ids_are_hashed_and_bounded_in_characters() {
        let with =
            |visitor: &str| check_hit("home".to_owned(), None, NOW_MS, Some(visitor), NOW_MS);
        let longest = "é".repeat(VISITOR_ID_CHARS_MAX);
        assert_eq!(
            with(&longest).unwrap().visitor_hash,
            Some(visitor_hash(longest.as_bytes()))
        );
        assert_eq!(
            with(&format!("{longest}a")).unwrap_err(),
            HitError::VisitorIdTooLong
        );
        let anonymous = check_hit("home".to_owned(), None, NOW_MS, None, NOW_MS).unwrap();
        assert_eq!(anonymous.visitor_hash, None);
    }
}
