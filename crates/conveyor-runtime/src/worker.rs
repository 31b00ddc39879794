//! The worker: consumes topics through a consumer group and runs handlers.
//!
//! One scheduler task owns all state (no locks): it polls the subscription while fewer than
//! `max_buffered` records are unfinished, admits each record through [`KeyLanes`] (same key: one at
//! a time, in order; other keys and keyless records go on), runs up to `concurrency` handlers as
//! tasks, parks failed jobs on timers for their backoff (a retrying job holds its key, not a
//! concurrency slot), dead-letters what cannot succeed, and commits per partition the highest
//! contiguous finished offset ([`OffsetTracker`]) every `commit_interval`. When the buffer stays
//! full, or one partition's jobs pile up behind a busy key, partitions are paused and polling goes
//! on.
//!
//! What a crash can repeat: records fetched but not committed, so at most `max_buffered` records
//! plus those finished within the last `commit_interval`. Nothing is committed before its job
//! finished (done or dead-lettered), so nothing is lost.
//!
//! Rebalances: before revoked partitions go to another member, the backend waits on the worker's
//! [`RevokeBarrier`]: until the running handlers of those partitions finished (at most
//! `shutdown_timeout`), so two members never run jobs of one key at once. Finished progress is
//! handed to [`Subscription::store`] as it happens, and the backend commits it just before a
//! partition is revoked (Kafka: in the rebalance callback), so the new owner does not repeat
//! finished work (on Kafka, jobs that finish during the wait are repeated). Records of revoked
//! partitions that have not started are dropped (the new owner gets them from the committed
//! offset).
//!
//! Attempt counts outlive the process: each commit carries the partition's unfinished jobs'
//! attempt counts in its metadata ([`crate::worker::attempts`]), so a job that keeps killing its process,
//! or keeps being rebalanced away, is dead-lettered once `max_attempts` attempts started.
//!
//! Time (see docs/delays.md, "Delayed jobs, retries and deadlines"): a record whose `due_at` is
//! ahead waits in memory when less than the shortest delay tier is left, and is otherwise moved
//! to a delay tier ([`crate::time::tiers`]), from which the worker's [`Forwarder`] brings it back when
//! due. The jobs waiting in memory share one queue ordered by due time (`worker/due.rs`); each
//! waits without its key and queues for it again when due, so a key's jobs waiting together
//! start in due order, those due in the same millisecond in offset order. They count against
//! `max_delayed_bytes`, not `max_buffered`, so a burst of them does not stop the fetching of
//! the jobs behind them in the log, which may be due sooner (they have not run: a crash repeats
//! none of them). A failed job whose backoff is longer than `retry_in_place_max` is moved the
//! same way (its offset is then committed, so the partition moves on); by default its key stays
//! held meanwhile, so later jobs of that key wait behind it, in memory, up to half of
//! `max_buffered` per partition (then the partition pauses). A job past its `deadline` is
//! dead-lettered (`deadline`) instead of run; one whose handler runs past the job's, its type's or
//! the worker's timeout is cancelled. Cancelled jobs and paused topics come from the control
//! log ([`crate::time::control`]); a second copy of a move ([`crate::worker::dedup`]) is dropped.
//!
//! Shutdown stops fetching, waits up to `shutdown_timeout` for running handlers, commits what
//! finished and hands the rest back to the group (uncommitted, so redelivered).
//!
//! # Parts
//! What a worker runs and hands to its handlers:
//! - [`handler`]: the [`Handler`] trait and adapters for closures and typed JSON payloads;
//!   [`webhook`]: [`WebhookHandler`](webhook::WebhookHandler), a handler that POSTs each job to
//!   an HTTP endpoint.
//! - [`job`]: [`Job`] (what a handler gets) and [`JobError`](job::JobError) (how an attempt
//!   fails).
//!
//! The scheduler's bookkeeping, free of I/O:
//! - [`tracker`]: offsets safe to commit, per-key lanes.
//! - [`ready`]: the queue of jobs ready to start, and the order the topics get slots in.
//! - `running`: attempts running per partition, which a revocation waits for.
//! - [`attempts`]: attempt counts kept in the commit metadata, across crashes and rebalances.
//! - [`dedup`]: recent `dedup_key`s, to drop the second copy of a move.
//!
//! Where failures go: [`dead_letter`] (the record format) and [`warn_limit`] (at most a burst
//! of per-job warnings, then counted summaries).
//!
//! The scheduler's loop itself, its state and its steps: `run_loop`, `poll`, `task`, `attempt`,
//! `commit`, `backpressure` and `due`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conveyor_core::{
    Backend, CommitOffset, ConsumedRecord, Error, Outcome, Poll, Record, Result, RetryPolicy,
    RevokeBarrier, StartFrom, SubscribeOptions, Subscription, TopicPartition, TopicSpec,
    MAX_COMMIT_METADATA,
};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::observation::metrics::jobs::{GroupSeries, JobMetrics, JobSeries};
use crate::time::control::Control;
use crate::time::forwarder::{due_of, millis, Forwarder};
use crate::time::tiers::DelayTiers;
use crate::worker::attempts::AttemptBook;
use crate::worker::dead_letter::{
    dead_letter_record, dead_letter_topic, trimmed_dead_letter_record, DeadLetterReason,
};
use crate::worker::dedup::RecentKeys;
use crate::worker::handler::{json_handler, Handler};
use crate::worker::job::{IntoOutcome, Job};
use crate::worker::ready::{Priorities, ReadyQueue, Topical};
use crate::worker::running::{Running, RunningCounts};
use crate::worker::tracker::{KeyLanes, OffsetTracker};
use conveyor_core::headers;
use conveyor_core::headers::dlq as dlq_header;
use std::time::SystemTime;

mod attempt;
pub mod attempts;
mod backpressure;
mod commit;
pub mod dead_letter;
pub mod dedup;
mod due;
pub mod handler;
pub mod job;
mod poll;
pub mod ready;
mod run_loop;
mod running;
mod task;
pub mod tracker;
pub mod warn_limit;
pub mod webhook;

use attempt::*;
use run_loop::*;
use task::*;

/// The default of [`WorkerOptions::max_delayed_bytes`]: 64 MiB.
pub const DEFAULT_MAX_DELAYED_BYTES: usize = 64 * 1024 * 1024;

/// How long the buffer may stay full before partitions are paused and polling resumes.
const STALL: Duration = Duration::from_secs(1);

/// The most of a `max_buffered` buffer one partition may take: half of it.
fn partition_share(max_buffered: usize) -> usize {
    (max_buffered / 2).max(1)
}

/// Counters a running worker updates; read them at any time through [`Worker::stats`].
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Jobs that finished with [`Outcome::Done`].
    pub done: AtomicU64,
    /// Attempts that failed and were scheduled again.
    pub retried: AtomicU64,
    /// Jobs sent to a dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Handler panics (each also counted as a failed attempt).
    pub panicked: AtomicU64,
    /// Handler attempts started.
    pub started: AtomicU64,
    /// Jobs moved to a delay tier (delayed jobs not due yet, and retries with a long backoff).
    pub delayed: AtomicU64,
    /// Cancelled jobs dropped without running.
    pub cancelled: AtomicU64,
    /// Second copies of a job (same `dedup_key`) dropped without running.
    pub duplicates: AtomicU64,
    /// Jobs another group moved to a delay tier, skipped (that group runs them).
    pub other_group: AtomicU64,
    /// Jobs dead-lettered because their deadline passed.
    pub deadline: AtomicU64,
    /// Unique jobs dropped before running: another job held their key ([`crate::effects::unique`]).
    pub unique_dropped: AtomicU64,
    /// Jobs a previous owner of their partition finished past its commit point (named in the
    /// commit's metadata), finished here without running again.
    pub already_done: AtomicU64,
    /// Records published for finished jobs: what handlers emitted and replies to requests
    /// (transactional workers: once their transaction committed).
    pub emitted: AtomicU64,
}

impl WorkerStats {
    /// Jobs finished either way: done or dead-lettered.
    pub fn finished(&self) -> u64 {
        self.done.load(Ordering::Relaxed) + self.dead_lettered.load(Ordering::Relaxed)
    }
}

/// The longest a worker's start (topics, ledgers, the subscription) may take before it is
/// given up as an error.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Worker settings. Defaults are given per field.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Consumer group. Workers sharing it share the partitions.
    pub group: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Handlers running at once. Default: 32.
    pub concurrency: usize,
    /// Records fetched but unfinished (running, waiting for their key, or waiting to retry) before
    /// fetching pauses. Bounds memory and what a crash can redeliver. Delayed jobs waiting in
    /// memory for their due time are not counted: see [`WorkerOptions::max_delayed_bytes`].
    /// Default: 1024.
    pub max_buffered: usize,
    /// Bytes of delayed jobs waiting in memory for their due time (each less than the shortest
    /// delay tier away), counted as their records' bytes plus 512 per job, before fetching
    /// pauses. They are apart from `max_buffered` so that a burst of them does not stop the
    /// fetching of jobs due before them: they have not run, so a crash repeats none of them.
    /// Default: 64 MiB.
    pub max_delayed_bytes: usize,
    /// Retry policy for job types without their own. Default: [`RetryPolicy::default`].
    pub retry: RetryPolicy,
    /// Per job type retry policies.
    pub retry_by_type: HashMap<String, RetryPolicy>,
    /// Dead-letter topic suffix. Default: `.dlq`.
    pub dlq_suffix: String,
    /// Most time between a job finishing and its offset being committed. Default: the backend's
    /// [`Backend::commit_interval_hint`] (embedded 10 ms, Kafka 200 ms).
    pub commit_interval: Option<Duration>,
    /// How long shutdown waits for running handlers. Default: 30 s.
    pub shutdown_timeout: Duration,
    /// Longest one attempt may run; then it is cancelled and counts as failed (retried with
    /// backoff, dead-lettered once attempts are exhausted). Default: 30 min, as Asynq's.
    pub handler_timeout: Duration,
    /// Where a new group starts. Default: earliest.
    pub start: StartFrom,
    /// Per job type: longest one attempt may run (a job's own `timeout_ms` comes first, then
    /// this, then `handler_timeout`).
    pub timeout_by_type: HashMap<String, Duration>,
    /// The delay tiers of the worker's topics. Default: 5 s, 1 min, 10 min, 1 h.
    pub tiers: DelayTiers,
    /// Backoffs up to this long wait in memory, holding the job's offset; longer ones move the
    /// job to a delay tier. Default: 5 s.
    pub retry_in_place_max: Duration,
    /// Whether a job waiting in a delay tier for its retry keeps later jobs of its key waiting
    /// (per-key order). Default: true; false for topics whose jobs need no order.
    pub ordered_retries: bool,
    /// Whether the worker runs the [`Forwarder`] of each of its topics. Default: true.
    pub forward_delayed: bool,
    /// How many recent `dedup_key`s the worker remembers. Default: 100,000.
    pub dedup_capacity: usize,
    /// How the topics share the handler slots and the buffer ([`crate::worker::ready`]). Default:
    /// none (first come, first served).
    pub priorities: Option<Priorities>,
    /// Exactly-once consume-and-emit: what a handler emits (and replies) is published in one
    /// atomic step with the job's offset ([`conveyor_core::TransactionalCommit`]; Kafka: a
    /// transaction, seen by `read_committed` readers only once it commits). Default: false (at
    /// least once: emits are published before the offset is committed).
    pub transactional: bool,
    /// Job lookup: write each job's state changes to `conveyor.jobs` in batches, one publish
    /// per commit ([`crate::observation::job_states`]). Default: true.
    pub job_states: bool,
}

impl WorkerOptions {
    /// Defaults for `group` consuming `topics`.
    pub fn new(
        group: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        WorkerOptions {
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            concurrency: 32,
            max_buffered: 1024,
            max_delayed_bytes: DEFAULT_MAX_DELAYED_BYTES,
            retry: RetryPolicy::default(),
            retry_by_type: HashMap::new(),
            dlq_suffix: ".dlq".into(),
            commit_interval: None,
            shutdown_timeout: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(30 * 60),
            start: StartFrom::Earliest,
            timeout_by_type: HashMap::new(),
            tiers: DelayTiers::default(),
            retry_in_place_max: Duration::from_secs(5),
            ordered_retries: true,
            forward_delayed: true,
            dedup_capacity: 100_000,
            priorities: None,
            transactional: false,
            job_states: true,
        }
    }
}

/// Builds a [`Worker`].
///
/// ```no_run
/// # async fn demo(backend: std::sync::Arc<dyn conveyor_core::Backend>) -> conveyor_core::Result<()> {
/// use conveyor_runtime::{JobError, Worker};
/// #[derive(serde::Deserialize)]
/// struct Email { to: String }
///
/// let worker = Worker::builder(backend, "mailers", ["emails"])
///     .concurrency(16)
///     .job("email.send", |email: Email, _job| async move {
///         if email.to.is_empty() {
///             return Err(JobError::fail("no recipient"));
///         }
///         Ok(())
///     })
///     .build();
/// worker.run(tokio::signal::ctrl_c().map(|_| ())).await?;
/// # Ok(()) }
/// # use futures::FutureExt;
/// ```
pub struct WorkerBuilder {
    backend: Arc<dyn Backend>,
    control: Option<Control>,
    options: WorkerOptions,
    handlers: HashMap<String, Arc<dyn Handler>>,
    fallback: Option<Arc<dyn Handler>>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Replaces all options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }
    /// Sets the concurrency limit.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.options.concurrency = n.max(1);
        self
    }
    /// Turns job lookup's state records on or off ([`WorkerOptions::job_states`]).
    pub fn job_states(mut self, on: bool) -> Self {
        self.options.job_states = on;
        self
    }
    /// Sets the buffered-record limit.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.options.max_buffered = n.max(1);
        self
    }
    /// Sets [`WorkerOptions::max_delayed_bytes`].
    pub fn max_delayed_bytes(mut self, n: usize) -> Self {
        self.options.max_delayed_bytes = n.max(1);
        self
    }
    /// Sets the default retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }
    /// Sets the retry policy of one job type.
    pub fn retry_for(mut self, job_type: impl Into<String>, policy: RetryPolicy) -> Self {
        self.options.retry_by_type.insert(job_type.into(), policy);
        self
    }
    /// Exactly-once consume-and-emit ([`WorkerOptions::transactional`]).
    pub fn transactional(mut self, on: bool) -> Self {
        self.options.transactional = on;
        self
    }

    /// Sets the commit interval.
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.options.commit_interval = Some(d);
        self
    }
    /// Sets the shutdown timeout.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.options.shutdown_timeout = d;
        self
    }

    /// Sets [`WorkerOptions::handler_timeout`].
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.options.handler_timeout = d;
        self
    }
    /// Uses this control log (cancellations, pauses) instead of opening one at start.
    pub fn control(mut self, control: Control) -> Self {
        self.control = Some(control);
        self
    }
    /// Sets the delay tiers.
    pub fn tiers(mut self, tiers: DelayTiers) -> Self {
        self.options.tiers = tiers;
        self
    }
    /// Sets [`WorkerOptions::retry_in_place_max`].
    pub fn retry_in_place_max(mut self, d: Duration) -> Self {
        self.options.retry_in_place_max = d;
        self
    }
    /// Sets [`WorkerOptions::ordered_retries`].
    pub fn ordered_retries(mut self, ordered: bool) -> Self {
        self.options.ordered_retries = ordered;
        self
    }
    /// Sets how the worker's topics share its slots and buffer, e.g.
    /// `Priorities::weighted([("critical", 6), ("default", 3), ("low", 1)])`.
    pub fn priorities(mut self, p: Priorities) -> Self {
        self.options.priorities = Some(p);
        self
    }
    /// Sets the timeout of one job type.
    pub fn timeout_for(mut self, job_type: impl Into<String>, d: Duration) -> Self {
        self.options.timeout_by_type.insert(job_type.into(), d);
        self
    }
    /// Registers a handler for a job type.
    pub fn handler(mut self, job_type: impl Into<String>, h: impl Handler) -> Self {
        self.handlers.insert(job_type.into(), Arc::new(h));
        self
    }
    /// Registers a typed handler: the JSON payload is decoded into `T` first.
    pub fn job<T, F, Fut, O>(self, job_type: impl Into<String>, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T, Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        O: IntoOutcome,
    {
        self.handler(job_type, json_handler(f))
    }
    /// Registers the handler for job types without their own (e.g. a webhook for a whole topic).
    pub fn fallback(mut self, h: impl Handler) -> Self {
        self.fallback = Some(Arc::new(h));
        self
    }
    /// Builds the worker.
    pub fn build(self) -> Worker {
        let o = &self.options;
        let metrics = JobMetrics::new(&o.group, &o.topics, self.handlers.keys());
        let group_metrics = GroupSeries::new(&o.group);
        Worker {
            control: self.control,
            shared: Arc::new(Shared {
                known_topics: Default::default(),
                warnings: Default::default(),
                unique: tokio::sync::OnceCell::new(),
                backend: self.backend,
                handlers: self.handlers,
                fallback: self.fallback,
                stats: Arc::new(WorkerStats::default()),
                metrics,
                group_metrics,
                states: self.options.job_states.then(|| {
                    Arc::new(crate::observation::job_states::Recorder::new(
                        self.options.group.clone(),
                    ))
                }),
                options: self.options,
            }),
        }
    }
}

struct Shared {
    /// The unique-key ledger, opened when the worker starts.
    unique: tokio::sync::OnceCell<crate::effects::unique::UniqueLedger>,
    backend: Arc<dyn Backend>,
    options: WorkerOptions,
    handlers: HashMap<String, Arc<dyn Handler>>,
    fallback: Option<Arc<dyn Handler>>,
    stats: Arc<WorkerStats>,
    /// The Prometheus series of its jobs, by topic and job type.
    metrics: JobMetrics,
    /// Its commits, transactions and rebalances.
    group_metrics: GroupSeries,
    /// Topics outputs were emitted to that exist, with their partition counts (a transactional
    /// worker checks each output before its transaction: see [`Shared::check_outputs`]).
    known_topics: std::sync::Mutex<HashMap<String, i32>>,
    /// Per-job warnings (dead letters, retries) beyond a burst are counted, not written.
    warnings: crate::worker::warn_limit::WarnLimit,
    /// Job states waiting for the next commit (none with `job_states` off).
    states: Option<Arc<crate::observation::job_states::Recorder>>,
}

impl Shared {
    /// Whether a transaction can take `records`: each topic exists, each explicit partition is
    /// one of its partitions, each record is at most [`MAX_OUTPUT_BYTES`]. `Err(outcome)`: the
    /// job fails instead (permanently; for a metadata read that failed, to be retried), since
    /// one record the log refuses would fail every transaction of the worker.
    async fn check_outputs(
        &self,
        records: &[(String, Record)],
    ) -> std::result::Result<(), Outcome> {
        for (topic, r) in records {
            if r.byte_len() > MAX_OUTPUT_BYTES {
                return Err(Outcome::fail(format!(
                    "an output for `{topic}` is {} bytes; a transactional output may have at most {MAX_OUTPUT_BYTES}",
                    r.byte_len()
                )));
            }
            let known = self
                .known_topics
                .lock()
                .expect("known topics lock")
                .get(topic)
                .copied();
            let partitions = match known {
                Some(n) => n,
                None => match self.backend.describe_topic(topic).await {
                    Ok(Some(info)) => {
                        let n = info.partition_count();
                        self.known_topics
                            .lock()
                            .expect("known topics lock")
                            .insert(topic.clone(), n);
                        n
                    }
                    Ok(None) => {
                        return Err(Outcome::fail(format!(
                            "cannot publish the job's outputs: unknown topic `{topic}`"
                        )))
                    }
                    Err(e) => {
                        return Err(Outcome::retry(format!(
                            "cannot check the output topic `{topic}`: {e}"
                        )))
                    }
                },
            };
            if let Some(p) = r.partition.filter(|p| !(0..partitions).contains(p)) {
                return Err(Outcome::fail(format!(
                    "an output names partition {p} of `{topic}`, which has {partitions}"
                )));
            }
        }
        Ok(())
    }

    fn policy(&self, job_type: &str) -> &RetryPolicy {
        self.options
            .retry_by_type
            .get(job_type)
            .unwrap_or(&self.options.retry)
    }
}

/// The largest record a transactional worker's handler may emit: Kafka's default
/// `message.max.bytes` (1 MB), below the embedded log's limit too.
pub const MAX_OUTPUT_BYTES: usize = 1_000_000;

/// A transactional worker starts a commit as soon as the outputs waiting for their commit
/// reach this many bytes (16 MiB), whatever its commit interval. Outputs that cannot commit yet
/// (a job before them in their partition still runs, or commits fail) keep waiting; at
/// [`HELD_OUTPUT_BYTES`] the worker stops fetching, so one transaction carries at most that
/// much plus the outputs of the jobs already running.
pub const TRANSACTION_BYTES: usize = 16 * 1024 * 1024;

/// A transactional worker stops fetching while this many bytes of outputs (64 MiB) wait for
/// their commit.
pub const HELD_OUTPUT_BYTES: usize = 4 * TRANSACTION_BYTES;

/// A worker; see the [module docs](self).
pub struct Worker {
    shared: Arc<Shared>,
    control: Option<Control>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

type LaneKey = (String, Bytes);

impl Worker {
    /// Starts building a worker for `group` on `topics`.
    pub fn builder(
        backend: Arc<dyn Backend>,
        group: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> WorkerBuilder {
        WorkerBuilder {
            backend,
            control: None,
            options: WorkerOptions::new(group, topics),
            handlers: HashMap::new(),
            fallback: None,
        }
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Runs until `shutdown` completes, then drains (see the module docs) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let s = &self.shared;
        // every step of the start talks to the backend; a step that hangs (brokers dying
        // mid-start was seen to leave a route worker never started) ends as an error, which the
        // route's supervisor answers with a restart
        let start = async {
            let control = match self.control.clone() {
                Some(c) => c,
                None => Control::open(Arc::clone(&s.backend)).await?,
            };
            let group = &s.options.group;
            tracing::debug!(group, "worker start: opening the unique-key ledger");
            let ledger = crate::effects::unique::UniqueLedger::open(Arc::clone(&s.backend)).await?;
            tracing::debug!(group, "worker start: creating the dead-letter topics");
            let _ = s.unique.set(ledger);
            if s.options.topics.is_empty() {
                return Err(Error::InvalidArgument(
                    "a worker needs at least one topic".into(),
                ));
            }
            for t in &s.options.topics {
                let info = s
                    .backend
                    .describe_topic(t)
                    .await?
                    .ok_or_else(|| Error::UnknownTopic(t.clone()))?;
                let mut spec = TopicSpec::new(
                    dead_letter_topic(t, &s.options.dlq_suffix),
                    info.partition_count(),
                );
                spec.retention_ms = Some(30 * 24 * 3600 * 1000);
                match s.backend.create_topic(&spec).await {
                    Ok(_) | Err(Error::TopicConflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if s.states.is_some() {
                tracing::debug!(group, "worker start: creating the job states' topic");
                crate::observation::job_states::ensure_topic(&s.backend).await?;
            }
            tracing::debug!(group, "worker start: subscribing");
            let running_by_partition = Arc::new(RunningCounts::default());
            let barrier = {
                let counts = Arc::clone(&running_by_partition);
                let (limit, group) = (s.options.shutdown_timeout, s.options.group.clone());
                RevokeBarrier(Arc::new(move |tps: &[TopicPartition]| {
                    counts.wait_idle(tps, limit, &group)
                }))
            };
            let mut sub = s
                .backend
                .subscribe(SubscribeOptions {
                    group: s.options.group.clone(),
                    topics: s.options.topics.clone(),
                    start: s.options.start,
                    on_revoke: Some(barrier),
                })
                .await?;
            if s.options.transactional && sub.transactional().is_none() {
                return Err(Error::InvalidArgument(format!(
                    "the {} backend cannot commit transactionally; run the worker without `transactional`",
                    s.backend.name()
                )));
            }
            let mut sched = Scheduler {
                shared: Arc::clone(&self.shared),
                sub,
                control: None,
                partitions: Partitions {
                    tracks: HashMap::new(),
                    epoch: 0,
                    buffered: 0,
                    seen: RecentKeys::new(s.options.dedup_capacity),
                },
                keys: Keys {
                    lanes: KeyLanes::default(),
                    waiting: HashMap::new(),
                    parked: HashMap::new(),
                },
                ready: ReadyQueue::new(s.options.priorities.clone()),
                attempts: Attempts {
                    running: JoinSet::new(),
                    in_flight: HashMap::new(),
                    running_by_partition,
                },
                suspects: Suspects {
                    marking: Vec::new(),
                    marking_retry: None,
                },
                timers: Timers {
                    backoff: JoinSet::new(),
                    due: due::DueQueue::default(),
                },
                pauses: Pauses {
                    paused: HashSet::new(),
                    full_since: None,
                    admin_paused: HashSet::new(),
                    held: Vec::new(),
                    last_pause_sync: Instant::now(),
                },
                commits: Commits {
                    dirty: false,
                    unstored: false,
                    commit_now: false,
                    last_commit: Instant::now(),
                    states_flushed_at: crate::observation::job_states::now_ms(),
                },
            };
            let (stop_forwarders, stopped) = tokio::sync::watch::channel(false);
            let mut forwarders = JoinSet::new();
            tracing::debug!(group, "worker start: creating the delay tiers");
            for t in &s.options.topics {
                s.options.tiers.ensure_topics(&s.backend, t).await?;
            }
            if s.options.forward_delayed {
                for t in &s.options.topics {
                    let mut f =
                        Forwarder::new(Arc::clone(&s.backend), t.clone(), s.options.tiers.clone())
                            .with_control(control.clone())
                            .with_dlq_suffix(s.options.dlq_suffix.clone());
                    if let Some(states) = &s.states {
                        f = f.with_job_states(Arc::clone(states));
                    }
                    forwarders.spawn(run_forwarder(f, stopped.clone()));
                }
            }
            sched.control = Some(control);
            Ok::<_, Error>((sched, forwarders, stop_forwarders))
        };
        let (mut sched, mut forwarders, stop_forwarders) =
            match tokio::time::timeout(START_TIMEOUT, start).await {
                Ok(started) => started?,
                Err(_) => {
                    return Err(Error::Broker(format!(
                        "the worker of group {} did not start within {START_TIMEOUT:?} (the backend did not answer its start-up calls); it is started again",
                        s.options.group
                    )))
                }
            };
        let _watched = crate::observation::metrics::watch(
            Arc::clone(&s.backend),
            &s.options.group,
            &s.options.topics,
            s.options.tiers.clone(),
            &s.options.dlq_suffix,
        );
        tracing::info!(group = %s.options.group, topics = ?s.options.topics, "worker started");
        // the forwarders stop (and leave their group) while the worker drains, not after it
        let stop_forwarders = Arc::new(stop_forwarders);
        let shutdown = {
            let stop = Arc::clone(&stop_forwarders);
            async move {
                shutdown.await;
                let _ = stop.send(true);
            }
        };
        let result = sched.run(shutdown).await;
        let _ = stop_forwarders.send(true);
        while forwarders.join_next().await.is_some() {}
        result
    }
}
