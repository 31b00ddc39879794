//! conveyor's Prometheus metrics.
//!
//! Every conveyor metric lives in one process-wide [`Registry`] ([`global`]), served as the
//! Prometheus text exposition (format 0.0.4) at `/metrics`. The naming scheme, every metric and
//! its labels are listed in `docs/metrics.md`.
//!
//! Built for hot paths: a labelled series is resolved once ([`Family::with`], a hash lookup under
//! a read lock) and the handle kept; updating it is then one or two relaxed atomic adds, with no
//! lock, allocation or formatting ([`Counter::inc`], [`Histogram::observe`]).
//!
//! Layout, in reading order:
//! - `metric.rs`: [`Counter`], [`Gauge`], [`FloatGauge`];
//! - `histogram.rs`: [`Histogram`] with fixed buckets ([`DURATION_BUCKETS`], ...);
//! - `family.rs`: [`Family`], one metric name with its labelled series;
//! - `registry.rs`: [`Registry`], [`global`] and the rendering of the exposition.
//!
//! ```
//! use conveyor_metrics::{global, Counter};
//! let family = global().counter("demo_events_total", "Events seen.", &["kind"]);
//! let handle = family.with(&["a"]); // resolve once
//! handle.inc(); // then one relaxed atomic add per event
//! assert!(global().render().contains("demo_events_total{kind=\"a\"} 1"));
//! ```

mod family;
mod histogram;
mod metric;
mod registry;

pub use family::{Family, Metric};
pub use histogram::{
    Histogram, BYTES_BUCKETS, DURATION_BUCKETS, FAST_DURATION_BUCKETS, LONG_DURATION_BUCKETS,
};
pub use metric::{Counter, FloatGauge, Gauge};
pub use registry::{global, Registry, CONTENT_TYPE};
