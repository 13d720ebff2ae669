//! Turning results into the protocol's responses — the one place where
//! errors get their status codes and JSON bodies.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use upline_core::CoreError;
use upline_proto::{ErrorBody, LbsError, QueryError};

/// The request's id, sent as `requestId`/`requestID` and logged with it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// Renders a refusal of the upload or query endpoints. 5xx are logged
/// with their whole cause chain; the client gets a short message.
pub fn core_error(rid: &RequestId, e: &CoreError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), error = %chain(e), "request failed");
    } else {
        tracing::info!(status = status.as_u16(), reason = %e, "request refused");
    }
    (status, Json(ErrorBody::new(&rid.0, e.to_string()))).into_response()
}

/// Renders a refusal of `/lbs` in its own format.
pub fn lbs_error(e: &QueryError) -> Response {
    tracing::info!(reason = %e, "lbs request refused");
    let body = LbsError {
        code: "InvalidArgument".into(),
        message: e.to_string(),
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// `error: cause: cause ...` on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
