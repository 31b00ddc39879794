//! Time: everything that waits for a moment to come, on the log rather than in one process's
//! memory.
//!
//! - [`tiers`]: the delay tiers, the topics where delayed jobs and long retries wait, and which
//!   one a wait uses.
//! - [`forwarder`]: moves records out of a topic's delay tiers when they are due.
//! - [`schedule`]: cron schedules: validation, ticks, the missed-tick policy, and their budget.
//! - [`scheduler`]: [`Scheduler`](scheduler::Scheduler), the one process that fires the ticks,
//!   elected through the backend.
//! - [`control`]: the control log: cancellations, pauses and API-managed schedules, shared by
//!   every process on a backend.
//!
//! Delayed jobs with less than the shortest tier left wait in the worker's memory instead
//! (`worker/due.rs`).

pub mod control;
pub mod forwarder;
pub mod schedule;
pub mod scheduler;
pub mod tiers;
