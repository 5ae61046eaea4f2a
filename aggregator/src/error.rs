//! The one error type handlers return. Each variant maps to a status and a stable code; the
//! message is written for the client, and internal faults are logged, never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{STALE_READ_RESOURCES_MAX, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing or invalid credentials")]
    Unauthorized { message: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The limit is the one of the route that refused the body: routes differ.
    #[error("the body is over this route's limit of {}", byte_size(*limit_bytes))]
    PayloadTooLarge { limit_bytes: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("too many requests")]
    RateLimited { retry_after_s: u64 },
    /// A 503. Most are `unavailable`; a code of its own tells a client (the dashboard) a case it
    /// answers differently, such as `stale_read_too_wide`: narrow the read, rather than wait.
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry_after_s: u64,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// A byte count as people write limits: `64 KiB (65536 bytes)`, `1 MiB (1048576 bytes)`.
pub fn byte_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB ({bytes} bytes)", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB ({bytes} bytes)", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// `{"error":{"code":"...","message":"..."}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_time_range`.
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The usual 503, code `unavailable`: retry after `retry_after_s`.
    pub fn unavailable(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self::Unavailable {
            code: "unavailable",
            message: message.into(),
            retry_after_s,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized {
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// What a 503 asks a client to wait before it retries, when nothing says longer.
pub const RETRY_AFTER_S: u64 = 1;
/// A database that went away is given a little longer to come back.
pub const DATABASE_RETRY_AFTER_S: u64 = 2;

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Busy => {
                Self::unavailable("the store is busy; retry shortly", RETRY_AFTER_S)
            }
            StoreError::Unavailable(reason) => {
                // The reason is for the operator; the client learns only to come back.
                tracing::warn!(%reason, "the database is unavailable");
                Self::unavailable(
                    "the database is unavailable; nothing was stored, retry shortly",
                    DATABASE_RETRY_AFTER_S,
                )
            }
            StoreError::StaleReadTooWide { resources } => Self::Unavailable {
                code: "stale_read_too_wide",
                message: format!(
                    "the database is unavailable; while it is, a read across resources answers \
                     from the hot tier for at most {STALE_READ_RESOURCES_MAX} of them, and this \
                     one selects {resources}: narrow it with a prefix, or retry shortly"
                ),
                retry_after_s: DATABASE_RETRY_AFTER_S,
            },
            other => Self::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Unauthorized { message } => message.clone(),
            Self::Internal(source) => {
                tracing::error!(error = ?source, "internal error");
                "internal error; the server log has the details".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::RateLimited { retry_after_s } | Self::Unavailable { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            Self::Unauthorized { .. } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"hitcount\""),
                );
            }
            _ => {}
        }
        response
    }
}
