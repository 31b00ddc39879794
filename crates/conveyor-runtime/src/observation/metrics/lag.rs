//! Gauges read from the backend when `/metrics` is scraped ([`refresh`]): each running
//! worker's consumer lag and committed offset per partition, the delayed jobs waiting in its
//! topics' delay tiers, and the records in its dead-letter topics. A worker registers what it
//! consumes with [`watch`] when it starts; the registration ends when the returned [`Watched`]
//! is dropped (the worker stops).
//!
//! Computed at scrape time rather than on a timer: the figures are as fresh as the scrape, and
//! a process nobody scrapes asks its backend nothing.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use conveyor_core::Backend;
use conveyor_metrics::{global, Family, Gauge};

use crate::time::forwarder::forwarder_group;
use crate::time::tiers::{label, DelayTiers};

struct Families {
    lag: Arc<Family<Gauge>>,
    committed: Arc<Family<Gauge>>,
    high: Arc<Family<Gauge>>,
    delayed: Arc<Family<Gauge>>,
    dead: Arc<Family<Gauge>>,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let g = global();
    Families {
        lag: g.gauge(
            "conveyor_consumer_lag",
            "Records of the partition the group has not finished: high watermark minus committed offset.",
            &["group", "topic", "partition"],
        ),
        committed: g.gauge(
            "conveyor_consumer_committed_offset",
            "The group's committed offset on the partition (absent while it never committed).",
            &["group", "topic", "partition"],
        ),
        high: g.gauge(
            "conveyor_topic_high_watermark",
            "The offset the partition's next record will get.",
            &["topic", "partition"],
        ),
        delayed: g.gauge(
            "conveyor_delayed_jobs",
            "Jobs waiting in a delay tier of the topic (not yet forwarded back).",
            &["topic", "tier"],
        ),
        dead: g.gauge(
            "conveyor_dead_letters",
            "Records retained in the dead-letter topic of the topic (high minus low watermark).",
            &["topic", "dlq"],
        ),
    }
});

pub(super) fn init() {
    LazyLock::force(&FAMILIES);
}

struct Watch {
    id: u64,
    backend: Arc<dyn Backend>,
    group: String,
    topics: Vec<String>,
    tiers: DelayTiers,
    dlq_suffix: String,
}

static WATCHES: LazyLock<Mutex<Vec<Arc<Watch>>>> = LazyLock::new(Mutex::default);

/// A worker's registration for [`refresh`]; dropping it ends the registration.
#[derive(Debug)]
pub struct Watched(u64);

impl Drop for Watched {
    fn drop(&mut self) {
        WATCHES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| w.id != self.0);
    }
}

/// Registers `group` on `topics` (with their delay tiers and dead-letter topics) for
/// [`refresh`].
pub fn watch(
    backend: Arc<dyn Backend>,
    group: &str,
    topics: &[String],
    tiers: DelayTiers,
    dlq_suffix: &str,
) -> Watched {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    WATCHES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::new(Watch {
            id,
            backend,
            group: group.to_owned(),
            topics: topics.to_vec(),
            tiers,
            dlq_suffix: dlq_suffix.to_owned(),
        }));
    Watched(id)
}

/// How long one refresh may ask the backends; what did not answer keeps its last figures.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// One gauge value to set: family, labels, value.
type Row = (fn(&Families) -> &Arc<Family<Gauge>>, Vec<String>, i64);

/// Reads every watched group's lag, delayed jobs and dead letters from its backend and sets
/// the gauges (series of partitions and groups that are gone are dropped). Errors are logged
/// at debug level: the last figures stay.
pub async fn refresh() {
    // one read at a time, and none within a second of the last: a flood of scrapes (the
    // probe port needs no token when tokens are off) is not a flood of backend calls
    static LAST: tokio::sync::Mutex<Option<std::time::Instant>> =
        tokio::sync::Mutex::const_new(None);
    let mut last = LAST.lock().await;
    if last.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1)) {
        return;
    }
    let watches: Vec<Arc<Watch>> = WATCHES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut rows: Vec<Row> = Vec::new();
    let read = async {
        for w in &watches {
            read_watch(w, &mut rows).await;
        }
    };
    let complete = tokio::time::timeout(REFRESH_TIMEOUT, read).await.is_ok();
    *last = Some(std::time::Instant::now());
    let f = &*FAMILIES;
    if complete {
        for family in [&f.lag, &f.committed, &f.high, &f.delayed, &f.dead] {
            family.clear();
        }
    } else {
        // what was read is set; the rest keeps its last figures
        tracing::debug!("reading lag for /metrics took over {REFRESH_TIMEOUT:?}; the rest keeps its last figures");
    }
    for (family, labels, v) in rows {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        family(f).with(&labels).set(v);
    }
}

async fn read_watch(w: &Watch, rows: &mut Vec<Row>) {
    let b = &*w.backend;
    for topic in &w.topics {
        match crate::operations::lag::group_lag(b, &w.group, topic).await {
            Ok(lag) => {
                for p in &lag.partitions {
                    let part = p.partition.to_string();
                    let l = vec![w.group.clone(), topic.clone(), part.clone()];
                    rows.push((|f| &f.lag, l.clone(), p.lag));
                    if let Some(c) = p.committed {
                        rows.push((|f| &f.committed, l, c));
                    }
                    rows.push((|f| &f.high, vec![topic.clone(), part], p.high_watermark));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, group = w.group, topic, "cannot read lag for /metrics")
            }
        }
        for (tier_topic, tier) in w.tiers.topics(topic) {
            if let Ok(lag) =
                crate::operations::lag::group_lag(b, &forwarder_group(topic), &tier_topic).await
            {
                rows.push((|f| &f.delayed, vec![topic.clone(), label(tier)], lag.lag));
            }
        }
        let dlq = crate::worker::dead_letter::dead_letter_topic(topic, &w.dlq_suffix);
        if let Ok(Some(info)) = b.describe_topic(&dlq).await {
            let n = info.partitions.iter().map(|p| p.high - p.low).sum();
            rows.push((|f| &f.dead, vec![topic.clone(), dlq], n));
        }
    }
}
