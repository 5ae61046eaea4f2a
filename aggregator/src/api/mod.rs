//! HTTP routes, the JSON extractor that turns every rejection into an [`ApiError`], and the
//! OpenAPI document generated from the handlers' annotations.

mod admin;
mod dashboard;
mod deltas;
mod export;
mod extract;
mod health;
mod hits;
mod import;
mod patterns;
mod request_metrics;
mod resources;
mod schemas;
mod stats;
mod telemetry;

use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

pub use self::extract::{ApiJson, ApiPath, ApiQuery};
pub use crate::direct::HITS_PER_REQUEST_MAX;
use crate::error::{ApiError, ErrorBody};
pub use crate::ingest::VISITOR_ID_CHARS_MAX;
use crate::state::SharedState;

/// Resource patterns one token may be limited to (`POST /tokens`' `resources`).
pub const TOKEN_RESOURCES_MAX: usize = 100;
/// Body limit of JSON requests other than `POST /hits`.
pub const JSON_BODY_BYTES_MAX: usize = 64 * 1024;
/// Body limit of `POST /hits`.
pub const HITS_BODY_BYTES_MAX: usize = 1024 * 1024;
// The request limits `schemas.rs` states and more than one handler file checks live here, in the
// parent of both, so that no handler file and the schemas import each other.

pub use crate::catalog::{NAME_CHARS_MAX, RETENTION_DAYS_MAX};
/// Most resources one list page returns.
pub const LIST_PAGE_MAX: usize = 1_000;
/// Longest edge secret accepted through the API.
pub const EDGE_SECRET_BYTES_MAX: usize = 256;

/// The answer for a resource id nobody created (or that was deleted), for every handler alike.
pub fn unknown_resource(resource_id: &str) -> ApiError {
    ApiError::NotFound(format!("no resource with id {resource_id:?}"))
}

/// The name as given is checked (what the document's `name` schema states), and stored trimmed.
pub fn validate_name(name: &str) -> Result<String, ApiError> {
    let Some(name) = crate::catalog::checked_name(name) else {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!(
                "name must be 1 to {NAME_CHARS_MAX} characters, not all whitespace, without control characters"
            ),
        ));
    };
    Ok(name)
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "hitcount aggregator",
        description = "Exact hit counts and mergeable unique visitors over any time window."
    ),
    paths(
        resources::create,
        resources::list,
        resources::get_one,
        resources::delete_one,
        hits::record,
        hits::query,
        stats::top,
        stats::series,
        export::export,
        import::import,
        deltas::apply,
        admin::create_token,
        admin::list_tokens,
        admin::delete_token,
        admin::create_edge_key,
        admin::list_edge_keys,
        admin::delete_edge_key,
        patterns::create,
        patterns::list,
        patterns::get_one,
        patterns::delete_one,
        patterns::unknown_resources,
        health::healthz,
        health::readyz,
        health::metrics,
        health::openapi,
        dashboard::index,
        dashboard::script,
        dashboard::styles,
        dashboard::config,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// The document as served. utoipa 5.5 writes a link's fields in snake case (`operation_id`);
/// OpenAPI spells them in camel case, and tools ignore links spelled otherwise.
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let operations = document
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|methods| methods.values_mut());
    for operation in operations {
        let links = operation
            .get_mut("responses")
            .and_then(serde_json::Value::as_object_mut)
            .into_iter()
            .flat_map(|responses| responses.values_mut())
            .filter_map(|response| response.get_mut("links"))
            .filter_map(serde_json::Value::as_object_mut)
            .flat_map(|links| links.values_mut())
            .filter_map(serde_json::Value::as_object_mut);
        for link in links {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
    document
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`POST /tokens`), or with --oidc-issuer a JWT of that issuer \
                         (RS256 or ES256) whose roles claim holds hitcount.read, hitcount.ingest \
                         or hitcount.admin",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "edge_signature",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    hitcount_wire::auth::SIGNATURE_HEADER,
                    "HMAC-SHA256 (hex) of `{edge id}\\n{timestamp ms}\\n{body}` with the edge key; \
                     also send x-hitcount-edge and x-hitcount-timestamp",
                ),
            )),
        );
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

async fn method_not_allowed() -> Response {
    let body = ErrorBody {
        error: crate::error::ErrorDetail {
            code: "method_not_allowed".to_owned(),
            message: "this route does not take that method".to_owned(),
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// The router with every route and layer; state is attached by the caller's `with_state`.
pub fn router(state: SharedState) -> Router {
    let limited = Router::new()
        .route("/resources", post(resources::create).get(resources::list))
        .route(
            "/resources/{resource_id}",
            get(resources::get_one).delete(resources::delete_one),
        )
        // `POST /hits` reads its body within HITS_BODY_BYTES_MAX itself (`ApiJson`'s limit).
        .route("/hits", post(hits::record))
        .route("/hits/{resource_id}", get(hits::query))
        .route("/stats/top", get(stats::top))
        .route("/stats/series", get(stats::series))
        .route("/export", get(export::export))
        .route(
            "/import",
            post(import::import).layer(extract::raw_body_limit(
                crate::import::IMPORT_BODY_BYTES_MAX,
            )),
        )
        .route(
            "/v1/deltas",
            post(deltas::apply).layer(extract::raw_body_limit(hitcount_wire::BATCH_BYTES_MAX)),
        )
        .route("/tokens", post(admin::create_token).get(admin::list_tokens))
        .route("/tokens/{token_id}", delete(admin::delete_token))
        .route(
            "/edge-keys",
            post(admin::create_edge_key).get(admin::list_edge_keys),
        )
        .route("/edge-keys/{edge_id}", delete(admin::delete_edge_key))
        .route("/patterns", post(patterns::create).get(patterns::list))
        .route(
            "/patterns/{pattern}",
            get(patterns::get_one).delete(patterns::delete_one),
        )
        .route("/unknown-resources", get(patterns::unknown_resources))
        // Each `layer` or `route_layer` call boxes every route once more, and axum clones each
        // box per request: one layer here; JSON bodies are limited by their extractor
        // (`ApiJson`, JSON_BODY_BYTES_MAX unless a route names more).
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            extract::limit_by_address,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/app.css", get(dashboard::styles))
        .route("/dashboard/config.json", get(dashboard::config))
        .merge(limited)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(telemetry::request_span)
                        .on_response(telemetry::record_response),
                )
                .layer(middleware::from_fn(request_metrics::record)),
        )
        .with_state(state)
}
