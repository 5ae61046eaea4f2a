//! Shipping: every window, close each instance's window and send its batches to the aggregator,
//! signed, resending the same bytes with exponential backoff and jitter until acknowledged.

use std::sync::Arc;
use std::time::Duration;

use hitcount_wire::auth::{DELTA_CONTENT_TYPE, EDGE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

use wasmtime::Store;

use crate::module::{Batch, Guest, HostState};
use crate::spool::{self, Spool};
use crate::{EdgeState, now_ms};

/// First retry delay after a failed delivery; doubles per failure.
pub const RETRY_DELAY_MS_MIN: u64 = 250;
/// Longest retry delay.
pub const RETRY_DELAY_MS_MAX: u64 = 30_000;
/// One delivery request may take this long.
pub const DELIVERY_TIMEOUT_MS: u64 = 10_000;
/// At shutdown, delivery is attempted for at most this long.
pub const SHUTDOWN_DELIVERY_MS_MAX: u64 = 10_000;

enum Delivered {
    /// Applied or duplicate: acknowledged.
    Acknowledged,
    /// Worth retrying (network, 5xx, 429, or a key the operator can still fix).
    Retry(String),
    /// Will never succeed (the aggregator says the batch is malformed, too old or conflicting).
    Refused(String),
}

/// Per-instance delivery state.
#[derive(Debug, Clone, Copy, Default)]
struct Backoff {
    failures: u32,
    next_attempt_ms: u64,
}

fn jitter(delay_ms: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return delay_ms;
    }
    // Between half and the full delay, so edges that failed together do not retry together.
    delay_ms / 2 + u64::from_le_bytes(bytes) % (delay_ms / 2 + 1)
}

impl Backoff {
    fn failed(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        let delay = RETRY_DELAY_MS_MIN
            .saturating_mul(1 << self.failures.min(16))
            .min(RETRY_DELAY_MS_MAX);
        self.next_attempt_ms = now_ms + jitter(delay);
    }
}

/// One delivery attempt of a batch: a span of its own, whose trace context goes with the request
/// (`traceparent`, with `--otlp-endpoint`), so the aggregator's handling joins the same trace.
#[tracing::instrument(
    name = "delta delivery",
    skip_all,
    fields(
        otel.kind = "client",
        hitcount.edge_id = %state.config.edge_id,
        hitcount.sequence = sequence,
        hitcount.bytes = bytes.len(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
)]
async fn send(state: &EdgeState, bytes: &[u8], sequence: u64) -> Delivered {
    let delivered = attempt(state, bytes).await;
    if !matches!(delivered, Delivered::Acknowledged) {
        tracing::Span::current().record("otel.status_code", "ERROR");
    }
    delivered
}

async fn attempt(state: &EdgeState, bytes: &[u8]) -> Delivered {
    let timestamp = now_ms();
    let signature = hitcount_wire::auth::sign(
        &state.config.edge_key,
        &state.config.edge_id,
        timestamp,
        bytes,
    );
    let mut trace_context = reqwest::header::HeaderMap::new();
    hitcount_process::inject_trace_context(&mut trace_context);
    let response = state
        .client
        .post(format!("{}/v1/deltas", state.config.aggregator))
        .headers(trace_context)
        .header("content-type", DELTA_CONTENT_TYPE)
        .header(EDGE_HEADER, &state.config.edge_id)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(bytes.to_vec())
        .timeout(Duration::from_millis(DELIVERY_TIMEOUT_MS))
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(error) => return Delivered::Retry(error.to_string()),
    };
    let status = response.status().as_u16();
    tracing::Span::current().record("http.response.status_code", status);
    let body = response.text().await.unwrap_or_default();
    match status {
        200 => Delivered::Acknowledged,
        400 | 409 | 413 | 415 | 422 => Delivered::Refused(format!("{status}: {body}")),
        _ => Delivered::Retry(format!("{status}: {body}")),
    }
}

type Commit = tokio::sync::oneshot::Receiver<Result<(), spool::SpoolError>>;

/// The instance's batch to send now, its boot epoch, and with a spool the commit to wait for
/// first when the batch was sealed since the last commit. All batches of one seal are committed
/// together: the commit says which journal generations they cover.
fn next_to_send(
    spool: Option<&Spool>,
    counter: &Guest,
    store: &mut Store<HostState>,
) -> wasmtime::Result<Option<(Batch, u64, Option<Commit>)>> {
    let Some(batch) = counter.call_next_batch(&mut *store)? else {
        return Ok(None);
    };
    let boot_epoch = store.data().boot_epoch;
    let committed_from = store.data().committed_next_sequence;
    let commit = match spool {
        Some(spool) if batch.sequence >= committed_from => {
            let fresh: Vec<(u64, Vec<u8>)> = counter
                .call_sealed_batches(&mut *store)?
                .into_iter()
                .filter(|sealed| sealed.sequence >= committed_from)
                .map(|sealed| (sealed.sequence, sealed.bytes))
                .collect();
            let next_sequence = fresh
                .last()
                .map_or(batch.sequence + 1, |(sequence, _)| sequence + 1);
            let status = counter.call_status(&mut *store)?;
            // Records of the open window carry its generation; an empty window has none, so the
            // journal file closed by this commit holds nothing newer than the last closed window,
            // and saying so lets the commit retire it. Otherwise a spool an outage filled would
            // stay full (every beacon refused) until a commit that only a new beacon could bring.
            let open_generation = if status.window_hits == 0 {
                status.generation.saturating_sub(1)
            } else {
                status.generation
            };
            store.data_mut().committed_next_sequence = next_sequence;
            Some(spool.commit(spool::BatchCommit {
                boot_epoch,
                open_generation,
                generation: batch.generation,
                next_sequence,
                batches: fresh,
            }))
        }
        _ => None,
    };
    Ok(Some((batch, boot_epoch, commit)))
}

/// Sends what an earlier run committed to the spool, oldest first, until one fails.
async fn deliver_recovered(state: &EdgeState) {
    loop {
        let next = state
            .recovered
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .front()
            .cloned();
        let Some(batch) = next else {
            return;
        };
        match send(state, &batch.bytes, batch.sequence).await {
            Delivered::Retry(reason) => {
                metrics::counter!("hitcount_edge_delivery_failures_total").increment(1);
                tracing::warn!(%reason, boot_epoch = batch.boot_epoch, sequence = batch.sequence, "delivering a recovered batch failed; will retry");
                return;
            }
            Delivered::Refused(reason) => {
                tracing::error!(%reason, boot_epoch = batch.boot_epoch, sequence = batch.sequence, "the aggregator refused a recovered batch; dropped");
                metrics::counter!("hitcount_edge_recovered_batches_refused_total").increment(1);
            }
            Delivered::Acknowledged => {
                metrics::counter!("hitcount_edge_batches_delivered_total").increment(1);
            }
        }
        state
            .recovered
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .pop_front();
        if let Some(spool) = &state.spool {
            spool.acknowledged(batch.boot_epoch, batch.sequence);
        }
    }
}

/// Closes every instance's window and delivers what can be delivered now.
async fn round(state: &EdgeState, backoffs: &mut [Backoff], deadline_ms: Option<u64>) {
    let now = now_ms();
    for index in 0..state.instances.len() {
        match state
            .instances
            .with(index, |counter, store| counter.call_flush(store, now))
        {
            Ok(true) => {}
            Ok(false) => metrics::counter!("hitcount_edge_delivery_queue_full_total").increment(1),
            Err(_) => {}
        }
    }
    deliver_recovered(state).await;
    for (index, backoff) in backoffs.iter_mut().enumerate() {
        if backoff.next_attempt_ms > now_ms() && deadline_ms.is_none() {
            continue;
        }
        loop {
            if deadline_ms.is_some_and(|deadline| now_ms() >= deadline) {
                return;
            }
            let Ok(Some((batch, boot_epoch, commit))) =
                state.instances.with(index, |counter, store| {
                    next_to_send(state.spool.as_ref(), counter, store)
                })
            else {
                break;
            };
            if let Some(commit) = commit
                && let Err(error) = spool::wait(commit).await
            {
                // Not committed, so it must not be sent (a crash would replay its hits from the
                // journal as well): the next round commits it again.
                metrics::counter!("hitcount_edge_spool_failures_total").increment(1);
                tracing::error!(%error, sequence = batch.sequence, "could not commit a batch to the spool");
                let _ = state.instances.with(index, |_, store| {
                    store.data_mut().committed_next_sequence = batch.sequence;
                    Ok(())
                });
                break;
            }
            match send(state, &batch.bytes, batch.sequence).await {
                Delivered::Acknowledged => {
                    metrics::counter!("hitcount_edge_batches_delivered_total").increment(1);
                    metrics::counter!("hitcount_edge_hits_delivered_total").increment(batch.hits);
                    let _ = state.instances.with(index, |counter, store| {
                        counter.call_acknowledge(store, batch.sequence)
                    });
                    if let Some(spool) = &state.spool {
                        spool.acknowledged(boot_epoch, batch.sequence);
                    }
                    *backoff = Backoff::default();
                }
                Delivered::Retry(reason) => {
                    metrics::counter!("hitcount_edge_delivery_failures_total").increment(1);
                    tracing::warn!(%reason, sequence = batch.sequence, index, "delivery failed; will retry");
                    backoff.failed(now_ms());
                    if let Some(deadline) = deadline_ms {
                        let wait = backoff
                            .next_attempt_ms
                            .min(deadline)
                            .saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        continue;
                    }
                    break;
                }
                Delivered::Refused(reason) => {
                    // Retrying cannot help and would block every later batch: drop it, loudly.
                    metrics::counter!("hitcount_edge_hits_refused_total").increment(batch.hits);
                    tracing::error!(%reason, sequence = batch.sequence, hits = batch.hits, "the aggregator refused a batch; dropped");
                    let _ = state.instances.with(index, |counter, store| {
                        counter.call_acknowledge(store, batch.sequence)
                    });
                    if let Some(spool) = &state.spool {
                        spool.acknowledged(boot_epoch, batch.sequence);
                    }
                }
            }
        }
    }
}

/// Runs until `stop` fires, then makes a last flush and delivers for up to
/// `SHUTDOWN_DELIVERY_MS_MAX`.
pub async fn run(state: Arc<EdgeState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut backoffs = vec![Backoff::default(); state.instances.len()];
    let window = Duration::from_millis(state.config.window_ms);
    // The first window closes one window after start, not at once.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => round(&state, &mut backoffs, None).await,
            _ = stop.changed() => break,
        }
    }
    let deadline = now_ms() + SHUTDOWN_DELIVERY_MS_MAX;
    round(&state, &mut backoffs, Some(deadline)).await;
    if let Some(spool) = &state.spool
        && let Err(error) = spool::wait(spool.settle()).await
    {
        tracing::warn!(%error, "the spool did not settle before the stop");
    }
    let left = state.unacknowledged_hits();
    if left > 0 {
        tracing::error!(
            hits = left,
            "shutting down with hits the aggregator has not acknowledged"
        );
    } else {
        tracing::info!("every hit delivered");
    }
}
