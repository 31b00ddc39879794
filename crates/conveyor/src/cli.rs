//! Command-line arguments (clap). Parsing only: `main.rs` turns them into library calls.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// conveyor: durable background jobs and events on an embedded log or Kafka.
#[derive(Debug, Parser)]
#[command(name = "conveyor", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the embedded backend, the HTTP API and the webhook routes in one process.
    Dev {
        /// Configuration file. Default: ./conveyor.toml when it exists.
        #[arg(long, short, env = "CONVEYOR_CONFIG")]
        config: Option<PathBuf>,
        /// Address for the API (overrides `api.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data folder (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Enqueue one job through the HTTP API.
    Enqueue {
        /// The topic.
        topic: String,
        /// The job type.
        #[arg(long = "type", short = 't')]
        job_type: String,
        /// The JSON payload; `-` reads it from standard input. Default: `{}`.
        #[arg(long, short, default_value = "{}")]
        payload: String,
        /// The key (jobs with one key run in order).
        #[arg(long, short)]
        key: Option<String>,
        /// Extra header, `name=value`; repeatable.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        #[command(flatten)]
        server: Server,
    },
    /// List or create topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Print a topic's records as JSON lines, following new ones.
    Tail {
        /// The topic.
        topic: String,
        /// Start from the earliest retained record instead of the end.
        #[arg(long)]
        from_beginning: bool,
        /// Stop at the end instead of following.
        #[arg(long)]
        no_follow: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Show a consumer group's lag: per partition, committed offset against the high watermark.
    Lag {
        /// The consumer group (a route's group is `webhook.<topic>` unless set).
        group: String,
        /// Only this topic. Default: every topic where the group has committed offsets.
        #[arg(long, short)]
        topic: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Measure enqueue rate, processing rate and latency on the embedded or Kafka backend.
    Bench(BenchArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// List topics with partitions and offsets.
    List {
        #[command(flatten)]
        server: Server,
    },
    /// Create or update the topics of a topics file: shows the plan, then applies it.
    Apply {
        /// The topics file (`[defaults]` and `[[topics]]` entries; see the README).
        #[arg(long = "file", short = 'f')]
        file: PathBuf,
        /// Show the plan only.
        #[arg(long)]
        dry_run: bool,
        /// Apply without asking.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Create a topic (no change when it exists with the same partitions).
    Create {
        /// The topic name.
        name: String,
        /// Partitions.
        #[arg(long, short, default_value_t = 4)]
        partitions: i32,
        /// Retention in milliseconds. Default: 7 days.
        #[arg(long)]
        retention_ms: Option<i64>,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Server {
    /// The conveyor API.
    #[arg(long, env = "CONVEYOR_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Jobs for the enqueue and processing phases.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) jobs: usize,
    /// Concurrent producers, and handler slots of the worker.
    #[arg(long, default_value_t = 50)]
    pub(crate) concurrency: usize,
    /// Jobs for the latency phase.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) latency_jobs: usize,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload_bytes: usize,
    /// Backend: `embedded` or `kafka`.
    #[arg(long, default_value = "embedded")]
    pub(crate) backend: String,
    /// Kafka bootstrap brokers (with `--backend kafka`); `mock` starts librdkafka's in-process
    /// mock cluster.
    #[arg(
        long,
        env = "CONVEYOR_KAFKA__BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub(crate) brokers: String,
    /// Kafka producer profile: `low_latency` or `throughput`.
    #[arg(long, default_value = "low_latency")]
    pub(crate) profile: String,
    /// Also measure bare rdkafka produce and consume on the same broker (with `--backend kafka`).
    #[arg(long)]
    pub(crate) raw: bool,
    /// Embedded durability: `fsync` (default) or `os`.
    #[arg(long, default_value = "fsync")]
    pub(crate) durability: String,
    /// Data folder for the embedded log. Default: a temporary folder, removed afterwards.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
}
