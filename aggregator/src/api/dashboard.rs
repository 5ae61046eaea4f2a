//! The dashboard's files: built by npm and esbuild in `aggregator/dashboard/` (its `dist/` is
//! checked in, and CI fails when it is stale) and compiled into the binary, so the aggregator
//! serves its own dashboard with nothing fetched from elsewhere at run time.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::SharedState;

const INDEX_HTML: &str = include_str!("../../dashboard/dist/index.html");
const APP_JS: &str = include_str!("../../dashboard/dist/app.js");
const APP_CSS: &str = include_str!("../../dashboard/dist/app.css");

/// Scripts, styles and requests only from this origin, no framing: the page holds a token. With
/// `--oidc-client-id` the page also talks to the identity provider's origin (its discovery
/// document and token endpoint); it leaves for the provider's sign-in page by navigation, which
/// this policy does not govern. Styles set through the DOM (the chart's) are not inline styles,
/// so `style-src 'self'` holds.
fn content_security_policy(state: &SharedState) -> String {
    let provider = sign_in(state)
        .and_then(|sign_in| reqwest::Url::parse(&sign_in.issuer).ok())
        .map(|issuer| format!(" {}", issuer.origin().ascii_serialization()))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{provider}; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// One embedded file with its type; revalidated on every load, so an upgrade shows at once.
fn file(
    state: &SharedState,
    content_type: &'static str,
    body: &'static str,
) -> impl IntoResponse + use<> {
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
            (
                header::CONTENT_SECURITY_POLICY,
                content_security_policy(state),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
        body,
    )
}

#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "The dashboard (sign in with an API token of read scope, or through the identity provider with --oidc-client-id)", body = String, content_type = "text/html")))]
pub async fn index(State(state): State<SharedState>) -> impl IntoResponse {
    file(&state, "text/html; charset=utf-8", INDEX_HTML)
}

#[utoipa::path(get, path = "/dashboard/app.js", tag = "dashboard",
    responses((status = 200, description = "The dashboard's script", body = String, content_type = "text/javascript")))]
pub async fn script(State(state): State<SharedState>) -> impl IntoResponse {
    file(&state, "text/javascript; charset=utf-8", APP_JS)
}

#[utoipa::path(get, path = "/dashboard/app.css", tag = "dashboard",
    responses((status = 200, description = "The dashboard's styles", body = String, content_type = "text/css")))]
pub async fn styles(State(state): State<SharedState>) -> impl IntoResponse {
    file(&state, "text/css; charset=utf-8", APP_CSS)
}

/// How the dashboard may sign in, read by it as it loads.
#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardConfig {
    /// With `--oidc-client-id`: sign-in through the identity provider (authorization code with
    /// PKCE), beside the API token form; null: API tokens only.
    pub oidc: Option<DashboardSignIn>,
}

/// The identity provider the dashboard signs in through, as a public client.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardSignIn {
    /// The issuer, whose discovery document names the authorization and token endpoints.
    pub issuer: String,
    pub client_id: String,
    /// The scopes asked for, space-separated.
    pub scope: String,
}

fn sign_in(state: &SharedState) -> Option<DashboardSignIn> {
    let oidc = state.config.oidc.as_ref()?;
    let client = oidc.dashboard_client.as_ref()?;
    Some(DashboardSignIn {
        issuer: oidc.issuer.clone(),
        client_id: client.client_id.clone(),
        scope: client.scope.clone(),
    })
}

#[utoipa::path(get, path = "/dashboard/config.json", tag = "dashboard",
    responses((status = 200, description = "How the dashboard signs in (no token needed)", body = DashboardConfig)))]
pub async fn config(State(state): State<SharedState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(DashboardConfig {
            oidc: sign_in(&state),
        }),
    )
}
