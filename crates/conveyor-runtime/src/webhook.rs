//! Webhook delivery: a handler that POSTs each job to an HTTP endpoint, so workers can be written
//! in any language.
//!
//! The request body is the job's payload, byte for byte, with its content type. Metadata travels
//! in `Conveyor-*` request headers (see [`WebhookHandler`]). The answer decides the outcome:
//!
//! | response | outcome |
//! |---|---|
//! | 2xx | done; for a request (a job with `reply_to`, see `Client::request`) the body is the reply (JSON as it is, other text as a JSON string, an empty body as `null`; at most 1 MiB read) |
//! | 408, 429, 5xx, timeout, connection error | retry with backoff; a `Retry-After` (seconds or an HTTP date) is honoured up to `retry.max_retry_after_ms` |
//! | any other status, 3xx included (redirects are not followed: a 302 would turn the POST into a bodiless GET) | permanent failure: dead-letter |
//!
//! At most [`MAX_ERROR_BODY`] bytes of an error answer are read (for the dead letter's error).

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use conveyor_core::headers;
use conveyor_core::Outcome;
use reqwest::header::HeaderValue;
use reqwest::StatusCode;

use crate::handler::Handler;
use crate::job::Job;

/// POSTs jobs to `url`. Request headers: `Content-Type`, `Conveyor-Message-Id`,
/// `Conveyor-Job-Type`, `Conveyor-Attempt`, `Conveyor-Topic`, `Conveyor-Partition`,
/// `Conveyor-Offset`, `Conveyor-Key` (when the key is UTF-8 without control characters, else
/// `Conveyor-Key-Base64`), `Conveyor-Worker` (the delivering
/// worker, `pid-<process id>` by default), `Conveyor-Due-At` and `Conveyor-Deadline` (a delayed
/// job's due time and a job's deadline, RFC 3339), `Conveyor-Schedule` and
/// `Conveyor-Scheduled-At` (a cron schedule's job: its name and tick), `traceparent` (when
/// present).
#[derive(Debug, Clone)]
pub struct WebhookHandler {
    client: reqwest::Client,
    url: String,
    worker: String,
}

impl WebhookHandler {
    /// A handler posting to `url`, giving up on an attempt after `timeout`, or after the job's
    /// own `timeout_ms` when it has one ([`Job::timeout`]: the job's wins, longer or shorter).
    pub fn new(url: impl Into<String>, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .build()
            .expect("the HTTP client builds with static settings");
        WebhookHandler {
            client,
            url: url.into(),
            worker: format!("pid-{}", std::process::id()),
        }
    }

    /// Names the delivering worker in `Conveyor-Worker` (default: `pid-<process id>`).
    pub fn with_worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker = id.into();
        self
    }
}

/// The most bytes of an error answer read.
pub const MAX_ERROR_BODY: usize = 4096;

/// A `Retry-After` header: delay-seconds or an HTTP date (RFC 9110). Unparsable or negative
/// values are ignored (the retry policy applies); a date in the past means now.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Up to [`MAX_ERROR_BODY`] bytes of the answer's body, as text.
async fn bounded_body(resp: reqwest::Response) -> String {
    String::from_utf8_lossy(&read_up_to(resp, MAX_ERROR_BODY).await).into_owned()
}

/// Up to `max` bytes of an answer's body.
async fn read_up_to(mut resp: reqwest::Response, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(max - body.len())]),
            _ => break,
        }
    }
    body
}

/// The most of a 2xx answer kept as a request's reply.
const MAX_REPLY_BODY: usize = 1 << 20;

/// A 2xx answer's body, up to [`MAX_REPLY_BODY`].
async fn bounded_reply(resp: reqwest::Response) -> Vec<u8> {
    read_up_to(resp, MAX_REPLY_BODY).await
}

#[async_trait]
impl Handler for WebhookHandler {
    async fn handle(&self, job: Job) -> Outcome {
        let r = &job.record;
        let mut req = self
            .client
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_str(job.meta.content_type.as_deref().unwrap_or(headers::JSON))
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            )
            .header("Conveyor-Attempt", job.attempt.to_string())
            .header("Conveyor-Topic", r.topic.as_str())
            .header("Conveyor-Partition", r.partition.to_string())
            .header("Conveyor-Offset", r.offset.to_string())
            .header("Conveyor-Worker", self.worker.as_str());
        if let Some(own) = job.timeout() {
            req = req.timeout(own);
        }
        if let Some(id) = job.id() {
            req = req.header("Conveyor-Message-Id", id);
        }
        // values another producer wrote may not be valid header values (control characters):
        // such a header is left out (the key then goes base64-encoded) rather than failing
        // every attempt; UTF-8 beyond ASCII is sent as its bytes
        if let Ok(v) = HeaderValue::from_bytes(job.job_type().as_bytes()) {
            req = req.header("Conveyor-Job-Type", v);
        }
        if let Some(key) = &r.key {
            match HeaderValue::from_bytes(key) {
                Ok(v) if std::str::from_utf8(key).is_ok() => req = req.header("Conveyor-Key", v),
                _ => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
                    req = req.header("Conveyor-Key-Base64", b64);
                }
            }
        }
        for (name, header) in [
            (headers::DUE_AT, "Conveyor-Due-At"),
            (headers::DEADLINE, "Conveyor-Deadline"),
            (headers::SCHEDULE, "Conveyor-Schedule"),
            (headers::SCHEDULED_AT, "Conveyor-Scheduled-At"),
        ] {
            if let Some(v) = r
                .headers
                .get_str(name)
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                req = req.header(header, v);
            }
        }
        if let Some(v) = r
            .headers
            .get_str(headers::TRACEPARENT)
            .and_then(|tp| HeaderValue::from_str(tp).ok())
        {
            req = req.header("traceparent", v);
        }
        let resp = match req.body(r.value.clone()).send().await {
            Ok(resp) => resp,
            Err(e) if e.is_timeout() => {
                crate::metrics::events::webhook("timeout");
                return Outcome::retry(format!("webhook {} timed out", self.url));
            }
            Err(e) => {
                let class = if e.is_connect() {
                    "connect_error"
                } else {
                    "other_error"
                };
                crate::metrics::events::webhook(class);
                return Outcome::retry(format!("webhook {} unreachable: {e}", self.url));
            }
        };
        let status = resp.status();
        crate::metrics::events::webhook(crate::metrics::events::status_class(status.as_u16()));
        if status.is_success() {
            if job.reply_to().is_some() {
                // a request: the receiver's answer is the reply (JSON as it is, anything
                // else as a JSON string, nothing as null)
                let body = bounded_reply(resp).await;
                let reply = match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(v) => v,
                    Err(_) if body.is_empty() => serde_json::Value::Null,
                    Err(_) => serde_json::Value::String(String::from_utf8_lossy(&body).into()),
                };
                if let Err(e) = job.reply(&reply) {
                    return e.into();
                }
            }
            return Outcome::Done;
        }
        let after = retry_after(&resp);
        let body = bounded_body(resp).await;
        let snippet: String = body.chars().take(300).collect();
        let error = format!("webhook {} answered {status}: {snippet}", self.url);
        let retryable = status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error();
        match (retryable, after) {
            (true, Some(d)) => Outcome::retry_after(d, error),
            (true, None) => Outcome::retry(error),
            (false, _) => Outcome::fail(error),
        }
    }
}
