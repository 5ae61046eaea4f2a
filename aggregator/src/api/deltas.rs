//! `POST /v1/deltas`: signed, idempotent batches from edges.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use hitcount_wire::BATCH_BYTES_MAX;
use hitcount_wire::auth::{DELTA_CONTENT_TYPE, EDGE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use serde::Serialize;
use utoipa::ToSchema;

use super::schemas;
use crate::error::{ApiError, ErrorBody, RETRY_AFTER_S};
use crate::intake::{self, Accepted, Intake, IntakeError, Signature};
use crate::merge::{MERGE_RETRY_AFTER_S, MergeError};
use crate::now_ms;
use crate::state::SharedState;

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

/// The signature headers, as sent; the intake checks them.
fn signature(headers: &HeaderMap) -> Result<Signature<'_>, ApiError> {
    let edge_id = header_text(headers, EDGE_HEADER)?;
    let timestamp_ms = header_text(headers, TIMESTAMP_HEADER)?
        .parse()
        .map_err(|_| {
            ApiError::unauthorized(format!("{TIMESTAMP_HEADER} must be Unix milliseconds"))
        })?;
    let hex = header_text(headers, SIGNATURE_HEADER)?;
    Ok(Signature {
        edge_id,
        timestamp_ms,
        hex,
    })
}

/// Only the two media types of a batch are accepted: a batch is not JSON.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with(DELTA_CONTENT_TYPE)
        || content_type.starts_with("application/octet-stream")
    {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "deltas must be sent as {DELTA_CONTENT_TYPE}"
        )))
    }
}

impl From<IntakeError> for ApiError {
    fn from(error: IntakeError) -> Self {
        let message = error.to_string();
        match error {
            IntakeError::StaleSignature
            | IntakeError::UnknownEdge
            | IntakeError::WrongSignature => ApiError::unauthorized(message),
            IntakeError::Malformed(wire) => ApiError::bad_request(wire.code(), message),
            IntakeError::WrongEdge { .. } => ApiError::Forbidden(message),
            IntakeError::WindowTooOld => ApiError::Unprocessable {
                code: "window_too_old",
                message,
            },
            IntakeError::WindowInFuture => ApiError::Unprocessable {
                code: "window_in_future",
                message,
            },
            IntakeError::Conflict => ApiError::Conflict {
                code: "sequence_conflict",
                message,
            },
            IntakeError::Merge(MergeError::Overloaded) => {
                metrics::counter!("hitcount_deltas_overloaded_total").increment(1);
                ApiError::unavailable(
                    "the merge queue is full; the batch was not applied, retry",
                    MERGE_RETRY_AFTER_S,
                )
            }
            IntakeError::Merge(MergeError::ShuttingDown) => ApiError::unavailable(
                "the aggregator is shutting down; the batch was not applied, retry",
                MERGE_RETRY_AFTER_S,
            ),
            IntakeError::Merge(MergeError::Store(error)) => {
                tracing::warn!(%error, "applying a delta failed");
                ApiError::unavailable(
                    "the store could not apply the batch; it was not applied, retry",
                    RETRY_AFTER_S,
                )
            }
        }
    }
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
        (status = 413, description = schemas::body_over(BATCH_BYTES_MAX), body = ErrorBody),
        (status = 415, description = "Wrong content type", body = ErrorBody),
        (status = 422, description = "Window too old to deduplicate, or in the future", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = schemas::deltas_unavailable(), body = ErrorBody),
    ),
    security(("edge_signature" = []))
)]
pub async fn apply(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<DeltaResponse>), ApiError> {
    check_content_type(&headers)?;
    let body = super::extract::raw_body(body, BATCH_BYTES_MAX)?;
    let intake = Intake {
        edge_keys: &state.edge_keys,
        catalog: &state.catalog,
        store: &state.store,
        merger: &state.merger,
    };
    let response = match intake::accept(intake, signature(&headers)?, &body, now_ms()).await? {
        Accepted::Applied(applied) => DeltaResponse {
            status: DeltaStatus::Applied,
            entries: Some(applied.entries),
            hits: Some(applied.hits),
            unknown_resource_entries: Some(applied.unknown_resource_entries),
            expired_entries: Some(applied.expired_entries),
        },
        Accepted::Duplicate => DeltaResponse {
            status: DeltaStatus::Duplicate,
            entries: None,
            hits: None,
            unknown_resource_entries: None,
            expired_entries: None,
        },
    };
    Ok((StatusCode::OK, Json(response)))
}
