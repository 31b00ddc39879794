//! HTTP errors: one enum, each variant a status, a stable machine code and a human message.
//!
//! Body: `{"error": {"code": "unknown_topic", "message": "...", "field": "jobs[2].type"}}`
//! (`field` only for `invalid_field`; `limit`, the configuration key of the bound, only for
//! `limit_reached`).
//!
//! | code | status |
//! |---|---|
//! | `malformed_json`, `invalid_idempotency_key` | 400 |
//! | `unauthenticated` (no token, or one that is not configured; with `WWW-Authenticate: Bearer`) | 401 |
//! | `forbidden` (the token's roles or topics do not cover the operation) | 403 |
//! | `not_found`, `unknown_topic`, `unknown_partition`, `unknown_schedule`, `unknown_group` | 404 |
//! | `method_not_allowed` | 405 |
//! | `body_timeout` (the body did not arrive within `api.stall_timeout_ms`) | 408 |
//! | `topic_conflict`, `plan_refused`, `schedule_in_config`, `duplicate_job` | 409 |
//! | `payload_too_large` | 413 |
//! | `unsupported_media_type` | 415 |
//! | `invalid_field`, `idempotency_key_reused` | 422 |
//! | `internal` | 500 |
//! | `unsupported` | 501 |
//! | `request_failed` | 502 |
//! | `backend_unavailable`, `route_down`, `overloaded` (with `Retry-After`: too many requests in flight) | 503 |
//! | `limit_reached` | 507 |
//! | `request_timeout` | 504 |

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use conveyor_core::Error;
use serde_json::json;

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The body is not well-formed JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// No such route.
    #[error("no route for {0}; see /openapi.json")]
    NotFound(String),
    /// No job of that id is known (`not_found`, as an unknown route).
    #[error("{0}")]
    UnknownJob(String),
    /// No such topic.
    #[error("{0}")]
    UnknownTopic(String),
    /// The topic has no such partition.
    #[error("{0}")]
    UnknownPartition(String),
    /// No schedule of that name.
    #[error("{0}")]
    UnknownSchedule(String),
    /// No consumer group of that name (none configured, none with committed offsets).
    #[error("{0}")]
    UnknownGroup(String),
    /// No bearer token, or one that is not configured.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token does not allow the operation.
    #[error("{0}")]
    Forbidden(String),
    /// The request body did not arrive in time.
    #[error("{0}")]
    BodyTimeout(String),
    /// Too many requests in flight (`api.max_requests_in_flight`): answered at once with
    /// `Retry-After`, never queued.
    #[error("{0}")]
    Overloaded(String),
    /// The schedule is defined in the configuration file, which the API does not change.
    #[error("{0}")]
    ScheduleInConfig(String),
    /// Wrong method for the route.
    #[error("method not allowed; see /openapi.json")]
    MethodNotAllowed,
    /// The topic exists with other settings.
    #[error("{0}")]
    TopicConflict(String),
    /// A unique job whose key another job holds.
    #[error("{0}")]
    DuplicateJob(String),
    /// A topics plan contains changes that cannot be made in place; nothing was applied.
    #[error("{0}")]
    PlanRefused(String),
    /// The backend cannot do this (e.g. compaction on the embedded backend).
    #[error("{0}")]
    Unsupported(String),
    /// The body or a record is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A field is missing or has a wrong type or value.
    #[error("{message}")]
    InvalidField {
        /// The field, e.g. `jobs[2].type`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The backend failed.
    #[error("{0}")]
    BackendUnavailable(String),
    /// A route's worker is down (restarting).
    #[error("{0}")]
    RouteDown(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
    /// No reply to a request within its timeout.
    #[error("{0}")]
    RequestTimeout(String),
    /// The worker dead-lettered a request: its reply carried the error.
    #[error("{0}")]
    RequestFailed(String),
    /// The `Idempotency-Key` header is malformed (empty, too long, a control character).
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    /// The `Idempotency-Key` was used for another request within the window.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// A bound on what the server keeps for clients (schedules, waiting requests) is reached;
    /// nothing was stored.
    #[error("{message}")]
    LimitReached {
        /// The configuration key of the bound, e.g. `scheduler.max_schedule_bytes`.
        limit: String,
        /// What is kept, the bound, and what to do.
        message: String,
    },
}

impl ApiError {
    /// A 507 `limit_reached` for the bound configured by `limit`.
    pub fn limit(limit: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::LimitReached {
            limit: limit.into(),
            message: message.into(),
        }
    }

    /// A 422 for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error with another message (e.g. with context added).
    pub fn with_message(self, message: String) -> Self {
        match self {
            ApiError::MalformedJson(_) => ApiError::MalformedJson(message),
            ApiError::NotFound(_) => ApiError::NotFound(message),
            ApiError::UnknownJob(_) => ApiError::UnknownJob(message),
            ApiError::UnknownTopic(_) => ApiError::UnknownTopic(message),
            ApiError::UnknownPartition(_) => ApiError::UnknownPartition(message),
            ApiError::UnknownSchedule(_) => ApiError::UnknownSchedule(message),
            ApiError::UnknownGroup(_) => ApiError::UnknownGroup(message),
            ApiError::Unauthenticated(_) => ApiError::Unauthenticated(message),
            ApiError::Forbidden(_) => ApiError::Forbidden(message),
            ApiError::Overloaded(_) => ApiError::Overloaded(message),
            ApiError::BodyTimeout(_) => ApiError::BodyTimeout(message),
            ApiError::ScheduleInConfig(_) => ApiError::ScheduleInConfig(message),
            ApiError::MethodNotAllowed => ApiError::MethodNotAllowed,
            ApiError::TopicConflict(_) => ApiError::TopicConflict(message),
            ApiError::DuplicateJob(_) => ApiError::DuplicateJob(message),
            ApiError::PlanRefused(_) => ApiError::PlanRefused(message),
            ApiError::Unsupported(_) => ApiError::Unsupported(message),
            ApiError::PayloadTooLarge(_) => ApiError::PayloadTooLarge(message),
            ApiError::UnsupportedMediaType(_) => ApiError::UnsupportedMediaType(message),
            ApiError::InvalidField { field, .. } => ApiError::InvalidField { field, message },
            ApiError::BackendUnavailable(_) => ApiError::BackendUnavailable(message),
            ApiError::RouteDown(_) => ApiError::RouteDown(message),
            ApiError::Internal(_) => ApiError::Internal(message),
            ApiError::RequestTimeout(_) => ApiError::RequestTimeout(message),
            ApiError::RequestFailed(_) => ApiError::RequestFailed(message),
            ApiError::InvalidIdempotencyKey(_) => ApiError::InvalidIdempotencyKey(message),
            ApiError::IdempotencyKeyReused(_) => ApiError::IdempotencyKeyReused(message),
            ApiError::LimitReached { limit, .. } => ApiError::LimitReached { limit, message },
        }
    }

    /// The stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::NotFound(_) | ApiError::UnknownJob(_) => "not_found",
            ApiError::UnknownTopic(_) => "unknown_topic",
            ApiError::UnknownPartition(_) => "unknown_partition",
            ApiError::UnknownSchedule(_) => "unknown_schedule",
            ApiError::UnknownGroup(_) => "unknown_group",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::ScheduleInConfig(_) => "schedule_in_config",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::TopicConflict(_) => "topic_conflict",
            ApiError::DuplicateJob(_) => "duplicate_job",
            ApiError::PlanRefused(_) => "plan_refused",
            ApiError::Unsupported(_) => "unsupported",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::BackendUnavailable(_) => "backend_unavailable",
            ApiError::RouteDown(_) => "route_down",
            ApiError::Internal(_) => "internal",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::RequestFailed(_) => "request_failed",
            ApiError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            ApiError::IdempotencyKeyReused(_) => "idempotency_key_reused",
            ApiError::LimitReached { .. } => "limit_reached",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::InvalidIdempotencyKey(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::NotFound(_)
            | ApiError::UnknownJob(_)
            | ApiError::UnknownTopic(_)
            | ApiError::UnknownPartition(_)
            | ApiError::UnknownSchedule(_)
            | ApiError::UnknownGroup(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TopicConflict(_)
            | ApiError::DuplicateJob(_)
            | ApiError::PlanRefused(_)
            | ApiError::ScheduleInConfig(_) => StatusCode::CONFLICT,
            ApiError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidField { .. } | ApiError::IdempotencyKeyReused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::BackendUnavailable(_) | ApiError::RouteDown(_) | ApiError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::RequestFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::LimitReached { .. } => StatusCode::INSUFFICIENT_STORAGE,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::UnknownTopic(_) => ApiError::UnknownTopic(e.to_string()),
            Error::UnknownPartition { .. } => ApiError::invalid("partition", e.to_string()),
            Error::InvalidTopicName { .. } => ApiError::invalid("name", e.to_string()),
            Error::ReservedTopic { .. } => ApiError::invalid("topic", e.to_string()),
            Error::InvalidArgument(m) => ApiError::invalid("", m),
            Error::TopicConflict { .. } => ApiError::TopicConflict(e.to_string()),
            Error::DuplicateJob { .. } => ApiError::DuplicateJob(e.to_string()),
            Error::RecordTooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            Error::PartlyStored { ref cause, .. } => {
                let partly = e.to_string();
                match **cause {
                    Error::RecordTooLarge { .. } => ApiError::PayloadTooLarge(partly),
                    _ => ApiError::BackendUnavailable(partly),
                }
            }
            Error::Unsupported { .. } => ApiError::Unsupported(e.to_string()),
            Error::RequestTimeout { .. } => ApiError::RequestTimeout(e.to_string()),
            Error::RequestFailed { .. } => ApiError::RequestFailed(e.to_string()),
            Error::Closed | Error::Storage(_) | Error::Io(_) | Error::Broker(_) => {
                ApiError::BackendUnavailable(format!(
                    "{e}; the job is not confirmed as stored: retry later"
                ))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code(), "message": self.to_string() });
        match &self {
            ApiError::InvalidField { field, .. } => body["field"] = json!(field),
            ApiError::LimitReached { limit, .. } => body["limit"] = json!(limit),
            _ => {}
        }
        match &self {
            // not a failure of the server: a bound it was configured with
            ApiError::LimitReached { limit, .. } => {
                tracing::warn!(limit, message = %self, "request refused: a bound is reached")
            }
            // counted, not logged one line each: a flood would flood the log too
            ApiError::Overloaded(_) => {}
            _ if self.status().is_server_error() => {
                tracing::error!(code = self.code(), message = %self, "request failed")
            }
            _ => {}
        }
        let mut response = (self.status(), Json(json!({ "error": body }))).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthenticated(_) => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"conveyor\""),
                );
            }
            ApiError::Overloaded(_) => {
                headers.insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
            }
            _ => {}
        }
        // for the request metrics (`api/metrics.rs`): errors counted by their stable code
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// The stable code of an error answer, kept in the response's extensions for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);
