//! Admin endpoints: API tokens and edge signing keys.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    ApiJson, ApiPath, EDGE_SECRET_BYTES_MAX, JSON_BODY_BYTES_MAX, TOKEN_RESOURCES_MAX, schemas,
    validate_name,
};
use crate::auth::{
    BOOTSTRAP_TOKEN_ID, Caller, Scope, TOKEN_RANDOM_BYTES, is_resource_pattern, parse_grant,
    random_hex, stored_grants,
};
use crate::config::SECRET_BYTES_MIN;
use crate::error::{ApiError, ErrorBody};
use crate::now_ms;
use crate::query::format_time;
use crate::state::SharedState;
use crate::store::TokenRecord;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// What the token is for.
    #[schema(schema_with = schemas::name)]
    pub name: String,
    /// One or more of `ingest`, `read`, `admin` (repeats count once).
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Limits `read` and `ingest` to these resources: an id, or a prefix and `*` (`blog.*`).
    /// Every resource if absent; not with `admin`, which is never limited.
    #[schema(schema_with = schemas::token_resources)]
    pub resources: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// The resources `read` and `ingest` are limited to; absent: every resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    pub created_at: String,
}

impl From<TokenRecord> for TokenBody {
    fn from(record: TokenRecord) -> Self {
        let (scopes, resources) = scopes_and_resources(&record.scopes);
        Self {
            id: record.id,
            name: record.name,
            scopes,
            resources,
            created_at: format_time(record.created_at_ms),
        }
    }
}

/// A token's stored grants as the API shows them: its scopes, and the patterns they are
/// limited to (the same for each, as `POST /tokens` makes them).
fn scopes_and_resources(stored: &[String]) -> (Vec<String>, Option<Vec<String>>) {
    let mut scopes = Vec::new();
    let mut resources = Vec::new();
    for (scope, pattern) in stored.iter().filter_map(|text| parse_grant(text)) {
        scopes.push(scope.as_str().to_owned());
        resources.extend(pattern.map(str::to_owned));
    }
    scopes.sort();
    scopes.dedup();
    resources.sort();
    resources.dedup();
    (scopes, (!resources.is_empty()).then_some(resources))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// The resources `read` and `ingest` are limited to; absent: every resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    pub created_at: String,
    /// The bearer token. It is shown only here; only its hash is stored.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenBody>,
}

#[utoipa::path(
    post, path = "/tokens", tag = "admin",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created; the token is in the body, once", body = TokenCreated, links(
            ("DeleteToken" = (operation_id = "delete_token", parameters(("token_id" = "$response.body#/id")))),
        )),
        (status = 400, description = "Malformed JSON, or a name, scopes or resources outside their schema", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 413, description = schemas::body_over(JSON_BODY_BYTES_MAX), body = ErrorBody),
        (status = 415, description = "Body is not `application/json`", body = ErrorBody),
        (status = 422, description = "resources given with the admin scope, which is never limited", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was created, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_token(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    caller.require(Scope::Admin)?;
    let name = validate_name(&request.name)?;
    let resources = checked_resources(request.resources.as_deref(), &request.scopes)?;
    let scopes = stored_grants(&request.scopes, resources);
    if scopes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_scopes",
            "give at least one scope",
        ));
    }
    let (record, token) = state
        .tokens
        .create(&state.store, name, scopes, now_ms())
        .await?;
    tracing::info!(token_id = %record.id, by = %caller.id(), "token created");
    let shown = TokenBody::from(record);
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: shown.id,
            name: shown.name,
            scopes: shown.scopes,
            resources: shown.resources,
            created_at: shown.created_at,
            token,
        }),
    ))
}

/// The resource patterns a new token is limited to, checked: 1 to [`TOKEN_RESOURCES_MAX`] ids or
/// prefixes and `*`, never with `admin`.
fn checked_resources<'a>(
    resources: Option<&'a [String]>,
    scopes: &[Scope],
) -> Result<Option<&'a [String]>, ApiError> {
    let Some(patterns) = resources else {
        return Ok(None);
    };
    let refuse = |message: String| Err(ApiError::bad_request("invalid_resources", message));
    if patterns.is_empty() || patterns.len() > TOKEN_RESOURCES_MAX {
        return refuse(format!(
            "resources lists 1 to {TOKEN_RESOURCES_MAX} patterns, or is left out for every resource"
        ));
    }
    if let Some(bad) = patterns
        .iter()
        .find(|pattern| !is_resource_pattern(pattern))
    {
        return refuse(format!(
            "resources: {bad:?} is neither a resource id nor a prefix of one followed by *"
        ));
    }
    // A relation between two fields, which the schema cannot state: 422, as the API does for
    // every such refusal.
    if scopes.contains(&Scope::Admin) {
        return Err(ApiError::Unprocessable {
            code: "admin_not_limited",
            message: "the admin scope is never limited to resources: leave resources out"
                .to_owned(),
        });
    }
    Ok(Some(patterns))
}

#[utoipa::path(
    get, path = "/tokens", tag = "admin",
    responses(
        (status = 200, description = "All tokens, without their secrets", body = TokenList),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_tokens(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<TokenList>, ApiError> {
    caller.require(Scope::Admin)?;
    let tokens = state.store.tokens().await?;
    Ok(Json(TokenList {
        tokens: tokens.into_iter().map(TokenBody::from).collect(),
    }))
}

#[utoipa::path(
    delete, path = "/tokens/{token_id}", tag = "admin",
    params(("token_id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked; it stops working at once"),
        (status = 400, description = "The path segment is not UTF-8", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 409, description = "`admin_token_configured`: the token is `bootstrap-admin` and the aggregator runs with `--admin-token`, which would put it back at the next start; change or remove the flag instead", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was revoked, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_token(
    State(state): State<SharedState>,
    caller: Caller,
    ApiPath(token_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    // A revocation that the next start silently undoes would be a lie: the flag is the source of
    // that token, so it is changed there.
    if token_id == BOOTSTRAP_TOKEN_ID && state.config.admin_token.is_some() {
        return Err(ApiError::Conflict {
            code: "admin_token_configured",
            message: "the bootstrap admin token comes from --admin-token (HITCOUNT_ADMIN_TOKEN); \
                      change or remove the flag and restart instead"
                .to_owned(),
        });
    }
    if !state.store.delete_token(token_id.clone()).await? {
        return Err(ApiError::NotFound(format!("no token with id {token_id:?}")));
    }
    state.tokens.remove(&token_id);
    tracing::info!(%token_id, by = %caller.id(), "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEdgeKeyRequest {
    #[schema(schema_with = schemas::edge_id)]
    pub edge_id: String,
    #[schema(schema_with = schemas::edge_secret)]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EdgeKeyCreated {
    pub edge_id: String,
    /// Give this to the edge (`--edge-key`); it is shown only here.
    pub secret: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EdgeKeyBody {
    pub edge_id: String,
    /// `flag` (from --edge-key, revoked by restarting without it) or `api`.
    pub source: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EdgeKeyList {
    pub edge_keys: Vec<EdgeKeyBody>,
}

fn configured_key_conflict(edge_id: &str) -> ApiError {
    ApiError::Conflict {
        code: "edge_key_configured",
        message: format!("the key for {edge_id:?} is set by --edge-key; change the flag instead"),
    }
}

#[utoipa::path(
    post, path = "/edge-keys", tag = "admin",
    request_body = CreateEdgeKeyRequest,
    responses(
        (status = 201, description = "Created or rotated; the secret is in the body, once", body = EdgeKeyCreated, links(
            ("DeleteEdgeKey" = (operation_id = "delete_edge_key", parameters(("edge_id" = "$response.body#/edge_id")))),
        )),
        (status = 400, description = "Malformed JSON, or an edge id or secret outside its schema", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 409, description = "The key is set by flag", body = ErrorBody),
        (status = 413, description = schemas::body_over(JSON_BODY_BYTES_MAX), body = ErrorBody),
        (status = 415, description = "Body is not `application/json`", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was stored, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_edge_key(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateEdgeKeyRequest>,
) -> Result<(StatusCode, Json<EdgeKeyCreated>), ApiError> {
    caller.require(Scope::Admin)?;
    hitcount_wire::validate_edge_id(&request.edge_id)
        .map_err(|error| ApiError::bad_request("invalid_edge_id", error.to_string()))?;
    if state
        .edge_keys
        .get(&request.edge_id)
        .is_some_and(|key| key.configured)
    {
        return Err(configured_key_conflict(&request.edge_id));
    }
    let secret = match request.secret {
        // Visible ASCII only, so that bytes and characters (what the schema counts) agree.
        Some(secret)
            if !(SECRET_BYTES_MIN..=EDGE_SECRET_BYTES_MAX).contains(&secret.len())
                || !secret.bytes().all(|byte| byte.is_ascii_graphic()) =>
        {
            return Err(ApiError::bad_request(
                "invalid_secret",
                format!(
                    "secret must be {SECRET_BYTES_MIN} to {EDGE_SECRET_BYTES_MAX} visible ASCII characters"
                ),
            ));
        }
        Some(secret) => secret,
        None => random_hex(TOKEN_RANDOM_BYTES),
    };
    let now = now_ms();
    state
        .edge_keys
        .put(
            &state.store,
            request.edge_id.clone(),
            secret.as_bytes().to_vec(),
            now,
        )
        .await?;
    tracing::info!(edge_id = %request.edge_id, by = %caller.id(), "edge key set");
    Ok((
        StatusCode::CREATED,
        Json(EdgeKeyCreated {
            edge_id: request.edge_id,
            secret,
            created_at: format_time(now),
        }),
    ))
}

#[utoipa::path(
    get, path = "/edge-keys", tag = "admin",
    responses(
        (status = 200, description = "Edge ids with keys, without secrets", body = EdgeKeyList),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "With --oidc-issuer: the identity provider cannot be reached to check a JWT; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_edge_keys(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<EdgeKeyList>, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(Json(EdgeKeyList {
        edge_keys: state
            .edge_keys
            .list()
            .into_iter()
            .map(|(edge_id, key)| EdgeKeyBody {
                edge_id,
                source: if key.configured { "flag" } else { "api" }.to_owned(),
                created_at: format_time(key.created_at_ms),
            })
            .collect(),
    }))
}

#[utoipa::path(
    delete, path = "/edge-keys/{edge_id}", tag = "admin",
    params(("edge_id" = String, Path, description = "Edge id")),
    responses(
        (status = 204, description = "Revoked; the edge's deltas are refused from now on"),
        (status = 400, description = "The path segment is not UTF-8", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such edge key", body = ErrorBody),
        (status = 409, description = "The key is set by flag", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was revoked, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_edge_key(
    State(state): State<SharedState>,
    caller: Caller,
    ApiPath(edge_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    match state.edge_keys.get(&edge_id) {
        None => return Err(ApiError::NotFound(format!("no edge key for {edge_id:?}"))),
        Some(key) if key.configured => return Err(configured_key_conflict(&edge_id)),
        Some(_) => {}
    }
    state.store.delete_edge_key(edge_id.clone()).await?;
    state.edge_keys.remove(&edge_id);
    tracing::info!(%edge_id, by = %caller.id(), "edge key revoked");
    Ok(StatusCode::NO_CONTENT)
}
