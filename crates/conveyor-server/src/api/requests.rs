//! Request/reply over HTTP ([`conveyor_runtime::effects::request`]): the API process publishes the job
//! with its client's reply topic and waits for the worker's reply.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/topics/{topic}/requests` | body: a job as for `POST /v1/topics/{topic}/jobs`, plus `reply_timeout_ms` (default [`DEFAULT_REPLY_TIMEOUT_MS`], 1 to [`MAX_REPLY_TIMEOUT_MS`]; the server waits at most `api.max_reply_timeout_ms`, by default the same 60 s). `200 {"correlation_id", "reply"}` with the reply's JSON (`reply_base64` and `content_type` instead when it is not JSON); `504 request_timeout` when no reply came in time (the request stays in the topic and may still run); `502 request_failed` when the worker dead-lettered the request (the message carries its error); `404 unknown_topic`; `422 invalid_field` |
//! | `GET /v1/requests/stats` | `200`: this API process's requests: its reply topic, callers waiting now, and counts (sent, replied, failed, timed out, abandoned by a client that disconnected, replies dropped because their caller had gone) |
//!
//! A client that disconnects while waiting is counted as `abandoned`; its reply, when it comes,
//! is dropped and counted as `late`. Nothing is kept for a caller that has gone.
//!
//! # Bounded
//! At most `api.max_waiting_requests` ([`DEFAULT_MAX_WAITING`]) requests wait at once in a
//! process; one more is refused at once with `507 limit_reached` (naming the key), before
//! anything is published. A waiting request costs the same few hundred bytes whatever it
//! carries (its correlation id, its channel, its task: its job was published and dropped before
//! it waits), plus its reply for the moment it is handed over, so the count bounds the bytes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{field_of, AppState, JobRequest, JsonBody};
use crate::error::ApiError;

/// How long a request waits for its reply unless it says: 10 s.
pub const DEFAULT_REPLY_TIMEOUT_MS: u64 = 10_000;
/// The longest `reply_timeout_ms` a request may ask for: 60 s.
pub const MAX_REPLY_TIMEOUT_MS: u64 = 60_000;
/// How many requests may wait for their reply at once unless configured: 10,000
/// (`api.max_waiting_requests`).
pub const DEFAULT_MAX_WAITING: usize = 10_000;

/// The bound on requests waiting at once (shared by the clones of the state).
#[derive(Debug, Clone)]
pub struct WaitingLimit {
    max: usize,
    permits: Arc<Semaphore>,
}

impl WaitingLimit {
    /// At most `max` requests waiting at once.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        WaitingLimit {
            max,
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    /// A place for one more waiting request (given back when dropped), or `507 limit_reached`.
    fn take(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            ApiError::limit(
                "api.max_waiting_requests",
                format!(
                    "{} requests are waiting for their reply, the most this process keeps (`api.max_waiting_requests`); nothing was published: retry once some are answered, or raise the bound",
                    self.max
                ),
            )
        })
    }
}

impl Default for WaitingLimit {
    fn default() -> Self {
        WaitingLimit::new(DEFAULT_MAX_WAITING)
    }
}

fn reply_timeout(v: Option<Value>) -> Result<u64, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(DEFAULT_REPLY_TIMEOUT_MS),
        Some(v) => v
            .as_u64()
            .filter(|ms| (1..=MAX_REPLY_TIMEOUT_MS).contains(ms))
            .ok_or_else(|| {
                ApiError::invalid(
                    "reply_timeout_ms",
                    format!("`reply_timeout_ms` must be an integer from 1 to {MAX_REPLY_TIMEOUT_MS}, got {v}"),
                )
            }),
    }
}

/// `POST /v1/topics/{topic}/requests`.
pub(super) async fn request(
    State(s): State<Arc<AppState>>,
    Path(topic): Path<String>,
    http: axum::http::HeaderMap,
    JsonBody(mut body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    super::refuse_reserved(&topic)?;
    // held until the answer is sent or the client goes (the handler is dropped)
    let _waiting = s.waiting_requests.take()?;
    let timeout_ms = reply_timeout(body.remove("reply_timeout_ms"))?;
    let req: JobRequest = serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::invalid(field_of(&e), e.to_string()))?;
    let job = super::with_http_trace(req.into_job("")?, &http);
    super::refuse_past_deadline(&job, "")?;
    let wait = Duration::from_millis(timeout_ms).min(s.max_reply_timeout);
    let reply = s.client.request(&topic, job, wait).await?;
    let json_value = match reply.content_type() {
        None => serde_json::from_slice::<Value>(&reply.value).ok(),
        Some(ct) if ct.starts_with("application/json") || ct.ends_with("+json") => {
            serde_json::from_slice::<Value>(&reply.value).ok()
        }
        Some(_) => None,
    };
    let mut out = json!({ "correlation_id": reply.correlation_id });
    match json_value {
        Some(v) => out["reply"] = v,
        None => {
            out["reply_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&reply.value));
            out["content_type"] = json!(reply.content_type().unwrap_or("application/octet-stream"));
        }
    }
    Ok(Json(out))
}

/// `GET /v1/requests/stats`.
pub(super) async fn request_stats(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!(s.client.request_counts()))
}
