//! [`ApiClient`]: the HTTP API from Rust, as the CLI uses it against a running `conveyor dev`.

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

mod replay;

pub use replay::ReplayOptions;

/// How long a topic created through the API keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// This many milliseconds.
    Ms(i64),
    /// Forever.
    Forever,
}

/// An error talking to a conveyor server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The server could not be reached.
    #[error("cannot reach conveyor at {url}: {source}; is `conveyor dev` or `conveyor serve` running? (set --url or CONVEYOR_URL)")]
    Unreachable {
        /// The base URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server answered with an API error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The stable error code.
        code: String,
        /// The message.
        message: String,
    },
    /// The answer was not the expected JSON.
    #[error("unexpected answer from conveyor: {0}")]
    Protocol(String),
}

/// A client of conveyor's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>) -> Self {
        ApiClient {
            base: base.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Sends `token` as `Authorization: Bearer` with every request (none: no header). The
    /// header is marked sensitive, so it is never logged.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        let Some(token) = token else { return self };
        let mut value =
            match reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim())) {
                Ok(v) => v,
                // not a header value (a control character): sent as is it would be refused
                // anyway; without it the server answers 401 and says what to send
                Err(_) => return self,
            };
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        if let Ok(http) = reqwest::Client::builder().default_headers(headers).build() {
            self.http = http;
        }
        self
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, RemoteError> {
        let resp = req
            .send()
            .await
            // the base URL may carry a password: the error names it redacted, and reqwest's
            // own text (which prints the full URL) without it
            .map_err(|source| RemoteError::Unreachable {
                url: conveyor_core::redact::url(&self.base),
                source: source.without_url(),
            })?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| RemoteError::Protocol(e.to_string()))?;
        if !status.is_success() {
            return Err(RemoteError::Api {
                status: status.as_u16(),
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned(),
                message: body["error"]["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        serde_json::from_value(body).map_err(|e| RemoteError::Protocol(e.to_string()))
    }

    /// `POST /v1/topics/{topic}/jobs` with a request body as the API documents it.
    pub async fn enqueue(&self, topic: &str, job: &Value) -> Result<Value, RemoteError> {
        self.call(
            self.http
                .post(format!("{}/v1/topics/{}/jobs", self.base, seg(topic)))
                .json(job),
        )
        .await
    }

    /// `POST /v1/topics/{topic}/jobs` with an `Idempotency-Key`: a repeat within the server's
    /// window returns the first answer again instead of enqueueing a second job.
    pub async fn enqueue_idempotent(
        &self,
        topic: &str,
        job: &Value,
        key: &str,
    ) -> Result<Value, RemoteError> {
        self.call(
            self.http
                .post(format!("{}/v1/topics/{}/jobs", self.base, seg(topic)))
                .header("idempotency-key", key)
                .json(job),
        )
        .await
    }

    /// `GET /v1/topics`.
    pub async fn list_topics(&self) -> Result<Value, RemoteError> {
        self.call(self.http.get(format!("{}/v1/topics", self.base)))
            .await
    }

    /// `POST /v1/topics`.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        retention: Option<Retention>,
    ) -> Result<Value, RemoteError> {
        // no retention given: none sent, so the server's default (7 days) applies; `null`
        // means forever
        let mut body = json!({ "name": name, "partitions": partitions });
        match retention {
            None => {}
            Some(Retention::Forever) => body["retention_ms"] = Value::Null,
            Some(Retention::Ms(ms)) => body["retention_ms"] = json!(ms),
        }
        self.call(
            self.http
                .post(format!("{}/v1/topics", self.base))
                .json(&body),
        )
        .await
    }

    /// `GET /v1/topics/{topic}`.
    pub async fn describe_topic(&self, topic: &str) -> Result<Value, RemoteError> {
        self.call(
            self.http
                .get(format!("{}/v1/topics/{}", self.base, seg(topic))),
        )
        .await
    }

    /// `GET /v1/topics/{topic}/records`.
    pub async fn read_records(
        &self,
        topic: &str,
        partition: i32,
        offset: Option<i64>,
        limit: usize,
    ) -> Result<Value, RemoteError> {
        let mut url = format!(
            "{}/v1/topics/{}/records?partition={partition}&limit={limit}",
            self.base,
            seg(topic)
        );
        if let Some(o) = offset {
            url.push_str(&format!("&offset={o}"));
        }
        self.call(self.http.get(url)).await
    }

    /// `POST /v1/topics:apply`: the plan for `topics`, applied unless `dry_run`.
    pub async fn apply_topics(
        &self,
        topics: &[conveyor_core::TopicSpec],
        dry_run: bool,
    ) -> Result<Value, RemoteError> {
        let body = json!({ "topics": topics, "dry_run": dry_run });
        self.call(
            self.http
                .post(format!("{}/v1/topics:apply", self.base))
                .json(&body),
        )
        .await
    }

    /// `GET /v1/groups/{group}/lag`, for one topic or every topic the group committed on.
    pub async fn lag(&self, group: &str, topic: Option<&str>) -> Result<Value, RemoteError> {
        let mut req = self
            .http
            .get(format!("{}/v1/groups/{}/lag", self.base, seg(group)));
        if let Some(t) = topic {
            req = req.query(&[("topic", t)]);
        }
        self.call(req).await
    }

    /// `GET /v1/jobs/{id}`: the job's last state.
    pub async fn job(&self, id: &str) -> Result<Value, RemoteError> {
        self.call(self.http.get(format!("{}/v1/jobs/{}", self.base, seg(id))))
            .await
    }

    /// `GET /v1/jobs?state=&topic=&limit=&after=`: a page of jobs in a state.
    pub async fn jobs(
        &self,
        state: &str,
        topic: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Value, RemoteError> {
        let mut q = vec![("state", state.to_owned()), ("limit", limit.to_string())];
        if let Some(t) = topic {
            q.push(("topic", t.to_owned()));
        }
        if let Some(a) = after {
            q.push(("after", a.to_owned()));
        }
        self.call(self.http.get(format!("{}/v1/jobs", self.base)).query(&q))
            .await
    }

    /// `DELETE /v1/jobs/{id}`: cancels a job that has not started.
    pub async fn cancel(&self, id: &str, force: bool) -> Result<Value, RemoteError> {
        let force = if force { "?force=true" } else { "" };
        self.call(
            self.http
                .delete(format!("{}/v1/jobs/{}{force}", self.base, seg(id))),
        )
        .await
    }

    /// `POST /v1/groups/{group}/topics/{topic}:pause` (or `:resume` when `pause` is false).
    pub async fn pause(&self, group: &str, topic: &str, pause: bool) -> Result<Value, RemoteError> {
        let verb = if pause { "pause" } else { "resume" };
        self.call(self.http.post(format!(
            "{}/v1/groups/{}/topics/{}:{verb}",
            self.base,
            seg(group),
            seg(topic)
        )))
        .await
    }

    /// `GET /v1/schedules`.
    pub async fn list_schedules(&self) -> Result<Value, RemoteError> {
        self.call(self.http.get(format!("{}/v1/schedules", self.base)))
            .await
    }

    /// `PUT /v1/schedules/{name}` with a body as the API documents it (the schedule without its
    /// name); returns the schedule as stored.
    pub async fn put_schedule(&self, name: &str, body: &Value) -> Result<Value, RemoteError> {
        self.call(
            self.http
                .put(format!("{}/v1/schedules/{}", self.base, seg(name)))
                .json(body),
        )
        .await
    }

    /// `DELETE /v1/schedules/{name}`.
    pub async fn delete_schedule(&self, name: &str) -> Result<Value, RemoteError> {
        self.call(
            self.http
                .delete(format!("{}/v1/schedules/{}", self.base, seg(name))),
        )
        .await
    }

    /// `POST /v1/topics/{topic}/dlq:replay` with a request body as the API documents it:
    /// replays dead letters of the dead-letter topic `dlq_topic`.
    pub async fn replay_dead_letters(
        &self,
        dlq_topic: &str,
        body: &Value,
    ) -> Result<conveyor_runtime::operations::replay::ReplayReport, RemoteError> {
        self.call(
            self.http
                .post(format!(
                    "{}/v1/topics/{}/dlq:replay",
                    self.base,
                    seg(dlq_topic)
                ))
                .json(body),
        )
        .await
    }
}

/// Characters left as they are in a path segment: RFC 3986's unreserved ones.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `name` as one URL path segment: `/`, `#`, `?`, `%`, spaces and non-ASCII letters are
/// percent-encoded, so a name never changes which resource a request addresses.
fn seg(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    /// A password in the server's URL is not printed when the server cannot be reached
    /// (reqwest's error text names the whole URL).
    #[tokio::test]
    async fn an_unreachable_servers_password_is_not_printed() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let client = super::ApiClient::new(format!("http://user:planted-secret@127.0.0.1:{port}"));
        let err = client.list_topics().await.expect_err("nothing listens");
        let text = format!("{err} {err:?}");
        assert!(text.contains("cannot reach conveyor"), "{text}");
        assert!(!text.contains("planted-secret"), "{text}");
    }

    #[test]
    fn names_become_single_path_segments() {
        assert_eq!(super::seg("emails.v1_x-y"), "emails.v1_x-y");
        assert_eq!(
            super::seg("team/mailers#1 ?%ü"),
            "team%2Fmailers%231%20%3F%25%C3%BC"
        );
    }
}
