//! Errors as HTTP responses: a status and `{"error": ..., "detail": ...}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A refused request. Nothing of it was stored.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    /// A refusal with `status`, the code `error` and a sentence saying what was wrong.
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }

    /// The response's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What was wrong, and where.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub(crate) fn bad_request(error: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, error, detail)
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub(crate) fn unauthorized(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
}

impl From<linkflow::EngineError> for ApiError {
    fn from(error: linkflow::EngineError) -> Self {
        if let linkflow::EngineError::WrongCursor { .. } = error {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", error.to_string());
        }
        if let linkflow::EngineError::Compacted { .. } = error {
            return ApiError::new(StatusCode::GONE, "compacted", error.to_string());
        }
        tracing::error!(%error, "engine error");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_unavailable",
            error.to_string(),
        )
    }
}

/// The error code of a refusal, in its response's extensions (for the refusal counters).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.error, "detail": self.detail})),
        )
            .into_response();
        response.extensions_mut().insert(ErrorCode(self.error));
        response
    }
}
