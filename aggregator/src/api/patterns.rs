//! Resource patterns (`/patterns`): ids under a registered prefix are created on first sight,
//! up to a bound; and `/unknown-resources`, what was refused for lack of one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ApiPath;
use super::{ApiJson, JSON_BODY_BYTES_MAX, RETENTION_DAYS_MAX, schemas};
use crate::auth::{Caller, Scope};
use crate::catalog::CreatePatternError;
use crate::error::{ApiError, ErrorBody};
use crate::now_ms;
use crate::patterns::{
    PATTERN_RESOURCES_DEFAULT, PATTERN_RESOURCES_MAX, PATTERNS_MAX, PatternView, RefusalReason,
    UNKNOWN_RESOURCES_LISTED_MAX, UnknownResource, parse_pattern,
};
use crate::query::format_time;
use crate::state::SharedState;
use crate::store::PatternRecord;

// The numbers in the schema attributes below must be literals (utoipa takes no constants);
// `openapi_limits_match_the_constants` in the tests keeps them equal to the constants.

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePatternRequest {
    /// A resource id prefix (letters, digits, `-`, `_`, `.`; up to 63 bytes) followed by `*`:
    /// `blog.*` matches `blog.my-post`; `*` alone matches every id.
    #[schema(
        example = "blog.*",
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9._-]{0,63}\*$"
    )]
    pub pattern: String,
    /// How many resources may exist under the prefix (explicitly created ones included) before
    /// new ids are refused; 1 to 1000000, default 10000.
    #[schema(minimum = 1, maximum = 1000000, default = 10000)]
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    pub resources_max: Option<u64>,
    /// The retention of the resources the pattern creates (1 to 36500 days); absent keeps their
    /// day counts forever.
    #[schema(schema_with = super::schemas::retention_days)]
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    pub retention_days: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PatternBody {
    pub pattern: String,
    pub resources_max: u64,
    pub retention_days: Option<u32>,
    /// Resources that exist under the prefix now.
    pub resources: u64,
    /// Hits refused because the pattern was full, over all aggregators (this one's latest
    /// refusals included; others' are added within a few seconds).
    pub refused_hits: u64,
    /// RFC 3339.
    pub created_at: String,
}

impl From<PatternView> for PatternBody {
    fn from(view: PatternView) -> Self {
        Self {
            pattern: view.record.pattern,
            resources_max: view.record.resources_max,
            retention_days: view.record.retention_days,
            resources: view.resources,
            refused_hits: view.record.refused_hits,
            created_at: format_time(view.record.created_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PatternList {
    /// Every pattern, by pattern text.
    pub patterns: Vec<PatternBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnknownResourceBody {
    pub resource_id: String,
    /// Why it was refused the last time.
    pub reason: RefusalReason,
    /// The pattern that was full, for `pattern_full`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Hits refused for this id since it entered the list.
    pub refused_hits: u64,
    /// RFC 3339.
    pub last_refused_at: String,
}

impl From<UnknownResource> for UnknownResourceBody {
    fn from(item: UnknownResource) -> Self {
        Self {
            resource_id: item.resource_id,
            reason: item.reason,
            pattern: item.pattern,
            refused_hits: item.refused_hits,
            last_refused_at: format_time(item.last_refused_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnknownResourceList {
    /// Most recently refused first.
    pub unknown_resources: Vec<UnknownResourceBody>,
    /// How many ids are kept; the least recently refused go first.
    pub listed_max: usize,
}

fn invalid_pattern(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_pattern", message)
}

fn unknown_pattern(pattern: &str) -> ApiError {
    ApiError::NotFound(format!("no pattern {pattern:?}"))
}

#[utoipa::path(
    post, path = "/patterns", tag = "patterns", operation_id = "create_pattern",
    request_body = CreatePatternRequest,
    responses(
        (status = 201, description = "Created; new ids under it are created on first sight", body = PatternBody, links(
            ("GetPattern" = (operation_id = "get_pattern", parameters(("pattern" = "$response.body#/pattern")))),
            ("DeletePattern" = (operation_id = "delete_pattern", parameters(("pattern" = "$response.body#/pattern")))),
        )),
        (status = 400, description = "Invalid pattern, resources_max or retention_days", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 409, description = format!("`pattern_exists`, or `too_many_patterns` ({PATTERNS_MAX} exist)"), body = ErrorBody),
        (status = 413, description = schemas::body_over(JSON_BODY_BYTES_MAX), body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was created, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreatePatternRequest>,
) -> Result<(StatusCode, Json<PatternBody>), ApiError> {
    caller.require(Scope::Admin)?;
    parse_pattern(&request.pattern).map_err(|error| invalid_pattern(error.to_string()))?;
    let resources_max = request.resources_max.unwrap_or(PATTERN_RESOURCES_DEFAULT);
    if !(1..=PATTERN_RESOURCES_MAX).contains(&resources_max) {
        return Err(ApiError::bad_request(
            "invalid_resources_max",
            format!("resources_max must be between 1 and {PATTERN_RESOURCES_MAX}"),
        ));
    }
    if !crate::catalog::retention_valid(request.retention_days) {
        return Err(ApiError::bad_request(
            "invalid_retention",
            format!("retention_days must be between 1 and {RETENTION_DAYS_MAX}"),
        ));
    }
    let record = PatternRecord {
        pattern: request.pattern,
        resources_max,
        retention_days: request.retention_days,
        refused_hits: 0,
        created_at_ms: now_ms(),
    };
    let view = state
        .catalog
        .create_pattern(&state.store, record)
        .await
        .map_err(|error| match error {
            CreatePatternError::Exists(_) => ApiError::Conflict {
                code: "pattern_exists",
                message: error.to_string(),
            },
            CreatePatternError::TooMany => ApiError::Conflict {
                code: "too_many_patterns",
                message: error.to_string(),
            },
            CreatePatternError::DeletedMeanwhile(pattern) => unknown_pattern(&pattern),
            CreatePatternError::Store(error) => error.into(),
        })?;
    Ok((StatusCode::CREATED, Json(view.into())))
}

#[utoipa::path(
    get, path = "/patterns", tag = "patterns", operation_id = "list_patterns",
    responses(
        (status = 200, description = "Every pattern, with its resources and refusals now", body = PatternList),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "With --oidc-issuer: the identity provider cannot be reached to check a JWT; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<PatternList>, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(Json(PatternList {
        patterns: state
            .catalog
            .patterns
            .registry
            .list()
            .into_iter()
            .map(PatternBody::from)
            .collect(),
    }))
}

#[utoipa::path(
    get, path = "/patterns/{pattern}", tag = "patterns", operation_id = "get_pattern",
    params(("pattern" = String, Path, description = "The pattern, such as `blog.*` (`*` may be sent as `%2A`)",
            max_length = 64, pattern = r"^[A-Za-z0-9._-]{0,63}\*$")),
    responses(
        (status = 200, description = "The pattern", body = PatternBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 400, description = "The path segment is not UTF-8", body = ErrorBody),
        (status = 404, description = "No such pattern", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "With --oidc-issuer: the identity provider cannot be reached to check a JWT; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(state): State<SharedState>,
    caller: Caller,
    ApiPath(pattern): ApiPath<String>,
) -> Result<Json<PatternBody>, ApiError> {
    caller.require(Scope::Admin)?;
    let view = state
        .catalog
        .patterns
        .registry
        .get(&pattern)
        .ok_or_else(|| unknown_pattern(&pattern))?;
    Ok(Json(view.into()))
}

#[utoipa::path(
    delete, path = "/patterns/{pattern}", tag = "patterns", operation_id = "delete_pattern",
    params(("pattern" = String, Path, description = "The pattern, such as `blog.*` (`*` may be sent as `%2A`)",
            max_length = 64, pattern = r"^[A-Za-z0-9._-]{0,63}\*$")),
    responses(
        (status = 204, description = "Deleted; the resources it created stay, new ids under it are refused"),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 400, description = "The path segment is not UTF-8", body = ErrorBody),
        (status = 404, description = "No such pattern", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was deleted, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_one(
    State(state): State<SharedState>,
    caller: Caller,
    ApiPath(pattern): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    if !state.store.delete_pattern(pattern.clone()).await? {
        return Err(unknown_pattern(&pattern));
    }
    state.catalog.patterns.registry.remove(&pattern);
    tracing::info!(%pattern, "pattern deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/unknown-resources", tag = "patterns",
    responses(
        (status = 200, description = format!("The ids most recently refused by this aggregator (at most {UNKNOWN_RESOURCES_LISTED_MAX}), with their refused hits"), body = UnknownResourceList),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the read scope (a grant limited to some resources lists only ids it covers)", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "With --oidc-issuer: the identity provider cannot be reached to check a JWT; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn unknown_resources(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<UnknownResourceList>, ApiError> {
    caller.require(Scope::Read)?;
    let readable = caller.resources(Scope::Read);
    Ok(Json(UnknownResourceList {
        unknown_resources: state
            .catalog
            .patterns
            .unknown
            .list()
            .into_iter()
            .map(UnknownResourceBody::from)
            .filter(|unknown| readable.allows(&unknown.resource_id))
            .collect(),
        listed_max: UNKNOWN_RESOURCES_LISTED_MAX,
    }))
}
