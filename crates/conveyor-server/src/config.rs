//! Configuration: `conveyor.toml`, overridden by `CONVEYOR_*` environment variables, validated in
//! one place. Nothing downstream reads the environment.
//!
//! Environment overrides use the `CONVEYOR_` prefix and join nested keys with `__`:
//! `CONVEYOR_API__LISTEN=127.0.0.1:9000` sets `[api] listen`. Every default is stated on its field
//! and in docs/configuration.md, the configuration reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use conveyor_core::{RetryPolicy, TopicSpec};
use conveyor_embedded::{Durability, EmbeddedConfig};
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A configuration error; the message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file or an environment variable could not be parsed into the settings.
    #[error("configuration: {0}")]
    Parse(String),
    /// A value parsed but is not acceptable.
    #[error("configuration: `{key}`: {message}")]
    Invalid {
        /// The key, e.g. `routes[0].url`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Folder for conveyor's data (the embedded log lives in `<data_dir>/log`). Default: `.conveyor`.
    pub data_dir: PathBuf,
    /// The backend: `embedded` or `kafka`. Default: `embedded`.
    pub backend: String,
    /// The Kafka backend (with `backend = "kafka"`).
    pub kafka: KafkaSettings,
    /// The HTTP API.
    pub api: ApiConfig,
    /// The embedded backend.
    pub embedded: EmbeddedSettings,
    /// Retry policy for routes without their own. Default: 5 attempts, 1 s doubling to 5 min.
    pub retry: RetryPolicy,
    /// Topics created at start (kept when they exist).
    pub topics: Vec<TopicSpec>,
    /// Webhook routes: each delivers a topic's jobs to a URL.
    pub routes: Vec<RouteConfig>,
    /// Delayed jobs and long retries.
    pub delay: DelaySettings,
    /// Cron schedules: each tick enqueues a job (once across every process on the backend).
    pub schedules: Vec<conveyor_runtime::time::schedule::Schedule>,
    /// The scheduler that fires the schedules' ticks.
    pub scheduler: SchedulerSettings,
    /// Traces exported with OTLP (`[tracing]`).
    pub tracing: TracingSettings,
    /// Log lines: `text` or `json` (`log::LogSettings`).
    pub log: LogSettings,
    /// Prometheus metrics (`docs/metrics.md`).
    pub metrics: metrics::MetricsSettings,
}

/// `[tracing]`: spans from each enqueue through every handler it leads to
/// ([`conveyor_runtime::observation::trace`]), exported as OTLP/HTTP JSON. Off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSettings {
    /// The OTLP/HTTP receiver's base URL, e.g. `http://127.0.0.1:4318` (an OpenTelemetry
    /// Collector; `/v1/traces` is added). Default: none, tracing off (the `traceparent` of jobs
    /// still passes through).
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0; a job whose `traceparent` says sampled is
    /// always recorded. Default: 1.0.
    pub sample_ratio: f64,
    /// `service.name` of the spans. Default: `conveyor`.
    pub service_name: String,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            service_name: "conveyor".into(),
        }
    }
}

impl PartialEq for TracingSettings {
    fn eq(&self, o: &Self) -> bool {
        self.otlp_endpoint == o.otlp_endpoint
            && self.sample_ratio.to_bits() == o.sample_ratio.to_bits()
            && self.service_name == o.service_name
    }
}

impl Eq for TracingSettings {}

impl TracingSettings {
    /// The tracer's settings, when tracing is on.
    pub fn to_config(&self) -> Option<conveyor_runtime::observation::trace::TraceConfig> {
        Some(conveyor_runtime::observation::trace::TraceConfig {
            endpoint: self.otlp_endpoint.clone()?,
            sample_ratio: self.sample_ratio,
            service_name: self.service_name.clone(),
        })
    }
}

/// `[scheduler]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// A gap in firing up to this many milliseconds (a handover between processes, a failover)
    /// is caught up tick by tick; a longer one is downtime, where each schedule's `missed`
    /// policy applies. Default: 60000; 2000 to 86400000 (1 day).
    pub grace_ms: u64,
    /// Most schedules, configured and put through the API together. Default: 1000.
    pub max_schedules: u64,
    /// Most bytes of all schedules' JSON together. Default: 16777216 (16 MiB).
    pub max_schedule_bytes: u64,
    /// Most ticks all schedules together may fire in one minute, each counted at its peak
    /// (`* * * * * *`: 60). Default: 6000.
    pub max_ticks_per_minute: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        let limits = conveyor_runtime::time::schedule::ScheduleLimits::default();
        SchedulerSettings {
            grace_ms: 60_000,
            max_schedules: limits.max_schedules,
            max_schedule_bytes: limits.max_bytes,
            max_ticks_per_minute: limits.max_ticks_per_minute,
        }
    }
}

impl SchedulerSettings {
    /// The scheduler's options.
    pub fn options(&self) -> conveyor_runtime::SchedulerOptions {
        conveyor_runtime::SchedulerOptions {
            grace: Duration::from_millis(self.grace_ms),
            limits: self.limits(),
            ..conveyor_runtime::SchedulerOptions::default()
        }
    }

    /// The schedules' limits.
    pub fn limits(&self) -> conveyor_runtime::time::schedule::ScheduleLimits {
        conveyor_runtime::time::schedule::ScheduleLimits {
            max_schedules: self.max_schedules,
            max_bytes: self.max_schedule_bytes,
            max_ticks_per_minute: self.max_ticks_per_minute,
        }
    }
}

/// `[delay]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DelaySettings {
    /// The delay tiers: one topic `<topic>.delay.<tier>` each. Whole seconds, e.g. `"5s"`,
    /// `"1m"`, `"1h"`. Default: `["5s", "1m", "10m", "1h"]`.
    pub tiers: Vec<String>,
    /// Retry backoffs up to this many milliseconds wait in memory; longer ones go through the
    /// delay tiers. Default: 5000.
    pub retry_in_place_max_ms: u64,
}

impl Default for DelaySettings {
    fn default() -> Self {
        DelaySettings {
            tiers: ["5s", "1m", "10m", "1h"].map(String::from).to_vec(),
            retry_in_place_max_ms: 5000,
        }
    }
}

impl DelaySettings {
    /// The tiers (validated by [`Config::load`]).
    pub fn tiers(&self) -> conveyor_runtime::time::tiers::DelayTiers {
        conveyor_runtime::time::tiers::DelayTiers::parse(&self.tiers).unwrap_or_default()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".conveyor"),
            backend: "embedded".into(),
            kafka: KafkaSettings::default(),
            api: ApiConfig::default(),
            embedded: EmbeddedSettings::default(),
            retry: RetryPolicy::default(),
            topics: Vec::new(),
            routes: Vec::new(),
            delay: DelaySettings::default(),
            schedules: Vec::new(),
            scheduler: SchedulerSettings::default(),
            tracing: TracingSettings::default(),
            log: LogSettings::default(),
            metrics: Default::default(),
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on. Default: `127.0.0.1:8080`.
    pub listen: String,
    /// Largest request body, in bytes. Default: 1040384 (1 MiB less the 8 KiB a dead letter may
    /// add, so the dead letter of the largest job accepted still fits the 1 MiB record limit).
    pub max_body_bytes: usize,
    /// Most jobs in one batch request. Default: 1000.
    pub max_batch: usize,
    /// The longest `POST /v1/topics/{t}/requests` waits for a reply, in milliseconds, whatever
    /// the request's `reply_timeout_ms` asks. Default: 60000; 1 to 60000.
    pub max_reply_timeout_ms: u64,
    /// The topic this process reads the replies of its `POST /v1/topics/{t}/requests` from.
    /// Default: none, a fresh `conveyor.replies.<random>` per process run (one partition, 1 h
    /// retention), so restarts leave one topic each behind. Name one to reuse it across
    /// restarts; several API processes may share it (each takes only its own replies). Created
    /// when missing. Not one of conveyor's own topics (`conveyor.*`) but a reply topic
    /// `conveyor.replies.<name>`: workers write the replies there.
    pub reply_topic: Option<String>,
    /// How long an enqueue with an `Idempotency-Key` answers a repeat with its first answer, in
    /// milliseconds. Default: 86400000 (24 h); 1000 to 31622400000 (366 days).
    pub idempotency_window_ms: u64,
    /// Most idempotency answers each API process keeps in memory (the oldest are forgotten
    /// first). Default: 100000.
    pub idempotency_max_keys: usize,
    /// Most bytes of idempotency answers each API process keeps in memory (the oldest are
    /// forgotten first). Default: 67108864 (64 MiB).
    pub idempotency_max_bytes: u64,
    /// Most `POST /v1/topics/{t}/requests` waiting for their reply at once in this process;
    /// beyond it a request is refused with `507 limit_reached`. Default: 10000.
    pub max_waiting_requests: usize,
    /// The API tokens (`[[api.tokens]]`, see [`crate::auth`]). None: the API is open, which
    /// `conveyor serve` allows only on loopback unless [`ApiConfig::allow_unauthenticated`].
    pub tokens: Vec<crate::auth::TokenConfig>,
    /// Lets `conveyor serve` listen beyond loopback without tokens (logged as a warning at
    /// start). Default: false.
    pub allow_unauthenticated: bool,
    /// How long a client has to send a request's headers, from the connection's start or the
    /// end of its previous answer (a kept-alive connection idle that long is closed), in
    /// milliseconds. Default: 10000; 100 to 600000.
    pub header_read_timeout_ms: u64,
    /// Most open connections; a connection beyond it is answered `503` with `Retry-After: 1`
    /// and closed. Default: 4096; 1 to 1000000 (each takes a file descriptor).
    pub max_connections: usize,
    /// Most requests handled at once; beyond it a request is answered `503 overloaded` with
    /// `Retry-After: 1` at once, never queued. Requests waiting for a reply count too.
    /// Default: 1024; 1 to 1000000.
    pub max_requests_in_flight: usize,
    /// An answer the client does not read for this long closes the connection, and a request
    /// body must arrive whole within it (`408 body_timeout`), in milliseconds. Default: 30000;
    /// 100 to 600000.
    pub stall_timeout_ms: u64,
}

impl ApiConfig {
    /// The HTTP limits these settings give.
    pub fn http_limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_connections: self.max_connections,
            max_requests_in_flight: self.max_requests_in_flight,
            stall_timeout: Duration::from_millis(self.stall_timeout_ms),
        }
    }

    /// The idempotency options these settings give.
    pub fn idempotency(&self) -> crate::api::idempotency::IdempotencyOptions {
        crate::api::idempotency::IdempotencyOptions {
            window: Duration::from_millis(self.idempotency_window_ms),
            max_keys: self.idempotency_max_keys,
            max_bytes: self.idempotency_max_bytes,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024
                - conveyor_runtime::worker::dead_letter::DEAD_LETTER_HEADROOM,
            max_batch: 1000,
            max_reply_timeout_ms: crate::api::requests::MAX_REPLY_TIMEOUT_MS,
            reply_topic: None,
            idempotency_window_ms: crate::api::idempotency::DEFAULT_WINDOW.as_millis() as u64,
            idempotency_max_keys: crate::api::idempotency::DEFAULT_MAX_KEYS,
            idempotency_max_bytes: crate::api::idempotency::DEFAULT_MAX_BYTES,
            max_waiting_requests: crate::api::requests::DEFAULT_MAX_WAITING,
            tokens: Vec::new(),
            allow_unauthenticated: false,
            header_read_timeout_ms: 10_000,
            max_connections: 4096,
            max_requests_in_flight: 1024,
            stall_timeout_ms: 30_000,
        }
    }
}

/// `[embedded]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedSettings {
    /// `fsync` (default: each group commit is fsynced) or `os` (written to the OS: survives a
    /// process crash, not a power loss).
    pub durability: Durability,
    /// Largest record, in bytes. Default: 1048576.
    pub max_record_bytes: usize,
    /// Seconds between retention runs. Default: 60.
    pub retention_interval_secs: u64,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        EmbeddedSettings {
            durability: Durability::Fsync,
            max_record_bytes: 1024 * 1024,
            retention_interval_secs: 60,
        }
    }
}

/// `[kafka]`
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port,host:port`. Default: `127.0.0.1:9092`.
    pub brokers: String,
    /// Producer preset: `low_latency` (linger 0, the default) or `throughput` (linger 5 ms, 1 MiB
    /// batches, lz4).
    pub profile: String,
    /// Replication factor of topics conveyor creates. Default: the broker's default.
    pub replication_factor: Option<i32>,
    /// Consumer session timeout in milliseconds: how long before a dead worker's partitions move.
    /// Default: 10000.
    pub session_timeout_ms: u64,
    /// Timeout of metadata and admin requests in milliseconds. Default: 10000.
    pub request_timeout_ms: u64,
    /// Longest an enqueue waits for the cluster to store a job, retries included, in
    /// milliseconds; then it fails with `backend_unavailable` (503). Default: 30000.
    pub delivery_timeout_ms: u64,
    /// Consumer group protocol: `classic` (the default) or `consumer` (KIP-848, Kafka 4.0+).
    pub group_protocol: String,
    /// librdkafka properties passed through as they are (TLS, SASL, tuning). Values of keys naming
    /// a password or secret are never printed.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            profile: "low_latency".into(),
            replication_factor: None,
            session_timeout_ms: 10_000,
            request_timeout_ms: 10_000,
            delivery_timeout_ms: 30_000,
            group_protocol: "classic".into(),
            properties: Default::default(),
        }
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_config().fmt(f)
    }
}

impl KafkaSettings {
    /// The Kafka backend's configuration.
    pub fn to_config(&self) -> conveyor_kafka::KafkaConfig {
        let mut c = conveyor_kafka::KafkaConfig::new(self.brokers.clone());
        c.profile = match self.profile.as_str() {
            "throughput" => conveyor_kafka::Profile::Throughput,
            _ => conveyor_kafka::Profile::LowLatency,
        };
        c.replication_factor = self.replication_factor;
        c.session_timeout = Duration::from_millis(self.session_timeout_ms);
        c.request_timeout = Duration::from_millis(self.request_timeout_ms);
        c.delivery_timeout = Duration::from_millis(self.delivery_timeout_ms);
        c.group_protocol = match self.group_protocol.as_str() {
            "consumer" => conveyor_kafka::GroupProtocol::Consumer,
            _ => conveyor_kafka::GroupProtocol::Classic,
        };
        c.properties = self.properties.clone();
        c
    }
}

/// `[[routes]]`: deliver every job of `topic` to `url`. `Debug` shows no secret
/// (`route_secrets`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The topic (created with defaults when not in `[[topics]]`); not one of conveyor's own
    /// (`conveyor.*`), nor are those of `priorities`.
    pub topic: String,
    /// The endpoint, `http://` or `https://`.
    pub url: String,
    /// Consumer group. Default: `webhook.<topic>`.
    #[serde(default)]
    pub group: Option<String>,
    /// Requests in flight at once. Default: 16.
    #[serde(default = "default_route_concurrency")]
    pub concurrency: usize,
    /// Request timeout in milliseconds. Default: 10000.
    #[serde(default = "default_route_timeout")]
    pub timeout_ms: u64,
    /// Records fetched but unfinished before fetching pauses. Default: 256.
    #[serde(default = "default_route_buffer")]
    pub max_buffered: usize,
    /// This route's retry policy. Default: the top-level `[retry]`.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Whether a job retrying through the delay tiers keeps later jobs of its key waiting.
    /// Default: true; `false` for topics whose jobs need no order.
    #[serde(default = "default_true")]
    pub ordered_retries: bool,
    /// More topics for this route, with weights: `{ "jobs.critical" = 6, "jobs.low" = 1 }`. The
    /// route's worker consumes `topic` (weight 1 unless listed) and these, each topic getting its
    /// weight's share of the slots. Default: none.
    #[serde(default)]
    pub priorities: std::collections::BTreeMap<String, u32>,
    /// With `priorities`: always the highest weight first instead of weighted shares.
    #[serde(default)]
    pub strict_priority: bool,
    /// Standard Webhooks signing secrets, `whsec_<base64>`: every call carries `webhook-id`,
    /// `webhook-timestamp` and one `webhook-signature` per secret (two during a rotation).
    /// Default: none (calls go unsigned). Never serialized, as `headers`.
    #[serde(default, skip_serializing)]
    pub signing_secrets: Vec<String>,
    /// An environment variable holding more signing secrets (space-separated), read at load.
    /// Default: none.
    #[serde(default)]
    pub signing_secret_env: Option<String>,
    /// Headers sent with every call, e.g. `{ Authorization = "Bearer ..." }`; their values are
    /// secret (never printed). Default: none.
    #[serde(default, skip_serializing)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Headers whose values come from environment variables, read at load:
    /// `{ Authorization = "RECEIVER_AUTHORIZATION" }`. Default: none.
    #[serde(default)]
    pub headers_env: std::collections::BTreeMap<String, String>,
    /// Job lookup (`GET /v1/jobs/{id}`): state records for the route's topics, written by its
    /// worker with its commits and by the API at enqueue. Default: true.
    #[serde(default = "default_true")]
    pub job_states: bool,
}

fn default_true() -> bool {
    true
}

fn default_route_concurrency() -> usize {
    16
}
fn default_route_timeout() -> u64 {
    10_000
}
fn default_route_buffer() -> usize {
    256
}

impl Config {
    /// The topics whose jobs are not tracked for job lookup: those of routes with
    /// `job_states = false`.
    pub fn job_states_off(&self) -> std::collections::HashSet<String> {
        self.routes
            .iter()
            .filter(|r| !r.job_states)
            .flat_map(RouteConfig::topics)
            .collect()
    }
}

impl RouteConfig {
    /// Every topic the route consumes: `topic`, then those of `priorities`.
    pub fn topics(&self) -> Vec<String> {
        let mut v = vec![self.topic.clone()];
        v.extend(
            self.priorities
                .keys()
                .filter(|t| **t != self.topic)
                .cloned(),
        );
        v
    }

    /// The route's priorities, when it has more than one topic.
    pub fn priorities(&self) -> Option<conveyor_runtime::Priorities> {
        if self.priorities.is_empty() {
            return None;
        }
        let p = conveyor_runtime::Priorities::weighted(
            self.priorities.iter().map(|(t, w)| (t.clone(), *w)),
        );
        Some(if self.strict_priority { p.strict() } else { p })
    }

    /// The route's consumer group.
    pub fn group(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("webhook.{}", self.topic))
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

mod bounds;
pub mod log;
mod route_secrets;
pub use log::{log_format, LogFormat, LogSettings};
pub mod metrics;

/// Environment variables with the prefix that are not configuration keys (and `CONVEYOR_TEST_*`,
/// read by the tests).
/// `CONVEYOR_TOKEN` is the CLI's token (a server may run where it is set).
const NOT_CONFIG: &[&str] = &[
    "config",
    "log",
    "log_format",
    "url",
    "skip_live",
    "cache",
    "token",
];

/// The environment variables the file names as holders of secrets (`[[api.tokens]] env`,
/// `routes.signing_secret_env`, `routes.headers_env`): read as secrets, never as keys, whatever
/// their names (`CONVEYOR_TOKEN_OPS` would otherwise be read as a key `token_ops`).
fn secret_variables(file: &Figment) -> Vec<String> {
    let Ok(v) = file.extract::<serde_json::Value>() else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for t in v["api"]["tokens"].as_array().into_iter().flatten() {
        names.extend(t["env"].as_str().map(str::to_owned));
    }
    for r in v["routes"].as_array().into_iter().flatten() {
        names.extend(r["signing_secret_env"].as_str().map(str::to_owned));
        if let Some(h) = r["headers_env"].as_object() {
            names.extend(h.values().filter_map(|v| v.as_str().map(str::to_owned)));
        }
    }
    names
}

impl Config {
    /// Loads `path` (when given; a missing file is an error) or `./conveyor.toml` (when it exists),
    /// then applies `CONVEYOR_*` variables from `env`, then validates.
    pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut fig = Figment::new();
        match path {
            Some(p) if !p.exists() => {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    message: format!("{} does not exist", p.display()),
                })
            }
            Some(p) => fig = fig.merge(Toml::file(p)),
            None if Path::new("conveyor.toml").exists() => {
                fig = fig.merge(Toml::file("conveyor.toml"))
            }
            None => {}
        }
        let secrets = secret_variables(&fig);
        let vars = env
            .iter()
            .filter(|(k, _)| !secrets.contains(k))
            .cloned()
            .collect();
        let fig = fig.merge(EnvList { vars });
        let mut config: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(format_figment(e)))?;
        route_secrets::resolve(&mut config, env)?;
        config.validate()?;
        // tokens read from the environment are kept only as their hash from here on
        let lookup = |var: &str| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
        crate::auth::Tokens::new(&config.api.tokens, lookup).map_err(|(i, key, e)| {
            ConfigError::Invalid {
                key: format!("api.tokens[{i}].{key}"),
                message: e.0,
            }
        })?;
        for t in &mut config.api.tokens {
            if let Some(token) = t.env.as_deref().and_then(lookup) {
                t.sha256 = Some(crate::auth::hash_hex(&token));
                t.env = None;
            }
        }
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        // first: the checks below do arithmetic on these values
        bounds::check(self)?;
        if self.data_dir.as_os_str().is_empty() {
            return invalid(
                "data_dir".into(),
                "must name a folder, e.g. \".conveyor\"".into(),
            );
        }
        if self.embedded.max_record_bytes < 16 * 1024 {
            return invalid(
                "embedded.max_record_bytes".into(),
                format!(
                    "{} is too small: use at least 16384",
                    self.embedded.max_record_bytes
                ),
            );
        }
        if let Err(e) = conveyor_runtime::time::tiers::DelayTiers::parse(&self.delay.tiers) {
            return invalid(
                "delay.tiers".into(),
                format!("{e}; write whole seconds such as [\"5s\", \"1m\", \"10m\", \"1h\"]"),
            );
        }
        if self.embedded.retention_interval_secs == 0 {
            return invalid(
                "embedded.retention_interval_secs".into(),
                "must be at least 1".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return invalid(
                "tracing.sample_ratio".into(),
                format!(
                    "{} is not a share: use 0.0 to 1.0",
                    self.tracing.sample_ratio
                ),
            );
        }
        if let Some(e) = &self.tracing.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return invalid(
                    "tracing.otlp_endpoint".into(),
                    "must be an http:// or https:// URL of an OTLP/HTTP receiver, e.g. \"http://127.0.0.1:4318\"".into(),
                );
            }
        }
        match self.backend.as_str() {
            "embedded" => {}
            "kafka" => {
                if self.kafka.brokers.trim().is_empty() {
                    return invalid(
                        "kafka.brokers".into(),
                        "set the bootstrap brokers, e.g. \"127.0.0.1:9092\" (CONVEYOR_KAFKA__BROKERS)".into(),
                    );
                }
                for b in self.kafka.brokers.split(',') {
                    let b = b.trim();
                    let port_ok = b.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if !port_ok {
                        return invalid(
                            "kafka.brokers".into(),
                            format!("`{b}` is not host:port (e.g. kafka-1:9092)"),
                        );
                    }
                }
                if self.kafka.replication_factor.is_some_and(|r| r < 1) {
                    return invalid(
                        "kafka.replication_factor".into(),
                        "must be at least 1 (leave it out for the broker's default)".into(),
                    );
                }
                if self.kafka.session_timeout_ms < 1000 {
                    return invalid(
                        "kafka.session_timeout_ms".into(),
                        "must be at least 1000 (brokers refuse less than group.min.session.timeout.ms, 6000 by default)".into(),
                    );
                }
                if self.kafka.request_timeout_ms < 100 {
                    return invalid(
                        "kafka.request_timeout_ms".into(),
                        "must be at least 100".into(),
                    );
                }
                if !["low_latency", "throughput"].contains(&self.kafka.profile.as_str()) {
                    return invalid(
                        "kafka.profile".into(),
                        format!(
                            "`{}`: use `low_latency` or `throughput`",
                            self.kafka.profile
                        ),
                    );
                }
                if !["classic", "consumer"].contains(&self.kafka.group_protocol.as_str()) {
                    return invalid(
                        "kafka.group_protocol".into(),
                        format!(
                            "`{}`: use `classic` or `consumer` (KIP-848, Kafka 4.0+)",
                            self.kafka.group_protocol
                        ),
                    );
                }
                if self.kafka.delivery_timeout_ms < 100 {
                    return invalid(
                        "kafka.delivery_timeout_ms".into(),
                        format!(
                            "{} ms is too short for any broker round trip: use at least 100 (the default is 30000)",
                            self.kafka.delivery_timeout_ms
                        ),
                    );
                }
            }
            other => {
                return invalid(
                    "backend".into(),
                    format!("unknown backend `{other}`: use `embedded` or `kafka`"),
                )
            }
        }
        if self.api.listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "api.listen".into(),
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.api.listen
                ),
            );
        }
        if let Err((key, message)) = self.metrics.check() {
            return invalid(key, message);
        }
        if self.api.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes".into(), "must be at least 1024".into());
        }
        let headroom = conveyor_runtime::worker::dead_letter::DEAD_LETTER_HEADROOM;
        if self.backend == "embedded"
            && self.api.max_body_bytes + headroom > self.embedded.max_record_bytes
        {
            return invalid(
                "api.max_body_bytes".into(),
                format!(
                    "{} leaves less than {headroom} bytes below embedded.max_record_bytes ({}): the dead letter of the largest job accepted could not be written; lower it or raise embedded.max_record_bytes",
                    self.api.max_body_bytes, self.embedded.max_record_bytes
                ),
            );
        }
        if self.api.max_batch == 0 {
            return invalid("api.max_batch".into(), "must be at least 1".into());
        }
        if !(1..=crate::api::requests::MAX_REPLY_TIMEOUT_MS)
            .contains(&self.api.max_reply_timeout_ms)
        {
            return invalid(
                "api.max_reply_timeout_ms".into(),
                "must be 1 to 60000 (60 s)".into(),
            );
        }
        if let Some(topic) = &self.api.reply_topic {
            match conveyor_core::topic::validate_reply_topic(topic) {
                Ok(()) => {}
                Err(e @ conveyor_core::Error::ReservedTopic { .. }) => {
                    return invalid(
                        "api.reply_topic".into(),
                        format!("{e} (or a reply topic of its own, `conveyor.replies.<name>`)"),
                    )
                }
                Err(e) => return invalid("api.reply_topic".into(), e.to_string()),
            }
        }
        if !(1000..=366 * 24 * 3600 * 1000).contains(&self.api.idempotency_window_ms) {
            return invalid(
                "api.idempotency_window_ms".into(),
                "must be 1000 (1 s) to 31622400000 (366 days)".into(),
            );
        }
        if self.api.idempotency_max_keys == 0 {
            return invalid(
                "api.idempotency_max_keys".into(),
                "must be at least 1".into(),
            );
        }
        if let Err(m) = self.retry.validate() {
            return invalid("retry".into(), m);
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(e) = t.validate() {
                return invalid(format!("topics[{i}]"), e.to_string());
            }
        }
        // two routes in one group on one topic would split its jobs between their URLs
        let mut groups: std::collections::HashMap<(String, String), usize> = Default::default();
        for (i, r) in self.routes.iter().enumerate() {
            for topic in r.topics() {
                if let Some(first) = groups.insert((r.group(), topic.clone()), i) {
                    return invalid(
                        format!("routes[{i}].group"),
                        format!(
                            "routes[{first}] and routes[{i}] both consume `{topic}` in group `{}`, so each would get only part of its jobs; give routes[{i}] its own `group` (a new group starts from the oldest retained job)",
                            r.group()
                        ),
                    );
                }
            }
            for (t, w) in &r.priorities {
                if let Err(e) = conveyor_core::topic::validate_job_topic(t) {
                    return invalid(format!("routes[{i}].priorities"), e.to_string());
                }
                if *w == 0 {
                    return invalid(
                        format!("routes[{i}].priorities"),
                        format!("the weight of `{t}` is 0: weights are at least 1"),
                    );
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            // a route's worker writes retries, delay tiers and dead letters of its topic
            if let Err(e) = conveyor_core::topic::validate_job_topic(&r.topic) {
                return invalid(format!("routes[{i}].topic"), e.to_string());
            }
            // the route's worker creates `<topic>.dlq`: it must be a valid name too, or the
            // route would never start
            let dlq = conveyor_runtime::worker::dead_letter::dead_letter_topic(&r.topic, ".dlq");
            if let Err(e) = conveyor_core::topic::validate_name(&dlq) {
                return invalid(
                    format!("routes[{i}].topic"),
                    format!("its dead-letter topic `{dlq}` is not a valid name: {e}"),
                );
            }
            // and its delay tiers `<topic>.delay.<tier>`
            for topic in r.topics() {
                for (tier, _) in self.delay.tiers().topics(&topic) {
                    if let Err(e) = conveyor_core::topic::validate_name(&tier) {
                        return invalid(
                            format!("routes[{i}].topic"),
                            format!("its delay-tier topic `{tier}` is not a valid name: {e}; use a shorter topic name"),
                        );
                    }
                }
            }
            if r.max_buffered == 0 {
                return invalid(
                    format!("routes[{i}].max_buffered"),
                    "must be at least 1 (0 would never fetch a job)".into(),
                );
            }
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return invalid(
                    format!("routes[{i}].url"),
                    format!("`{}` must start with http:// or https://", r.shown_url()),
                );
            }
            // parsed as the webhook client will: a URL it cannot send to would dead-letter
            // every job as "builder error"
            match reqwest::Url::parse(&r.url) {
                Ok(u)
                    if u.host_str().is_some_and(|h| !h.is_empty())
                        && !r.url.contains(char::is_whitespace) => {}
                Ok(_) => {
                    return invalid(
                        format!("routes[{i}].url"),
                        format!("`{}` has no host, or contains whitespace", r.shown_url()),
                    )
                }
                Err(e) => {
                    return invalid(
                        format!("routes[{i}].url"),
                        format!("`{}` is not a valid URL: {e}", r.shown_url()),
                    )
                }
            }
            if r.group.as_ref().is_some_and(|g| g.trim().is_empty()) {
                return invalid(
                    format!("routes[{i}].group"),
                    "must not be empty (leave it out for webhook.<topic>)".into(),
                );
            }
            if r.concurrency == 0 {
                return invalid(
                    format!("routes[{i}].concurrency"),
                    "must be at least 1".into(),
                );
            }
            if r.timeout_ms == 0 {
                return invalid(
                    format!("routes[{i}].timeout_ms"),
                    "must be at least 1".into(),
                );
            }
            if let Some(Err(m)) = r.retry.as_ref().map(RetryPolicy::validate) {
                return invalid(format!("routes[{i}].retry"), m);
            }
            route_secrets::check(r, i)?;
        }
        self.validate_schedules()
    }

    /// Checks `[[schedules]]` and `[scheduler]`.
    fn validate_schedules(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        // a grace shorter than two heartbeats would count every handover as downtime
        if self.scheduler.grace_ms < 2000 {
            return invalid(
                "scheduler.grace_ms".into(),
                format!(
                    "{} is too short: use at least 2000 (the scheduler commits its progress every second; the default is 60000)",
                    self.scheduler.grace_ms
                ),
            );
        }
        let mut names = std::collections::HashMap::new();
        for (i, s) in self.schedules.iter().enumerate() {
            if let Err(e) = s.compile() {
                return invalid(format!("schedules[{i}].{}", e.field), e.message);
            }
            if let Some(first) = names.insert(s.name.as_str(), i) {
                return invalid(
                    format!("schedules[{i}].name"),
                    format!(
                        "`{}` is also the name of schedules[{first}]: names are unique",
                        s.name
                    ),
                );
            }
        }
        Ok(())
    }

    /// The embedded backend's settings.
    pub fn embedded_config(&self) -> EmbeddedConfig {
        let mut c = EmbeddedConfig::new(self.data_dir.join("log"));
        c.durability = self.embedded.durability;
        c.max_record_bytes = self.embedded.max_record_bytes;
        c.retention_interval = Duration::from_secs(self.embedded.retention_interval_secs.max(1));
        c
    }

    /// Every topic to create at start: `[[topics]]`, then routes' and schedules' topics not
    /// declared there.
    pub fn all_topics(&self) -> Vec<TopicSpec> {
        let mut out = self.topics.clone();
        let scheduled = self.schedules.iter().map(|s| s.topic.clone());
        for topic in self
            .routes
            .iter()
            .flat_map(RouteConfig::topics)
            .chain(scheduled)
        {
            if !out.iter().any(|t| t.name == topic) {
                out.push(TopicSpec::new(topic, TopicSpec::DEFAULT_PARTITIONS));
            }
        }
        out
    }
}

/// Whether a configuration key's value must never appear in a message.
fn secret_looking(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "ssl.key.pem", "ssl_key"]
        .iter()
        .any(|s| k.contains(s))
}

pub(crate) fn format_figment(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            // `topics.0.name` reads as the documented `topics[0].name`
            let mut key = String::new();
            for seg in &e.path {
                if seg.parse::<usize>().is_ok() {
                    key.push_str(&format!("[{seg}]"));
                } else {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(seg);
                }
            }
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            if key.is_empty() {
                format!("{} ({source})", e.kind)
            } else if secret_looking(&key) {
                // figment's messages quote the value ("found unsigned int `123456`")
                format!("`{key}`: not a valid value (the value is not shown: the key names a secret; quote it as a string) ({source})")
            } else {
                format!("`{key}`: {} ({source})", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A figment provider reading `CONVEYOR_*` pairs from a given list (the binary passes the process
/// environment), so tests never touch global state.
struct EnvList {
    vars: Vec<(String, String)>,
}

impl figment::Provider for EnvList {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (k, v) in &self.vars {
            let Some(rest) = k.strip_prefix("CONVEYOR_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase();
            if NOT_CONFIG.contains(&key.as_str()) || key.starts_with("test_") {
                continue;
            }
            let mut path: Vec<String> = key.split("__").map(str::to_owned).collect();
            // librdkafka property names use dots, which shells cannot export:
            // CONVEYOR_KAFKA__PROPERTIES__SASL_PASSWORD sets `sasl.password`.
            let property = path.len() == 3 && path[0] == "kafka" && path[1] == "properties";
            if property {
                path[2] = path[2].replace('_', ".");
            }
            // librdkafka property values are strings, whatever they look like: a numeric
            // password or `linger.ms=5` must not be type-guessed into a number (an error
            // would then print the value)
            let value: figment::value::Value = match property {
                true => figment::value::Value::from(v.clone()),
                false => v.parse().expect("figment values parse from any string"),
            };
            let mut nested = value;
            for seg in path.iter().skip(1).rev() {
                let mut d = figment::value::Dict::new();
                d.insert((*seg).to_owned(), nested);
                nested = d.into();
            }
            merge_into(&mut dict, &path[0], nested);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn merge_into(dict: &mut figment::value::Dict, key: &str, value: figment::value::Value) {
    use figment::value::Value;
    match (dict.get_mut(key), value) {
        (Some(Value::Dict(_, existing)), Value::Dict(_, new)) => {
            for (k, v) in new {
                merge_into(existing, &k, v);
            }
        }
        (_, value) => {
            dict.insert(key.to_owned(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(toml: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("conveyor.toml");
        std::fs::write(&p, toml).unwrap();
        (dir, p)
    }

    #[test]
    fn file_then_environment_with_nested_keys() {
        let (_d, p) = write(
            r#"
            data_dir = "/tmp/x"
            [api]
            listen = "127.0.0.1:9000"
            [[routes]]
            topic = "emails"
            url = "http://127.0.0.1:9999/hook"
            "#,
        );
        let env = vec![
            (
                "CONVEYOR_API__LISTEN".to_owned(),
                "127.0.0.1:9100".to_owned(),
            ),
            ("CONVEYOR_RETRY__MAX_ATTEMPTS".to_owned(), "7".to_owned()),
            (
                "CONVEYOR_TEST_BROKERS".to_owned(),
                "ignored:9092".to_owned(),
            ),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let c = Config::load(Some(&p), &env).unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:9100");
        assert_eq!(c.retry.max_attempts, 7);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.routes[0].group(), "webhook.emails");
        assert_eq!(c.routes[0].concurrency, 16);
        assert_eq!(c.all_topics()[0].name, "emails");
    }

    #[test]
    fn kafka_settings_from_file_and_environment_hide_secrets() {
        let (_d, p) = write(
            "backend = \"kafka\"\n[kafka]\nprofile = \"throughput\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n",
        );
        let env = vec![
            (
                "CONVEYOR_KAFKA__BROKERS".to_owned(),
                "10.0.0.1:9092,10.0.0.2:9092".to_owned(),
            ),
            (
                "CONVEYOR_KAFKA__PROPERTIES__SASL_USERNAME".to_owned(),
                "app".to_owned(),
            ),
        ];
        let c = Config::load(Some(&p), &env).unwrap();
        assert_eq!(c.kafka.properties["sasl.username"], "app");
        assert_eq!(c.kafka.brokers, "10.0.0.1:9092,10.0.0.2:9092");
        let k = c.kafka.to_config();
        assert_eq!(k.profile, conveyor_kafka::Profile::Throughput);
        assert_eq!(k.properties["sasl.password"], "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn numeric_kafka_properties_from_the_environment_stay_strings() {
        let env = vec![
            (
                "CONVEYOR_KAFKA__PROPERTIES__SASL_PASSWORD".to_owned(),
                "123456".to_owned(),
            ),
            (
                "CONVEYOR_KAFKA__PROPERTIES__LINGER_MS".to_owned(),
                "5".to_owned(),
            ),
        ];
        let c = Config::load(None, &env).unwrap();
        assert_eq!(c.kafka.properties["sasl.password"], "123456");
        assert_eq!(c.kafka.properties["linger.ms"], "5");
    }

    #[test]
    fn a_secret_of_the_wrong_type_in_the_file_is_not_echoed() {
        let (_d, p) =
            write("backend = \"kafka\"\n[kafka.properties]\n\"sasl.password\" = 987654321\n");
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("`kafka.properties.sasl.password`"), "{e}");
        assert!(!e.contains("987654321"), "{e}");
    }

    #[test]
    fn the_body_limit_keeps_room_for_a_dead_letter() {
        let c = Config::load(None, &[]).unwrap();
        assert!(c.api.max_body_bytes + 8192 <= c.embedded.max_record_bytes);
        let (_d, p) = write("[api]\nmax_body_bytes = 1048576\n");
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(
            e.contains("`api.max_body_bytes`") && e.contains("dead letter"),
            "{e}"
        );
    }

    #[test]
    fn routes_that_could_never_run_are_refused_at_start() {
        let long = "t".repeat(247);
        let (_d, p) = write(&format!(
            "[[routes]]\ntopic = \"{long}\"\nurl = \"http://x\"\n"
        ));
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(
            e.contains("`routes[0].topic`") && e.contains("dead-letter topic"),
            "{e}"
        );
        let long = "t".repeat(241);
        let (_d, p) = write(&format!(
            "[[routes]]\ntopic = \"{long}\"\nurl = \"http://x\"\n"
        ));
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(
            e.contains("`routes[0].topic`") && e.contains("delay-tier topic"),
            "{e}"
        );
        let (_d, p) = write("[[routes]]\ntopic = \"t\"\nurl = \"http://x\"\nmax_buffered = 0\n");
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("`routes[0].max_buffered`"), "{e}");
    }

    #[test]
    fn two_routes_in_one_group_on_one_topic_are_refused() {
        let two = "[[routes]]\ntopic = \"emails\"\nurl = \"http://mailer\"\n[[routes]]\ntopic = \"emails\"\nurl = \"http://audit\"\n";
        let (_d, p) = write(two);
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(
            e.contains("`routes[1].group`") && e.contains("routes[0] and routes[1]"),
            "{e}"
        );
        let (_d, p) = write(&format!("{two}group = \"audit\"\n"));
        let c = Config::load(Some(&p), &[]).unwrap();
        assert_eq!(c.routes[0].group(), "webhook.emails");
        assert_eq!(c.routes[1].group(), "audit");
    }

    /// conveyor's own topics (`conveyor.*`) take no jobs from the file either: a schedule's or a
    /// route's topic, a route's priority topic, the reply topic (a `conveyor.replies.*` one is
    /// a reply topic, and fine there).
    #[test]
    fn conveyors_own_topics_are_refused_naming_the_key() {
        let route = |rest: &str| format!("[[routes]]\nurl = \"http://x/h\"\n{rest}\n");
        for (toml, key) in [
            (
                "[[schedules]]\nname = \"n\"\ncron = \"@daily\"\ntopic = \"conveyor.idempotency\"\ntype = \"t\"\n".to_owned(),
                "schedules[0].topic",
            ),
            (route("topic = \"conveyor.control\""), "routes[0].topic"),
            (
                route("topic = \"t\"\npriorities = { \"conveyor.unique\" = 1 }"),
                "routes[0].priorities",
            ),
            (
                "[api]\nreply_topic = \"conveyor.control\"\n".to_owned(),
                "api.reply_topic",
            ),
        ] {
            let (_d, p) = write(&toml);
            let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains("conveyor's own topics"),
                "{key}: {e}"
            );
        }
        let (_d, p) = write("[api]\nreply_topic = \"conveyor.replies.api\"\n");
        Config::load(Some(&p), &[]).unwrap();
    }

    #[test]
    fn route_urls_are_parsed_at_start() {
        for bad in [
            "http://exa mple.com/hook",
            "http://",
            "http://[::1/hook",
            "https://host/a b",
        ] {
            let (_d, p) = write(&format!("[[routes]]\ntopic = \"t\"\nurl = \"{bad}\"\n"));
            let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
            assert!(e.contains("`routes[0].url`"), "{bad}: {e}");
        }
        let (_d, p) =
            write("[[routes]]\ntopic = \"t\"\nurl = \"http://127.0.0.1:9000/hook?x=1\"\n");
        Config::load(Some(&p), &[]).unwrap();
    }

    #[test]
    fn schedules_with_their_defaults_and_topics() {
        let (_d, p) = write(
            "[[schedules]]\nname = \"nightly\"\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\ntopic = \"reports\"\ntype = \"report.nightly\"\npayload = { scope = \"all\" }\n[[schedules]]\nname = \"tick\"\ncron = \"*/10 * * * * *\"\ntopic = \"reports\"\ntype = \"tick\"\nmissed = \"once\"\nkey = \"k\"\n",
        );
        let c = Config::load(Some(&p), &[]).unwrap();
        let (a, b) = (&c.schedules[0], &c.schedules[1]);
        assert_eq!(a.payload, serde_json::json!({"scope": "all"}));
        assert_eq!(a.missed, conveyor_runtime::time::schedule::Missed::Skip);
        assert_eq!((a.key.as_deref(), b.key.as_deref()), (None, Some("k")));
        assert_eq!(b.timezone, "UTC");
        assert_eq!(b.payload, serde_json::json!({}));
        assert_eq!(b.missed, conveyor_runtime::time::schedule::Missed::Once);
        assert_eq!(
            c.all_topics()[0].name,
            "reports",
            "a schedule's topic is created"
        );
        assert_eq!(c.scheduler.options().grace, Duration::from_secs(60));
    }

    #[test]
    fn kafka_group_protocol_and_delivery_timeout() {
        let (_d, p) = write(
            "backend = \"kafka\"\n[kafka]\ngroup_protocol = \"consumer\"\ndelivery_timeout_ms = 5000\n",
        );
        let k = Config::load(Some(&p), &[]).unwrap().kafka.to_config();
        assert_eq!(k.group_protocol, conveyor_kafka::GroupProtocol::Consumer);
        assert_eq!(k.delivery_timeout, Duration::from_secs(5));
        let (_d, p) = write("backend = \"kafka\"\n[kafka]\ngroup_protocol = \"range\"\n");
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("`kafka.group_protocol`"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let (_d, p) = write("[api]\nlisten = 5\n");
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("`api.listen`"), "{e}");

        let (_d, p) = write("[[routes]]\ntopic = \"t\"\nurl = \"ftp://x\"\n");
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("`routes[0].url`"), "{e}");

        let (_d, p) = write("[api]\nlisten = \"nowhere\"\n");
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("`api.listen`"), "{e}");

        let (_d, p) = write("typo_key = 1\n");
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("typo_key"), "{e}");

        let env = vec![("CONVEYOR_RETRY__MAX_ATTEMPTS".to_owned(), "0".to_owned())];
        let e = Config::load(None, &env).unwrap_err().to_string();
        assert!(e.contains("`retry`") && e.contains("max_attempts"), "{e}");

        let (_d, p) = write("backend = \"kafka\"\n[kafka]\nbrokers = \"\"\n");
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("`kafka.brokers`"), "{e}");

        let e = Config::load(Some(Path::new("/no/such/conveyor.toml")), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}

/// Every configuration key, walked with malformed and boundary values: each is refused at load
/// with an error naming the key (never a panic, never a start that half works).
#[cfg(test)]
mod walk {
    use super::*;

    /// (TOML, the key the error must name)
    fn bad_values() -> Vec<(String, &'static str)> {
        let kafka = |rest: &str| format!("backend = \"kafka\"\n[kafka]\n{rest}\n");
        let route =
            |rest: &str| format!("[[routes]]\ntopic = \"t\"\nurl = \"http://h/x\"\n{rest}\n");
        let topic = |rest: &str| format!("[[topics]]\nname = \"t\"\n{rest}\n");
        let mut v: Vec<(String, &'static str)> = vec![
            ("data_dir = 5".into(), "data_dir"),
            ("data_dir = \"\"".into(), "data_dir"),
            ("backend = \"redis\"".into(), "backend"),
            ("[api]\nlisten = \"localhost\"".into(), "api.listen"),
            ("[api]\nlisten = \"127.0.0.1:99999\"".into(), "api.listen"),
            ("[metrics]\nlisten = \"nowhere\"".into(), "metrics.listen"),
            ("[api]\nmax_body_bytes = -1".into(), "api.max_body_bytes"),
            ("[api]\nmax_body_bytes = 10".into(), "api.max_body_bytes"),
            ("[api]\nmax_batch = 0".into(), "api.max_batch"),
            (
                "[api]\nmax_reply_timeout_ms = 0".into(),
                "api.max_reply_timeout_ms",
            ),
            (
                "[api]\nmax_reply_timeout_ms = 60001".into(),
                "api.max_reply_timeout_ms",
            ),
            ("[api]\nreply_topic = \"\"".into(), "api.reply_topic"),
            ("[api]\nreply_topic = \"a b\"".into(), "api.reply_topic"),
            ("[api]\nreply_topic = 5".into(), "api.reply_topic"),
            (
                "[api]\nidempotency_window_ms = 999".into(),
                "api.idempotency_window_ms",
            ),
            (
                "[api]\nidempotency_window_ms = \"1d\"".into(),
                "api.idempotency_window_ms",
            ),
            (
                "[api]\nidempotency_max_keys = 0".into(),
                "api.idempotency_max_keys",
            ),
            (
                "[embedded]\ndurability = \"sometimes\"".into(),
                "embedded.durability",
            ),
            (
                "[embedded]\nmax_record_bytes = 0".into(),
                "embedded.max_record_bytes",
            ),
            (
                "[embedded]\nretention_interval_secs = 0".into(),
                "embedded.retention_interval_secs",
            ),
            (kafka("brokers = \"\""), "kafka.brokers"),
            (kafka("brokers = \"host-without-port\""), "kafka.brokers"),
            (kafka("profile = \"fast\""), "kafka.profile"),
            (kafka("replication_factor = 0"), "kafka.replication_factor"),
            (kafka("session_timeout_ms = 0"), "kafka.session_timeout_ms"),
            (kafka("request_timeout_ms = 0"), "kafka.request_timeout_ms"),
            (
                kafka("delivery_timeout_ms = 5"),
                "kafka.delivery_timeout_ms",
            ),
            (kafka("group_protocol = \"range\""), "kafka.group_protocol"),
            (
                kafka("[kafka.properties]\n\"linger.ms\" = [1]"),
                "kafka.properties",
            ),
            ("[retry]\nmax_attempts = 0".into(), "retry"),
            ("[retry]\nmultiplier = 0.5".into(), "retry"),
            (
                "[retry]\ninitial_delay_ms = 10\nmax_delay_ms = 5".into(),
                "retry",
            ),
            (
                "[retry]\nmax_retry_after_ms = \"1h\"".into(),
                "retry.max_retry_after_ms",
            ),
            (topic("partitions = 0"), "topics[0]"),
            ("[[topics]]\nname = \"bad name\"".into(), "topics[0]"),
            (topic("retention_ms = 0"), "topics[0]"),
            (
                topic("cleanup_policy = \"never\""),
                "topics[0].cleanup_policy",
            ),
            (topic("replication_factor = 0"), "topics[0]"),
            (topic("min_insync_replicas = 0"), "topics[0]"),
            (topic("retention_bytes = -5"), "topics[0]"),
            (
                "[[routes]]\ntopic = \"t t\"\nurl = \"http://h/x\"".into(),
                "routes[0].topic",
            ),
            (
                "[[routes]]\ntopic = \"t\"\nurl = \"http://h h/x\"".into(),
                "routes[0].url",
            ),
            (route("group = \"\""), "routes[0].group"),
            (route("concurrency = 0"), "routes[0].concurrency"),
            (route("timeout_ms = 0"), "routes[0].timeout_ms"),
            (route("max_buffered = 0"), "routes[0].max_buffered"),
            (route("[routes.retry]\nmax_attempts = 0"), "routes[0].retry"),
        ];
        let schedule = |rest: &str| {
            let mut t = String::from("[[schedules]]\n");
            for (k, v) in [
                ("name", "\"nightly\""),
                ("cron", "\"0 3 * * *\""),
                ("topic", "\"t\""),
                ("type", "\"report\""),
            ] {
                if !rest.contains(&format!("{k} =")) {
                    t.push_str(&format!("{k} = {v}\n"));
                }
            }
            t + rest
        };
        v.extend([
            (schedule("cron = \"61 * * * *\""), "schedules[0].cron"),
            (schedule("cron = \"* * *\""), "schedules[0].cron"),
            (
                schedule("timezone = \"Mars/Olympus\""),
                "schedules[0].timezone",
            ),
            (schedule("topic = \"bad topic\""), "schedules[0].topic"),
            (schedule("missed = \"always\""), "schedules[0].missed"),
            (schedule("name = \"a/b\""), "schedules[0].name"),
            (schedule("type = \"\""), "schedules[0].type"),
            (schedule("payloads = 1"), "schedules[0].payloads"),
            (
                format!("{}{}", schedule(""), schedule("")),
                "schedules[1].name",
            ),
            ("[scheduler]\ngrace_ms = 500".into(), "scheduler.grace_ms"),
        ]);
        v.push(("unknown_key = 1".into(), "unknown_key"));
        v
    }

    #[test]
    fn every_key_refuses_malformed_values_naming_the_key() {
        let cases = bad_values();
        let mut accepted = Vec::new();
        for (toml, key) in &cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, toml).unwrap();
            match Config::load(Some(&path), &[]) {
                Ok(_) => accepted.push(format!("{key}: accepted {toml:?}")),
                Err(e) => {
                    let e = e.to_string();
                    if !e.contains(&format!("`{key}")) {
                        accepted.push(format!("{key}: error does not name it: {e}"));
                    }
                }
            }
        }
        let keys: std::collections::BTreeSet<&str> = cases.iter().map(|(_, k)| *k).collect();
        eprintln!(
            "configuration walk: {} malformed values over {} keys",
            cases.len(),
            keys.len()
        );
        assert!(accepted.is_empty(), "{:#?}", accepted);
    }
}
