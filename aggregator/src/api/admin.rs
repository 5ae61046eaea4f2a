//! Admin endpoints: API tokens and edge signing keys.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, validate_name};
use crate::auth::{
    Caller, EdgeSecret, Scope, TOKEN_RANDOM_BYTES, generate_token, random_hex, token_digest,
};
use crate::config::SECRET_BYTES_MIN;
use crate::error::{ApiError, ErrorBody};
use crate::now_ms;
use crate::query::format_time;
use crate::state::SharedState;
use crate::store::TokenRecord;

/// Longest edge secret accepted through the API.
pub const EDGE_SECRET_BYTES_MAX: usize = 256;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// What the token is for (1 to 200 characters).
    pub name: String,
    /// One or more of `ingest`, `read`, `admin`.
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
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
        (status = 201, description = "Created; the token is in the body, once", body = TokenCreated),
        (status = 400, description = "Invalid name or scopes", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
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
    let mut scopes: Vec<String> = request
        .scopes
        .iter()
        .map(|scope| scope.as_str().to_owned())
        .collect();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_scopes",
            "give at least one scope",
        ));
    }
    let token = generate_token();
    let record = TokenRecord {
        id: random_hex(8),
        name,
        token_sha256: token_digest(&token),
        scopes,
        created_at_ms: now_ms(),
    };
    state.store.put_token(record.clone()).await?;
    state.tokens.insert(record.clone());
    tracing::info!(token_id = %record.id, by = %caller.token_id(), "token created");
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: record.id,
            name: record.name,
            scopes: record.scopes,
            created_at: format_time(record.created_at_ms),
            token,
        }),
    ))
}

#[utoipa::path(
    get, path = "/tokens", tag = "admin",
    responses(
        (status = 200, description = "All tokens, without their secrets", body = TokenList),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
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
        tokens: tokens
            .into_iter()
            .map(|record| TokenBody {
                id: record.id,
                name: record.name,
                scopes: record.scopes,
                created_at: format_time(record.created_at_ms),
            })
            .collect(),
    }))
}

#[utoipa::path(
    delete, path = "/tokens/{token_id}", tag = "admin",
    params(("token_id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked; it stops working at once"),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_token(
    State(state): State<SharedState>,
    caller: Caller,
    Path(token_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    if !state.store.delete_token(token_id.clone()).await? {
        return Err(ApiError::NotFound(format!("no token with id {token_id:?}")));
    }
    state.tokens.remove(&token_id);
    tracing::info!(%token_id, by = %caller.token_id(), "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEdgeKeyRequest {
    pub edge_id: String,
    /// The shared secret (16 to 256 bytes); generated if absent. Replaces an existing API key.
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
        (status = 201, description = "Created or rotated; the secret is in the body, once", body = EdgeKeyCreated),
        (status = 400, description = "Invalid edge id or secret", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 409, description = "The key is set by flag", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
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
        Some(secret) if !(SECRET_BYTES_MIN..=EDGE_SECRET_BYTES_MAX).contains(&secret.len()) => {
            return Err(ApiError::bad_request(
                "invalid_secret",
                format!("secret must be {SECRET_BYTES_MIN} to {EDGE_SECRET_BYTES_MAX} bytes"),
            ));
        }
        Some(secret) => secret,
        None => random_hex(TOKEN_RANDOM_BYTES),
    };
    let now = now_ms();
    state
        .store
        .put_edge_key(request.edge_id.clone(), secret.as_bytes().to_vec(), now)
        .await?;
    state.edge_keys.insert(
        request.edge_id.clone(),
        EdgeSecret {
            secret: secret.as_bytes().to_vec(),
            configured: false,
            created_at_ms: now,
        },
    );
    tracing::info!(edge_id = %request.edge_id, by = %caller.token_id(), "edge key set");
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
        (status = 429, description = "Rate limited", body = ErrorBody),
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
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such edge key", body = ErrorBody),
        (status = 409, description = "The key is set by flag", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_edge_key(
    State(state): State<SharedState>,
    caller: Caller,
    Path(edge_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    match state.edge_keys.get(&edge_id) {
        None => return Err(ApiError::NotFound(format!("no edge key for {edge_id:?}"))),
        Some(key) if key.configured => return Err(configured_key_conflict(&edge_id)),
        Some(_) => {}
    }
    state.store.delete_edge_key(edge_id.clone()).await?;
    state.edge_keys.remove(&edge_id);
    tracing::info!(%edge_id, by = %caller.token_id(), "edge key revoked");
    Ok(StatusCode::NO_CONTENT)
}
