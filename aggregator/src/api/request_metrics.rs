//! Request metrics for `/metrics`: `hitcount_http_requests_total` by method, route template and
//! status, and `hitcount_http_request_duration_seconds` by method and route.
//!
//! A handle looked up by its labels costs a key built from them and a search of the registry,
//! on every request (about 5% of the aggregator's CPU under `POST /hits` load in a profile).
//! Each worker thread keeps the handles of the labels it has seen, so a request that repeats
//! labels costs an atomic add and a histogram sample. Per thread, not shared: no lock is taken
//! on the way of a request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram, SharedString};

/// Route templates: the labels whose handles are kept.
const ROUTES: &[&str] = &[
    "/hits",
    "/hits/{resource_id}",
    "/stats/top",
    "/stats/series",
    "/export",
    "/import",
    "/v1/deltas",
    "/resources",
    "/resources/{resource_id}",
    "/tokens",
    "/tokens/{token_id}",
    "/edge-keys",
    "/edge-keys/{edge_id}",
    "/patterns",
    "/patterns/{pattern}",
    "/unknown-resources",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/",
    "/dashboard/app.js",
    "/dashboard/app.css",
    "/dashboard/config.json",
];

/// Handles one worker thread keeps. The labels are bounded already (the routes above, three
/// methods, the statuses handlers answer); the bound keeps a thread's memory fixed if a status
/// the code never meant appears.
const KEPT_HANDLES_MAX: usize = 1_024;

/// (method, route, status): the labels of a kept pair of handles.
type Labels = (&'static str, &'static str, u16);

thread_local! {
    static KEPT: RefCell<HashMap<Labels, (Counter, Histogram)>> = RefCell::default();
}

/// Middleware: counts the request and records its latency.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route: Result<&'static str, String> = match request.extensions().get::<MatchedPath>() {
        Some(path) => ROUTES
            .iter()
            .copied()
            .find(|route| *route == path.as_str())
            .ok_or_else(|| path.as_str().to_owned()),
        None => Ok("unmatched"),
    };
    let method: Result<&'static str, String> = match *request.method() {
        Method::GET => Ok("GET"),
        Method::POST => Ok("POST"),
        Method::DELETE => Ok("DELETE"),
        ref other => Err(other.as_str().to_owned()),
    };
    let response = next.run(request).await;
    let status = response.status();
    let seconds = started.elapsed().as_secs_f64();
    match (method, route) {
        (Ok(method), Ok(route)) => record_kept((method, route, status.as_u16()), status, seconds),
        (method, route) => {
            let (counter, histogram) = handles(
                method.map_or_else(SharedString::from, SharedString::from),
                route.map_or_else(SharedString::from, SharedString::from),
                status,
            );
            counter.increment(1);
            histogram.record(seconds);
        }
    }
    response
}

/// Records through this thread's kept handles of `labels`, else looks them up (and keeps them
/// while there is room). Recorded in place: a handle handed out would be an `Arc` that every
/// thread's requests count up and down.
fn record_kept(labels: Labels, status: StatusCode, seconds: f64) {
    KEPT.with_borrow_mut(|kept| {
        if let Some((counter, histogram)) = kept.get(&labels) {
            counter.increment(1);
            histogram.record(seconds);
            return;
        }
        let (method, route, _) = labels;
        let (counter, histogram) = handles(method.into(), route.into(), status);
        counter.increment(1);
        histogram.record(seconds);
        if kept.len() < KEPT_HANDLES_MAX {
            kept.insert(labels, (counter, histogram));
        }
    });
}

/// The handles of the labels, looked up in the recorder.
fn handles(method: SharedString, route: SharedString, status: StatusCode) -> (Counter, Histogram) {
    let status: SharedString = match status {
        StatusCode::OK => "200".into(),
        StatusCode::ACCEPTED => "202".into(),
        other => other.as_u16().to_string().into(),
    };
    let counter = metrics::counter!("hitcount_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status);
    let histogram = metrics::histogram!("hitcount_http_request_duration_seconds", "method" => method, "route" => route);
    (counter, histogram)
}
