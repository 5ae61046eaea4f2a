//! Signed delta batches, as an edge sends them.

use hitcount_aggregator::now_ms;
use hitcount_wire::{DeltaBatch, DeltaEntry, DeltaHeader, MINUTE_MS, Sketch};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

use crate::api::body;
use crate::server::Server;
use crate::{EDGE_ID, EDGE_SECRET};

/// A delta batch for `EDGE_ID` in the current minute.
pub fn batch(sequence: u64, entries: &[(&str, u64, &[&str])]) -> DeltaBatch {
    batch_from(EDGE_ID, 1, sequence, entries)
}

pub fn batch_from(
    edge_id: &str,
    boot_epoch: u64,
    sequence: u64,
    entries: &[(&str, u64, &[&str])],
) -> DeltaBatch {
    let now = now_ms();
    let minute = now / MINUTE_MS;
    let mut list: Vec<DeltaEntry> = entries
        .iter()
        .map(|(resource_id, hits, visitors)| {
            let mut sketch = Sketch::new();
            for visitor in *visitors {
                sketch.insert(visitor.as_bytes());
            }
            DeltaEntry {
                resource_id: (*resource_id).to_owned(),
                minute,
                hits: *hits,
                visitors: sketch,
            }
        })
        .collect();
    list.sort_by(|a, b| {
        (a.resource_id.as_str(), a.minute).cmp(&(b.resource_id.as_str(), b.minute))
    });
    DeltaBatch {
        header: DeltaHeader {
            edge_id: edge_id.to_owned(),
            boot_epoch,
            sequence,
            window_start_ms: now - 1_000,
            window_end_ms: now,
        },
        entries: list,
    }
}

/// Posts raw bytes as a delta, signed by `edge_id` with `secret` at `timestamp_ms`.
pub async fn post_delta_bytes(
    server: &Server,
    edge_id: &str,
    secret: &str,
    timestamp_ms: u64,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let response = signed_delta(
        &server.client,
        &server.base,
        edge_id,
        secret,
        timestamp_ms,
        bytes,
    )
    .await
    .expect("request");
    body(response).await
}

/// Sends a signed delta to the aggregator at `base`; `Err` when it is not there (tests that stop
/// aggregators on purpose resend elsewhere).
pub async fn signed_delta(
    client: &Client,
    base: &str,
    edge_id: &str,
    secret: &str,
    timestamp_ms: u64,
    bytes: Vec<u8>,
) -> reqwest::Result<Response> {
    let signature = hitcount_wire::auth::sign(secret.as_bytes(), edge_id, timestamp_ms, &bytes);
    client
        .post(format!("{base}/v1/deltas"))
        .header("content-type", hitcount_wire::auth::DELTA_CONTENT_TYPE)
        .header(hitcount_wire::auth::EDGE_HEADER, edge_id)
        .header(
            hitcount_wire::auth::TIMESTAMP_HEADER,
            timestamp_ms.to_string(),
        )
        .header(hitcount_wire::auth::SIGNATURE_HEADER, signature)
        .body(bytes)
        .send()
        .await
}

pub async fn post_delta(server: &Server, batch: &DeltaBatch) -> (StatusCode, Value) {
    post_delta_bytes(
        server,
        EDGE_ID,
        EDGE_SECRET,
        now_ms(),
        batch.encode().expect("encodes"),
    )
    .await
}
