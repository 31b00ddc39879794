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
//!
//! Calls are signed in the Standard Webhooks scheme when the handler has secrets
//! ([`WebhookHandler::with_signing_secrets`], see [`signing`]), and carry the route's static
//! headers ([`WebhookHandler::with_headers`]), whose values are secret: they are marked
//! sensitive, never printed by `Debug`, and cut out of error texts, as are the secrets. Error
//! texts (retries' and dead letters') name the URL without its user info
//! ([`conveyor_core::redact::url`]).

pub mod signing;

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use conveyor_core::headers;
use conveyor_core::redact;
use conveyor_core::Outcome;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::StatusCode;

use crate::worker::handler::Handler;
use crate::worker::job::Job;

/// POSTs jobs to `url`. Request headers: `Content-Type`, `Conveyor-Message-Id`,
/// `Conveyor-Job-Type`, `Conveyor-Attempt`, `Conveyor-Topic`, `Conveyor-Partition`,
/// `Conveyor-Offset`, `Conveyor-Key` (when the key is UTF-8 without control characters, else
/// `Conveyor-Key-Base64`), `Conveyor-Worker` (the delivering
/// worker, `pid-<process id>` by default), `Conveyor-Due-At` and `Conveyor-Deadline` (a delayed
/// job's due time and a job's deadline, RFC 3339), `Conveyor-Schedule` and
/// `Conveyor-Scheduled-At` (a cron schedule's job: its name and tick), `traceparent` (when
/// present); with signing secrets `webhook-id` (the message id, or
/// `<topic>/<partition>/<offset>` for a record without one), `webhook-timestamp` and
/// `webhook-signature` ([`signing`]); and the static headers given to
/// [`with_headers`](Self::with_headers).
///
/// `Debug` shows the URL without user info, the number of secrets and the static headers'
/// names only.
#[derive(Clone)]
pub struct WebhookHandler {
    client: reqwest::Client,
    url: String,
    /// `url` as it may be printed.
    shown_url: String,
    worker: String,
    secrets: Vec<signing::SigningSecret>,
    static_headers: Vec<(HeaderName, HeaderValue)>,
    /// Secret values cut out of every error text.
    scrub: Vec<String>,
}

impl std::fmt::Debug for WebhookHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookHandler")
            .field("url", &self.shown_url)
            .field("worker", &self.worker)
            .field("signing_secrets", &self.secrets.len())
            .field(
                "headers",
                &self
                    .static_headers
                    .iter()
                    .map(|(n, _)| format!("{n}: {}", redact::MASK))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A static header that cannot be sent; the message names the header, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Not a valid header name.
    #[error("`{0}` is not a valid HTTP header name")]
    Name(String),
    /// A name conveyor sets itself.
    #[error("`{0}` is set by conveyor on every call (Content-Type, Conveyor-*, webhook-*, traceparent, Host, Content-Length)")]
    Reserved(String),
    /// The value has characters a header cannot carry (control characters, line breaks).
    #[error("the value of header `{0}` has characters a header cannot carry (control characters or line breaks)")]
    Value(String),
}

/// Whether conveyor sets header `name` itself on every call.
pub fn reserved_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("conveyor-")
        || n.starts_with("webhook-")
        || [
            "content-type",
            "content-length",
            "host",
            "traceparent",
            "transfer-encoding",
        ]
        .contains(&n.as_str())
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
        let url: String = url.into();
        // a URL's user info travels as `Authorization: Basic base64(user:password)`, which a
        // receiver may echo: its password, and that header value, are cut out of error texts
        let mut scrub = Vec::new();
        if let Ok(u) = reqwest::Url::parse(&url) {
            if let Some(password) = u.password().filter(|p| !p.is_empty()) {
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                let user = decode(u.username());
                let password = decode(password);
                scrub.push(
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
                );
                scrub.push(password);
            }
            for (k, v) in u.query_pairs() {
                if redact::is_credential_name(&k) && v.len() >= 4 {
                    scrub.push(v.into_owned());
                }
            }
        }
        scrub.sort_by_key(|s: &String| std::cmp::Reverse(s.len()));
        WebhookHandler {
            client,
            shown_url: redact::url(&url),
            url,
            worker: format!("pid-{}", std::process::id()),
            secrets: Vec::new(),
            static_headers: Vec::new(),
            scrub,
        }
    }

    /// Signs every call with each of `secrets` (Standard Webhooks; more than one during a
    /// rotation). None: calls go unsigned.
    pub fn with_signing_secrets(mut self, secrets: Vec<signing::SigningSecret>) -> Self {
        self.scrub.extend(secrets.iter().map(|s| s.written()));
        self.secrets = secrets;
        self
    }

    /// Sends `headers` (name, value) with every call. Their values are secret: marked
    /// sensitive, never printed, cut out of error texts. Names conveyor sets itself are refused.
    pub fn with_headers(
        mut self,
        headers: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, HeaderError> {
        for (name, value) in headers {
            if reserved_header(&name) {
                return Err(HeaderError::Reserved(name));
            }
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HeaderError::Name(name.clone()))?;
            let mut v = HeaderValue::from_str(&value).map_err(|_| HeaderError::Value(name))?;
            v.set_sensitive(true);
            self.static_headers.push((n, v));
            // the value, and its last word (the token of `Bearer <token>`)
            if let Some(word) = value.split_whitespace().last() {
                if word.len() >= 4 && word != value {
                    self.scrub.push(word.to_owned());
                }
            }
            self.scrub.push(value);
        }
        // longest first, so a value is cut whole before its last word
        self.scrub.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(self)
    }

    /// `error` as it may be printed and stored: URLs without user info, secrets cut out.
    fn shown(&self, error: String) -> String {
        redact::scrub(&redact::text(&error), self.scrub.iter().map(String::as_str))
    }

    /// Names the delivering worker in `Conveyor-Worker` (default: `pid-<process id>`).
    pub fn with_worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker = id.into();
        self
    }
}

/// `e` and its sources, `: `-separated (reqwest's own message says little: "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
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
        for (name, value) in &self.static_headers {
            req = req.header(name, value.clone());
        }
        if !self.secrets.is_empty() {
            // stable across attempts, so receivers dedupe on it
            let id = job
                .id()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{}/{}/{}", r.topic, r.partition, r.offset));
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let signature = signing::signature_header(&self.secrets, &id, timestamp, &r.value);
            if let Ok(id) = HeaderValue::from_str(&id) {
                req = req
                    .header("webhook-id", id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature);
            }
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
        // the attempt's span when tracing is on, so the receiver's spans are its children
        if let Some(v) = job
            .traceparent()
            .and_then(|tp| HeaderValue::from_str(tp).ok())
        {
            req = req.header("traceparent", v);
        }
        let resp = match req.body(r.value.clone()).send().await {
            Ok(resp) => resp,
            Err(e) if e.is_timeout() => {
                crate::observation::metrics::events::webhook("timeout");
                return Outcome::retry(format!("webhook {} timed out", self.shown_url));
            }
            // reqwest's error names the URL, user info included: left out
            Err(e) => {
                let class = if e.is_connect() {
                    "connect_error"
                } else {
                    "other_error"
                };
                crate::observation::metrics::events::webhook(class);
                return Outcome::retry(self.shown(format!(
                    "webhook {} unreachable: {}",
                    self.shown_url,
                    error_chain(&e.without_url())
                )));
            }
        };
        let status = resp.status();
        crate::observation::metrics::events::webhook(
            crate::observation::metrics::events::status_class(status.as_u16()),
        );
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
        // the whole answer is scrubbed before it is cut (a secret across the cut would leave its
        // start), and its control characters are escaped (a newline in it would forge log lines)
        let answer = self.shown(body);
        let snippet: String = answer
            .chars()
            .take(300)
            .flat_map(|c| match c.is_control() {
                true => c.escape_default().collect::<Vec<_>>(),
                false => vec![c],
            })
            .collect();
        let error = format!("webhook {} answered {status}: {snippet}", self.shown_url);
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
