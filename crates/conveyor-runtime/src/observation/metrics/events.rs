//! Counters of the runtime's other parts: jobs enqueued and enqueue errors by code (the
//! [`crate::Client`], under the HTTP API too), schedule ticks fired and missed, webhook
//! answers by status class, request/reply outcomes, and the worker's commits, transactions and
//! rebalances.
//!
//! These happen per call or per tick, not per job on a worker's hot path: a series is looked up
//! by its labels ([`conveyor_metrics::Family::with`], a read lock) where it is not resolved
//! ahead.

use std::sync::{Arc, LazyLock};

use conveyor_core::Error;
use conveyor_metrics::{global, Counter, Family, Histogram};

/// The families.
pub(crate) struct Families {
    pub(crate) enqueued: Arc<Family<Counter>>,
    pub(crate) enqueue_errors: Arc<Family<Counter>>,
    pub(crate) enqueue_seconds: Arc<Family<Histogram>>,
    pub(crate) ticks: Arc<Family<Counter>>,
    pub(crate) webhook: Arc<Family<Counter>>,
    pub(crate) requests: Arc<Family<Counter>>,
    pub(crate) commits: Arc<Family<Counter>>,
    pub(crate) commit_seconds: Arc<Family<Histogram>>,
    pub(crate) transactions: Arc<Family<Counter>>,
    pub(crate) rebalances: Arc<Family<Counter>>,
}

pub(crate) static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let g = global();
    Families {
        enqueued: g.counter(
            "conveyor_enqueued_jobs_total",
            "Jobs stored by the client (the HTTP API's enqueues and requests go through it).",
            &["topic"],
        ),
        enqueue_errors: g.counter(
            "conveyor_enqueue_errors_total",
            "Enqueue calls of the client that failed, by error code.",
            &["code"],
        ),
        enqueue_seconds: g.histogram(
            "conveyor_enqueue_seconds",
            "How long the backend took to store an enqueued batch (produce latency), in seconds.",
            &["backend"],
            conveyor_metrics::DURATION_BUCKETS,
        ),
        ticks: g.counter(
            "conveyor_schedule_ticks_total",
            "Schedule ticks by outcome: fired (a job enqueued) or missed (skipped by the missed-tick policy).",
            &["schedule", "outcome"],
        ),
        webhook: g.counter(
            "conveyor_webhook_deliveries_total",
            "Webhook calls by answer: 2xx, 3xx, 4xx, 5xx, timeout, connect_error, other_error.",
            &["status"],
        ),
        requests: g.counter(
            "conveyor_requests_total",
            "Request/reply calls of this process by outcome: replied, failed (the handler's error reply), timeout.",
            &["outcome"],
        ),
        commits: g.counter(
            "conveyor_commits_total",
            "Offset commits of the worker, by result (ok, error).",
            &["group", "result"],
        ),
        commit_seconds: g.histogram(
            "conveyor_commit_seconds",
            "How long the worker's offset commits took, in seconds.",
            &["group"],
            conveyor_metrics::FAST_DURATION_BUCKETS,
        ),
        transactions: g.counter(
            "conveyor_transactions_total",
            "Transactions of a transactional worker, by result (committed, aborted).",
            &["group", "result"],
        ),
        rebalances: g.counter(
            "conveyor_rebalances_total",
            "Partition assignments the worker received (each rebalance that gave it partitions).",
            &["group"],
        ),
    }
});

pub(super) fn init() {
    LazyLock::force(&FAMILIES);
}

/// The stable code of a backend error, for the `code` label.
pub fn code_of(e: &Error) -> &'static str {
    match e {
        Error::UnknownTopic(_) => "unknown_topic",
        Error::InvalidTopicName { .. } => "invalid_topic_name",
        Error::ReservedTopic { .. } => "reserved_topic",
        Error::TopicConflict { .. } => "topic_conflict",
        Error::UnknownPartition { .. } => "unknown_partition",
        Error::RecordTooLarge { .. } => "record_too_large",
        Error::NotAssigned { .. } => "not_assigned",
        Error::InvalidArgument(_) => "invalid_argument",
        Error::Closed => "closed",
        Error::Corrupt(_) => "corrupt",
        Error::Storage(_) => "storage",
        Error::Broker(_) => "broker",
        Error::DuplicateJob { .. } => "duplicate_job",
        Error::PartlyStored { .. } => "partly_stored",
        Error::Unsupported { .. } => "unsupported",
        Error::RequestTimeout { .. } => "request_timeout",
        Error::RequestFailed { .. } => "request_failed",
        Error::Io(_) => "io",
        _ => "other",
    }
}

/// Counts an enqueue call's result.
pub(crate) fn enqueue_result<T>(
    topic: &str,
    backend: &str,
    jobs: usize,
    took: std::time::Duration,
    result: &Result<T, Error>,
) {
    let f = &*FAMILIES;
    match result {
        Ok(_) => {
            f.enqueued.with(&[topic]).add(jobs as u64);
            f.enqueue_seconds.with(&[backend]).observe_duration(took);
        }
        Err(e) => f.enqueue_errors.with(&[code_of(e)]).inc(),
    }
}

/// Counts `n` ticks of a schedule: `fired` or `missed`.
pub(crate) fn ticks(schedule: &str, outcome: &'static str, n: u64) {
    FAMILIES.ticks.with(&[schedule, outcome]).add(n);
}

/// Counts a webhook answer by its class.
pub(crate) fn webhook(status: &'static str) {
    FAMILIES.webhook.with(&[status]).inc();
}

/// The class of an HTTP status: `2xx` ... `5xx`.
pub(crate) fn status_class(code: u16) -> &'static str {
    match code {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other_error",
    }
}

/// Counts a request/reply call's outcome: `replied`, `failed` or `timeout`.
pub(crate) fn request(outcome: &'static str) {
    FAMILIES.requests.with(&[outcome]).inc();
}
