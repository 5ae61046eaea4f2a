//! Resources: the things hits are counted for.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiJson, ApiPath, ApiQuery, JSON_BODY_BYTES_MAX, LIST_PAGE_MAX, RETENTION_DAYS_MAX, schemas,
    unknown_resource, validate_name,
};
use crate::auth::{Caller, Scope, random_hex};
use crate::catalog::CreateResourceError;
use crate::error::{ApiError, ErrorBody};
use crate::now_ms;
use crate::query::format_time;
use crate::state::SharedState;
use crate::store::ResourceRecord;

const LIST_PAGE_DEFAULT: usize = 100;
/// Random bytes in a generated resource id (hex-encoded, so twice as many characters).
const GENERATED_ID_BYTES: usize = 8;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateResourceRequest {
    /// A unique, human-readable name.
    #[schema(schema_with = schemas::name)]
    pub name: String,
    #[schema(schema_with = schemas::retention_days)]
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    pub retention_days: Option<u32>,
    #[schema(schema_with = schemas::optional_resource_id)]
    pub resource_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceBody {
    pub resource_id: String,
    pub name: String,
    pub retention_days: Option<u32>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&ResourceRecord> for ResourceBody {
    fn from(record: &ResourceRecord) -> Self {
        Self {
            resource_id: record.id.clone(),
            name: record.name.clone(),
            retention_days: record.retention_days,
            created_at: format_time(record.created_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceList {
    pub resources: Vec<ResourceBody>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (default 100).
    #[param(schema_with = schemas::list_limit)]
    pub limit: Option<usize>,
    /// Return resources whose id sorts after this one.
    pub after: Option<String>,
}

#[utoipa::path(
    post, path = "/resources", tag = "resources",
    request_body = CreateResourceRequest,
    responses(
        (status = 201, description = "Created", body = ResourceBody, links(
            ("GetResource" = (operation_id = "get_one", parameters(("resource_id" = "$response.body#/resource_id")))),
            ("DeleteResource" = (operation_id = "delete_one", parameters(("resource_id" = "$response.body#/resource_id")))),
            ("QueryHits" = (operation_id = "query", parameters(("resource_id" = "$response.body#/resource_id")))),
        )),
        (status = 400, description = "Malformed JSON, or a name, id or retention outside its schema", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 409, description = "Name or id already taken", body = ErrorBody),
        (status = 413, description = schemas::body_over(JSON_BODY_BYTES_MAX), body = ErrorBody),
        (status = 415, description = "Body is not `application/json`", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was created, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateResourceRequest>,
) -> Result<(StatusCode, Json<ResourceBody>), ApiError> {
    caller.require(Scope::Admin)?;
    let name = validate_name(&request.name)?;
    if !crate::catalog::retention_valid(request.retention_days) {
        return Err(ApiError::bad_request(
            "invalid_retention",
            format!("retention_days must be between 1 and {RETENTION_DAYS_MAX}"),
        ));
    }
    let id = match request.resource_id {
        Some(id) => {
            hitcount_wire::validate_resource_id(&id)
                .map_err(|error| ApiError::bad_request("invalid_resource_id", error.to_string()))?;
            id
        }
        None => random_hex(GENERATED_ID_BYTES),
    };
    let record = ResourceRecord {
        id,
        name,
        retention_days: request.retention_days,
        created_at_ms: now_ms(),
    };
    state
        .catalog
        .create_resource(&state.store, record.clone())
        .await
        .map_err(|error| match error {
            CreateResourceError::IdTaken(_) => ApiError::Conflict {
                code: "resource_id_taken",
                message: error.to_string(),
            },
            CreateResourceError::NameTaken(_) => ApiError::Conflict {
                code: "name_taken",
                message: error.to_string(),
            },
            CreateResourceError::Store(error) => error.into(),
        })?;
    let body = ResourceBody::from(&record);
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(
    get, path = "/resources", tag = "resources",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of resources, by id", body = ResourceList),
        (status = 400, description = format!("Query outside its schema, e.g. limit not 1 to {LIST_PAGE_MAX}"), body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the read scope (a grant limited to some resources lists only those)", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "With --oidc-issuer: the identity provider cannot be reached to check a JWT; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ResourceList>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = query.limit.unwrap_or(LIST_PAGE_DEFAULT);
    if !(1..=LIST_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {LIST_PAGE_MAX}"),
        ));
    }
    let readable = caller.resources(Scope::Read);
    let resources = state.catalog.read();
    let mut page: Vec<ResourceBody> = resources
        .after(query.after.as_deref())
        .filter(|record| readable.allows(&record.id))
        .take(limit + 1)
        .map(ResourceBody::from)
        .collect();
    let next_after = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|last| last.resource_id.clone())
    } else {
        None
    };
    Ok(Json(ResourceList {
        resources: page,
        next_after,
    }))
}

#[utoipa::path(
    get, path = "/resources/{resource_id}", tag = "resources",
    params(("resource_id" = String, Path, description = "Resource id")),
    responses(
        (status = 200, description = "The resource", body = ResourceBody),
        (status = 400, description = "The path segment is not UTF-8", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the read scope, or its grant does not cover this resource", body = ErrorBody),
        (status = 404, description = "No such resource", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "With --oidc-issuer: the identity provider cannot be reached to check a JWT; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(state): State<SharedState>,
    caller: Caller,
    ApiPath(resource_id): ApiPath<String>,
) -> Result<Json<ResourceBody>, ApiError> {
    caller.require_resource(Scope::Read, &resource_id)?;
    let record = state
        .catalog
        .resource(&resource_id)
        .ok_or_else(|| unknown_resource(&resource_id))?;
    Ok(Json((&record).into()))
}

#[utoipa::path(
    delete, path = "/resources/{resource_id}", tag = "resources",
    params(("resource_id" = String, Path, description = "Resource id")),
    responses(
        (status = 204, description = "Deleted; its counts are purged and later hits get 404"),
        (status = 400, description = "The path segment is not UTF-8", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such resource", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was deleted, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_one(
    State(state): State<SharedState>,
    caller: Caller,
    ApiPath(resource_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    // Forget it first, so hits arriving from now on are refused while the counts are purged.
    let removed = state
        .catalog
        .remove_resource(&resource_id)
        .ok_or_else(|| unknown_resource(&resource_id))?;
    match state
        .store
        .delete_resource(resource_id.clone(), now_ms())
        .await
    {
        Ok(_) => {
            state.catalog.deletion_finished(&resource_id, now_ms());
            tracing::info!(%resource_id, "resource deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(error) => {
            state.catalog.insert_resources([removed]);
            Err(error.into())
        }
    }
}
