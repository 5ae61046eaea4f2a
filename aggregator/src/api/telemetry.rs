//! The span of each request. With traces on (`--otlp-endpoint`) it is exported, named by method
//! and route, and continues the trace the request's `traceparent` names (an edge's delta
//! delivery); off, it is the debug-level span `tower_http` makes by default.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use tower_http::trace::{DefaultOnResponse, OnResponse};
use tracing::Span;
use tracing::field::Empty;

pub fn request_span(request: &Request) -> Span {
    if !hitcount_process::traces_on() {
        return tracing::debug_span!("request", method = %request.method(), uri = %request.uri());
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    hitcount_process::continue_trace(&span, request.headers());
    span
}

/// Records the status on the request's span, then logs as `tower_http` does by default.
pub fn record_response(response: &Response, latency: Duration, span: &Span) {
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    DefaultOnResponse::default().on_response(response, latency, span);
}
