//! The dashboard's files: built by npm and esbuild in `aggregator/dashboard/` (its `dist/` is
//! checked in, and CI fails when it is stale) and compiled into the binary, so the aggregator
//! serves its own dashboard with nothing fetched from elsewhere at run time.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("../../dashboard/dist/index.html");
const APP_JS: &str = include_str!("../../dashboard/dist/app.js");
const APP_CSS: &str = include_str!("../../dashboard/dist/app.css");

/// Scripts, styles and requests only from this origin, no framing: the page holds an API token.
/// Styles set through the DOM (the chart's) are not inline styles, so `style-src 'self'` holds.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; \
     frame-ancestors 'none'";

/// One embedded file with its type; revalidated on every load, so an upgrade shows at once.
fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "The dashboard (sign in with an API token of read scope)", body = String, content_type = "text/html")))]
pub async fn index() -> impl IntoResponse {
    file("text/html; charset=utf-8", INDEX_HTML)
}

#[utoipa::path(get, path = "/dashboard/app.js", tag = "dashboard",
    responses((status = 200, description = "The dashboard's script", body = String, content_type = "text/javascript")))]
pub async fn script() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", APP_JS)
}

#[utoipa::path(get, path = "/dashboard/app.css", tag = "dashboard",
    responses((status = 200, description = "The dashboard's styles", body = String, content_type = "text/css")))]
pub async fn styles() -> impl IntoResponse {
    file("text/css; charset=utf-8", APP_CSS)
}
