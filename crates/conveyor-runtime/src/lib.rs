//! conveyor-runtime: workers and the client, on any [`conveyor_core::Backend`].
//!
//! # Layout
//! - [`worker`]: [`Worker`], the consumer-group worker: concurrency, per-key order, retries with
//!   backoff, dead letters, commits of finished work only, graceful shutdown.
//! - [`handler`]: the [`Handler`] trait and adapters for closures and typed JSON payloads.
//! - [`job`]: [`Job`] (what a handler gets) and [`JobError`] (how an attempt fails).
//! - [`tracker`]: the scheduler's bookkeeping: offsets safe to commit, per-key lanes.
//! - `outputs`: what an attempt emits and replies, published when it is done (transactional
//!   workers: with its offset, atomically).
//! - `running`: attempts running per partition, which a revocation waits for.
//! - [`dead_letter`]: the dead-letter record format.
//! - [`warn_limit`]: at most a burst of per-job warnings per kind and topic, then counted
//!   summaries.
//! - [`client`]: [`Client`], enqueueing jobs.
//! - [`request`]: [`Client::request`], request/reply: one reply topic per client, replies
//!   handed to their waiting callers, late ones dropped and counted.
//! - [`lag`]: [`lag::group_lag`], consumer lag per group and partition.
//! - [`replay`]: [`replay::replay`], dead letters back to their topic as fresh jobs, once each
//!   (a ledger topic per dead-letter topic).
//! - [`webhook`]: [`WebhookHandler`], delivering jobs to HTTP endpoints.
//! - [`schedule`]: [`schedule::Schedule`], cron schedules: validation, ticks, missed-tick policy.
//! - [`scheduler`]: [`Scheduler`], the one process that fires the ticks, elected through the
//!   backend (a consumer group on a one-partition topic).
//! - [`trace`]: spans from an enqueue through every handler it leads to, exported with OTLP.
//! - [`metrics`]: the runtime's Prometheus metrics (per-job series, lag read at scrape time,
//!   enqueues, ticks, webhook answers), in `conveyor_metrics::global`.

pub mod client;
pub mod effects;
pub mod entry_log;
pub mod observation;
pub mod operations;
pub mod time;
pub mod worker;

/// How long a stopping member (worker, scheduler, forwarder) waits for its partitions to be given
/// up ([`conveyor_core::Subscription::leave`]) before it closes its subscription anyway: with a
/// webhook route's 25 s drain and 1 s to reap abandoned jobs, inside Kubernetes' 30 s grace.
pub(crate) const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub use client::{Client, Enqueued, NewJob};
pub use effects::request::{Reply, RequestCounts};
pub use operations::lag::{group_lag, GroupLag, PartitionLag};
pub use time::scheduler::{Scheduler, SchedulerOptions, SchedulerStats};
pub use worker::handler::{handler_fn, json_handler, Handler};
pub use worker::job::{IntoOutcome, Job, JobError};
pub use worker::ready::Priorities;
pub use worker::webhook::WebhookHandler;
pub use worker::{Worker, WorkerBuilder, WorkerOptions, WorkerStats};
