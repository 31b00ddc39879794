//! conveyor: durable background jobs and events on Kafka, Redpanda or a log on local disk. This
//! is the one crate a Rust program depends on (the same package builds the `conveyor` binary,
//! whose own modules are `main.rs`'s: `cli`, `jobs`, `logging`, `output`, `postgres`).
//!
//! A whole program, enqueueing a job and working it on the embedded backend, is
//! `examples/first_job.rs` in this package
//! (`cargo run -p conveyor --example first_job`), the README's "Writing workers in Rust", which
//! runs as a doc test. In `Cargo.toml`: `conveyor`, `tokio` (`macros`, `rt-multi-thread`) and
//! `serde` (`derive`) for typed payloads.
//!
//! # What is here
//! - The backends: [`embedded::open`] (a durable log in a folder, zero set-up) and
//!   [`kafka::connect`] (Apache Kafka or Redpanda through librdkafka); both give an
//!   `Arc<dyn` [`Backend`]`>`, which [`Client`] and [`Worker`] take.
//! - [`declare_topics`]: the topics a program needs, created when missing.
//! - Enqueueing: [`Client`], [`NewJob`], [`Enqueued`]; request/reply: [`Client::request`].
//! - Working: [`Worker`] with typed handlers ([`WorkerBuilder::job`]) or raw ones
//!   ([`handler_fn`]); a handler's outcome: `Ok`, or a [`JobError`] (retry, retry after, fail).
//! - [`log::init`]: log lines on stderr in one line (a dead-lettered job is logged, not printed).
//! - Everything else stays in the crates this one re-exports: [`core`] (records, headers, the
//!   backend contract), [`runtime`] (the worker's parts, schedules, replay, lag).

#![doc(html_no_source)]

pub use conveyor_core as core;
pub use conveyor_runtime as runtime;

pub use conveyor_core::{
    Backend, CleanupPolicy, Error, Headers, JobMeta, Record, Result, RetryPolicy, TopicInfo,
    TopicSpec,
};
pub use conveyor_runtime::{
    handler_fn, json_handler, Client, Enqueued, Handler, IntoOutcome, Job, JobError, NewJob,
    Priorities, Reply, Scheduler, SchedulerOptions, WebhookHandler, Worker, WorkerBuilder,
    WorkerOptions, WorkerStats,
};

/// Creates each topic in `specs` that does not exist yet; one that exists with the same
/// partition count is left as it is (its retention too: change a topic with `conveyor topics
/// apply`, which shows the plan first). A different partition count is
/// [`Error::TopicConflict`]: partitions are never changed implicitly, since that moves keys to
/// other partitions and breaks their order.
pub async fn declare_topics(
    backend: &dyn Backend,
    specs: impl IntoIterator<Item = TopicSpec>,
) -> Result<()> {
    for spec in specs {
        backend.create_topic(&spec).await?;
    }
    Ok(())
}

/// The embedded backend: a durable partitioned log in a local folder, inside the process.
pub mod embedded {
    use std::path::PathBuf;
    use std::sync::Arc;

    pub use conveyor_embedded::{Durability, EmbeddedBackend, EmbeddedConfig};

    /// Opens (creating when missing) the log in `dir` with the default settings (an `fsync` per
    /// group commit). One process at a time: the folder is locked while it is open.
    pub fn open(dir: impl Into<PathBuf>) -> crate::Result<Arc<dyn crate::Backend>> {
        open_with(EmbeddedConfig::new(dir))
    }

    /// Opens the log with `config` (durability, retention interval, record size limit).
    pub fn open_with(config: EmbeddedConfig) -> crate::Result<Arc<dyn crate::Backend>> {
        Ok(Arc::new(EmbeddedBackend::open(config)?))
    }
}

/// The Kafka backend: Apache Kafka, Redpanda or any Kafka-protocol broker, through librdkafka.
pub mod kafka {
    use std::sync::Arc;

    pub use conveyor_kafka::{GroupProtocol, KafkaBackend, KafkaConfig, Profile};

    /// Connects to `brokers` (`host:port[,host:port...]`) with the default settings. The
    /// connection is made by the first call that needs it, so an unreachable broker shows there.
    pub fn connect(brokers: impl Into<String>) -> crate::Result<Arc<dyn crate::Backend>> {
        connect_with(KafkaConfig::new(brokers))
    }

    /// Connects with `config`: TLS and SASL (`KafkaConfig::set` passes librdkafka properties),
    /// the group protocol, timeouts.
    pub fn connect_with(config: KafkaConfig) -> crate::Result<Arc<dyn crate::Backend>> {
        Ok(Arc::new(KafkaBackend::connect(config)?))
    }
}

/// Log lines for a program built on conveyor.
pub mod log {
    /// The filter when `CONVEYOR_LOG` is not set: conveyor's `info` lines (a job dead-lettered,
    /// a rebalance, a retry budget spent) without the storage engine's.
    pub const DEFAULT_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

    /// Installs a log subscriber writing text lines to stderr, filtered by `CONVEYOR_LOG` (in
    /// `tracing_subscriber`'s `EnvFilter` syntax, e.g. `warn,conveyor_runtime=debug`), else
    /// [`DEFAULT_FILTER`]. Does nothing when the program has installed one already.
    pub fn init() {
        let filter = tracing_subscriber::EnvFilter::try_from_env("CONVEYOR_LOG")
            .unwrap_or_else(|_| DEFAULT_FILTER.into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
}

/// The README's Rust block, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
