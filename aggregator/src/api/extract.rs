//! Extractors whose rejections are [`ApiError`]s with the JSON error body: axum's own `Json`,
//! `Query` and `Path` answer plain text, which no client of this API expects.
//!
//! Each route's body limit is its own, so a 413 names the limit of the route that refused the
//! body, not a global one: a JSON route's is its `ApiJson`'s parameter, a raw-body route's its
//! layer ([`raw_body_limit`]).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use super::JSON_BODY_BYTES_MAX;
use crate::auth::{Caller, token_digest};
use crate::error::ApiError;
use crate::oidc::OidcError;
use crate::state::SharedState;

/// The layer that gives a route taking a raw body ([`raw_body`]) its limit.
pub fn raw_body_limit(limit_bytes: usize) -> DefaultBodyLimit {
    DefaultBodyLimit::max(limit_bytes)
}

/// `Json<T>` over a body of at most `BYTES_MAX` bytes, whose rejections are [`ApiError`]s with
/// the JSON error body (413 naming the limit beyond it). The limit is the extractor's own, not a
/// layer's: axum boxes a route once more per layer and clones the box on every request
/// (`api/mod.rs`), which `POST /hits`, the busiest route, should not pay for.
#[derive(Debug)]
pub struct ApiJson<T, const BYTES_MAX: usize = JSON_BODY_BYTES_MAX>(pub T);

impl<T: DeserializeOwned, S: Send + Sync, const BYTES_MAX: usize> FromRequest<S>
    for ApiJson<T, BYTES_MAX>
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        // As axum's `Json` does: the content type first, so a body that is not JSON is not read.
        if !json_content_type(&parts.headers) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON with `Content-Type: application/json`".to_owned(),
            ));
        }
        // `to_bytes` stops reading at the limit (as the edge's `POST /hit` reads its body).
        let bytes = match axum::body::to_bytes(body, BYTES_MAX).await {
            Ok(bytes) => bytes,
            Err(error) if is_length_limit(&error) => {
                return Err(ApiError::PayloadTooLarge {
                    limit_bytes: BYTES_MAX,
                });
            }
            Err(error) => return Err(ApiError::bad_request("invalid_body", error.to_string())),
        };
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::JsonDataError(error)) => {
                Err(ApiError::bad_request("invalid_request", error.body_text()))
            }
            Err(JsonRejection::JsonSyntaxError(error)) => {
                Err(ApiError::bad_request("invalid_json", error.body_text()))
            }
            Err(other) => Err(ApiError::bad_request("invalid_body", other.body_text())),
        }
    }
}

/// Whether a request says its body is JSON: `application/json` or a `+json` type, the rule
/// axum's `Json` applies (its check is private, and `ApiJson` reads the body itself, within its
/// own limit).
fn json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == mime::APPLICATION
                && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
        })
}

/// Whether reading a body failed at its length limit (the error `to_bytes` wraps).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// `Query<T>` whose rejections are 400s with the JSON error body (`invalid_query`).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", rejection.body_text())
}

/// `Path<T>` whose rejections are 400s with the JSON error body (`invalid_path`), e.g. for a
/// percent-encoded segment that is not UTF-8.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    match rejection {
        PathRejection::FailedToDeserializePathParams(error) => {
            ApiError::bad_request("invalid_path", error.body_text())
        }
        // The route has no such parameter: a bug in this program, not in the request.
        other => ApiError::Internal(anyhow::anyhow!("path extraction: {}", other.body_text())),
    }
}

/// An unsigned integer that also takes a JSON number with a zero fraction (`202.0`): JSON Schema
/// counts those as integers, serde's integers do not.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let number = serde_json::Number::deserialize(deserializer)?;
    as_whole(&number).ok_or_else(|| {
        D::Error::custom(format!(
            "invalid value: {number}, expected a whole number in range"
        ))
    })
}

/// [`whole_number`] for optional fields (absent or `null` is `None`).
pub fn optional_whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    match Option::<serde_json::Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(number) => as_whole(&number).map(Some).ok_or_else(|| {
            D::Error::custom(format!(
                "invalid value: {number}, expected a whole number in range"
            ))
        }),
    }
}

fn as_whole<T: TryFrom<u64>>(number: &serde_json::Number) -> Option<T> {
    // 2^64 as a float: every float below it with no fraction converts to u64 exactly.
    const U64_END_FLOAT: f64 = 18_446_744_073_709_551_616.0;
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|float| float.fract() == 0.0 && *float >= 0.0 && *float < U64_END_FLOAT)
            .map(|float| float as u64)
    })?;
    T::try_from(whole).ok()
}

/// The bearer token of a request, authenticated against the token registry or, with
/// `--oidc-issuer`, as the identity provider's JWT, and charged to its rate limit.
impl FromRequestParts<SharedState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthorized("missing `Authorization: Bearer <token>` header")
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let digest = token_digest(token);
        if let Some(record) = state.tokens.find(&digest) {
            state.limits.check_token(digest)?;
            return Ok(Caller::new(record));
        }
        // Not an API token: with an identity provider configured, a JWT (three dot-separated
        // parts) may be one of its tokens.
        let Some(oidc) = state
            .oidc
            .as_ref()
            .filter(|_| token.split('.').count() == 3)
        else {
            return Err(ApiError::unauthorized("unknown or revoked token"));
        };
        let identity = oidc
            .verify(token, crate::now_ms())
            .await
            .map_err(oidc_refusal)?;
        state.limits.check_token(token_digest(&identity.id))?;
        Ok(Caller::Identity(std::sync::Arc::new(identity)))
    }
}

/// 401 saying why the identity provider's token was refused, or 503 when the provider's keys
/// cannot be fetched or its key is not fetched yet (the token may be good).
fn oidc_refusal(error: OidcError) -> ApiError {
    match error {
        OidcError::ProviderUnavailable(reason) => {
            tracing::warn!(%reason, "the identity provider is unavailable");
            ApiError::unavailable(
                "the identity provider cannot be reached to check this token; retry shortly",
                crate::error::RETRY_AFTER_S,
            )
        }
        error @ OidcError::KeyNotFetchedYet { retry_after_s, .. } => {
            ApiError::unavailable(error.to_string(), retry_after_s)
        }
        refused => ApiError::unauthorized(refused.to_string()),
    }
}

/// Middleware: the per-address limit, applied before authentication so that guessing tokens is
/// rate limited too.
pub async fn limit_by_address(
    axum::extract::State(state): axum::extract::State<SharedState>,
    request: Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|axum::extract::ConnectInfo(address)| address.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    state.limits.check_address(address)?;
    Ok(next.run(request).await)
}

/// A raw body as read within its route's limit ([`raw_body_limit`]): over it, 413 naming the limit;
/// unreadable, 400.
pub fn raw_body(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit_bytes: usize,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit_bytes }
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })
}
