//! [`Histogram`]: counts of observations in fixed buckets, one atomic per bucket, plus their
//! sum. An observation is two relaxed atomic adds (its bucket and the sum); the cumulative
//! counts Prometheus expects are added up when the exposition is rendered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets for job handlers, HTTP requests and produce latency, in seconds: 1 ms to 60 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for fast operations (commits, appends), in seconds: 50 µs to 5 s.
pub const FAST_DURATION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0,
];

/// Buckets for waits that may be long (queueing delay), in seconds: 1 ms to 1 day.
pub const LONG_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0,
];

/// Buckets for sizes in bytes: 64 B to 16 MiB.
pub const BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// A Prometheus histogram with fixed bucket bounds. Values are kept in nanounits (a
/// [`Duration`] in nanoseconds), so the sum is an integer atomic.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in nanounits, ascending.
    bounds: Box<[u64]>,
    /// The bounds as given, for the `le` labels.
    pub(crate) les: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// The sum of the observations in nanounits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (ascending, in base units such as seconds).
    pub fn new(buckets: &'static [f64]) -> Self {
        Histogram {
            bounds: buckets.iter().map(|b| (b * 1e9) as u64).collect(),
            les: buckets,
            counts: (0..=buckets.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records a duration (in seconds in the exposition).
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records a value in base units (seconds, bytes).
    pub fn observe(&self, v: f64) {
        self.observe_nanos((v.max(0.0) * 1e9) as u64);
    }

    #[inline]
    fn observe_nanos(&self, n: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| n <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(n, Ordering::Relaxed);
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the observations, in base units.
    pub fn sum(&self) -> f64 {
        self.sum.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Cumulative counts per bound, then the total (the `+Inf` bucket).
    pub(crate) fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_they_fit() {
        let h = Histogram::new(&[0.01, 1.0]);
        h.observe_duration(Duration::from_millis(10)); // on the bound: le="0.01"
        h.observe_duration(Duration::from_millis(500));
        h.observe_duration(Duration::from_secs(3));
        assert_eq!(h.cumulative(), vec![1, 2, 3]);
        assert_eq!(h.count(), 3);
        assert!((h.sum() - 3.51).abs() < 1e-9);
    }
}
