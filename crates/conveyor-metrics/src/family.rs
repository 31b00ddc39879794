//! [`Family`]: one metric name, its help and label names, and its series, one per set of label
//! values. A series is created at its first [`Family::with`] and kept; callers on hot paths
//! resolve their series once and keep the handle (an `Arc`).

use std::collections::HashMap;
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use crate::{Counter, FloatGauge, Gauge, Histogram};

/// A kind of metric a [`Family`] holds: how it is made and written out.
pub trait Metric: Send + Sync + 'static {
    /// The Prometheus type (`counter`, `gauge`, `histogram`).
    const TYPE: &'static str;
    /// Writes this series' sample lines; `labels` is `k="v",...` (possibly empty).
    fn render(&self, name: &str, labels: &str, out: &mut String);
}

impl Metric for Counter {
    const TYPE: &'static str = "counter";
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), self.get());
    }
}

impl Metric for Gauge {
    const TYPE: &'static str = "gauge";
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), self.get());
    }
}

impl Metric for FloatGauge {
    const TYPE: &'static str = "gauge";
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), float(self.get()));
    }
}

impl Metric for Histogram {
    const TYPE: &'static str = "histogram";
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let cumulative = self.cumulative();
        for (le, count) in self.les.iter().zip(&cumulative) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {count}",
                float(*le)
            );
        }
        let total = cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), float(self.sum()));
        let _ = writeln!(out, "{name}_count{} {total}", braces(labels));
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// A float as Prometheus writes it (`+Inf`, `NaN`, plain decimals).
pub(crate) fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A label value escaped for the text format: `\`, `"` and newlines.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

type Series<M> = Vec<(Box<[String]>, Arc<M>)>;

/// One metric name with its series.
pub struct Family<M> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    make: Box<dyn Fn() -> M + Send + Sync>,
    /// Series by the hash of their label values (collisions share a bucket).
    series: RwLock<HashMap<u64, Series<M>>>,
}

impl<M> std::fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

fn hash_of(values: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for v in values {
        v.hash(&mut h);
    }
    h.finish()
}

impl<M: Metric> Family<M> {
    pub(crate) fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        make: Box<dyn Fn() -> M + Send + Sync>,
    ) -> Self {
        Family {
            name,
            help,
            labels,
            make,
            series: RwLock::default(),
        }
    }

    /// The metric's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The series with these label values (in the order of the family's label names), created
    /// at the first call. Resolve once and keep the handle on hot paths.
    ///
    /// # Panics
    /// When the number of values is not the number of label names (a programming error).
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        assert_eq!(
            values.len(),
            self.labels.len(),
            "metric {} takes the labels {:?}",
            self.name,
            self.labels
        );
        let h = hash_of(values);
        let found = |series: &HashMap<u64, Series<M>>| {
            series.get(&h).and_then(|bucket| {
                bucket
                    .iter()
                    .find(|(k, _)| k.iter().map(String::as_str).eq(values.iter().copied()))
                    .map(|(_, m)| Arc::clone(m))
            })
        };
        if let Some(m) = found(&self.series.read().unwrap_or_else(|p| p.into_inner())) {
            return m;
        }
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = found(&series) {
            return m;
        }
        let m = Arc::new((self.make)());
        let key = values.iter().map(|v| (*v).to_owned()).collect();
        series.entry(h).or_default().push((key, Arc::clone(&m)));
        m
    }

    /// Removes every series (a gauge family refreshed as a whole, such as lag, drops the
    /// partitions that are gone).
    pub fn clear(&self) {
        self.series
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Keeps only the series whose label values pass `keep`.
    pub fn retain(&self, mut keep: impl FnMut(&[String]) -> bool) {
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        for bucket in series.values_mut() {
            bucket.retain(|(k, _)| keep(k));
        }
        series.retain(|_, b| !b.is_empty());
    }
}

/// What the registry renders: a family of any kind.
pub(crate) trait Collect: Send + Sync {
    fn name(&self) -> &'static str;
    fn render(&self, out: &mut String);
    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

impl<M: Metric> Collect for Family<M> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn render(&self, out: &mut String) {
        let help = self.help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(out, "# HELP {} {help}", self.name);
        let _ = writeln!(out, "# TYPE {} {}", self.name, M::TYPE);
        let series = self.series.read().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<(String, &Arc<M>)> = series
            .values()
            .flatten()
            .map(|(values, m)| {
                let labels = self
                    .labels
                    .iter()
                    .zip(values.iter())
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect::<Vec<_>>()
                    .join(",");
                (labels, m)
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for (labels, m) in rows {
            m.render(self.name, &labels, out);
        }
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}
