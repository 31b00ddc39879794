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
//! attempt counts in its metadata ([`crate::attempts`]), so a job that keeps killing its process,
//! or keeps being rebalanced away, is dead-lettered once `max_attempts` attempts started.
//!
//! Time (see the README's "Delayed jobs, retries and deadlines"): a record whose `due_at` is
//! ahead waits in memory when less than the shortest delay tier is left, and is otherwise moved
//! to a delay tier ([`crate::tiers`]), from which the worker's [`Forwarder`] brings it back when
//! due. A failed job whose backoff is longer than `retry_in_place_max` is moved the same way
//! (its offset is then committed, so the partition moves on); by default its key stays held
//! meanwhile, so later jobs of that key wait behind it, in memory, up to half of
//! `max_buffered` per partition (then the partition pauses). A job past its `deadline` is
//! dead-lettered (`deadline`) instead of run; one whose handler runs past the job's, its type's or
//! the worker's timeout is cancelled. Cancelled jobs and paused topics come from the control
//! log ([`crate::control`]); a second copy of a move ([`crate::dedup`]) is dropped.
//!
//! Shutdown stops fetching, waits up to `shutdown_timeout` for running handlers, commits what
//! finished and hands the rest back to the group (uncommitted, so redelivered).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conveyor_core::{
    Backend, CommitOffset, ConsumedRecord, Error, Outcome, Poll, Result, RetryPolicy,
    RevokeBarrier, StartFrom, SubscribeOptions, Subscription, TopicPartition, TopicSpec,
    MAX_COMMIT_METADATA,
};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::attempts::AttemptBook;
use crate::control::Control;
use crate::dead_letter::{
    dead_letter_record, dead_letter_topic, trimmed_dead_letter_record, DeadLetterReason,
};
use crate::dedup::RecentKeys;
use crate::forwarder::{due_of, millis, Forwarder};
use crate::handler::{json_handler, Handler};
use crate::job::{IntoOutcome, Job};
use crate::ready::{Priorities, ReadyQueue, Topical};
use crate::running::{Running, RunningCounts};
use crate::tiers::DelayTiers;
use crate::tracker::{KeyLanes, OffsetTracker};
use conveyor_core::headers;
use conveyor_core::headers::dlq as dlq_header;
use std::time::SystemTime;

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
    /// Unique jobs dropped before running: another job held their key ([`crate::unique`]).
    pub unique_dropped: AtomicU64,
}

impl WorkerStats {
    /// Jobs finished either way: done or dead-lettered.
    pub fn finished(&self) -> u64 {
        self.done.load(Ordering::Relaxed) + self.dead_lettered.load(Ordering::Relaxed)
    }
}

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
    /// fetching pauses. Bounds memory and what a crash can redeliver. Default: 1024.
    pub max_buffered: usize,
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
    /// How the topics share the handler slots and the buffer ([`crate::ready`]). Default:
    /// none (first come, first served).
    pub priorities: Option<Priorities>,
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
    /// Sets the buffered-record limit.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.options.max_buffered = n.max(1);
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
        Worker {
            control: self.control,
            shared: Arc::new(Shared {
                unique: tokio::sync::OnceCell::new(),
                backend: self.backend,
                options: self.options,
                handlers: self.handlers,
                fallback: self.fallback,
                stats: Arc::new(WorkerStats::default()),
            }),
        }
    }
}

struct Shared {
    /// The unique-key ledger, opened when the worker starts.
    unique: tokio::sync::OnceCell<crate::unique::UniqueLedger>,
    backend: Arc<dyn Backend>,
    options: WorkerOptions,
    handlers: HashMap<String, Arc<dyn Handler>>,
    fallback: Option<Arc<dyn Handler>>,
    stats: Arc<WorkerStats>,
}

impl Shared {
    fn policy(&self, job_type: &str) -> &RetryPolicy {
        self.options
            .retry_by_type
            .get(job_type)
            .unwrap_or(&self.options.retry)
    }
}

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

#[derive(Clone)]
struct Task {
    /// Set on the task writing a dead letter after an escaped panic: a second one gives up.
    dead_lettering: bool,
    record: ConsumedRecord,
    attempt: u32,
    epoch: u64,
    lane: Option<LaneKey>,
    /// It may have been running when its partition's previous owner stopped: its attempt count
    /// is committed before it runs.
    suspect: bool,
    /// Its attempt count was committed as a suspect's: its finish is committed at once, or a
    /// crash soon after would leave the count of a job that finished.
    counted: bool,
    /// A second copy of a move through the delay tiers: dropped.
    copy: bool,
    /// Moving it to a delay tier failed for good: it waits in memory instead.
    in_place: bool,
    /// It came back from a delay tier to the key its retry held: it keeps the key while it
    /// waits for its due time.
    keeps_key: bool,
    /// Waiting for its due time without its key: it queues for the key again when due.
    unlaned: bool,
}

impl Topical for Task {
    fn topic(&self) -> &str {
        &self.record.topic
    }
}

/// One owned partition: its assignment epoch, its commit point and its attempt counts.
struct Track {
    epoch: u64,
    offsets: OffsetTracker,
    attempts: AttemptBook,
}

impl Track {
    fn new(epoch: u64, attempts: AttemptBook) -> Self {
        Track {
            epoch,
            offsets: OffsetTracker::default(),
            attempts,
        }
    }
}

enum TaskResult {
    /// Done or dead-lettered: the offset may be committed.
    Finished,
    /// Failed; run again after the delay.
    Retry(Duration),
    /// Moved to a delay tier to retry after this delay: the offset may be committed, and the
    /// key stays held until the job comes back (with ordered retries).
    Parked(Duration),
    /// Could not be moved to a delay tier: it waits in memory instead.
    Unmovable,
    /// Not run (the unique-key ledger could not be read): the same attempt again after this.
    Again(Duration),
}

/// What happens to a job taken from the ready queue.
enum Gate {
    Run,
    /// Finished without running, counted in this counter.
    Drop(fn(&WorkerStats) -> &AtomicU64),
    /// Not due for this long, less than the shortest tier: waits in memory.
    Hold(Duration),
    /// Not due until this time (ms since the epoch): moved to a delay tier.
    Move(i64),
    /// Its deadline passed.
    Deadline,
    /// Its topic is paused for the group.
    Paused,
}

/// A key held by a job waiting in a delay tier for its retry.
struct ParkedKey {
    /// The `dedup_key` of the move: the returning record carries it.
    move_key: String,
    message_id: String,
    tp: TopicPartition,
    /// Released then even if the job has not come back (a lost or cancelled retry).
    until: Instant,
}

/// How long after its due time a parked key waits for its job before letting the next ones go.
const PARK_GRACE: Duration = Duration::from_secs(60);

/// What a job's `due_at` (ms since the epoch) says at `now`: run; wait in memory when less than
/// the `shortest` tier is left (or the job may not move); otherwise move to a tier.
fn due_gate(due: Option<i64>, now: i64, shortest: Duration, movable: bool) -> Gate {
    match due {
        Some(due) if due > now => {
            let left = Duration::from_millis((due - now) as u64);
            if movable && left >= shortest {
                Gate::Move(due)
            } else {
                Gate::Hold(left)
            }
        }
        _ => Gate::Run,
    }
}

/// The job's `deadline`, in ms since the epoch.
fn deadline_of(r: &ConsumedRecord) -> Option<i64> {
    r.headers
        .get_str(headers::DEADLINE)
        .and_then(headers::parse_time)
        .map(millis)
}

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
        let control = match self.control.clone() {
            Some(c) => c,
            None => Control::open(Arc::clone(&s.backend)).await?,
        };
        let ledger = crate::unique::UniqueLedger::open(Arc::clone(&s.backend)).await?;
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
        let running_by_partition = Arc::new(RunningCounts::default());
        let barrier = {
            let counts = Arc::clone(&running_by_partition);
            let (limit, group) = (s.options.shutdown_timeout, s.options.group.clone());
            RevokeBarrier(Arc::new(move |tps: &[TopicPartition]| {
                counts.wait_idle(tps, limit, &group)
            }))
        };
        let sub = s
            .backend
            .subscribe(SubscribeOptions {
                group: s.options.group.clone(),
                topics: s.options.topics.clone(),
                start: s.options.start,
                on_revoke: Some(barrier),
            })
            .await?;
        let mut sched = Scheduler {
            shared: Arc::clone(&self.shared),
            sub,
            tracks: HashMap::new(),
            lanes: KeyLanes::default(),
            ready: ReadyQueue::new(s.options.priorities.clone()),
            marking: Vec::new(),
            marking_retry: None,
            running: JoinSet::new(),
            in_flight: HashMap::new(),
            running_by_partition,
            timers: JoinSet::new(),
            buffered: 0,
            epoch: 0,
            dirty: false,
            unstored: false,
            commit_now: false,
            paused: HashSet::new(),
            waiting: HashMap::new(),
            full_since: None,
            last_commit: Instant::now(),
            control: None,
            seen: RecentKeys::new(s.options.dedup_capacity),
            parked: HashMap::new(),
            held: Vec::new(),
            admin_paused: HashSet::new(),
            last_pause_sync: Instant::now(),
        };
        let (stop_forwarders, stopped) = tokio::sync::watch::channel(false);
        let mut forwarders = JoinSet::new();
        for t in &s.options.topics {
            s.options.tiers.ensure_topics(&s.backend, t).await?;
        }
        if s.options.forward_delayed {
            for t in &s.options.topics {
                forwarders.spawn(run_forwarder(
                    Forwarder::new(Arc::clone(&s.backend), t.clone(), s.options.tiers.clone())
                        .with_control(control.clone())
                        .with_dlq_suffix(s.options.dlq_suffix.clone()),
                    stopped.clone(),
                ));
            }
        }
        sched.control = Some(control);
        tracing::info!(group = %s.options.group, topics = ?s.options.topics, "worker started");
        let result = sched.run(shutdown).await;
        let _ = stop_forwarders.send(true);
        while forwarders.join_next().await.is_some() {}
        result
    }
}

struct Scheduler {
    shared: Arc<Shared>,
    sub: Box<dyn Subscription>,
    tracks: HashMap<TopicPartition, Track>,
    lanes: KeyLanes<LaneKey, Task>,
    ready: ReadyQueue<Task>,
    /// Suspects whose attempt count is committed before they run. Not counted as running (a
    /// Kafka revocation waits inside the poll, where nothing could release them): checked
    /// against revocations again once their count is committed.
    marking: Vec<Task>,
    /// After a failed commit of suspects' counts: when to try again.
    marking_retry: Option<Instant>,
    running: JoinSet<(Task, TaskResult)>,
    /// The task of each running attempt, so one whose task ends abnormally (a panic outside
    /// the handler's `catch_unwind`, e.g. in a future's `Drop`) still releases its key and is
    /// retried or dead-lettered.
    in_flight: HashMap<tokio::task::Id, Task>,
    /// Running attempts per partition, shared with the revocation barrier.
    running_by_partition: Arc<RunningCounts>,
    timers: JoinSet<Task>,
    buffered: usize,
    epoch: u64,
    dirty: bool,
    /// Progress not yet passed to [`Subscription::store`].
    unstored: bool,
    /// Commit without waiting for the commit interval (a counted suspect finished).
    commit_now: bool,
    /// Partitions paused for backpressure.
    paused: HashSet<TopicPartition>,
    /// Per partition, jobs waiting behind a running or retrying job of their key.
    waiting: HashMap<TopicPartition, usize>,
    /// Since when `max_buffered` records have been unfinished.
    full_since: Option<Instant>,
    last_commit: Instant,
    /// Cancellations and pauses (set before the first poll).
    control: Option<Control>,
    /// Recent `dedup_key`s.
    seen: RecentKeys,
    /// Keys held by jobs waiting in a delay tier for their retry.
    parked: HashMap<LaneKey, ParkedKey>,
    /// Jobs of topics paused for the group.
    held: Vec<Task>,
    /// Partitions paused because their topic is paused for the group.
    admin_paused: HashSet<TopicPartition>,
    last_pause_sync: Instant,
}

/// Runs a forwarder until `stopped` turns true, starting it again after a failure.
async fn run_forwarder(template: Forwarder, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let topic = template.topic().to_owned();
    loop {
        let f = template.again();
        let mut stop = stopped.clone();
        let result = f
            .run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if *stopped.borrow() {
            return;
        }
        if let Err(e) = result {
            tracing::error!(error = %e, topic, "the delay forwarder stopped; starting it again in 1 s");
        }
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

impl Scheduler {
    async fn run(&mut self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let opts = self.shared.options.clone();
        let commit_interval = opts
            .commit_interval
            .unwrap_or_else(|| self.shared.backend.commit_interval_hint());
        tokio::pin!(shutdown);
        loop {
            if self.last_pause_sync.elapsed() >= Duration::from_millis(100) {
                self.last_pause_sync = Instant::now();
                self.sync_pauses();
                self.expire_parked();
            }
            self.dispatch();
            if !self.marking.is_empty() && self.marking_retry.is_none_or(|t| t <= Instant::now()) {
                self.run_suspects().await;
            }
            if self.unstored {
                self.store();
            }
            if self.dirty && (self.commit_now || self.last_commit.elapsed() >= commit_interval) {
                self.commit_now = false;
                self.commit().await;
            }
            let stalled = self.backpressure(opts.max_buffered);
            let room = opts.max_buffered.saturating_sub(self.buffered);
            // one poll never takes more than a partition's share, so a single partition cannot
            // fill the whole buffer before backpressure looks at it
            let partition_cap = partition_share(opts.max_buffered);
            let commit_in = commit_interval.saturating_sub(self.last_commit.elapsed());
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = self.running.join_next_with_id(), if !self.running.is_empty() => {
                    self.on_task_done(done);
                    while let Some(done) = self.running.try_join_next_with_id() {
                        self.on_task_done(done);
                    }
                }
                Some(due) = self.timers.join_next(), if !self.timers.is_empty() => {
                    if let Ok(task) = due {
                        self.back_from_timer(task);
                    }
                }
                // a full buffer stops polling; once full for STALL, partitions are paused and
                // polling goes on (it serves rebalances and keeps the group membership)
                polled = self.sub.poll(room.min(partition_cap).clamp(1, 512), Duration::from_millis(500)), if room > 0 || stalled => {
                    match polled {
                        Ok(p) => self.on_poll(p).await,
                        Err(e) => {
                            tracing::error!(error = %e, "poll failed; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                () = tokio::time::sleep(commit_in), if self.dirty => {}
                () = tokio::time::sleep_until(self.marking_retry.unwrap_or_else(Instant::now)), if self.marking_retry.is_some() && !self.marking.is_empty() => {}
                () = tokio::time::sleep(STALL), if room == 0 && !stalled => {}
            }
        }
        self.drain(opts.shutdown_timeout).await;
        Ok(())
    }

    /// The book of `task`'s partition, while it is owned (by any epoch).
    fn track_mut(&mut self, task: &Task) -> Option<&mut Track> {
        self.tracks.get_mut(&task.record.tp())
    }

    fn is_current(&self, task: &Task) -> bool {
        let tp = task.record.tp();
        self.tracks.get(&tp).is_some_and(|t| t.epoch == task.epoch)
    }

    /// Marks a finished job's offset committable, unless its partition was revoked since.
    fn mark_finished(&mut self, task: &Task) {
        let tp = task.record.tp();
        if let Some(track) = self.tracks.get_mut(&tp) {
            if track.epoch == task.epoch {
                track.offsets.finished(task.record.offset);
                track.attempts.finish(task.record.offset);
                self.commit_now |= task.counted;
                self.buffered -= 1;
                self.dirty = true;
                self.unstored = true;
            }
        }
    }

    /// A job whose wait ended: ready, or queued for its key again when it waited without it.
    fn back_from_timer(&mut self, task: Task) {
        if !task.unlaned {
            self.ready.push_back(task);
            return;
        }
        let task = Task {
            unlaned: false,
            ..task
        };
        let tp = task.record.tp();
        match self.lanes.admit(task.lane.clone().as_ref(), task) {
            Some(task) => self.ready.push_back(task),
            None => *self.waiting.entry(tp).or_default() += 1,
        }
    }

    /// Lets the next job of `task`'s key through.
    fn release_lane(&mut self, task: &Task) {
        self.release_key(task.lane.as_ref());
    }

    /// Lets the next job of `lane` through.
    fn release_key(&mut self, lane: Option<&LaneKey>) {
        if let Some(next) = self.lanes.release(lane) {
            let tp = next.record.tp();
            if let Some(n) = self.waiting.get_mut(&tp) {
                *n = n.saturating_sub(1);
            }
            self.ready.push_back(next);
        }
    }

    fn dispatch(&mut self) {
        let concurrency = self.shared.options.concurrency;
        // suspects waiting for their counts' commit take at most half the slots, so a commit
        // that keeps failing does not stop the other jobs
        let marking_cap = (concurrency / 2).max(1);
        let mut starting = Vec::new();
        let mut deferred = Vec::new();
        while self.running.len() + self.marking.len() + starting.len() < concurrency {
            let Some(task) = self.ready.pop_front() else {
                break;
            };
            match self.gate(&task) {
                Gate::Run => {}
                Gate::Drop(counter) => {
                    counter(&self.shared.stats).fetch_add(1, Ordering::Relaxed);
                    self.mark_finished(&task);
                    self.release_lane(&task);
                    continue;
                }
                Gate::Hold(d) => {
                    // a delayed job does not hold its key while it waits: the key's jobs run
                    // in due order (a retry keeps its key: the key's order is the offsets')
                    let unlaned = !task.keeps_key && task.lane.is_some();
                    if unlaned {
                        self.release_lane(&task);
                    }
                    self.timers.spawn(async move {
                        tokio::time::sleep(d).await;
                        Task { unlaned, ..task }
                    });
                    continue;
                }
                Gate::Paused => {
                    self.held.push(task);
                    continue;
                }
                Gate::Move(due) => {
                    if let Some(running) = self.enter(&task) {
                        self.spawn_task(task, running, move |shared, task| async move {
                            let result = match move_to_tier(&shared, &task, due, None).await {
                                true => {
                                    shared.stats.delayed.fetch_add(1, Ordering::Relaxed);
                                    TaskResult::Finished
                                }
                                false => TaskResult::Unmovable,
                            };
                            (task, result)
                        });
                    }
                    continue;
                }
                Gate::Deadline => {
                    if let Some(running) = self.enter(&task) {
                        self.spawn_task(task, running, |shared, task| async move {
                            shared.stats.deadline.fetch_add(1, Ordering::Relaxed);
                            let result = dead_letter(
                                &shared,
                                &task,
                                DeadLetterReason::Deadline,
                                "the job's deadline passed before it ran",
                            )
                            .await;
                            (task, result)
                        });
                    }
                    continue;
                }
            }
            let max_attempts = self.shared.policy(&job_type_of(&task.record)).max_attempts;
            if task.suspect && task.attempt <= max_attempts {
                if !self.runnable(&task) {
                    self.release_lane(&task);
                } else if self.marking.len() < marking_cap {
                    self.marking.push(task);
                } else {
                    deferred.push(task);
                }
                continue;
            }
            if let Some(running) = self.enter(&task) {
                starting.push((task, running));
            }
        }
        // ready jobs hold distinct keys: putting these back in front keeps every key's order
        for task in deferred.into_iter().rev() {
            self.ready.push_front(task);
        }
        self.start_attempts(starting);
    }

    /// What to do with a job before it runs: see [`Gate`].
    fn gate(&self, task: &Task) -> Gate {
        let r = &task.record;
        if !self.is_current(task) {
            // its partition went to another member: let its key go, nothing else
            return Gate::Run;
        }
        let group = &self.shared.options.group;
        if r.headers
            .get_str(headers::RETRY_GROUP)
            .is_some_and(|g| g != group)
        {
            return Gate::Drop(|s| &s.other_group);
        }
        if task.copy {
            return Gate::Drop(|s| &s.duplicates);
        }
        if let (Some(c), Some(id)) = (&self.control, r.headers.get_str(headers::MESSAGE_ID)) {
            if c.is_cancelled(id) {
                return Gate::Drop(|s| &s.cancelled);
            }
        }
        let now = millis(SystemTime::now());
        if deadline_of(r).is_some_and(|d| d <= now) {
            return Gate::Deadline;
        }
        if self
            .control
            .as_ref()
            .is_some_and(|c| c.is_paused(group, &r.topic))
        {
            return Gate::Paused;
        }
        // a retry back for its held key waits here whatever is left (clock skew), so the key
        // stays held
        let movable = !task.in_place && !task.keeps_key;
        due_gate(
            due_of(r),
            now,
            self.shared.options.tiers.shortest(),
            movable,
        )
    }

    /// Pauses the owned partitions of topics paused for the group, resumes those of topics no
    /// longer paused, and lets their held jobs go.
    fn sync_pauses(&mut self) {
        let Some(control) = self.control.clone() else {
            return;
        };
        let group = self.shared.options.group.clone();
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for tp in self.tracks.keys() {
            let paused = control.is_paused(&group, &tp.topic);
            match (paused, self.admin_paused.contains(tp)) {
                (true, false) => pause.push(tp.clone()),
                (false, true) => resume.push(tp.clone()),
                _ => {}
            }
        }
        if !pause.is_empty() {
            match self.sub.pause(&pause) {
                Ok(()) => {
                    tracing::info!(partitions = pause.len(), group, "paused by the control log");
                    self.admin_paused.extend(pause);
                }
                Err(e) => tracing::warn!(error = %e, "cannot pause partitions"),
            }
        }
        // partitions backpressure also holds stay paused: backpressure resumes them
        let (resume, held_back): (Vec<TopicPartition>, Vec<TopicPartition>) =
            resume.into_iter().partition(|tp| !self.paused.contains(tp));
        for tp in &held_back {
            self.admin_paused.remove(tp);
        }
        if !resume.is_empty() {
            match self.sub.resume(&resume) {
                Ok(()) => {
                    tracing::info!(
                        partitions = resume.len(),
                        group,
                        "resumed by the control log"
                    );
                    for tp in &resume {
                        self.admin_paused.remove(tp);
                    }
                }
                // still counted as paused: tried again at the next sync
                Err(e) => tracing::warn!(error = %e, "cannot resume partitions; trying again"),
            }
        }
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            for task in held {
                if control.is_paused(&group, &task.record.topic) {
                    self.held.push(task);
                } else {
                    self.ready.push_back(task);
                }
            }
        }
    }

    /// Lets keys go whose retrying job did not come back in time (or was cancelled).
    fn expire_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        let control = self.control.clone();
        let group = &self.shared.options.group;
        // a paused topic's retry cannot come back meanwhile: its grace starts again
        for p in self.parked.values_mut() {
            if control
                .as_ref()
                .is_some_and(|c| c.is_paused(group, &p.tp.topic))
            {
                p.until = p.until.max(now + PARK_GRACE);
            }
        }
        let gone: Vec<LaneKey> = self
            .parked
            .iter()
            .filter(|(_, p)| {
                p.until <= now
                    || control
                        .as_ref()
                        .is_some_and(|c| c.is_cancelled(&p.message_id))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for lane in gone {
            if let Some(p) = self.parked.remove(&lane) {
                tracing::warn!(partition = %p.tp, message_id = p.message_id, "a retrying job did not come back from its delay tier in time (or was cancelled); later jobs of its key go on");
            }
            self.release_key(Some(&lane));
        }
    }

    /// Whether `task`'s partition is still owned and not being revoked.
    fn runnable(&self, task: &Task) -> bool {
        let tp = task.record.tp();
        self.is_current(task) && !self.running_by_partition.is_revoking(&tp)
    }

    /// Counts `task` as running on its partition, unless that partition was (or is being)
    /// revoked: then the next job of its key is let through (stale too; the next owner runs
    /// them from the committed offset) and `None` returned. Counted before the check, so a
    /// revocation either waits for it or it sees the revocation.
    fn enter(&mut self, task: &Task) -> Option<Running> {
        let running = self.running_by_partition.enter(&task.record);
        if self.runnable(task) {
            return Some(running);
        }
        drop(running);
        self.release_lane(task);
        None
    }

    /// Counts the attempts in their partitions' books, stores the counts (embedded: committed,
    /// so an attempt that kills the process is counted; Kafka: kept for the next commit), and
    /// runs them.
    fn start_attempts(&mut self, tasks: Vec<(Task, Running)>) {
        if tasks.is_empty() {
            return;
        }
        for (task, _) in &tasks {
            if let Some(track) = self.track_mut(task) {
                track.attempts.start(task.record.offset, task.attempt);
                self.dirty = true;
            }
        }
        self.store();
        for (task, running) in tasks {
            self.spawn_task(task, running, |shared, task| async move {
                let result = run_attempt(&shared, &task).await;
                (task, result)
            });
        }
    }

    /// Commits the attempt counts of suspects, then runs them: if one kills the process again,
    /// the next owner counts that attempt. When the commit fails they do not run uncounted:
    /// they wait and are tried again (their partitions stay held by them meanwhile).
    async fn run_suspects(&mut self) {
        let marking = std::mem::take(&mut self.marking);
        let mut before = Vec::with_capacity(marking.len());
        for task in &marking {
            let tp = task.record.tp();
            if let Some(track) = self.tracks.get_mut(&tp) {
                before.push((
                    tp,
                    task.record.offset,
                    track.attempts.count(task.record.offset),
                ));
                track.attempts.start(task.record.offset, task.attempt);
            }
        }
        self.dirty = true;
        let committed = self.commit().await;
        if !committed {
            for (tp, offset, count) in before {
                if let Some(track) = self.tracks.get_mut(&tp) {
                    track.attempts.restore(offset, count);
                }
            }
            tracing::warn!(
                jobs = marking.len(),
                "cannot commit the attempt counts of jobs that may have been running when their partition's previous owner stopped; they wait until it can"
            );
            self.marking_retry = Some(Instant::now() + Duration::from_millis(200));
        } else {
            self.marking_retry = None;
        }
        let mut starting = Vec::new();
        for task in marking {
            if !committed {
                if self.runnable(&task) {
                    self.marking.push(task);
                } else {
                    self.release_lane(&task);
                }
                continue;
            }
            let task = Task {
                suspect: false,
                counted: true,
                ..task
            };
            if let Some(running) = self.enter(&task) {
                starting.push((task, running));
            }
        }
        self.start_attempts(starting);
    }

    /// Runs `work` for `task` as a task of its own, counted as running on its partition (for
    /// the revocation barrier) and remembered by task id (for a task that ends abnormally).
    fn spawn_task<Fut>(
        &mut self,
        task: Task,
        running: Running,
        work: impl FnOnce(Arc<Shared>, Task) -> Fut,
    ) where
        Fut: Future<Output = (Task, TaskResult)> + Send + 'static,
    {
        let kept = task.clone();
        let work = work(Arc::clone(&self.shared), task);
        let handle = self.running.spawn(async move {
            let out = work.await;
            drop(running);
            out
        });
        self.in_flight.insert(handle.id(), kept);
    }

    /// `task`'s attempt ended without finishing the job (it waits to retry).
    fn returned(&mut self, task: &Task) {
        if let Some(track) = self.track_mut(task) {
            track.attempts.returned(task.record.offset);
        }
    }

    /// Runs `task` again, as its next attempt, after `delay`.
    fn retry_later(&mut self, task: Task, delay: Duration) {
        self.timers.spawn(async move {
            tokio::time::sleep(delay).await;
            Task {
                attempt: task.attempt + 1,
                ..task
            }
        });
    }

    fn on_task_done(
        &mut self,
        done: std::result::Result<(tokio::task::Id, (Task, TaskResult)), tokio::task::JoinError>,
    ) {
        let (task, result) = match done {
            Ok((id, v)) => {
                self.in_flight.remove(&id);
                v
            }
            Err(e) => {
                let Some(task) = self.in_flight.remove(&e.id()) else {
                    return;
                };
                if e.is_cancelled() {
                    // aborted at shutdown: uncommitted, so the next owner runs it again
                    return;
                }
                self.on_escaped_panic(task, &e);
                return;
            }
        };
        match result {
            TaskResult::Retry(delay) if self.is_current(&task) => {
                self.returned(&task);
                self.retry_later(task, delay);
            }
            TaskResult::Again(delay) if self.is_current(&task) => {
                self.returned(&task);
                self.timers.spawn(async move {
                    tokio::time::sleep(delay).await;
                    task
                });
            }
            TaskResult::Unmovable if self.is_current(&task) => {
                self.ready.push_back(Task {
                    in_place: true,
                    ..task
                });
            }
            TaskResult::Parked(delay)
                if self.is_current(&task)
                    && self.shared.options.ordered_retries
                    && task.lane.is_some() =>
            {
                self.mark_finished(&task);
                let lane = task.lane.clone().expect("checked");
                self.parked.insert(
                    lane,
                    ParkedKey {
                        move_key: move_key(&task.record),
                        message_id: task
                            .record
                            .headers
                            .get_str(headers::MESSAGE_ID)
                            .unwrap_or_default()
                            .to_owned(),
                        tp: task.record.tp(),
                        until: Instant::now() + delay + PARK_GRACE,
                    },
                );
            }
            TaskResult::Retry(_)
            | TaskResult::Finished
            | TaskResult::Parked(_)
            | TaskResult::Again(_)
            | TaskResult::Unmovable => {
                self.mark_finished(&task);
                self.release_lane(&task);
            }
        }
    }

    /// An attempt whose task panicked outside the handler's `catch_unwind`: a failed attempt
    /// like any other panic, retried with backoff or, once attempts are exhausted,
    /// dead-lettered; its key is released either way.
    fn on_escaped_panic(&mut self, task: Task, e: &tokio::task::JoinError) {
        self.shared.stats.panicked.fetch_add(1, Ordering::Relaxed);
        let r = &task.record;
        let error = format!("the job's task panicked outside the handler: {e}");
        tracing::error!(topic = %r.topic, partition = r.partition, offset = r.offset, attempt = task.attempt, %error, "job failed");
        if !self.is_current(&task) {
            self.release_lane(&task);
            return;
        }
        if task.dead_lettering {
            // writing its dead letter panicked too: leave it uncommitted (redelivered after a
            // restart or rebalance) rather than retrying in a loop
            tracing::error!(topic = %r.topic, partition = r.partition, offset = r.offset, "writing the dead letter panicked; the job stays uncommitted");
            self.release_lane(&task);
            return;
        }
        let job_type = job_type_of(r);
        let policy = self.shared.policy(&job_type).clone();
        if policy.should_retry(task.attempt) {
            self.shared.stats.retried.fetch_add(1, Ordering::Relaxed);
            let delay = policy.delay(task.attempt);
            self.returned(&task);
            self.retry_later(task, delay);
            return;
        }
        let task = Task {
            dead_lettering: true,
            ..task
        };
        let running = self.running_by_partition.enter(&task.record);
        self.spawn_task(task, running, |shared, task| async move {
            let result = dead_letter(&shared, &task, DeadLetterReason::Exhausted, &error).await;
            (task, result)
        });
    }

    async fn on_poll(&mut self, poll: Poll) {
        match poll {
            Poll::Idle => {}
            Poll::Records(records) => {
                let mut leased = false;
                for record in records {
                    let tp = record.tp();
                    let epoch = self.epoch;
                    let track = self
                        .tracks
                        .entry(tp.clone())
                        .or_insert_with(|| Track::new(epoch, AttemptBook::default()));
                    track.offsets.fetched(record.offset);
                    let arrival = track.attempts.arrive(record.offset);
                    leased |= track.attempts.cover(record.offset);
                    self.buffered += 1;
                    let lane = record.key.clone().map(|k| (record.topic.clone(), k));
                    let group = &self.shared.options.group;
                    let ours = record
                        .headers
                        .get_str(headers::RETRY_GROUP)
                        .map(|g| g == group);
                    // a job this group moved to a delay tier comes back with its attempt number
                    let base = match ours {
                        Some(true) => conveyor_core::JobMeta::from_headers(&record.headers).attempt,
                        _ => 1,
                    };
                    let copy = ours != Some(false)
                        && record
                            .headers
                            .get_str(headers::DEDUP_KEY)
                            .is_some_and(|k| self.seen.is_copy(k, &tp, record.offset));
                    let task = Task {
                        dead_lettering: false,
                        // the book counts attempt numbers, which already include the base
                        attempt: base.max(arrival.attempts_before.saturating_add(1)),
                        record,
                        epoch: track.epoch,
                        lane,
                        suspect: arrival.suspect,
                        counted: false,
                        copy,
                        in_place: false,
                        keeps_key: false,
                        unlaned: false,
                    };
                    let tp = task.record.tp();
                    // the retrying job its key waited for is back: it goes first
                    let back = ours == Some(true)
                        && !copy
                        && task.lane.as_ref().is_some_and(|l| {
                            self.parked.get(l).is_some_and(|p| {
                                task.record.headers.get_str(headers::DEDUP_KEY)
                                    == Some(p.move_key.as_str())
                            })
                        });
                    if back {
                        if let Some(l) = &task.lane {
                            self.parked.remove(l);
                        }
                        self.ready.push_back(Task {
                            keeps_key: true,
                            ..task
                        });
                        continue;
                    }
                    match self.lanes.admit(task.lane.clone().as_ref(), task) {
                        Some(task) => self.ready.push_back(task),
                        None => *self.waiting.entry(tp).or_default() += 1,
                    }
                }
                if leased {
                    // the lease is committed before any job under it runs
                    self.dirty = true;
                    self.commit().await;
                }
            }
            Poll::Rebalance { revoked, assigned } => {
                let names = |tps: &[TopicPartition]| {
                    tps.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                tracing::info!(revoked = %names(&revoked), assigned = %names(&assigned), group = %self.shared.options.group, "rebalance");
                if !revoked.is_empty() {
                    self.commit().await;
                }
                self.running_by_partition.settled(&revoked);
                self.running_by_partition.settled(&assigned);
                let unparked: Vec<LaneKey> = self
                    .parked
                    .iter()
                    .filter(|(_, p)| revoked.contains(&p.tp))
                    .map(|(k, _)| k.clone())
                    .collect();
                for tp in &revoked {
                    self.paused.remove(tp);
                    self.admin_paused.remove(tp);
                    let (stale, kept): (Vec<Task>, Vec<Task>) = std::mem::take(&mut self.held)
                        .into_iter()
                        .partition(|t| t.record.tp() == *tp);
                    self.held = kept;
                    for t in &stale {
                        self.release_lane(t);
                    }
                    self.waiting.remove(tp);
                    // jobs of the partition waiting behind a busy key go too: released later
                    // they would count against the partition's waiting total once it was
                    // assigned here again
                    self.lanes.remove_waiting(|t: &Task| {
                        t.record.partition == tp.partition && t.record.topic == tp.topic
                    });
                    if let Some(track) = self.tracks.remove(tp) {
                        self.buffered -= track.offsets.in_flight();
                    }
                }
                for lane in unparked {
                    self.parked.remove(&lane);
                    self.release_key(Some(&lane));
                }
                let inherited = self.inherited(&assigned).await;
                for tp in assigned {
                    self.epoch += 1;
                    let book = inherited
                        .iter()
                        .find(|c| c.tp == tp)
                        .map(|c| AttemptBook::inherit(c.next_offset, &c.metadata))
                        .unwrap_or_default();
                    self.tracks.insert(tp, Track::new(self.epoch, book));
                }
            }
        }
    }

    /// The attempt counts the previous owners of `assigned` committed (three tries; then none).
    async fn inherited(&mut self, assigned: &[TopicPartition]) -> Vec<conveyor_core::Committed> {
        if assigned.is_empty() {
            return Vec::new();
        }
        let mut tries = 0;
        loop {
            match self.sub.committed(assigned).await {
                Ok(c) => return c,
                Err(e) if tries < 2 => {
                    tracing::debug!(error = %e, "cannot read the committed attempt counts; trying again");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the attempt counts of the assigned partitions; their jobs count attempts from 1");
                    return Vec::new();
                }
            }
        }
    }

    /// Pauses a partition when the buffer has been full (`max_buffered` unfinished records) for
    /// [`STALL`], or when half of it is jobs of this partition waiting behind a busy key (a key
    /// stuck in retries must not starve the other partitions); resumes it once both fall to half.
    /// Pausing costs a refetch on Kafka, so a buffer that is full only briefly just stops polling. Records are never
    /// dropped: a paused partition resumes where it stopped. Returns whether the worker is
    /// stalled (full for `STALL` or longer), in which case it polls while paused.
    fn backpressure(&mut self, max_buffered: usize) -> bool {
        let cap = partition_share(max_buffered);
        let full = self.buffered >= max_buffered;
        match full {
            true => {
                self.full_since.get_or_insert_with(Instant::now);
            }
            false => self.full_since = None,
        }
        let stalled = self.full_since.is_some_and(|t| t.elapsed() >= STALL);
        let relieved = self.buffered <= max_buffered / 2;
        let over_share = self.over_share(max_buffered);
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        let mut unpark = Vec::new();
        for tp in self
            .tracks
            .keys()
            .filter(|tp| !self.admin_paused.contains(*tp))
        {
            let n = self.waiting.get(tp).copied().unwrap_or(0);
            let paused = self.paused.contains(tp);
            // jobs waiting behind keys held for retries in the tiers: pausing would keep the
            // retries (new records of this partition) from coming back, so at the bound the
            // keys go instead; so do keys of a partition paused anyway (a full buffer, a topic
            // over its share) whose retry is due: it cannot be fetched until then
            let now = Instant::now();
            let stuck = self
                .parked
                .values()
                .any(|p| p.tp == *tp && (n >= cap || (paused && p.until <= now + PARK_GRACE)));
            if stuck {
                unpark.push(tp.clone());
                continue;
            }
            if !paused && (stalled || n >= cap || over_share.contains(&tp.topic)) {
                pause.push(tp.clone());
            } else if paused && relieved && n <= cap / 2 {
                resume.push(tp.clone());
            }
        }
        if !unpark.is_empty() {
            let lanes: Vec<LaneKey> = self
                .parked
                .iter()
                .filter(|(_, p)| unpark.contains(&p.tp))
                .map(|(k, _)| k.clone())
                .collect();
            tracing::warn!(
                keys = lanes.len(),
                "half the buffer is jobs waiting behind keys whose jobs retry in a delay tier; those keys go on without them (their order is given up)"
            );
            for lane in lanes {
                self.parked.remove(&lane);
                self.release_key(Some(&lane));
            }
        }
        if !pause.is_empty() {
            match self.sub.pause(&pause) {
                Ok(()) => {
                    tracing::debug!(
                        partitions = pause.len(),
                        buffered = self.buffered,
                        "backpressure: paused"
                    );
                    self.paused.extend(pause);
                }
                Err(e) => tracing::warn!(error = %e, "cannot pause partitions"),
            }
        }
        if !resume.is_empty() {
            match self.sub.resume(&resume) {
                Ok(()) => {
                    tracing::debug!(
                        partitions = resume.len(),
                        buffered = self.buffered,
                        "backpressure: resumed"
                    );
                    for tp in &resume {
                        self.paused.remove(tp);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot resume partitions"),
            }
        }
        stalled
    }

    /// With priorities, once the buffer is three quarters full: the topics holding more of it
    /// than their weight's share (their partitions are paused until it is half empty, so a
    /// low-priority backlog cannot take the room high-priority jobs need to be fetched).
    fn over_share(&self, max_buffered: usize) -> HashSet<String> {
        let Some(p) = &self.shared.options.priorities else {
            return HashSet::new();
        };
        if self.buffered * 4 < max_buffered * 3 {
            return HashSet::new();
        }
        let topics = &self.shared.options.topics;
        let total: u64 = topics.iter().map(|t| u64::from(p.weight(t))).sum();
        let mut held: HashMap<&str, usize> = HashMap::new();
        for (tp, t) in &self.tracks {
            *held.entry(tp.topic.as_str()).or_default() += t.offsets.in_flight();
        }
        topics
            .iter()
            .filter(|t| {
                let share = max_buffered as u64 * u64::from(p.weight(t)) / total.max(1);
                held.get(t.as_str()).copied().unwrap_or(0) as u64 > share.max(1)
            })
            .cloned()
            .collect()
    }

    /// Offsets that may be committed now, per owned partition.
    /// Each with its attempt counts (the partitions whose commit point or counts changed).
    fn commit_points(&self) -> Vec<CommitOffset> {
        self.tracks
            .iter()
            .filter_map(|(tp, t)| {
                let point = t
                    .offsets
                    .commit_point()
                    .or_else(|| t.attempts.changed().then(|| t.offsets.position()).flatten())?;
                Some(
                    CommitOffset::new(tp.clone(), point)
                        .with_metadata(t.attempts.encode(point, MAX_COMMIT_METADATA)),
                )
            })
            .collect()
    }

    /// Hands finished progress to the subscription (committed by the backend on revocation).
    fn store(&mut self) {
        self.unstored = false;
        let offsets = self.commit_points();
        if let Err(e) = self.sub.store(&offsets) {
            tracing::debug!(error = %e, "cannot store offsets; the next commit covers them");
        }
    }

    /// Commits what changed; returns whether it was committed.
    async fn commit(&mut self) -> bool {
        let offsets = self.commit_points();
        self.last_commit = Instant::now();
        if offsets.is_empty() {
            self.dirty = false;
            return true;
        }
        match self.sub.commit(&offsets).await {
            Ok(()) => {
                for c in offsets {
                    if let Some(t) = self.tracks.get_mut(&c.tp) {
                        t.offsets.committed(c.next_offset);
                        t.attempts.persisted();
                    }
                }
                self.dirty = false;
                true
            }
            // the other partitions' offsets were committed (the contract); the revoked one's
            // rebalance event comes with the next poll
            Err(e @ Error::NotAssigned { .. }) => {
                tracing::debug!(error = %e, "commit of a partition no longer owned refused");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed; will retry");
                false
            }
        }
    }

    async fn drain(&mut self, timeout: Duration) {
        let waiting = self.ready.len() + self.lanes.waiting() + self.timers.len();
        tracing::info!(
            running = self.running.len(),
            handed_back = waiting,
            "worker stopping"
        );
        self.timers.abort_all();
        self.ready.clear();
        self.held.clear();
        self.marking.clear();
        let deadline = Instant::now() + timeout;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.running.join_next()).await {
                // a retry moved to its tier is finished here too: its copy is durable
                Ok(Some(Ok((task, TaskResult::Finished | TaskResult::Parked(_))))) => {
                    self.mark_finished(&task)
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        abandoned = self.running.len(),
                        "shutdown timeout: abandoning running jobs; they will be redelivered"
                    );
                    self.running.abort_all();
                    // reap the aborted attempts (their running counts drop with them), so the
                    // revocation when the subscription closes does not wait for them again
                    let reap = async { while self.running.join_next().await.is_some() {} };
                    let _ = tokio::time::timeout(Duration::from_secs(1), reap).await;
                    break;
                }
            }
        }
        // a clean stop: every job that may have run is finished or named by its count
        for track in self.tracks.values_mut() {
            track.attempts.release();
        }
        self.commit().await;
        self.running_by_partition.close();
    }
}

impl Drop for Scheduler {
    /// The subscription closes as the scheduler is dropped (on Kafka its revocation runs the
    /// barrier): nothing is left to wait for, also when `run` was cancelled or panicked.
    fn drop(&mut self) {
        self.running_by_partition.close();
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Runs one attempt and applies the retry policy; dead-letters what must not run again.
async fn run_attempt(shared: &Shared, task: &Task) -> TaskResult {
    let job = Job::new(task.record.clone(), task.attempt);
    let job_type = job.job_type().to_owned();
    let policy = shared.policy(&job_type);
    if task.attempt > policy.max_attempts {
        // every allowed attempt started under an earlier owner or process and none finished
        let before = task.attempt - 1;
        let error = format!(
            "{before} attempts started and none finished (the process stopped or the partition moved while it ran); not run again"
        );
        let task = Task {
            attempt: before,
            ..task.clone()
        };
        return dead_letter(shared, &task, DeadLetterReason::Exhausted, &error).await;
    }
    if let Some(result) = unique_duplicate(shared, task).await {
        return result;
    }
    shared.stats.started.fetch_add(1, Ordering::Relaxed);
    let handler = shared
        .handlers
        .get(&job_type)
        .or(shared.fallback.as_ref())
        .cloned();
    let r = &task.record;
    let (mut limit, which) = match r
        .headers
        .get_str(headers::TIMEOUT_MS)
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
    {
        Some(ms) => (Duration::from_millis(ms), "the job's timeout_ms"),
        None => match shared.options.timeout_by_type.get(&job_type) {
            Some(d) => (*d, "its job type's timeout"),
            None => (shared.options.handler_timeout, "the handler timeout"),
        },
    };
    let deadline = deadline_of(r);
    let to_deadline =
        deadline.map(|d| Duration::from_millis((d - millis(SystemTime::now())).max(0) as u64));
    let deadline_first = to_deadline.is_some_and(|d| d < limit);
    if let Some(d) = to_deadline.filter(|_| deadline_first) {
        limit = d;
    }
    let outcome = match handler {
        None => Outcome::fail(format!("no handler registered for job type `{job_type}`")),
        Some(h) => {
            match tokio::time::timeout(limit, AssertUnwindSafe(h.handle(job)).catch_unwind()).await
            {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(p)) => {
                    shared.stats.panicked.fetch_add(1, Ordering::Relaxed);
                    Outcome::retry(format!("handler panicked: {}", panic_message(&*p)))
                }
                Err(_) if deadline_first => {
                    shared.stats.deadline.fetch_add(1, Ordering::Relaxed);
                    let error =
                        "the handler was still running at the job's deadline; it was cancelled";
                    return dead_letter(shared, task, DeadLetterReason::Deadline, error).await;
                }
                Err(_) => Outcome::retry(format!(
                    "the handler did not finish within {which} ({limit:?}); it was cancelled"
                )),
            }
        }
    };
    let (reason, error) = match outcome {
        Outcome::Done => {
            shared.stats.done.fetch_add(1, Ordering::Relaxed);
            return TaskResult::Finished;
        }
        Outcome::Retry { error } | Outcome::RetryAfter { error, .. }
            if !policy.should_retry(task.attempt) =>
        {
            (DeadLetterReason::Exhausted, error)
        }
        Outcome::Retry { error } => {
            tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, job_type, attempt = task.attempt, %error, "job failed; will retry");
            return retry(shared, task, policy.delay(task.attempt), &error, deadline).await;
        }
        Outcome::RetryAfter { delay, error } => {
            tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, job_type, attempt = task.attempt, %error, ?delay, "job failed; will retry");
            // the job's own delay has its own bound, which may exceed the policy's backoff cap
            let delay = delay.min(Duration::from_millis(policy.max_retry_after_ms));
            return retry(shared, task, delay, &error, deadline).await;
        }
        Outcome::Fail { error } => (DeadLetterReason::Failed, error),
    };
    dead_letter(shared, task, reason, &error).await
}

/// A unique job another job holds the key of: dropped (`Some(Finished)`); when the ledger cannot
/// be read, tried again in a second (`Some(Retry)`); `None`: it runs.
async fn unique_duplicate(shared: &Shared, task: &Task) -> Option<TaskResult> {
    let r = &task.record;
    let key = r.headers.get_str(headers::UNIQUE_KEY)?;
    let ledger = shared.unique.get()?;
    let meta = conveyor_core::JobMeta::from_headers(&r.headers);
    let id = meta.message_id.clone().unwrap_or_else(|| move_key(r));
    let enqueued = meta.produced_at.map_or(r.timestamp, millis);
    let until = r
        .headers
        .get_str(headers::UNIQUE_UNTIL)
        .and_then(headers::parse_time)
        .map_or(enqueued, millis);
    let group = &shared.options.group;
    match ledger
        .admit(group, &r.topic, key, &id, enqueued, until)
        .await
    {
        Ok(crate::unique::Verdict::Run) => None,
        Ok(crate::unique::Verdict::Duplicate { holder, until }) => {
            shared.stats.unique_dropped.fetch_add(1, Ordering::Relaxed);
            let until = headers::format_time(
                SystemTime::UNIX_EPOCH + Duration::from_millis(until.max(0) as u64),
            );
            tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, unique_key = key, id, holder, until, "a duplicate of a unique job was dropped without running: the job `holder` holds its key");
            Some(TaskResult::Finished)
        }
        Err(e) => {
            tracing::warn!(error = %e, unique_key = key, "cannot read the unique-key ledger; trying the job again in 1 s (not counted as an attempt)");
            Some(TaskResult::Again(Duration::from_secs(1)))
        }
    }
}

/// Schedules the next attempt after `delay`: in memory up to `retry_in_place_max`, otherwise in
/// a delay tier; dead-letters instead when it would start after the job's deadline.
async fn retry(
    shared: &Shared,
    task: &Task,
    delay: Duration,
    error: &str,
    deadline: Option<i64>,
) -> TaskResult {
    let next = millis(SystemTime::now()).saturating_add(delay.as_millis() as i64);
    if deadline.is_some_and(|d| next >= d) {
        shared.stats.deadline.fetch_add(1, Ordering::Relaxed);
        let error = format!(
            "{error} (the next attempt, in {delay:?}, would start after the job's deadline)"
        );
        return dead_letter(shared, task, DeadLetterReason::Deadline, &error).await;
    }
    shared.stats.retried.fetch_add(1, Ordering::Relaxed);
    let o = &shared.options;
    if delay > o.retry_in_place_max
        && o.tiers.choose(delay).is_some()
        && move_to_tier(shared, task, next, Some(error)).await
    {
        shared.stats.delayed.fetch_add(1, Ordering::Relaxed);
        return TaskResult::Parked(delay);
    }
    TaskResult::Retry(delay)
}

/// The `dedup_key` of moving `r` to a delay tier: `<topic>/<partition>/<offset>`.
fn move_key(r: &ConsumedRecord) -> String {
    format!("{}/{}/{}", r.topic, r.partition, r.offset)
}

/// The most bytes of an error kept in the `first_error` and `last_error` headers.
const ERROR_HEADER_BYTES: usize = 1024;

/// Writes `task`'s job to the delay tier for a wait until `due` (ms since the epoch), to come
/// back to its partition; with `error`, as its next attempt (a retry). Retries transient
/// failures; returns false when the record cannot be written (too large: it then waits in
/// memory).
async fn move_to_tier(shared: &Shared, task: &Task, due: i64, error: Option<&str>) -> bool {
    let r = &task.record;
    let o = &shared.options;
    let left = Duration::from_millis((due - millis(SystemTime::now())).max(0) as u64);
    let tier = o.tiers.choose(left).unwrap_or_else(|| o.tiers.shortest());
    let topic = DelayTiers::topic(&r.topic, tier);
    let mut record = r.to_record();
    let h = &mut record.headers;
    let due_at = SystemTime::UNIX_EPOCH + Duration::from_millis(due.max(0) as u64);
    h.insert(headers::DUE_AT, headers::format_time(due_at));
    h.insert(headers::DELAY_PARTITION, r.partition.to_string());
    h.insert(headers::RETRY_GROUP, o.group.clone());
    h.insert(headers::DEDUP_KEY, move_key(r));
    match error {
        Some(error) => {
            let error = crate::dead_letter::cut_to(error, ERROR_HEADER_BYTES);
            h.insert(headers::ATTEMPT, (task.attempt + 1).to_string());
            if h.get(headers::FIRST_ERROR).is_none() {
                h.insert(headers::FIRST_ERROR, error.clone());
            }
            h.insert(headers::LAST_ERROR, error);
        }
        None => h.insert(headers::ATTEMPT, task.attempt.to_string()),
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        match shared.backend.publish(&topic, vec![record.clone()]).await {
            Ok(_) => return true,
            Err(
                e @ (Error::RecordTooLarge { .. }
                | Error::InvalidArgument(_)
                | Error::UnknownTopic(_)
                | Error::UnknownPartition { .. }),
            ) => {
                tracing::error!(error = %e, topic, "cannot move the job to its delay tier; it waits in memory");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "cannot write to the delay tier; retrying (the job stays uncommitted)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Writes `task`'s dead letter, retrying transient failures (the job stays uncommitted
/// meanwhile) and trimming one that is too large.
async fn dead_letter(
    shared: &Shared,
    task: &Task,
    reason: DeadLetterReason,
    error: &str,
) -> TaskResult {
    let r = &task.record;
    let job_type = job_type_of(r);
    let dlq = dead_letter_topic(&r.topic, &shared.options.dlq_suffix);
    let record = dead_letter_record(r, &shared.options.group, task.attempt, reason, error);
    tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, job_type, attempt = task.attempt, %error, dlq, reason = reason.as_str(), "job dead-lettered");
    let mut backoff = Duration::from_millis(100);
    let mut record = record;
    loop {
        match shared.backend.publish(&dlq, vec![record.clone()]).await {
            Ok(_) => break,
            // permanent: retrying the same record would block the partition forever
            Err(e @ Error::RecordTooLarge { .. })
                if record.headers.get(dlq_header::TRIMMED).is_none() =>
            {
                tracing::error!(error = %e, dlq, "the dead letter is too large; writing a trimmed one");
                record = trimmed_dead_letter_record(&record, &e.to_string());
            }
            Err(e @ Error::RecordTooLarge { .. }) => {
                tracing::error!(error = %e, dlq, topic = %r.topic, partition = r.partition, offset = r.offset, "even the trimmed dead letter is too large; the job is given up (it stays at its original offset)");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, dlq, "cannot write to the dead-letter topic; retrying (the job stays uncommitted)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    TaskResult::Finished
}

/// The job type of a record, read from its headers (`""` when it has none).
fn job_type_of(r: &ConsumedRecord) -> String {
    conveyor_core::JobMeta::from_headers(&r.headers)
        .job_type
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The due-time decision at chosen clocks: never early, in memory below the shortest tier.
    #[test]
    fn due_times_decide_run_hold_or_move_at_a_given_clock() {
        let five = Duration::from_secs(5);
        let now = 1_000_000;
        let is = |g: Gate| match g {
            Gate::Run => "run".to_owned(),
            Gate::Hold(d) => format!("hold {}", d.as_millis()),
            Gate::Move(at) => format!("move {}", at - now),
            _ => "other".to_owned(),
        };
        assert_eq!(is(due_gate(None, now, five, true)), "run");
        assert_eq!(is(due_gate(Some(now), now, five, true)), "run");
        assert_eq!(is(due_gate(Some(now - 60_000), now, five, true)), "run");
        assert_eq!(is(due_gate(Some(now + 1), now, five, true)), "hold 1");
        assert_eq!(
            is(due_gate(Some(now + 4_999), now, five, true)),
            "hold 4999"
        );
        assert_eq!(
            is(due_gate(Some(now + 5_000), now, five, true)),
            "move 5000"
        );
        assert_eq!(
            is(due_gate(Some(now + 3_600_000), now, five, false)),
            "hold 3600000"
        );
        // the latest time RFC 3339 can write still moves (through the longest tier, again and again)
        assert_eq!(
            is(due_gate(Some(253_402_300_799_999), now, five, true)),
            format!("move {}", 253_402_300_799_999i64 - now)
        );
    }
}
