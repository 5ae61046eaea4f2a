//! The edge's refusals: one type, rendered as the JSON error body every client of the edge
//! gets (`{"error": {"code", "message"}}`), with `Retry-After` where a retry will help.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hitcount_edge_core::Rejection;
use hitcount_edge_core::beacon::BeaconError;
use serde_json::json;

/// What the edge's 503 asks a client to wait: the delivery task retries about as often.
pub const RETRY_AFTER_S: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Beacon(#[from] BeaconError),
    #[error("{}", Rejection::InvalidResourceId)]
    InvalidResourceId,
    #[error("{}", Rejection::InvalidTimestamp)]
    InvalidTimestamp,
    #[error("the edge cannot reach the aggregator and holds all it can; retry")]
    Full,
    #[error("the counter failed; retry")]
    Unavailable,
    #[error("no such route")]
    NotFound,
    #[error("start the edge with --aggregator-token to serve counts")]
    NotConfigured,
    #[error("the aggregator did not answer")]
    AggregatorUnreachable,
    #[error("the aggregator's answer was not JSON")]
    AggregatorUnreadable,
    /// The limit travels with the refusal, so this type names no module of the edge's own.
    #[error("request bodies through the edge are limited to {limit_bytes} bytes")]
    ProxyBodyTooLarge { limit_bytes: usize },
    #[error("the origin did not answer in time")]
    OriginTimeout,
    #[error("the origin did not answer")]
    OriginUnreachable,
}

impl EdgeError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Beacon(BeaconError::ContentType) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Beacon(BeaconError::TooLarge) | Self::ProxyBodyTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Beacon(BeaconError::Json(_))
            | Self::InvalidResourceId
            | Self::InvalidTimestamp => StatusCode::BAD_REQUEST,
            Self::Full | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound | Self::NotConfigured => StatusCode::NOT_FOUND,
            Self::AggregatorUnreachable | Self::AggregatorUnreadable | Self::OriginUnreachable => {
                StatusCode::BAD_GATEWAY
            }
            Self::OriginTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable code clients match on (the same as `x-hitcount-result` where both exist).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Beacon(refused) => refused.code(),
            Self::InvalidResourceId => "invalid_resource_id",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::Full => "full",
            Self::Unavailable => "unavailable",
            Self::NotFound => "not_found",
            Self::NotConfigured => "not_configured",
            Self::AggregatorUnreachable => "aggregator_unreachable",
            Self::AggregatorUnreadable => "aggregator_unreadable",
            Self::ProxyBodyTooLarge { .. } => "body_too_large",
            Self::OriginTimeout => "origin_timeout",
            Self::OriginUnreachable => "origin_unreachable",
        }
    }
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(json!({"error": {"code": self.code(), "message": self.to_string()}})),
        )
            .into_response();
        if matches!(self, Self::Full | Self::Unavailable) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        response
    }
}
