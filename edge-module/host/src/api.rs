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

use hitcount_edge_core::beacon::{BeaconError, PURPOSE_HEADERS, is_prefetch, parse_beacon};

use crate::module::{Hit, Outcome};
use crate::spool::Spool;
use crate::{EdgeState, now_ms};

pub use hitcount_edge_core::beacon::{BEACON_BODY_BYTES_MAX, PIXEL_GIF, RESULT_HEADER};

type Shared = Arc<EdgeState>;

/// The outcomes in a fixed order, for [`HitCounters`].
const OUTCOMES: [Outcome; 6] = [
    Outcome::Counted,
    Outcome::InvalidResource,
    Outcome::Bot,
    Outcome::Prefetch,
    Outcome::Timestamp,
    Outcome::Full,
];

/// `hitcount_edge_hits_total` per result, registered once: looking a labelled counter up on every
/// hit cost more than the rest of the metrics work per request.
#[derive(Debug)]
pub(crate) struct HitCounters {
    by_outcome: [metrics::Counter; 6],
}

impl HitCounters {
    pub(crate) fn new() -> Self {
        Self {
            by_outcome: OUTCOMES.map(|outcome| {
                metrics::counter!("hitcount_edge_hits_total", "result" => result_code(outcome))
            }),
        }
    }

    fn count(&self, outcome: Outcome) {
        let index = OUTCOMES
            .iter()
            .position(|candidate| *candidate == outcome)
            .unwrap_or(0);
        self.by_outcome[index].increment(1);
    }
}

pub(crate) fn result_code(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Counted => "counted",
        Outcome::InvalidResource => "invalid-resource",
        Outcome::Bot => "bot",
        Outcome::Prefetch => "prefetch",
        Outcome::Timestamp => "timestamp",
        Outcome::Full => "full",
    }
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The parts of a request the module needs, besides the resource id.
pub(crate) fn hit_from(
    state: &EdgeState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    resource_id: String,
    timestamp_ms: Option<u64>,
) -> Hit {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let forwarded = state
        .config
        .trust_forwarded_for
        .then(|| {
            headers
                .get("x-forwarded-for")
                .and_then(|value| value.to_str().ok())
        })
        .flatten()
        .and_then(|list| list.split(',').next())
        .map(|address| address.trim().to_owned());
    let client_address =
        forwarded.unwrap_or_else(|| peer.map(|peer| peer.ip().to_string()).unwrap_or_default());
    let origin = text(header::ORIGIN);
    let site = if origin.is_empty() {
        text(header::HOST)
    } else {
        origin
    };
    let purpose = is_prefetch(
        PURPOSE_HEADERS
            .iter()
            .filter_map(|name| headers.get(*name).and_then(|value| value.to_str().ok())),
    );
    Hit {
        resource_id,
        site,
        client_address,
        user_agent: text(header::USER_AGENT),
        prefetch: purpose,
        timestamp_ms,
    }
}

pub(crate) async fn record(state: &EdgeState, hit: Hit) -> Result<Outcome, ()> {
    let spool = state.spool.as_ref();
    if spool.is_some_and(Spool::is_full) {
        metrics::counter!("hitcount_edge_hits_total", "result" => "spool-full").increment(1);
        return Ok(Outcome::Full);
    }
    let index = state.instances.pick();
    let now = now_ms();
    let (outcome, durable) = state
        .instances
        .with(index, |counter, store| {
            let outcome = counter.call_record(&mut *store, &hit, now)?;
            // Taken and queued under the instance's lock, so the journal keeps its order.
            let durable = match (spool, outcome) {
                (Some(spool), Outcome::Counted) => {
                    let records = counter.call_take_journal(&mut *store)?;
                    Some(spool.append(store.data().boot_epoch, records))
                }
                _ => None,
            };
            Ok((outcome, durable))
        })
        .map_err(|_| ())?;
    if let Some(durable) = durable
        && let Err(error) = crate::spool::wait(durable).await
    {
        // The hit is counted in memory and will be delivered; only its crash safety is lost,
        // and the metric and the log say so.
        metrics::counter!("hitcount_edge_spool_failures_total").increment(1);
        tracing::error!(%error, "the spool could not make a hit durable");
    }
    state.hit_counters.count(outcome);
    Ok(outcome)
}

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
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            BeaconError::TooLarge.code(),
            &BeaconError::TooLarge.to_string(),
        );
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let beacon = match parse_beacon(content_type, &body) {
        Ok(beacon) => beacon,
        Err(refused) => {
            let status = match refused {
                BeaconError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                BeaconError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BeaconError::Json(_) => StatusCode::BAD_REQUEST,
            };
            return error(status, refused.code(), &refused.to_string());
        }
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
        Err(()) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the counter failed; retry",
            );
        }
    };
    let mut response = match outcome {
        Outcome::Counted | Outcome::Bot | Outcome::Prefetch => {
            StatusCode::NO_CONTENT.into_response()
        }
        Outcome::InvalidResource => error(
            StatusCode::BAD_REQUEST,
            "invalid_resource_id",
            "resource ids are 1 to 64 of A-Z a-z 0-9 . _ -",
        ),
        Outcome::Timestamp => error(
            StatusCode::BAD_REQUEST,
            "invalid_timestamp",
            "timestamp must be within the last 24 hours and at most 5 minutes ahead",
        ),
        Outcome::Full => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "full",
                "the edge cannot reach the aggregator and holds all it can; retry",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
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
        None => "invalid-resource",
        Some((resource_id, timestamp)) => {
            let hit = hit_from(&state, &headers, Some(peer), resource_id, timestamp);
            match record(&state, hit).await {
                Ok(outcome) => result_code(outcome),
                Err(()) => "unavailable",
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
        return error(
            StatusCode::NOT_FOUND,
            "not_configured",
            "start the edge with --aggregator-token to serve counts",
        );
    };
    if hitcount_wire::validate_resource_id(&resource_id).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_resource_id",
            "resource ids are 1 to 64 of A-Z a-z 0-9 . _ -",
        );
    }
    let local = state.unacknowledged_hits_for(&resource_id);
    let url = format!(
        "{}/hits/{resource_id}?{}",
        state.config.aggregator,
        query.unwrap_or_default()
    );
    let response = match state.client.get(url).bearer_auth(token).send().await {
        Ok(response) => response,
        Err(_) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "aggregator_unreachable",
                "the aggregator did not answer",
            );
        }
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut body: Value = match response.json().await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "aggregator_unreadable",
                "the aggregator's answer was not JSON",
            );
        }
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
        return error(StatusCode::NOT_FOUND, "not_found", "no such route");
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
    error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub fn router(state: Shared) -> Router {
    // Beacons come from any site that embeds the snippet. In proxy mode the origin's own
    // responses keep the origin's CORS headers, so the layer covers the beacon routes only.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(86_400));
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
