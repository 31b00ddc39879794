//! Configuration: `conveyor.toml`, overridden by `CONVEYOR_*` environment variables, validated in
//! one place. Nothing downstream reads the environment.
//!
//! Environment overrides use the `CONVEYOR_` prefix and join nested keys with `__`:
//! `CONVEYOR_API__LISTEN=127.0.0.1:9000` sets `[api] listen`. Every default is stated on its field
//! and in docs/configuration.md, the configuration reference.
//!
//! This file holds the sections' types and their defaults. Beside it: `load` (the file, then
//! the environment, into a [`Config`]), `validate` (values that parse but cannot work),
//! `bounds`, `route_secrets`, [`log`] and [`metrics`]; the key-by-key walk of bad values is the
//! `walk` test module.

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
pub(crate) mod load;
pub mod log;
mod route_secrets;
mod validate;
pub use log::{log_format, LogFormat, LogSettings};
pub mod metrics;

impl Config {
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

#[cfg(test)]
mod walk;
