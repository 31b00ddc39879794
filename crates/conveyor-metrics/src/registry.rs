//! [`Registry`]: the metric families of a process and the text exposition of all of them.
//! [`global`] is the one conveyor's crates register in, as Prometheus' own clients keep a
//! default registry: a worker, the API, the scheduler and a backend in one process export
//! together without being wired to each other.

use std::sync::{Arc, Mutex, OnceLock};

use crate::family::Collect;
use crate::{Counter, Family, FloatGauge, Gauge, Histogram, Metric};

/// The `Content-Type` of the exposition: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A set of metric families.
#[derive(Default)]
pub struct Registry {
    families: Mutex<Vec<Arc<dyn Collect>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| c.name())
            .collect();
        f.debug_struct("Registry")
            .field("families", &names)
            .finish()
    }
}

/// The process-wide registry every conveyor crate registers in.
pub fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::default)
}

impl Registry {
    /// The family named `name`, registered at the first call (later calls return the same
    /// family).
    ///
    /// # Panics
    /// When `name` is registered with another kind of metric (a programming error).
    pub fn family<M: Metric>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        make: impl Fn() -> M + Send + Sync + 'static,
    ) -> Arc<Family<M>> {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = families.iter().find(|f| f.name() == name) {
            return Arc::clone(existing)
                .as_any()
                .downcast::<Family<M>>()
                .unwrap_or_else(|_| panic!("metric {name} is registered with another type"));
        }
        let family = Arc::new(Family::new(name, help, labels, Box::new(make)));
        families.push(Arc::clone(&family) as Arc<dyn Collect>);
        family
    }

    /// A counter family (`name` ends in `_total`).
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<Family<Counter>> {
        self.family(name, help, labels, Counter::default)
    }

    /// An integer gauge family.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<Family<Gauge>> {
        self.family(name, help, labels, Gauge::default)
    }

    /// A float gauge family.
    pub fn float_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<Family<FloatGauge>> {
        self.family(name, help, labels, FloatGauge::default)
    }

    /// A histogram family with these buckets.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Arc<Family<Histogram>> {
        self.family(name, help, labels, move || Histogram::new(buckets))
    }

    /// The exposition of every family, in registration order.
    pub fn render(&self) -> String {
        let families: Vec<Arc<dyn Collect>> = self
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = String::with_capacity(16 * 1024);
        for f in families {
            f.render(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_parses_with_its_values() {
        let r = Registry::default();
        let jobs = r.counter(
            "t_jobs_total",
            "Jobs \\ by \"outcome\".",
            &["topic", "outcome"],
        );
        jobs.with(&["a.b", "succeeded"]).add(3);
        jobs.with(&["q\"b\\c\nd", "succeeded"]).inc();
        jobs.with(&["x", "failed"]).inc();
        let h = r.histogram(
            "t_handler_seconds",
            "Handler time.",
            &["topic"],
            &[0.1, 1.0],
        );
        h.with(&["x"]).observe(0.5);
        r.gauge("t_in_flight", "Running.", &[]).with(&[]).set(-2);
        r.float_gauge("t_rtt_seconds", "Rtt.", &["broker"])
            .with(&["b1"])
            .set(0.25);
        let text = r.render();
        // label values are escaped (prometheus-parse does not unescape, so checked as text)
        assert!(
            text.contains(r#"t_jobs_total{topic="q\"b\\c\nd",outcome="succeeded"} 1"#),
            "{text}"
        );
        let text: String = text
            .lines()
            .filter(|l| !l.contains("q\\"))
            .map(|l| format!("{l}\n"))
            .collect();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        let value = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| s.value.clone())
                .unwrap_or_else(|| panic!("no {name} {label:?} in\n{text}"))
        };
        use prometheus_parse::Value;
        assert_eq!(
            value("t_jobs_total", Some(("topic", "a.b"))),
            Value::Counter(3.0)
        );
        assert_eq!(
            value("t_jobs_total", Some(("outcome", "failed"))),
            Value::Counter(1.0)
        );
        assert_eq!(value("t_in_flight", None), Value::Gauge(-2.0));
        assert_eq!(value("t_rtt_seconds", None), Value::Gauge(0.25));
        match value("t_handler_seconds", None) {
            Value::Histogram(buckets) => {
                let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
                assert_eq!(counts, vec![0.0, 1.0, 1.0], "{text}");
            }
            other => panic!("not a histogram: {other:?}\n{text}"),
        }
        // the same name again is the same family
        assert_eq!(
            r.counter("t_jobs_total", "", &["topic", "outcome"])
                .with(&["x", "failed"])
                .get(),
            1
        );
    }
}
