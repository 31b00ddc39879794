//! The HTTP API. [`app`] builds the router from an [`AppState`], so tests call it without a socket.
//!
//! | route | purpose |
//! |---|---|
//! | `POST /v1/topics/{topic}/jobs` | enqueue one job |
//! | `POST /v1/topics/{topic}/jobs/batch` | enqueue up to `api.max_batch` jobs atomically |
//! | `GET /v1/topics`, `POST /v1/topics`, `GET /v1/topics/{topic}` | list, create, describe topics (`api/topics.rs`) |
//! | `GET /v1/topics/{topic}/records?partition=&offset=&limit=` | read records (for `conveyor tail`; `api/topics.rs`) |
//! | `POST /v1/topics:apply` | plan (`dry_run`) or apply topic specs: create, add partitions, change retention (`api/topics.rs`) |
//! | `POST /v1/topics/{topic}/dlq:replay` | dead letters of the dead-letter topic `{topic}` back to their topic as fresh jobs, once each (`conveyor_runtime::operations::replay`) |
//! | `GET /v1/groups/{group}/lag[?topic=]` | committed offsets and lag per partition (`404 unknown_group` for a group that is neither a route's nor has committed offsets; `api/lag.rs`) |
//! | `POST /v1/topics/{topic}/requests`, `GET /v1/requests/stats` | request/reply: publish a job and wait for its reply (504 `request_timeout` after the bound); this process's request counts (`api/requests.rs`) |
//! | `GET /v1/schedules`, `GET/PUT/DELETE /v1/schedules/{name}` | cron schedules: list, read, create or replace, delete (those of the configuration file are read-only) |
//! | `GET /v1/jobs/{id}`, `GET /v1/jobs?state=&topic=` | job lookup: one job's state, jobs by state (`api/jobs.rs`) |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness (the backend answers) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document |
//! | `GET /metrics` | Prometheus metrics (`api/metrics.rs`, `docs/metrics.md`) |
//!
//! A `201` means the job is durably stored (see the backend contract). conveyor's own topics
//! (`conveyor.*`) take no jobs, requests or schedules (`422 invalid_field` naming `topic`), and
//! a replay moves no dead letter into them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use conveyor_core::{headers, Backend, PlanAction, TopicInfo, TopicSpec};
use conveyor_runtime::{Client, Enqueued, NewJob};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;

mod control;
mod dlq;
pub mod idempotency;
mod jobs;
mod lag;
pub mod metrics;
pub mod requests;
mod schedules;
mod topics;

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// The client enqueueing jobs (producer name `conveyor-api`).
    pub client: Client,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most jobs per batch.
    pub max_batch: usize,
    /// The routes whose workers are down (`/readyz` fails while any is).
    pub routes: Arc<crate::supervise::RouteHealth>,
    /// The control log (cancellations, pauses, API schedules), opened at its first use.
    pub control: Arc<tokio::sync::OnceCell<conveyor_runtime::time::control::Control>>,
    /// The schedules of the configuration file (read-only through the API).
    pub configured_schedules: Arc<Vec<conveyor_runtime::time::schedule::Schedule>>,
    /// The first answers of requests with an `Idempotency-Key`, opened at its first use.
    pub idempotency: Arc<tokio::sync::OnceCell<idempotency::Idempotency>>,
    /// The idempotency window and memory bound (`api.idempotency_*`).
    pub idempotency_options: idempotency::IdempotencyOptions,
    /// The longest a request waits for its reply (`api.max_reply_timeout_ms`), whatever its
    /// `reply_timeout_ms`. Default: 60 s.
    pub max_reply_timeout: std::time::Duration,
    /// How many requests may wait for their reply at once (`api.max_waiting_requests`).
    /// Default: [`requests::DEFAULT_MAX_WAITING`].
    pub waiting_requests: requests::WaitingLimit,
    /// How many schedules, of how many bytes and ticks, `PUT /v1/schedules` lets the processes
    /// keep (`[scheduler]`'s `max_*`). Default: [`conveyor_runtime::time::schedule::ScheduleLimits::default`].
    pub schedule_limits: conveyor_runtime::time::schedule::ScheduleLimits,
    /// The consumer groups this process runs (its routes'): pause and lag accept them before
    /// they commit anything; any other group must have committed offsets.
    pub known_groups: Arc<Vec<String>>,
    /// The API tokens (`[[api.tokens]]`); none: the API is open.
    pub tokens: crate::auth::Tokens,
    /// What this process runs (`conveyor serve --role`), shown by `/readyz`. Default: `all`.
    pub role: &'static str,
    /// `/readyz`'s last check and when it ran (reused for a second).
    pub ready_cache: ReadyCache,
    /// Job lookup's index of `conveyor.jobs`, opened at its first use.
    pub jobs: Arc<tokio::sync::OnceCell<conveyor_runtime::observation::job_states::JobIndex>>,
}

/// `/readyz`'s last check and when it ran.
pub type ReadyCache = Arc<std::sync::Mutex<Option<(std::time::Instant, Result<(), ApiError>)>>>;

impl AppState {
    /// State with the default limits (1 MiB bodies, 1000 jobs per batch).
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        AppState {
            client: Client::new(Arc::clone(&backend)).with_producer("conveyor-api"),
            backend,
            max_body_bytes: 1024 * 1024
                - conveyor_runtime::worker::dead_letter::DEAD_LETTER_HEADROOM,
            max_batch: 1000,
            routes: Arc::default(),
            control: Arc::default(),
            configured_schedules: Arc::default(),
            idempotency: Arc::default(),
            idempotency_options: idempotency::IdempotencyOptions::default(),
            max_reply_timeout: std::time::Duration::from_millis(requests::MAX_REPLY_TIMEOUT_MS),
            waiting_requests: requests::WaitingLimit::default(),
            schedule_limits: Default::default(),
            known_groups: Arc::default(),
            tokens: Default::default(),
            role: "all",
            ready_cache: Arc::default(),
            jobs: Arc::default(),
        }
    }

    /// Job lookup's index, opened (its topic created and read) at the first call.
    pub async fn jobs(
        &self,
    ) -> Result<&conveyor_runtime::observation::job_states::JobIndex, ApiError> {
        let backend = Arc::clone(&self.backend);
        Ok(self
            .jobs
            .get_or_try_init(|| {
                conveyor_runtime::observation::job_states::JobIndex::open(
                    backend,
                    conveyor_runtime::observation::job_states::DEFAULT_MAX_JOBS,
                )
            })
            .await?)
    }

    /// The control log, opened (and its topic created) at the first call.
    pub async fn control(&self) -> Result<&conveyor_runtime::time::control::Control, ApiError> {
        let backend = Arc::clone(&self.backend);
        Ok(self
            .control
            .get_or_try_init(|| conveyor_runtime::time::control::Control::open(backend))
            .await?)
    }

    /// The idempotency answers, opened (its topic created and read) at the first call.
    pub async fn idempotency(&self) -> Result<&idempotency::Idempotency, ApiError> {
        let backend = Arc::clone(&self.backend);
        let options = self.idempotency_options;
        Ok(self
            .idempotency
            .get_or_try_init(|| idempotency::Idempotency::open(backend, options))
            .await?)
    }
}

/// The router.
pub fn app(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let tokens = state.tokens.clone();
    let routes = Router::new()
        .route("/v1/topics/{topic}/jobs", post(enqueue))
        .route("/v1/topics/{topic}/jobs/batch", post(enqueue_batch))
        .route(
            "/v1/topics",
            get(topics::list_topics).post(topics::create_topic),
        )
        .route("/v1/topics/{topic}", get(topics::describe_topic))
        .route("/v1/topics:apply", post(topics::apply_topics))
        .route("/v1/topics/{topic}/records", get(topics::read_records))
        .route(
            "/v1/topics/{topic}/dlq:replay",
            post(dlq::replay_dead_letters),
        )
        .route("/v1/groups/{group}/lag", get(lag::group_lag))
        .route("/v1/topics/{topic}/requests", post(requests::request))
        .route("/v1/requests/stats", get(requests::request_stats))
        .route(
            "/v1/jobs/{id}",
            get(jobs::show_job).delete(control::cancel_job),
        )
        .route("/v1/jobs", get(jobs::list_jobs))
        .route(
            "/v1/groups/{group}/topics/{action}",
            post(control::pause_or_resume),
        )
        .route("/v1/groups/{group}/paused", get(control::paused_topics))
        .route("/v1/schedules", get(schedules::list_schedules))
        .route(
            "/v1/schedules/{name}",
            get(schedules::get_schedule)
                .put(schedules::put_schedule)
                .delete(schedules::delete_schedule),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::scrape))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        );
    // every route above needs what `auth` says once a token is configured
    let routes = crate::auth::guard(routes, tokens);
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(Arc::new(state))
}

/// The router of a process that serves no API (`conveyor serve --role workers|scheduler`): the
/// probes only, for its orchestrator.
pub fn probes(state: AppState) -> Router {
    let tokens = state.tokens.clone();
    let routes = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::scrape));
    // /metrics needs a `read` token once tokens are configured, as on the API port
    let routes = crate::auth::guard(routes, tokens);
    routes
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::NotFound(format!(
                "{method} {}: this process serves no API (its role is workers or scheduler; run one with --role api or all)",
                uri.path()
            ))
        })
        .with_state(Arc::new(state))
}

/// `422 invalid_field` naming `{at}deadline` when the job's deadline has passed (or passes
/// before it is due): it could only be dead-lettered, so the caller learns it now. Checked when
/// a job is first stored, not when an idempotent repeat is answered (the first is stored).
pub(crate) fn refuse_past_deadline(job: &NewJob, at: &str) -> Result<(), ApiError> {
    let time = |name| {
        job.headers
            .get_str(name)
            .and_then(conveyor_core::headers::parse_time)
    };
    let Some(deadline) = time(headers::DEADLINE) else {
        return Ok(());
    };
    let now = std::time::SystemTime::now();
    if deadline <= time(headers::DUE_AT).unwrap_or(now).max(now) {
        return Err(ApiError::invalid(
            format!("{at}deadline"),
            format!(
                "`deadline` {} has passed (or passes before the job is due): the job could never run; give a later deadline (RFC 3339 with an offset)",
                headers::format_time(deadline)
            ),
        ));
    }
    Ok(())
}

/// The HTTP request's W3C `traceparent` as the job's, unless the job names its own in
/// `headers`: its handler joins the caller's trace. A malformed header is ignored.
pub(crate) fn with_http_trace(job: NewJob, http: &axum::http::HeaderMap) -> NewJob {
    if job.headers.get(headers::TRACEPARENT).is_some() {
        return job;
    }
    match http
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(conveyor_runtime::observation::trace::SpanContext::parse)
    {
        Some(parent) => job.with_header(headers::TRACEPARENT, parent.to_traceparent()),
        None => job,
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("{method} {}", uri.path()))
}

/// A JSON body: 415 unless `application/json`, 413 beyond the limit, 400 when not JSON, 422 when
/// JSON of the wrong shape.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !(mime == "application/json" || mime.ends_with("+json")) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type must be application/json, got `{ct}`; to enqueue other payloads, send them as `payload_base64` with a `content_type`"
            )));
        }
        let limit = req
            .extensions()
            .get::<crate::http::BodyTimeout>()
            .map_or(std::time::Duration::from_secs(30), |t| t.0);
        let body = tokio::time::timeout(limit, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::BodyTimeout(format!(
                    "the request body did not arrive whole within {limit:?} (api.stall_timeout_ms); send it at once"
                ))
            })?;
        let body = body.map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("the request body exceeds the limit ({e}); split it or raise api.max_body_bytes"))
            } else {
                ApiError::MalformedJson(format!("cannot read the body: {e}"))
            }
        })?;
        serde_json::from_slice(&body)
            .map(JsonBody)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::invalid(field_of(&e), e.to_string()),
                _ => ApiError::MalformedJson(format!("the body is not valid JSON: {e}")),
            })
    }
}

/// Best effort: the field serde complained about (`missing field `type``, `unknown field `x``).
fn field_of(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    msg.split('`')
        .nth(1)
        .filter(|_| msg.contains("field"))
        .unwrap_or("")
        .to_owned()
}

/// One job in a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    /// The job type.
    #[serde(rename = "type")]
    job_type: String,
    /// A JSON payload (`null` is a payload; only a missing field is none).
    #[serde(default, deserialize_with = "present")]
    payload: Option<Value>,
    /// A binary payload, base64 (standard alphabet).
    #[serde(default)]
    payload_base64: Option<String>,
    /// The binary payload's MIME type (with `payload_base64`).
    #[serde(default)]
    content_type: Option<String>,
    /// The key.
    #[serde(default)]
    key: Option<String>,
    /// Extra headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Run no earlier than this many milliseconds from now.
    #[serde(default)]
    delay_ms: Option<i64>,
    /// Run no earlier than this time (RFC 3339).
    #[serde(default)]
    run_at: Option<String>,
    /// Dead-letter instead of running after this time (RFC 3339).
    #[serde(default)]
    deadline: Option<String>,
    /// Longest one attempt may run, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<i64>,
    /// At most one job of the topic with this key runs while it holds it.
    #[serde(default)]
    unique_key: Option<String>,
    /// How long the job holds its unique key, in milliseconds. Default: 24 h.
    #[serde(default)]
    unique_for_ms: Option<i64>,
}

/// How long a unique job holds its key unless it says: 24 hours.
const DEFAULT_UNIQUE_FOR_MS: i64 = 24 * 3600 * 1000;

/// The longest delay a job may ask for: 366 days.
const MAX_DELAY_MS: i64 = 366 * 24 * 3600 * 1000;
/// The longest timeout a job may ask for: one day.
const MAX_TIMEOUT_MS: i64 = conveyor_core::headers::MAX_TIMEOUT_MS as i64;

/// A field that is present, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Standard base64, padded, that also takes non-zero trailing bits (as most encoders' input).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Whether `s` can travel in an HTTP header (webhooks send the type, key, content type and
/// trace context as headers): no control characters but tab.
fn header_safe(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\t')
}

impl JobRequest {
    fn into_job(self, at: &str) -> Result<NewJob, ApiError> {
        let field = |f: &str| format!("{at}{f}");
        if self.job_type.trim().is_empty() || self.job_type.chars().count() > 255 {
            return Err(ApiError::invalid(
                field("type"),
                "`type` must be 1 to 255 characters",
            ));
        }
        let controlled = [
            ("type", Some(&self.job_type)),
            ("key", self.key.as_ref()),
            ("content_type", self.content_type.as_ref()),
            (
                "headers.traceparent",
                self.headers.get(headers::TRACEPARENT),
            ),
            ("headers.tracestate", self.headers.get(headers::TRACESTATE)),
        ];
        for (name, value) in controlled {
            if value.is_some_and(|v| !header_safe(v)) {
                return Err(ApiError::invalid(
                    field(name),
                    format!("`{name}` contains a control character; it is sent as an HTTP header to webhooks, which cannot carry one"),
                ));
            }
        }
        let (payload, content_type) = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    field("payload"),
                    "give `payload` or `payload_base64`, not both",
                ))
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    field("payload"),
                    "missing `payload` (JSON) or `payload_base64`",
                ))
            }
            (Some(v), None) => {
                if self.content_type.is_some() {
                    return Err(ApiError::invalid(
                        field("content_type"),
                        "`content_type` goes with `payload_base64`; `payload` is JSON",
                    ));
                }
                (
                    Bytes::from(serde_json::to_vec(&v).expect("a Value serializes")),
                    None,
                )
            }
            (None, Some(b64)) => {
                let bytes = BASE64.decode(b64.as_bytes()).map_err(|e| {
                    ApiError::invalid(field("payload_base64"), format!("not valid base64: {e}"))
                })?;
                let ct = self
                    .content_type
                    .unwrap_or_else(|| "application/octet-stream".into());
                (Bytes::from(bytes), Some(ct))
            }
        };
        let mut job = NewJob::raw(self.job_type, payload, content_type);
        if let Some(k) = self.key {
            job = job.with_key(k);
        }
        let time = |name: &str, v: &str| {
            headers::parse_rfc3339(v).ok_or_else(|| {
                ApiError::invalid(
                    field(name),
                    format!(
                        "`{name}` must be an RFC 3339 time with an offset, such as 2026-12-01T09:00:00Z or 2026-12-01T10:00:00.000+01:00; got `{v}`"
                    ),
                )
            })
        };
        let mut due = None;
        match (self.delay_ms, self.run_at.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    field("delay_ms"),
                    "give `delay_ms` or `run_at`, not both",
                ))
            }
            (Some(ms), None) if !(0..=MAX_DELAY_MS).contains(&ms) => {
                return Err(ApiError::invalid(
                    field("delay_ms"),
                    format!("`delay_ms` must be 0 to {MAX_DELAY_MS} (366 days)"),
                ))
            }
            (Some(ms), None) => {
                let at = std::time::SystemTime::now() + std::time::Duration::from_millis(ms as u64);
                due = Some(at);
                job = job.process_at(at);
            }
            (None, Some(at)) => {
                let at = time("run_at", at)?;
                due = Some(at);
                job = job.process_at(at);
            }
            (None, None) => {}
        }
        if let Some(d) = self.deadline.as_deref() {
            let deadline = time("deadline", d)?;
            // not after the due time given with it: the job could never run, whenever sent
            if due.is_some_and(|due| deadline <= due) {
                return Err(ApiError::invalid(
                    field("deadline"),
                    format!("`deadline` {d} is not after the time the job is due: it could never run; give a later deadline or an earlier `run_at`/`delay_ms`"),
                ));
            }
            job = job.deadline(deadline);
        }
        match (self.unique_key, self.unique_for_ms) {
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    field("unique_for_ms"),
                    "`unique_for_ms` goes with a `unique_key`",
                ))
            }
            (Some(k), _) if k.is_empty() || k.chars().count() > 255 || !header_safe(&k) => {
                return Err(ApiError::invalid(
                    field("unique_key"),
                    "`unique_key` must be 1 to 255 characters without control characters",
                ))
            }
            (Some(_), Some(ms)) if !(1..=MAX_DELAY_MS).contains(&ms) => {
                return Err(ApiError::invalid(
                    field("unique_for_ms"),
                    format!("`unique_for_ms` must be 1 to {MAX_DELAY_MS} (366 days)"),
                ))
            }
            (Some(k), ms) => {
                let ms = ms.unwrap_or(DEFAULT_UNIQUE_FOR_MS);
                job = job.unique(k, std::time::Duration::from_millis(ms as u64));
            }
            (None, None) => {}
        }
        match self.timeout_ms {
            Some(ms) if !(1..=MAX_TIMEOUT_MS).contains(&ms) => {
                return Err(ApiError::invalid(
                    field("timeout_ms"),
                    format!("`timeout_ms` must be 1 to {MAX_TIMEOUT_MS}"),
                ))
            }
            Some(ms) => job = job.timeout(std::time::Duration::from_millis(ms as u64)),
            None => {}
        }
        for (name, value) in self.headers {
            if headers::METADATA.contains(&name.as_str())
                || name.starts_with("dlq_")
                || name.is_empty()
            {
                return Err(ApiError::invalid(
                    field(&format!("headers.{name}")),
                    format!("header `{name}` is reserved for conveyor's metadata"),
                ));
            }
            job = job.with_header(name, value);
        }
        Ok(job)
    }
}

/// A parsed JSON body into its request type: 422 naming the field.
fn from_json<T: DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::invalid(field_of(&e), e.to_string()))
}

/// Refuses jobs for conveyor's own topics (`conveyor.*`: the control log, idempotency answers,
/// reply topics, the unique-key ledger, the scheduler; [`conveyor_core::topic::is_reserved`]):
/// a record there is read as one of conveyor's own, so a job written to one could forge a
/// cancellation or an answer. `422 invalid_field` naming `topic`.
pub(crate) fn refuse_reserved(topic: &str) -> Result<(), ApiError> {
    Ok(conveyor_core::topic::refuse_reserved(topic)?)
}

/// The checks every enqueue route starts with: the topic is not one of conveyor's own, and an
/// `Idempotency-Key`, when sent, is well formed; returns it with the request's fingerprint
/// (`route`: which enqueue route, so a batch and a single job never match).
fn enqueue_preamble(
    route: &str,
    topic: &str,
    headers: &axum::http::HeaderMap,
    body: &Value,
) -> Result<Option<(String, String)>, ApiError> {
    refuse_reserved(topic)?;
    Ok(idempotency::key_from(headers)?
        .map(|key| (key, idempotency::fingerprint(route, topic, body))))
}

async fn enqueue(
    State(s): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let idempotent = enqueue_preamble("jobs", &topic, &headers, &body)?;
    let job = with_http_trace(from_json::<JobRequest>(body)?.into_job("")?, &headers);
    let Some((key, fingerprint)) = idempotent else {
        refuse_past_deadline(&job, "")?;
        let at: Enqueued = s.client.enqueue(&topic, job).await?;
        return Ok((StatusCode::CREATED, Json(at)).into_response());
    };
    let job = job.with_id(idempotency::message_id(&topic, &key, &fingerprint, None));
    let (client, t) = (s.client.clone(), topic.clone());
    let first = async move {
        refuse_past_deadline(&job, "")?;
        Ok(json!(client.enqueue(&t, job).await?))
    };
    let idem = s.idempotency().await?;
    Ok(idem
        .run(&topic, &key, fingerprint, first)
        .await?
        .into_response())
}

/// The answer to a batch: where each job landed, in the order sent.
#[derive(Serialize)]
struct BatchAnswer<'a> {
    jobs: &'a [Enqueued],
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    jobs: Vec<JobRequest>,
}

async fn enqueue_batch(
    State(s): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let idempotent = enqueue_preamble("batch", &topic, &headers, &body)?;
    let req: BatchRequest = from_json(body)?;
    if req.jobs.is_empty() || req.jobs.len() > s.max_batch {
        return Err(ApiError::invalid(
            "jobs",
            format!(
                "a batch holds 1 to {} jobs, got {}",
                s.max_batch,
                req.jobs.len()
            ),
        ));
    }
    let mut unique = std::collections::HashMap::new();
    for (i, j) in req.jobs.iter().enumerate() {
        if let Some(k) = j.unique_key.as_deref() {
            if let Some(first) = unique.insert(k, i) {
                return Err(ApiError::invalid(
                    format!("jobs[{i}].unique_key"),
                    format!("jobs[{first}] and jobs[{i}] have the same unique_key `{k}`: at most one of them could run"),
                ));
            }
        }
    }
    let jobs = req
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            Ok(with_http_trace(
                j.into_job(&format!("jobs[{i}]."))?,
                &headers,
            ))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let past = |jobs: &[NewJob]| {
        jobs.iter()
            .enumerate()
            .try_for_each(|(i, j)| refuse_past_deadline(j, &format!("jobs[{i}].")))
    };
    let Some((key, fingerprint)) = idempotent else {
        past(&jobs)?;
        let at = s.client.enqueue_batch(&topic, jobs).await?;
        // written straight from the list: through a `Value` tree it cost a tenth of a batch
        return Ok((StatusCode::CREATED, Json(BatchAnswer { jobs: &at })).into_response());
    };
    let jobs: Vec<NewJob> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, j)| j.with_id(idempotency::message_id(&topic, &key, &fingerprint, Some(i))))
        .collect();
    let (client, t) = (s.client.clone(), topic.clone());
    let first = async move {
        past(&jobs)?;
        Ok(json!({ "jobs": client.enqueue_batch(&t, jobs).await? }))
    };
    let idem = s.idempotency().await?;
    Ok(idem
        .run(&topic, &key, fingerprint, first)
        .await?
        .into_response())
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let down = s.routes.down();
    if !down.is_empty() {
        let routes: Vec<String> = down.iter().map(|(r, why)| format!("{r} ({why})")).collect();
        return ApiError::RouteDown(format!(
            "route worker down: {}; its jobs are kept and delivered once it runs again",
            routes.join("; ")
        ))
        .into_response();
    }
    // the backend's answer is reused for a second: probes need no token and are not counted
    // in flight, so a flood of them must not become a flood of backend calls
    let cached = {
        let c = s.ready_cache.lock().unwrap_or_else(|p| p.into_inner());
        c.as_ref()
            .filter(|(at, _)| at.elapsed() < std::time::Duration::from_secs(1))
            .map(|(_, r)| r.clone())
    };
    let result = match cached {
        Some(r) => r,
        None => {
            let r = backend_ready(&s).await;
            *s.ready_cache.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((std::time::Instant::now(), r.clone()));
            r
        }
    };
    match result {
        Ok(()) => Json(json!({"status": "ready", "backend": s.backend.name(), "role": s.role}))
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn backend_ready(s: &AppState) -> Result<(), ApiError> {
    // off the runtime's threads: the embedded probe may wait for a journal sync
    let backend = Arc::clone(&s.backend);
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || backend.health()).await {
        return Err(ApiError::BackendUnavailable(e.to_string()));
    }
    match s.backend.list_topics().await {
        Ok(_) => Ok(()),
        Err(e) => Err(ApiError::BackendUnavailable(format!(
            "the backend does not answer: {e}"
        ))),
    }
}
