//! One simulated edge's delivery: the real edge's [`Delivery`] queue, and a task that sends its
//! batches as `hitcount-edge` does (signed, the same bytes until a 200, backing off on 429, 503
//! and network errors), with optional duplicate copies and random delays.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hitcount_edge_core::{ClosedWindow, Delivery, SealedBatch};
use hitcount_wire::BATCH_ENTRIES_MAX;
use hitcount_wire::auth::{DELTA_CONTENT_TYPE, EDGE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::http::{REQUEST_TIMEOUT_MS, retry_after_ms, retry_delay_ms};
use crate::{Config, Shared};

/// An idle edge looks at its queue at least this often, even without being woken.
const IDLE_POLL_MS: u64 = 100;
/// Delivery randomness (delays, which batches get a copy) uses streams from here on, apart from
/// the streams that draw hits.
const DELIVERY_STREAM_BASE: u64 = 1 << 32;

#[derive(Debug)]
pub struct Edge {
    pub id: String,
    secret: Vec<u8>,
    deltas_url: String,
    delivery: Mutex<Delivery>,
    /// Woken when a window was added and when generation ends.
    pub wake: Notify,
    /// The seconds its queued hits were offered in, for the acknowledgement ratio.
    pub offered: OfferedSeconds,
}

impl Edge {
    pub fn new(id: &str, secret: Vec<u8>, boot_epoch: u64, aggregator: &str) -> Self {
        Self {
            id: id.to_owned(),
            secret,
            deltas_url: format!("{}/v1/deltas", aggregator.trim_end_matches('/')),
            // A real edge's default `--pending-entries-max`, and the most one batch can carry.
            delivery: Mutex::new(Delivery::new(
                id,
                boot_epoch,
                BATCH_ENTRIES_MAX,
                rand::random(),
            )),
            wake: Notify::new(),
            offered: OfferedSeconds::default(),
        }
    }

    fn delivery(&self) -> std::sync::MutexGuard<'_, Delivery> {
        self.delivery.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a closed window to the queue; false when its pending map has no room (then a real
    /// edge refuses beacons with 503, and the window's hits are shed).
    pub fn add_window(&self, window: ClosedWindow) -> bool {
        self.delivery().add_window(window).is_ok()
    }

    /// Sealed batches not yet acknowledged.
    pub fn batches_waiting(&self) -> usize {
        self.delivery().sealed_batches().count()
    }

    fn next_batch(&self) -> Option<SealedBatch> {
        self.delivery().next_batch().cloned()
    }

    fn acknowledge(&self, sequence: u64) {
        self.delivery().acknowledge(sequence);
    }
}

/// The body of a 200 from `POST /v1/deltas`.
#[derive(Debug, Deserialize)]
struct DeltaAnswer {
    status: String,
    hits: Option<u64>,
    unknown_resource_entries: Option<u64>,
    expired_entries: Option<u64>,
}

/// What one send came to.
#[derive(Debug)]
enum Answer {
    Applied(DeltaAnswer),
    Duplicate,
    /// 429 or 503: not applied, retry after the delay.
    Busy {
        status: u16,
        retry_after_ms: Option<u64>,
    },
    Network(String),
    Unexpected {
        status: u16,
        body: String,
    },
}

async fn post(client: &reqwest::Client, edge: &Edge, bytes: &[u8]) -> Answer {
    // Signed at every send, as the edge does: the signature's timestamp must be recent.
    let timestamp_ms = hitcount_process::now_ms();
    let signature = hitcount_wire::auth::sign(&edge.secret, &edge.id, timestamp_ms, bytes);
    let sent = client
        .post(&edge.deltas_url)
        .header(reqwest::header::CONTENT_TYPE, DELTA_CONTENT_TYPE)
        .header(EDGE_HEADER, &edge.id)
        .header(TIMESTAMP_HEADER, timestamp_ms.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(bytes.to_vec())
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => return Answer::Network(error.to_string()),
    };
    let status = response.status().as_u16();
    let retry_after_ms = retry_after_ms(response.headers());
    let body = match response.text().await {
        Ok(body) => body,
        Err(error) => return Answer::Network(error.to_string()),
    };
    match status {
        200 => match serde_json::from_str::<DeltaAnswer>(&body) {
            Ok(answer) if answer.status == "applied" => Answer::Applied(answer),
            Ok(answer) if answer.status == "duplicate" => Answer::Duplicate,
            _ => Answer::Unexpected { status, body },
        },
        429 | 503 => Answer::Busy {
            status,
            retry_after_ms,
        },
        _ => Answer::Unexpected { status, body },
    }
}

/// Checks an `applied` answer: every hit merged, and no other copy of the batch applied too.
fn check_applied(
    shared: &Shared,
    edge: &Edge,
    batch: &SealedBatch,
    answer: &DeltaAnswer,
    applied: &AtomicU32,
) {
    let refused =
        answer.unknown_resource_entries.unwrap_or(0) + answer.expired_entries.unwrap_or(0);
    if answer.hits != Some(batch.hits) || refused > 0 {
        shared.stats.error(format!(
            "{} batch {}: applied {:?} of {} hits, {refused} entries refused",
            edge.id, batch.sequence, answer.hits, batch.hits
        ));
    }
    if applied.fetch_add(1, Ordering::AcqRel) > 0 {
        shared.stats.error(format!(
            "{} batch {}: applied twice (both copies answered `applied`)",
            edge.id, batch.sequence
        ));
    }
}

/// How delivering one batch ended.
enum Delivered {
    Acknowledged,
    /// A 4xx other than 429: counted as an error and dropped, as a real edge drops it.
    Refused,
    /// The drain deadline passed first.
    GaveUp,
}

/// A copy of a batch, sent once beside the original: the aggregator must answer one of the two
/// `applied` and the other `duplicate`, whichever arrives first.
async fn send_copy(
    client: reqwest::Client,
    edges: Arc<Vec<Edge>>,
    index: usize,
    shared: Arc<Shared>,
    batch: SealedBatch,
    delay_ms: u64,
    applied: Arc<AtomicU32>,
) {
    let edge = &edges[index];
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    match post(&client, edge, &batch.bytes).await {
        Answer::Applied(answer) => check_applied(&shared, edge, &batch, &answer, &applied),
        Answer::Duplicate => shared.stats.duplicate_answer(),
        // A copy that does not arrive is what duplicates are about anyway: no retry.
        Answer::Busy { status, .. } => shared.stats.busy(status),
        Answer::Network(error) => shared.stats.network_error(error),
        Answer::Unexpected { status, body } => shared.stats.error(format!(
            "{} batch {} (copy): {status} {body}",
            edge.id, batch.sequence
        )),
    }
}

fn deadline_passed(shared: &Shared) -> bool {
    let deadline = shared.drain_deadline_ms.load(Ordering::Acquire);
    deadline != 0 && hitcount_process::now_ms() >= deadline
}

/// The edge's sending task: takes the oldest unacknowledged batch, delivers it, repeats; ends
/// when generation is over and everything is acknowledged, or at the drain deadline.
pub async fn deliver(
    edges: Arc<Vec<Edge>>,
    index: usize,
    shared: Arc<Shared>,
    config: Arc<Config>,
    client: reqwest::Client,
    ids: Arc<Vec<String>>,
) {
    let edge = &edges[index];
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(DELIVERY_STREAM_BASE + index as u64);
    let mut copies = JoinSet::new();
    loop {
        // Read before looking at the queue: once generation is done, its last window is in.
        let done = shared.generation_done.load(Ordering::Acquire);
        let Some(batch) = edge.next_batch() else {
            if done || deadline_passed(&shared) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(IDLE_POLL_MS), edge.wake.notified())
                .await;
            continue;
        };
        let applied = Arc::new(AtomicU32::new(0));
        if rng.random_bool(config.duplicate_percent / 100.0) {
            shared.stats.copy_sent();
            copies.spawn(send_copy(
                client.clone(),
                Arc::clone(&edges),
                index,
                Arc::clone(&shared),
                batch.clone(),
                rng.random_range(0..=config.delay_ms_max),
                Arc::clone(&applied),
            ));
        }
        let mut first_sent: Option<Instant> = None;
        let mut failures = 0u32;
        let delivered = loop {
            if config.delay_ms_max > 0 {
                let delay = rng.random_range(0..=config.delay_ms_max);
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            // Latency runs from the first send (after its random delay) to the 200.
            first_sent.get_or_insert_with(Instant::now);
            shared.stats.sent(failures == 0);
            let retry_after = match post(&client, edge, &batch.bytes).await {
                Answer::Applied(answer) => {
                    check_applied(&shared, edge, &batch, &answer, &applied);
                    break Delivered::Acknowledged;
                }
                Answer::Duplicate => {
                    shared.stats.duplicate_answer();
                    break Delivered::Acknowledged;
                }
                Answer::Busy {
                    status,
                    retry_after_ms,
                } => {
                    shared.stats.busy(status);
                    retry_after_ms
                }
                Answer::Network(error) => {
                    shared.stats.network_error(error);
                    None
                }
                // Not applied, and resending the same bytes is safe: retried, but a bug.
                Answer::Unexpected { status, body } if status >= 500 => {
                    shared.stats.error(format!(
                        "{} batch {}: {status} {body}",
                        edge.id, batch.sequence
                    ));
                    None
                }
                Answer::Unexpected { status, body } => {
                    shared.stats.error(format!(
                        "{} batch {}: {status} {body}",
                        edge.id, batch.sequence
                    ));
                    break Delivered::Refused;
                }
            };
            let delay_ms = retry_delay_ms(failures, retry_after, &mut rng);
            failures = failures.saturating_add(1);
            if deadline_passed(&shared) {
                break Delivered::GaveUp;
            }
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        };
        match delivered {
            Delivered::Acknowledged => {
                let latency = first_sent.map(|sent| sent.elapsed()).unwrap_or_default();
                let seconds = edge.offered.take(batch.hits);
                shared.stats.acknowledged(batch.hits, latency, &seconds);
                for (resource_id, hits) in &batch.resource_hits {
                    let resource = resource_id
                        .strip_prefix(config.resource_prefix.as_str())
                        .and_then(|digits| digits.parse::<usize>().ok())
                        .filter(|resource| ids.get(*resource) == Some(resource_id));
                    if let Some(resource) = resource {
                        shared.acknowledged[resource].fetch_add(*hits, Ordering::AcqRel);
                    }
                }
                edge.acknowledge(batch.sequence);
            }
            Delivered::Refused => {
                edge.offered.take(batch.hits);
                edge.acknowledge(batch.sequence);
            }
            Delivered::GaveUp => break,
        }
    }
    while copies.join_next().await.is_some() {}
}

/// The seconds an edge's queued hits were offered in, oldest first. An edge's batches are
/// acknowledged in the order they were sealed, so an acknowledgement of `hits` takes the oldest
/// `hits`: exact while a seal is one batch. A seal split into several batches (more than a
/// batch's entries, which only a far-behind aggregator queues) mixes its windows' entries, and
/// is credited in offer order as its batches are answered.
#[derive(Debug, Default)]
pub struct OfferedSeconds(Mutex<VecDeque<(usize, u64)>>);

impl OfferedSeconds {
    fn queue(&self) -> MutexGuard<'_, VecDeque<(usize, u64)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A window of `hits` about to be queued in `second`.
    pub fn push(&self, second: usize, hits: u64) {
        self.queue().push_back((second, hits));
    }

    /// Withdraws the last push: its window was not queued (shed).
    pub fn withdraw_last(&self) {
        self.queue().pop_back();
    }

    /// The oldest `hits`, as (second, hits) pieces.
    pub fn take(&self, mut hits: u64) -> Vec<(usize, u64)> {
        let mut queue = self.queue();
        let mut taken = Vec::new();
        while hits > 0 {
            let Some((second, held)) = queue.front_mut() else {
                break;
            };
            let piece = hits.min(*held);
            taken.push((*second, piece));
            *held -= piece;
            hits -= piece;
            if *held == 0 {
                queue.pop_front();
            }
        }
        taken
    }
}
