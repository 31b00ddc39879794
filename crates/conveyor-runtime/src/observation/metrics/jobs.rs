//! The worker's per-job metrics: `conveyor_jobs_total{group,topic,type,outcome}`,
//! `conveyor_job_attempts_started_total`, `conveyor_job_handler_seconds`,
//! `conveyor_job_queue_delay_seconds` and `conveyor_jobs_in_flight`.
//!
//! The `type` label is the job type when the worker has a handler registered for it, and `*`
//! for the types its fallback handler serves (a webhook route serves a whole topic): job types
//! come from producers, so they would otherwise make the number of series unbounded. Every
//! series is resolved when the worker is built ([`JobMetrics::new`]); the hot path is then two
//! hash lookups by borrowed strings and relaxed atomic adds.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use conveyor_metrics::{global, Counter, Family, Gauge, Histogram};

/// The `type` label of jobs served by a fallback handler.
pub const OTHER_TYPE: &str = "*";

struct Families {
    jobs: Arc<Family<Counter>>,
    started: Arc<Family<Counter>>,
    handler: Arc<Family<Histogram>>,
    queued: Arc<Family<Histogram>>,
    in_flight: Arc<Family<Gauge>>,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let g = global();
    const L: &[&str] = &["group", "topic", "type"];
    Families {
        jobs: g.counter(
            "conveyor_jobs_total",
            "Jobs by outcome: succeeded, failed (an attempt failed), retried (a failed attempt scheduled again), dead_lettered (any reason), deadline (dead-lettered because the deadline passed), duplicate (a second copy or a unique job whose key was held, dropped), cancelled.",
            &["group", "topic", "type", "outcome"],
        ),
        started: g.counter(
            "conveyor_job_attempts_started_total",
            "Handler attempts started.",
            L,
        ),
        handler: g.histogram(
            "conveyor_job_handler_seconds",
            "How long handler attempts ran, in seconds (a webhook: the whole delivery).",
            L,
            conveyor_metrics::DURATION_BUCKETS,
        ),
        queued: g.histogram(
            "conveyor_job_queue_delay_seconds",
            "From when a job was enqueued (or due, for a delayed job) to its first attempt's start, in seconds.",
            L,
            conveyor_metrics::LONG_DURATION_BUCKETS,
        ),
        in_flight: g.gauge(
            "conveyor_jobs_in_flight",
            "Handler attempts running now.",
            L,
        ),
    }
});

pub(super) fn init() {
    LazyLock::force(&FAMILIES);
}

/// The series of one group, topic and job type.
#[derive(Debug)]
pub struct JobSeries {
    /// `outcome="succeeded"`.
    pub succeeded: Arc<Counter>,
    /// `outcome="failed"`: an attempt failed (error, panic, timeout), retried or not.
    pub failed: Arc<Counter>,
    /// `outcome="retried"`.
    pub retried: Arc<Counter>,
    /// `outcome="dead_lettered"`, whatever the reason.
    pub dead_lettered: Arc<Counter>,
    /// `outcome="deadline"`: dead-lettered because the job's deadline passed.
    pub deadline: Arc<Counter>,
    /// `outcome="duplicate"`.
    pub duplicate: Arc<Counter>,
    /// `outcome="cancelled"`.
    pub cancelled: Arc<Counter>,
    /// Attempts started.
    pub started: Arc<Counter>,
    /// Handler durations.
    pub handler: Arc<Histogram>,
    /// Enqueued (or due) to first start.
    pub queued: Arc<Histogram>,
    /// Running now.
    pub in_flight: Arc<Gauge>,
}

impl JobSeries {
    fn new(group: &str, topic: &str, job_type: &str) -> Self {
        let f = &*FAMILIES;
        let outcome = |o: &str| f.jobs.with(&[group, topic, job_type, o]);
        let l = [group, topic, job_type];
        JobSeries {
            succeeded: outcome("succeeded"),
            failed: outcome("failed"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            deadline: outcome("deadline"),
            duplicate: outcome("duplicate"),
            cancelled: outcome("cancelled"),
            started: f.started.with(&l),
            handler: f.handler.with(&l),
            queued: f.queued.with(&l),
            in_flight: f.in_flight.with(&l),
        }
    }
}

impl JobSeries {
    /// Counts an attempt in flight until the guard drops, then records its duration.
    #[inline]
    pub fn running(&self) -> Running<'_> {
        self.in_flight.inc();
        Running {
            series: self,
            began: std::time::Instant::now(),
        }
    }
}

/// An attempt in flight: see [`JobSeries::running`].
#[derive(Debug)]
pub struct Running<'a> {
    series: &'a JobSeries,
    began: std::time::Instant,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.series.in_flight.dec();
        self.series.handler.observe_duration(self.began.elapsed());
    }
}

struct TopicSeries {
    types: HashMap<String, JobSeries>,
    other: JobSeries,
}

/// A worker's series, by topic and job type.
pub struct JobMetrics {
    topics: HashMap<String, TopicSeries>,
    /// For a record of a topic the worker was not built with (none in practice).
    stray: JobSeries,
}

impl std::fmt::Debug for JobMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobMetrics")
            .field("topics", &self.topics.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl JobMetrics {
    /// Resolves the series of `group` on `topics` for the registered `job_types` (and `*`).
    pub fn new<'a>(
        group: &str,
        topics: &[String],
        job_types: impl Iterator<Item = &'a String> + Clone,
    ) -> Self {
        let topics = topics
            .iter()
            .map(|t| {
                let types = job_types
                    .clone()
                    .map(|ty| (ty.clone(), JobSeries::new(group, t, ty)))
                    .collect();
                let other = JobSeries::new(group, t, OTHER_TYPE);
                (t.clone(), TopicSeries { types, other })
            })
            .collect();
        JobMetrics {
            topics,
            stray: JobSeries::new(group, "", OTHER_TYPE),
        }
    }

    /// The series of a job of `topic` and `job_type`.
    #[inline]
    pub fn of(&self, topic: &str, job_type: &str) -> &JobSeries {
        match self.topics.get(topic) {
            Some(t) => t.types.get(job_type).unwrap_or(&t.other),
            None => &self.stray,
        }
    }
}

/// A worker's per-group series: commits, transactions, rebalances.
#[derive(Debug)]
pub struct GroupSeries {
    /// `conveyor_commits_total{result="ok"}`.
    pub commits_ok: Arc<Counter>,
    /// `conveyor_commits_total{result="error"}`.
    pub commits_failed: Arc<Counter>,
    /// `conveyor_commit_seconds`.
    pub commit_seconds: Arc<Histogram>,
    /// `conveyor_transactions_total{result="committed"}`.
    pub tx_committed: Arc<Counter>,
    /// `conveyor_transactions_total{result="aborted"}`.
    pub tx_aborted: Arc<Counter>,
    /// `conveyor_rebalances_total`.
    pub rebalances: Arc<Counter>,
}

impl GroupSeries {
    /// Resolves the series of `group`.
    pub fn new(group: &str) -> Self {
        let f = &*super::events::FAMILIES;
        GroupSeries {
            commits_ok: f.commits.with(&[group, "ok"]),
            commits_failed: f.commits.with(&[group, "error"]),
            commit_seconds: f.commit_seconds.with(&[group]),
            tx_committed: f.transactions.with(&[group, "committed"]),
            tx_aborted: f.transactions.with(&[group, "aborted"]),
            rebalances: f.rebalances.with(&[group]),
        }
    }
}
