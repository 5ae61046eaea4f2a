//! `GET /export`: the counts of a period as a file, streamed.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::ApiQuery;
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, ErrorBody};
use crate::export::{self, ExportQuery};
use crate::now_ms;
use crate::query::SERIES_POINTS_MAX;
use crate::state::SharedState;
use crate::stats::checked_prefix;

#[utoipa::path(
    get, path = "/export", tag = "stats",
    params(ExportQuery),
    responses(
        (status = 200, description = "The cells of every resource under the prefix over the period, sorted by resource: CSV (`resource_id,start_time,granularity,count,uniques`) or NDJSON (each resource's record, then its cells with their sketches, which POST /import takes back). Streamed; a store failure midway cuts the transfer short rather than end it early", content(
            (String = "text/csv"),
            (String = "application/x-ndjson"),
        )),
        (status = 400, description = "A query outside its schema: window together with start_time or end_time, only one of those, an unknown parameter, an unparseable time, a prefix with characters no resource id has", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the read scope (a grant limited to some resources exports only those)", body = ErrorBody),
        (status = 422, description = format!("start_time not before end_time, a granularity no longer kept for this window, or more than {SERIES_POINTS_MAX} buckets of one granularity"), body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<SharedState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let now_ms = now_ms();
    let export = query.export(now_ms)?;
    let readable = caller.resources(Scope::Read);
    let mut resource_ids = state
        .catalog
        .resource_ids_under(checked_prefix(query.prefix.as_deref())?);
    resource_ids.retain(|resource_id| readable.allows(resource_id));
    let format = export.format;
    let chunks = export::start(
        &state.catalog,
        state.store.clone(),
        resource_ids,
        export,
        now_ms,
    )
    .await?;
    let body = Body::from_stream(
        ReceiverStream::new(chunks).map(|chunk| chunk.map_err(std::io::Error::other)),
    );
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}
