//! Observation: what the runtime tells the outside about the jobs it moves.
//!
//! - [`job_states`]: job lookup: where each job is and what became of it, kept as compact state
//!   records in `conveyor.jobs`.
//! - [`metrics`]: the runtime's Prometheus metrics (per-job series, lag read at scrape time,
//!   enqueues, ticks, webhook answers), in `conveyor_metrics::global`.
//! - [`trace`]: spans from an enqueue through every handler it leads to, exported with OTLP.

pub mod job_states;
pub mod metrics;
pub mod trace;
