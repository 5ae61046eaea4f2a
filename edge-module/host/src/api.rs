//! The public beacon endpoints, read-your-writes counts, and operations.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::cors::{Any, CorsLayer};

use hitcount_edge_core::beacon::{BeaconError, parse_beacon};

use crate::EdgeState;
use crate::counting::{hit_from, record, result_code};
use crate::error::EdgeError;
use crate::module::Outcome;

pub use hitcount_edge_core::beacon::{BEACON_BODY_BYTES_MAX, PIXEL_GIF, RESULT_HEADER};

type Shared = Arc<EdgeState>;

/// `POST /hit`: a beacon from `navigator.sendBeacon` (text/plain) or fetch (application/json).
async fn post_hit(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    // axum's `to_bytes` stops reading at the limit, so an oversized body is refused without
    // being buffered, with the JSON error every other refusal has (a body-limit layer would answer
    // in plain text, and cost a boxed service per beacon). A body that fails to arrive at all
    // (the client went away) gets the same answer, which nobody reads.
    let Ok(body) = axum::body::to_bytes(body, BEACON_BODY_BYTES_MAX).await else {
        return EdgeError::Beacon(BeaconError::TooLarge).into_response();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let beacon = match parse_beacon(content_type, &body) {
        Ok(beacon) => beacon,
        Err(refused) => return EdgeError::from(refused).into_response(),
    };
    let hit = hit_from(
        &state,
        headers,
        Some(peer),
        beacon.resource_id,
        beacon.timestamp,
    );
    let outcome = match record(&state, hit).await {
        Ok(outcome) => outcome,
        Err(_trapped) => return EdgeError::Unavailable.into_response(),
    };
    let mut response = match outcome {
        Outcome::Counted | Outcome::Bot | Outcome::Prefetch => {
            StatusCode::NO_CONTENT.into_response()
        }
        Outcome::InvalidResourceId => EdgeError::InvalidResourceId.into_response(),
        Outcome::InvalidTimestamp => EdgeError::InvalidTimestamp.into_response(),
        Outcome::Full => EdgeError::Full.into_response(),
    };
    response.headers_mut().insert(
        RESULT_HEADER,
        HeaderValue::from_static(result_code(outcome)),
    );
    response
}

#[derive(Debug, Deserialize)]
struct PixelQuery {
    r: Option<String>,
    t: Option<u64>,
}

/// `GET /hit.gif?r=RESOURCE`: for pages without JavaScript. Always the pixel; the header says
/// what became of the hit.
async fn pixel(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<PixelQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = match query
        .ok()
        .and_then(|Query(query)| query.r.map(|r| (r, query.t)))
    {
        None => "invalid_resource_id",
        Some((resource_id, timestamp)) => {
            let hit = hit_from(&state, &headers, Some(peer), resource_id, timestamp);
            match record(&state, hit).await {
                Ok(outcome) => result_code(outcome),
                Err(_trapped) => EdgeError::Unavailable.code(),
            }
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, max-age=0"),
            (header::HeaderName::from_static(RESULT_HEADER), result),
        ],
        PIXEL_GIF.as_slice(),
    )
        .into_response()
}

/// `GET /hits/{resource_id}`: the aggregator's answer plus this edge's hits it has not
/// acknowledged yet, so a page that just sent a beacon sees it counted.
async fn read_your_writes(
    State(state): State<Shared>,
    Path(resource_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(token) = &state.config.aggregator_token else {
        return EdgeError::NotConfigured.into_response();
    };
    if hitcount_wire::validate_resource_id(&resource_id).is_err() {
        return EdgeError::InvalidResourceId.into_response();
    }
    let local = state.unacknowledged_hits_for(&resource_id);
    let url = format!(
        "{}/hits/{resource_id}?{}",
        state.config.aggregator,
        query.unwrap_or_default()
    );
    let response = match state.client.get(url).bearer_auth(token).send().await {
        Ok(response) => response,
        Err(_) => return EdgeError::AggregatorUnreachable.into_response(),
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut body: Value = match response.json().await {
        Ok(body) => body,
        Err(_) => return EdgeError::AggregatorUnreadable.into_response(),
    };
    if status == StatusCode::OK
        && let Some(count) = body.get("count").and_then(Value::as_u64)
    {
        body["count"] = json!(count + local);
        body["unacknowledged"] = json!(local);
    }
    (status, Json(body)).into_response()
}

/// The beacon snippet (`sdk-js`, built and checked in under 1 KB gzipped), served by every edge so
/// a site can embed `<script src="https://edge/hitcount.js">`.
pub const BEACON_SCRIPT: &str = include_str!("../../../sdk-js/dist/hitcount.js");
/// The demo single-page app `--dev` serves at `/demo`.
const DEMO_PAGE: &str = include_str!("../demo/index.html");

async fn beacon_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        BEACON_SCRIPT,
    )
        .into_response()
}

async fn demo_page(State(state): State<Shared>) -> Response {
    if !state.config.demo {
        return EdgeError::NotFound.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DEMO_PAGE,
    )
        .into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn not_found() -> Response {
    EdgeError::NotFound.into_response()
}

pub fn router(state: Shared) -> Router {
    // Beacons come from any site that embeds the snippet. In proxy mode the origin's own
    // responses keep the origin's CORS headers, so the layer covers the beacon routes only.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(
            hitcount_edge_core::beacon::CORS_MAX_AGE_S,
        ));
    let beacons = Router::new()
        .route("/hit", post(post_hit))
        .route("/hit.gif", get(pixel))
        .route("/hits/{resource_id}", get(read_your_writes))
        .route("/hitcount.js", get(beacon_script))
        .layer(cors);
    let router = Router::new()
        .merge(beacons)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/demo", get(demo_page))
        .route("/demo/{*page}", get(demo_page));
    // In proxy mode whatever is not the edge's own goes to the origin.
    let router = if state.config.proxy.is_some() {
        router.fallback(crate::proxy::forward)
    } else {
        router.fallback(not_found)
    };
    router.with_state(state)
}
