//! `POST /import`: a file of counts taken into the store once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiQuery, schemas};
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, ErrorBody};
use crate::import::{self, IMPORT_BODY_BYTES_MAX, ImportError, ImportFormat, ImportReport};
use crate::now_ms;
use crate::state::SharedState;
use crate::store::IMPORT_CELLS_MAX;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// The file's format: `ndjson` (the lossless export, the default) or `goatcounter`.
    #[param(inline)]
    pub format: Option<ImportFormat>,
}

#[utoipa::path(
    post, path = "/import", tag = "stats",
    params(ImportQuery),
    request_body(content(
                     (Vec<u8> = "application/x-ndjson"),
                     (Vec<u8> = "text/csv"),
                 ),
                 description = "With format=ndjson, the lossless export of GET /export?format=ndjson as written; with format=goatcounter, GoatCounter's CSV export (version 2), each pageview a hit of the resource its path names (the beacon's rule) in its hour and day, events and bots left out. The body is read in the format the parameter names, whatever its content type"),
    responses(
        (status = 200, description = "Imported, or (status duplicate) this very file was imported before and nothing changed. Cells are added to the stored ones in their own tier, resources the file describes are created if absent", body = ImportReport),
        (status = 400, description = "An unknown parameter or format", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the admin scope", body = ErrorBody),
        (status = 409, description = "A resource the file describes could not be created: another resource has its name. Nothing was imported", body = ErrorBody),
        (status = 413, description = schemas::body_over(IMPORT_BODY_BYTES_MAX), body = ErrorBody),
        (status = 422, description = format!("A bad line or row (the message gives its number and what is wrong, e.g. not a line of the lossless export, not GoatCounter's version 2 header, a time in the future; nothing was imported), an empty file, or more than {IMPORT_CELLS_MAX} cells"), body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was imported, retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn import(
    State(state): State<SharedState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ImportQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ImportReport>, ApiError> {
    caller.require(Scope::Admin)?;
    let body = super::extract::raw_body(body, IMPORT_BODY_BYTES_MAX)?;
    let format = query.format.unwrap_or_default();
    let report = import::import(&state.catalog, &state.store, format, &body, now_ms()).await?;
    Ok(Json(report))
}

impl From<ImportError> for ApiError {
    fn from(error: ImportError) -> Self {
        let message = error.to_string();
        match error {
            ImportError::Line { .. } => ApiError::Unprocessable {
                code: "invalid_line",
                message,
            },
            ImportError::Empty => ApiError::Unprocessable {
                code: "empty_file",
                message,
            },
            ImportError::TooManyCells => ApiError::Unprocessable {
                code: "too_many_cells",
                message,
            },
            ImportError::ResourceMissing(_) => ApiError::Conflict {
                code: "resource_not_created",
                message,
            },
            ImportError::Store(error) => error.into(),
        }
    }
}
