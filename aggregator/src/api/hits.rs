//! Recording hits directly and querying counts.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, ApiPath, ApiQuery, HITS_BODY_BYTES_MAX, schemas, unknown_resource};
use crate::auth::{Caller, Scope};
use crate::direct::{self, DirectHit, RecordError, Recorder};
use crate::error::{ApiError, ErrorBody, RETRY_AFTER_S};
use crate::ingest::{HitError, IngestError};
use crate::now_ms;
use crate::patterns::{Refusal, RefusalReason};
use crate::query::{self, HitsQuery, HitsResponse, SERIES_POINTS_MAX};
use crate::state::SharedState;

/// A time as RFC 3339 text or Unix milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimeInput {
    Millis(#[serde(deserialize_with = "super::extract::whole_number")] u64),
    Text(String),
}

/// One hit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HitInput {
    #[schema(schema_with = schemas::resource_id)]
    pub resource_id: String,
    #[schema(schema_with = schemas::timestamp)]
    pub timestamp: Option<TimeInput>,
    #[schema(schema_with = schemas::visitor_id)]
    pub visitor_id: Option<String>,
}

/// Up to 1000 hits at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HitBatch {
    #[schema(min_items = 1, max_items = 1000)]
    pub hits: Vec<HitInput>,
}

/// The body of `POST /hits`: one hit, or `{"hits": [...]}`.
// Parsed through `HitsFields` so that a body of neither shape gets a message naming both, not
// serde's "no variant matched".
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged, try_from = "HitsFields")]
pub enum HitsBody {
    One(HitInput),
    Many(HitBatch),
}

/// Every field of both shapes of [`HitsBody`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HitsFields {
    resource_id: Option<String>,
    timestamp: Option<TimeInput>,
    visitor_id: Option<String>,
    hits: Option<Vec<HitInput>>,
}

/// A body that has the fields of neither or both shapes of `POST /hits`.
#[derive(Debug, thiserror::Error)]
#[error("send either {{resource_id, timestamp?, visitor_id?}} or {{\"hits\": [...]}}")]
pub struct HitsShapeError;

impl TryFrom<HitsFields> for HitsBody {
    type Error = HitsShapeError;

    fn try_from(fields: HitsFields) -> Result<Self, HitsShapeError> {
        match fields {
            HitsFields {
                hits: Some(hits),
                resource_id: None,
                timestamp: None,
                visitor_id: None,
            } => Ok(Self::Many(HitBatch { hits })),
            HitsFields {
                hits: None,
                resource_id: Some(resource_id),
                timestamp,
                visitor_id,
            } => Ok(Self::One(HitInput {
                resource_id,
                timestamp,
                visitor_id,
            })),
            _ => Err(HitsShapeError),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub accepted: usize,
}

/// Reads a hit's time as sent: the rest of its checks are the domain's (`direct::record`).
fn direct_hit(hit: HitInput) -> Result<DirectHit, ApiError> {
    let timestamp_ms = match hit.timestamp {
        None => None,
        Some(TimeInput::Millis(ms)) if ms > query::TIME_MS_MAX => {
            return Err(ApiError::bad_request(
                "invalid_time",
                format!("timestamp must be at most {}", query::TIME_MS_MAX),
            ));
        }
        Some(TimeInput::Millis(ms)) => Some(ms),
        Some(TimeInput::Text(text)) => Some(query::parse_time("timestamp", &text)?),
    };
    Ok(DirectHit {
        resource_id: hit.resource_id,
        timestamp_ms,
        visitor_id: hit.visitor_id,
    })
}

impl From<HitError> for ApiError {
    fn from(error: HitError) -> Self {
        let message = error.to_string();
        match error {
            HitError::InvalidResourceId(_) => ApiError::bad_request("invalid_resource_id", message),
            HitError::UnknownResource(resource_id) => unknown_resource(&resource_id),
            // Limits relative to the clock cannot be stated in a schema: a well-formed timestamp
            // outside them is unprocessable (422), as a delta batch's window is.
            HitError::OutOfRange | HitError::OlderThanRetention(_) => ApiError::Unprocessable {
                code: "timestamp_out_of_range",
                message,
            },
            HitError::VisitorIdTooLong => ApiError::bad_request("invalid_visitor_id", message),
        }
    }
}

impl From<RecordError> for ApiError {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::HitCount => ApiError::bad_request("invalid_hit_count", error.to_string()),
            RecordError::Hit(error) => error.into(),
            RecordError::Refused(refusal) => refusal_error(&refusal),
            RecordError::Store(error) => error.into(),
            RecordError::Ingest(error) => {
                let message = match error {
                    IngestError::Overloaded => "the ingest queue is full; retry shortly",
                    IngestError::CommitFailed => "the store could not commit these hits; retry",
                    IngestError::ShuttingDown => "the aggregator is shutting down; retry",
                };
                ApiError::unavailable(message, RETRY_AFTER_S)
            }
        }
    }
}

/// The answer to a request refused for an unknown resource: 404 when its id matches no pattern,
/// else 409 `pattern_full`.
fn refusal_error(refusal: &Refusal) -> ApiError {
    match refusal.reason {
        RefusalReason::NoPattern => ApiError::NotFound(format!(
            "no resource with id {:?}, and no pattern matches it (create it with POST /resources, \
             or a pattern with POST /patterns); nothing in the request was counted",
            refusal.resource_id
        )),
        RefusalReason::PatternFull => ApiError::Conflict {
            code: "pattern_full",
            message: format!(
                "resource {:?} would be created by pattern {:?}, which has reached its \
                 resources_max; raise it or delete resources under it. Nothing in the request \
                 was counted",
                refusal.resource_id,
                refusal.pattern.as_deref().unwrap_or_default()
            ),
        },
    }
}

#[utoipa::path(
    post, path = "/hits", tag = "hits",
    request_body = HitsBody,
    responses(
        (status = 202, description = "Accepted: committed (durable mode) and visible to queries within 1 s", body = Accepted),
        (status = 400, description = "Malformed JSON, a body of neither shape, or a field outside its schema", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the ingest scope, or its grant does not cover a hit's resource (nothing was counted)", body = ErrorBody),
        (status = 404, description = "Unknown resource and no pattern matches it; nothing in the request was counted", body = ErrorBody),
        (status = 409, description = "`pattern_full`: an unknown resource's pattern has reached its resources_max; nothing in the request was counted", body = ErrorBody),
        (status = 413, description = schemas::body_over(HITS_BODY_BYTES_MAX), body = ErrorBody),
        (status = 415, description = "Body is not `application/json`", body = ErrorBody),
        (status = 422, description = schemas::timestamp_out_of_range(), body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "Overloaded or the store failed; nothing was counted, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn record(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(request): ApiJson<HitsBody, HITS_BODY_BYTES_MAX>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    caller.require(Scope::Ingest)?;
    let inputs = match request {
        HitsBody::Many(batch) => batch.hits,
        HitsBody::One(hit) => vec![hit],
    };
    let hits = inputs
        .into_iter()
        .map(direct_hit)
        .collect::<Result<Vec<_>, _>>()?;
    // A grant limited to some resources refuses the whole request, so nothing is half counted.
    for hit in &hits {
        caller.require_resource(Scope::Ingest, &hit.resource_id)?;
    }
    let recorder = Recorder {
        catalog: &state.catalog,
        store: &state.store,
        ingestor: &state.ingestor,
    };
    let accepted = direct::record(recorder, hits, now_ms()).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted })))
}

#[utoipa::path(
    get, path = "/hits/{resource_id}", tag = "hits",
    params(("resource_id" = String, Path, description = "Resource id"), HitsQuery),
    responses(
        (status = 200, description = "Count, uniques and a series over the period", body = HitsResponse),
        (status = 400, description = "A query outside its schema: window together with start_time or end_time, only one of those, an unknown parameter, an unparseable time; or a path segment that is not UTF-8", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the read scope, or its grant does not cover this resource", body = ErrorBody),
        (status = 404, description = "No such resource", body = ErrorBody),
        (status = 422, description = format!("start_time not before end_time, a granularity no longer kept for this window, or more than {SERIES_POINTS_MAX} points"), body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable and the hot tier cannot answer the window (no Redis, or a granularity other than minute); retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn query(
    State(state): State<SharedState>,
    caller: Caller,
    ApiPath(resource_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<HitsQuery>,
) -> Result<Json<HitsResponse>, ApiError> {
    caller.require_resource(Scope::Read, &resource_id)?;
    if !state.catalog.resource_exists(&resource_id) {
        return Err(unknown_resource(&resource_id));
    }
    let now_ms = now_ms();
    let plan = query::plan(query.range(), query.granularity, now_ms)?;
    let read = state
        .store
        .cells_or_stale(
            resource_id.clone(),
            plan.tier,
            (plan.start_ms, plan.end_ms),
            now_ms,
        )
        .await?;
    Ok(Json(query::fold(
        resource_id,
        &plan,
        &read.cells,
        read.stale,
    )))
}
