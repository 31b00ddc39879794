//! The runtime's Prometheus metrics, registered in [`conveyor_metrics::global`] (every name,
//! label and meaning: `docs/metrics.md`).
//!
//! - `jobs.rs`: the worker's per-job series ([`jobs::JobMetrics`]), resolved once per group,
//!   topic and registered job type when the worker is built, so a job costs a few relaxed atomic
//!   adds;
//! - `lag.rs`: consumer lag, committed offsets, delayed jobs per tier and dead-letter topic
//!   sizes, read from the backend when `/metrics` is scraped ([`refresh`]);
//! - `events.rs`: counters of the other parts: enqueues, schedule ticks, webhook answers,
//!   request/reply outcomes.
//!
//! [`init`] registers every family, so a scrape lists each metric even before it counted
//! anything (dashboards and alert rules then find their series).

pub mod events;
pub mod jobs;
pub mod lag;

pub use lag::{refresh, watch};

/// Registers every family of the runtime (idempotent).
pub fn init() {
    jobs::init();
    lag::init();
    events::init();
}
