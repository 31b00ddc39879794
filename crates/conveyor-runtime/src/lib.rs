//! conveyor-runtime: workers and the client, on any [`conveyor_core::Backend`].
//!
//! # Layout
//! Grouped by concern, in reading order:
//! - [`worker`]: [`Worker`], the consumer-group worker: concurrency, per-key order, retries with
//!   backoff, dead letters, commits of finished work only, graceful shutdown. With it what it
//!   runs and keeps: handlers ([`Handler`], [`WebhookHandler`]), the [`Job`] a handler gets and
//!   the [`JobError`] it returns, the scheduler's bookkeeping (offsets, key lanes, the ready
//!   queue, attempt counts, recent dedup keys), the dead-letter record format and the warning
//!   limits.
//! - [`time`]: what waits for a moment: the delay tiers and their forwarder, cron schedules and
//!   the elected [`Scheduler`] that fires them, and the control log (cancellations, pauses,
//!   API-managed schedules).
//! - [`effects`]: what a job does on the log besides finishing: its outputs (emits and replies,
//!   published when it is done), request/reply ([`Client::request`]) and unique jobs.
//! - [`operations`]: what an operator runs from outside the workers: dead-letter replay
//!   ([`operations::replay::replay`]) and consumer lag ([`group_lag`]).
//! - [`client`]: [`Client`], enqueueing jobs.
//! - [`observation`]: job lookup (job states), the runtime's Prometheus metrics and OTLP traces.
//! - [`entry_log`]: the reader of one-partition JSON logs folded into memory, shared by the
//!   control log, the unique-key ledger and the API's idempotency answers.
//!
//! The measurements behind `conveyor bench` are the `conveyor-bench` crate.

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
