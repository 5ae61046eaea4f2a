//! `POST /v1/deltas`: signed, idempotent batches from edges.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use hitcount_wire::auth::{
    DELTA_CONTENT_TYPE, EDGE_HEADER, SIGNATURE_HEADER, SIGNATURE_SKEW_MS_MAX, TIMESTAMP_HEADER,
};
use hitcount_wire::{BATCH_BYTES_MAX, DeltaBatch};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::merge::{MERGE_RETRY_AFTER_S, MergeError};
use crate::now_ms;
use crate::patterns::{self, Admission};
use crate::state::SharedState;
use crate::store::{ApplyOutcome, BatchKey, DELTA_AGE_MS_MAX, StoreError};

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeltaStatus {
    /// Merged now.
    Applied,
    /// Merged before; this replay changed nothing.
    Duplicate,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeltaResponse {
    pub status: DeltaStatus,
    /// Entries merged (absent for duplicates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// Hits merged (absent for duplicates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hits: Option<u64>,
    /// Entries refused because their resource does not exist and no pattern created it (none
    /// matches, or the pattern is full; see `GET /unknown-resources`), or because it was deleted
    /// meanwhile. They are not counted and need no retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_resource_entries: Option<u64>,
    /// Entries older than their resource's retention; not counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_entries: Option<u64>,
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized(format!("missing {name} header")))
}

/// Checks the edge signature and returns the edge id that signed.
fn authenticate(
    state: &SharedState,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: u64,
) -> Result<String, ApiError> {
    let edge_id = header_text(headers, EDGE_HEADER)?;
    let timestamp_ms: u64 = header_text(headers, TIMESTAMP_HEADER)?
        .parse()
        .map_err(|_| {
            ApiError::unauthorized(format!("{TIMESTAMP_HEADER} must be Unix milliseconds"))
        })?;
    let signature = header_text(headers, SIGNATURE_HEADER)?;
    if timestamp_ms.abs_diff(now_ms) > SIGNATURE_SKEW_MS_MAX {
        return Err(ApiError::unauthorized(
            "the request timestamp is more than 5 minutes from the aggregator's clock",
        ));
    }
    let key = state
        .edge_keys
        .get(edge_id)
        .ok_or_else(|| ApiError::unauthorized("unknown or revoked edge key"))?;
    if !hitcount_wire::auth::verify(&key.secret, edge_id, timestamp_ms, body, signature) {
        return Err(ApiError::unauthorized(
            "the signature does not match the body",
        ));
    }
    Ok(edge_id.to_owned())
}

#[utoipa::path(
    post, path = "/v1/deltas", tag = "edges",
    request_body(content = Vec<u8>, content_type = "application/vnd.hitcount.delta",
                 description = "An encoded delta batch (see ARCHITECTURE.md, wire format)"),
    responses(
        (status = 200, description = "Applied, or a duplicate of a batch already applied", body = DeltaResponse),
        (status = 400, description = "Malformed batch; the error code names the fault", body = ErrorBody),
        (status = 401, description = "Missing, stale or wrong signature", body = ErrorBody),
        (status = 403, description = "The batch names another edge than the key that signed it", body = ErrorBody),
        (status = 409, description = "This (edge, boot epoch, sequence) was applied with a different body", body = ErrorBody),
        (status = 413, description = "Body over 8 MiB", body = ErrorBody),
        (status = 415, description = "Wrong content type", body = ErrorBody),
        (status = 422, description = "Window too old to deduplicate, or in the future", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "The store is unavailable, or more entries wait to be merged than the store merged in the last 2 s (at least 65,536, at most 2,000,000); not applied; see Retry-After", body = ErrorBody),
    ),
    security(("edge_signature" = []))
)]
pub async fn apply(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<DeltaResponse>), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !(content_type.starts_with(DELTA_CONTENT_TYPE)
        || content_type.starts_with("application/octet-stream"))
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "deltas must be sent as {DELTA_CONTENT_TYPE}"
        )));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit_bytes: BATCH_BYTES_MAX,
            }
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
    let now = now_ms();
    let signer = authenticate(&state, &headers, &body, now)?;
    let batch = DeltaBatch::decode(&body).map_err(|error| {
        metrics::counter!("hitcount_deltas_rejected_total", "reason" => error.code()).increment(1);
        ApiError::bad_request(error.code(), format!("malformed delta batch: {error}"))
    })?;
    if batch.header.edge_id != signer {
        return Err(ApiError::Forbidden(format!(
            "the batch is from edge {:?} but was signed by {signer:?}",
            batch.header.edge_id
        )));
    }
    if batch.header.window_end_ms + DELTA_AGE_MS_MAX < now {
        return Err(ApiError::Unprocessable {
            code: "window_too_old",
            message:
                "the batch's window ended more than 7 days ago; it can no longer be deduplicated"
                    .to_owned(),
        });
    }
    if batch.header.window_start_ms > now + SIGNATURE_SKEW_MS_MAX {
        return Err(ApiError::Unprocessable {
            code: "window_in_future",
            message: "the batch's window starts in the future; check the edge's clock".to_owned(),
        });
    }
    let key = BatchKey {
        edge_id: batch.header.edge_id.clone(),
        boot_epoch: batch.header.boot_epoch,
        sequence: batch.header.sequence,
        body_sha256: Sha256::digest(&body).into(),
    };
    let unavailable = |error: StoreError| {
        tracing::warn!(%error, edge_id = %signer, "applying a delta failed");
        ApiError::Unavailable {
            message: "the store could not apply the batch; it was not applied, retry".to_owned(),
            retry_after_s: 1,
        }
    };
    // Resources the cache lacks are created first where a pattern allows; the rest are left out
    // of the merge, so that what is reported refused is exactly what was not counted.
    let missing = state.catalog.missing_in(&batch.entries);
    let mut entries = batch.entries;
    let refusals = if missing.is_empty() {
        Vec::new()
    } else {
        let refusals = state
            .catalog
            .admit(&state.store, missing, Admission::WhatFits, now)
            .await
            .map_err(unavailable)?;
        let refused = patterns::refused_ids(&refusals);
        entries.retain(|entry| !refused.contains(entry.resource_id.as_str()));
        refusals
    };
    let outcome = state
        .merger
        .submit(entries, Some(key))
        .await
        .map_err(|error| match error {
            MergeError::Overloaded => {
                metrics::counter!("hitcount_deltas_overloaded_total").increment(1);
                ApiError::Unavailable {
                    message: "the merge queue is full; the batch was not applied, retry".to_owned(),
                    retry_after_s: MERGE_RETRY_AFTER_S,
                }
            }
            MergeError::ShuttingDown => ApiError::Unavailable {
                message: "the aggregator is shutting down; the batch was not applied, retry"
                    .to_owned(),
                retry_after_s: MERGE_RETRY_AFTER_S,
            },
            MergeError::Store(error) => unavailable(error),
        })?;
    match outcome {
        ApplyOutcome::Applied(mut applied) => {
            metrics::counter!("hitcount_deltas_applied_total").increment(1);
            metrics::counter!("hitcount_delta_hits_applied_total").increment(applied.hits);
            // Counted only once applied: a replay answers `duplicate` and refuses nothing again.
            state.catalog.record_refusals(&refusals, now);
            if applied.unknown_resource_hits > 0 {
                // Known when admitted, gone when merged: deleted meanwhile.
                metrics::counter!("hitcount_resources_refused_total", "reason" => "deleted")
                    .increment(applied.unknown_resource_hits);
            }
            applied.unknown_resource_entries +=
                refusals.iter().map(|refusal| refusal.entries).sum::<u64>();
            tracing::debug!(edge_id = %signer, sequence = batch.header.sequence, hits = applied.hits, "delta applied");
            Ok((
                StatusCode::OK,
                Json(DeltaResponse {
                    status: DeltaStatus::Applied,
                    entries: Some(applied.entries),
                    hits: Some(applied.hits),
                    unknown_resource_entries: Some(applied.unknown_resource_entries),
                    expired_entries: Some(applied.expired_entries),
                }),
            ))
        }
        ApplyOutcome::Duplicate => {
            metrics::counter!("hitcount_deltas_duplicate_total").increment(1);
            Ok((
                StatusCode::OK,
                Json(DeltaResponse {
                    status: DeltaStatus::Duplicate,
                    entries: None,
                    hits: None,
                    unknown_resource_entries: None,
                    expired_entries: None,
                }),
            ))
        }
        ApplyOutcome::Conflict => {
            metrics::counter!("hitcount_deltas_conflict_total").increment(1);
            Err(ApiError::Conflict {
                code: "sequence_conflict",
                message: "this edge, boot epoch and sequence were applied with a different body"
                    .to_owned(),
            })
        }
    }
}
