//! JSON errors with the right status: `{"error": "…", "status": N}`. No
//! handler panics or answers with a stack; an internal error says what
//! failed (already redacted by the engine's store) and is logged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use swarm_protocol::api;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn unprocessable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        let message = m.into();
        tracing::error!(error = %message, "API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::ApiError {
            error: self.message,
            status: self.status.as_u16(),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<swarm_store::Error> for ApiError {
    fn from(e: swarm_store::Error) -> Self {
        match e {
            swarm_store::Error::ProjectNotFound(id) => {
                ApiError::not_found(format!("no project {id}; GET /api/v1/projects lists them"))
            }
            e if e.is_retryable() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store is busy ({e}); try again"),
            ),
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<swarm_engine::Error> for ApiError {
    fn from(e: swarm_engine::Error) -> Self {
        use swarm_engine::Error as E;
        match e {
            E::Store(s) => s.into(),
            E::InvalidPlan(_)
            | E::InvalidOptions(_)
            | E::InvalidGoal(_)
            | E::UnpricedBudget(_)
            | E::InvalidSource(_)
            | E::InvalidReview(_) => ApiError::unprocessable(e.to_string()),
            E::Busy(_) | E::Cancelled(_) | E::NotResumable(..) | E::NotInReview(_) => {
                ApiError::conflict(e.to_string())
            }
            E::NoSuchTask(..) => ApiError::not_found(e.to_string()),
            E::Config(_) | E::Git(_) | E::Other(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!("the body is larger than {} bytes", crate::MAX_BODY_BYTES),
            )
        } else {
            ApiError::new(status, format!("cannot read the body: {}", r.body_text()))
        }
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;
