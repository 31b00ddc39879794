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
    /// Run the configured backend (the embedded log, or a client of a Kafka cluster), the HTTP
    /// API, the webhook routes and the scheduler in one process.
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
    /// Run conveyor in production: the API, the route workers and the scheduler, or one of
    /// them (`--role`), from an explicit configuration file.
    Serve {
        /// Configuration file (required: production runs name theirs).
        #[arg(long, short, env = "CONVEYOR_CONFIG")]
        config: PathBuf,
        /// What this process runs: api, workers, scheduler or all.
        #[arg(long, default_value = "all")]
        role: conveyor_server::serve::Role,
        /// Address for the API or, for the workers and scheduler roles, the probes (overrides
        /// `api.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// API tokens: create one, or hash one for `[[api.tokens]]`.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
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
        /// Run no earlier than this long from now, e.g. `30s`, `5m`, `2h`.
        #[arg(long = "in", value_name = "DURATION", conflicts_with = "at")]
        delay: Option<humantime::Duration>,
        /// Run no earlier than this time (RFC 3339), e.g. `2026-12-01T09:00:00Z`.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Dead-letter the job instead of running it after this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        deadline: Option<String>,
        /// Cancel an attempt that runs longer than this, e.g. `30s`.
        #[arg(long, value_name = "DURATION")]
        timeout: Option<humantime::Duration>,
        /// Unique job: no other job of the topic with this key runs while it holds it.
        #[arg(long, value_name = "KEY")]
        unique: Option<String>,
        /// How long a unique job holds its key, e.g. `1h`. Default: 24 h.
        #[arg(long, value_name = "DURATION", requires = "unique")]
        unique_for: Option<humantime::Duration>,
        /// Sent as the `Idempotency-Key` header: a repeat with the same key within the server's
        /// window (24 h by default) prints the first answer again instead of enqueueing twice.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Look up jobs: where one is and what became of it, or the jobs in a state.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Cancel a job that has not started (a delayed one, or one still waiting), by message id.
    Cancel {
        /// The job's message id (the `id` enqueue printed).
        id: String,
        /// Cancel an id of a producer's own form that job lookup does not know.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Stop starting jobs of a topic in a consumer group (every process, kept across restarts).
    Pause {
        /// The consumer group (a route's group is `webhook.<topic>` unless set).
        group: String,
        /// The topic.
        topic: String,
        #[command(flatten)]
        server: Server,
    },
    /// Start jobs of a paused topic again.
    Resume {
        /// The consumer group.
        group: String,
        /// The topic.
        topic: String,
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
    /// Work with dead-letter topics.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// List, create, replace or delete cron schedules (each tick enqueues a job, once across
    /// every process).
    Schedules {
        #[command(subcommand)]
        command: SchedulesCommand,
    },
    /// Measure enqueue rate, processing rate, latency and request/reply round trips on the
    /// embedded or Kafka backend.
    Bench(BenchArgs),
    /// PostgreSQL: apply the inbox/outbox migrations, run the outbox relay.
    Postgres {
        #[command(subcommand)]
        command: PostgresCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PostgresCommand {
    /// Create or update conveyor's tables (inbox, outbox); applied migrations are skipped.
    Migrate {
        #[command(flatten)]
        database: Database,
    },
    /// Publish the outbox's committed rows in order, marking them sent, until SIGTERM or
    /// Ctrl-C. One relay works at a time (an advisory lock): a second one waits.
    Relay {
        #[command(flatten)]
        database: Database,
        /// Backend: `embedded` or `kafka`.
        #[arg(long, default_value = "embedded")]
        backend: String,
        /// Kafka bootstrap brokers (with `--backend kafka`).
        #[arg(
            long,
            env = "CONVEYOR_KAFKA__BROKERS",
            default_value = "127.0.0.1:9092"
        )]
        brokers: String,
        /// Data folder (with `--backend embedded`; the log is `<data_dir>/log`, as for
        /// `conveyor dev`, which must not run on it at the same time).
        #[arg(long, default_value = ".conveyor")]
        data_dir: PathBuf,
        /// Rows read and published per round.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
    /// Delete an inbox's message ids recorded before `--older-than` (`conveyor_inbox` keeps
    /// every id until then). A pruned id no longer stops a redelivery or a replay of its
    /// message: keep ids longer than the input topic keeps its records.
    PruneInbox {
        #[command(flatten)]
        database: Database,
        /// The inbox's name (`Inbox::with_name`).
        #[arg(long, default_value = conveyor_postgres::inbox::DEFAULT_INBOX)]
        inbox: String,
        /// Keep the ids recorded within this (e.g. `7d`, `36h`); at least `1s`.
        #[arg(long)]
        older_than: humantime::Duration,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Database {
    /// The PostgreSQL database, e.g. `postgres://user:password@127.0.0.1:5432/app`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SchedulesCommand {
    /// List schedules with their next tick (those of the configuration file and the API's).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Create or replace a schedule.
    Put {
        /// The schedule's name (1 to 128 of A-Z a-z 0-9 . _ -).
        name: String,
        /// Cron expression: `min hour day month weekday`, or with seconds first
        /// (`*/10 * * * * *`), or `@daily` and the like.
        #[arg(long)]
        cron: String,
        /// The topic each tick's job goes to (it must exist, and not be one of conveyor's own,
        /// `conveyor.*`).
        #[arg(long)]
        topic: String,
        /// The job type.
        #[arg(long = "type")]
        job_type: String,
        /// The job's JSON payload. Default: `{}`.
        #[arg(long, short)]
        payload: Option<String>,
        /// The job's key.
        #[arg(long, short)]
        key: Option<String>,
        /// IANA time zone the expression is read in. Default: UTC.
        #[arg(long)]
        timezone: Option<String>,
        /// Ticks missed during downtime: `skip` (none fire, the default) or `once` (the latest).
        #[arg(long, value_parser = ["skip", "once"])]
        missed: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Delete a schedule put through the API.
    Delete {
        /// The schedule's name.
        name: String,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Move dead letters back to their original topic as fresh jobs (attempt 1, header
    /// `replayed_from`). Each dead letter moves once, however often this runs.
    Replay {
        /// The dead-letter topic (`emails.dlq`), or the topic whose dead letters to replay
        /// (`emails`, when `emails.dlq` exists).
        topic: String,
        /// Only dead letters of this job type.
        #[arg(long = "type", short = 't')]
        job_type: Option<String>,
        /// Only this partition of the dead-letter topic.
        #[arg(long, short)]
        partition: Option<i32>,
        /// Only these offsets, in each partition: `A..B` (both included), `A..`, `..B` or `N`.
        #[arg(long, value_parser = parse_offsets)]
        offset: Option<OffsetRange>,
        /// Show what would move; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        server: Server,
    },
}

/// `--offset A..B`: either end may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetRange {
    pub(crate) from: Option<i64>,
    pub(crate) to: Option<i64>,
}

fn parse_offsets(s: &str) -> Result<OffsetRange, String> {
    let offset = |o: &str| match o.trim() {
        "" => Ok(None),
        o => o
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .map(Some)
            .ok_or_else(|| format!("`{o}` is not an offset (a whole number, at least 0)")),
    };
    let range = match s.split_once("..") {
        Some((a, b)) => OffsetRange {
            from: offset(a)?,
            to: offset(b)?,
        },
        None => {
            let n = offset(s)?.ok_or("give A..B, A.., ..B or one offset")?;
            OffsetRange {
                from: Some(n),
                to: Some(n),
            }
        }
    };
    match (range.from, range.to) {
        (Some(a), Some(b)) if a > b => Err(format!("{a}..{b} is empty: {a} is after {b}")),
        _ => Ok(range),
    }
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
        /// The topics file (`[defaults]` and `[[topics]]` entries; see docs/topics.md).
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
        /// Retention in milliseconds, or `forever`. Default: 7 days.
        #[arg(long, value_parser = parse_retention)]
        retention_ms: Option<conveyor_server::remote::Retention>,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Print a new random token and its `[[api.tokens]]` entry (the server keeps only the
    /// hash; the token is shown once).
    Create {
        /// A name for the token (shown in logs and errors, never the token).
        #[arg(long)]
        name: String,
        /// Its roles: read, enqueue, admin (repeat or separate with commas).
        #[arg(long = "role", value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// For enqueue: the topics it may enqueue to (exact, or a prefix ending in `*`).
        #[arg(long = "topic", value_delimiter = ',')]
        topics: Vec<String>,
        /// Append the entry to this configuration file (else it is printed on stderr).
        #[arg(long)]
        append: Option<PathBuf>,
    },
    /// Print the SHA-256 of a token read from standard input, for `sha256` in `[[api.tokens]]`.
    Hash,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// Show a job: its topic, partition and offset, its state (waiting, delayed, running,
    /// retrying, succeeded, dead, cancelled, duplicate), attempts, last error and times.
    Show {
        /// The job's message id (the `id` enqueue printed).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// List the jobs in a state, by id, a page at a time.
    List {
        /// The state: waiting, delayed, running, retrying, succeeded, dead, cancelled, duplicate.
        #[arg(long)]
        state: String,
        /// Only jobs of this topic.
        #[arg(long, short)]
        topic: Option<String>,
        /// Jobs per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this id (the `next` a page printed).
        #[arg(long)]
        after: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Server {
    /// The conveyor API.
    #[arg(long, env = "CONVEYOR_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// The API token (sent as `Authorization: Bearer`); from the environment only, so it never
    /// shows in a process list.
    #[arg(skip = std::env::var("CONVEYOR_TOKEN").ok().filter(|t| !t.trim().is_empty()))]
    pub(crate) token: Option<String>,
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
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub(crate) partitions: i32,
    /// Distinct keys the jobs are spread over (a key's jobs run one at a time, in order).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) keys: u64,
    /// The processing phase's handler sleeps this long per job (0: a no-op handler).
    #[arg(long, default_value_t = 0)]
    pub(crate) handler_ms: u64,
    /// Requests for the HTTP phase: enqueues through the API (as `serve` answers them, of
    /// `--http-batch` jobs each) over `--http-connections` keep-alive connections; 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub(crate) http_jobs: usize,
    /// Connections of the HTTP phase.
    #[arg(long, default_value_t = 50)]
    pub(crate) http_connections: usize,
    /// Jobs per request of the HTTP phase: 1 sends single-job enqueues, more (up to the API's
    /// 1000) the batch endpoint's.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) http_batch: u64,
    /// The HTTP phase's requests per second, spread over its connections at fixed intervals
    /// (latency counted from when each was due); 0: as fast as the answers come.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) http_rate: f64,
    /// Jobs for the delayed phase (lateness of delayed jobs); 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) delayed_jobs: usize,
    /// The delayed phase spreads its delays over this many seconds.
    #[arg(long, default_value_t = 20)]
    pub(crate) delayed_window_secs: u64,
    /// The delayed phase's `max_buffered` (the default is a route's).
    #[arg(long, default_value_t = 256)]
    pub(crate) delayed_max_buffered: usize,
    /// Requests for the request/reply phase (round trips, one at a time); 0 skips it.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) request_jobs: usize,
    /// Job lookup's state records while processing: `on` (the default, as in production),
    /// `off`, or `both` (the processing phase twice over the same jobs, off then on; two lines).
    #[arg(long, default_value = "on")]
    pub(crate) lookup: String,
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

/// `--http-rate`: 0 (as fast as answered) or a finite rate of at least 0.001 requests/s.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r == 0.0 || (r.is_finite() && r >= 0.001) => Ok(r),
        _ => Err(format!(
            "`{s}`: give requests per second (at least 0.001), or 0 for as fast as answered"
        )),
    }
}

/// `--retention-ms`: milliseconds, or `forever`.
fn parse_retention(s: &str) -> Result<conveyor_server::remote::Retention, String> {
    use conveyor_server::remote::Retention;
    match s.trim() {
        "forever" | "infinite" | "-1" => Ok(Retention::Forever),
        ms => ms.parse::<i64>().map(Retention::Ms).map_err(|_| {
            format!("`{s}`: give milliseconds (e.g. 604800000 for 7 days) or `forever`")
        }),
    }
}
