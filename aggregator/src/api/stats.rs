//! Reads across resources.

use axum::Json;
use axum::extract::State;

use super::ApiQuery;
use super::unknown_resource;
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, ErrorBody};
use crate::now_ms;
use crate::query::{self, SERIES_POINTS_MAX};
use crate::state::SharedState;
use crate::stats::{self, SeriesError, SeriesQuery, SeriesResponse, TopQuery, TopResponse};
use crate::store::STALE_READ_RESOURCES_MAX;

#[utoipa::path(
    get, path = "/stats/top", tag = "stats",
    params(TopQuery),
    responses(
        (status = 200, description = "The resources with the most hits (or visitors) in the period, and the total of every resource under the prefix", body = TopResponse),
        (status = 400, description = "A query outside its schema: window together with start_time or end_time, only one of those, an unknown parameter, an unparseable time, limit out of range, a prefix with characters no resource id has", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the read scope (a grant limited to some resources ranks only those)", body = ErrorBody),
        (status = 422, description = format!("start_time not before end_time, a granularity no longer kept for this window, or a period of more than {SERIES_POINTS_MAX} buckets"), body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = format!("The store is unavailable and the hot tier cannot answer the period (no Redis or an unhealthy one, a granularity other than minute, a period ending before the last hour, or more than {STALE_READ_RESOURCES_MAX} resources selected: then the code is `stale_read_too_wide`, and a prefix selecting fewer answers); retry"), body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn top(
    State(state): State<SharedState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TopQuery>,
) -> Result<Json<TopResponse>, ApiError> {
    caller.require(Scope::Read)?;
    let now_ms = now_ms();
    let plan = query::plan(query.range(), query.granularity, now_ms)?;
    let request = query.request()?;
    let readable = caller.resources(Scope::Read);
    let top = stats::top(
        &state.catalog,
        &state.store,
        request,
        &readable,
        &plan,
        now_ms,
    )
    .await?;
    Ok(Json(top))
}

#[utoipa::path(
    get, path = "/stats/series", tag = "stats",
    params(SeriesQuery),
    responses(
        (status = 200, description = "One series over the selected resources: hits summed, visitors united", body = SeriesResponse),
        (status = 400, description = "A query outside its schema: window together with start_time or end_time, only one of those, an unknown parameter, an unparseable time, a prefix or resource id with characters no resource id has, too many resource ids", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the read scope, or its grant does not cover a listed resource", body = ErrorBody),
        (status = 404, description = "A listed resource does not exist", body = ErrorBody),
        (status = 422, description = format!("start_time not before end_time, a granularity no longer kept for this window, or more than {SERIES_POINTS_MAX} points"), body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = format!("The store is unavailable and the hot tier cannot answer the period (no Redis or an unhealthy one, a granularity other than minute, a period ending before the last hour, or more than {STALE_READ_RESOURCES_MAX} resources selected: then the code is `stale_read_too_wide`, and a prefix selecting fewer answers); retry"), body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn series(
    State(state): State<SharedState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<SeriesQuery>,
) -> Result<Json<SeriesResponse>, ApiError> {
    caller.require(Scope::Read)?;
    let now_ms = now_ms();
    let plan = query::plan(query.range(), query.granularity, now_ms)?;
    let selection = query.selection()?;
    let readable = caller.resources(Scope::Read);
    let series = stats::series(
        &state.catalog,
        &state.store,
        selection,
        &readable,
        &plan,
        now_ms,
    )
    .await?;
    Ok(Json(series))
}

impl From<SeriesError> for ApiError {
    fn from(error: SeriesError) -> Self {
        match error {
            SeriesError::UnknownResource(resource_id) => unknown_resource(&resource_id),
            SeriesError::NotGranted(resource_id) => ApiError::Forbidden(format!(
                "this token's `read` scope does not cover the resource {resource_id:?}"
            )),
            SeriesError::Store(error) => error.into(),
        }
    }
}
