//! librdkafka's statistics as Prometheus metrics: the producer and each group consumer emit
//! them every `statistics.interval.ms` ([`STATS_INTERVAL_MS`] unless the configuration's
//! librdkafka properties set it; `0` turns them off) to their context's `stats` callback, which
//! calls [`record`]. A useful subset is kept: round-trip time per broker, the producer's queue,
//! bytes sent and received, and each consumer's own view of its fetch lag per partition.
//! Readers made for one fetch emit none.
//!
//! Labels: `client` (`producer` or `consumer`), `group` (the consumer's group, `""` for the
//! producer), `broker` (librdkafka's `host:port/id`; the bootstrap entries are left out).

use std::sync::{Arc, LazyLock};

use conveyor_metrics::{global, Counter, Family, FloatGauge, Gauge};
use rdkafka::statistics::Statistics;

/// The default of `statistics.interval.ms` for the producer and the group consumers: 5 s.
pub const STATS_INTERVAL_MS: &str = "5000";

struct Families {
    rtt_avg: Arc<Family<FloatGauge>>,
    rtt_p99: Arc<Family<FloatGauge>>,
    queue_messages: Arc<Family<Gauge>>,
    queue_bytes: Arc<Family<Gauge>>,
    tx_bytes: Arc<Family<Counter>>,
    rx_bytes: Arc<Family<Counter>>,
    fetch_lag: Arc<Family<Gauge>>,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let g = global();
    const B: &[&str] = &["client", "group", "broker"];
    const C: &[&str] = &["client", "group"];
    Families {
        rtt_avg: g.float_gauge(
            "conveyor_kafka_broker_rtt_seconds",
            "librdkafka: average round-trip time to the broker over the last statistics interval, in seconds.",
            B,
        ),
        rtt_p99: g.float_gauge(
            "conveyor_kafka_broker_rtt_p99_seconds",
            "librdkafka: 99th percentile of the round-trip time to the broker over the last statistics interval, in seconds.",
            B,
        ),
        queue_messages: g.gauge(
            "conveyor_kafka_queue_messages",
            "librdkafka: messages in the client's queues, waiting to be sent or acknowledged (msg_cnt).",
            C,
        ),
        queue_bytes: g.gauge(
            "conveyor_kafka_queue_bytes",
            "librdkafka: bytes of the messages in the client's queues (msg_size).",
            C,
        ),
        tx_bytes: g.counter(
            "conveyor_kafka_tx_bytes_total",
            "librdkafka: bytes sent to brokers.",
            C,
        ),
        rx_bytes: g.counter(
            "conveyor_kafka_rx_bytes_total",
            "librdkafka: bytes received from brokers.",
            C,
        ),
        fetch_lag: g.gauge(
            "conveyor_kafka_consumer_fetch_lag",
            "librdkafka: the consumer's lag on the partition as it last saw it (high watermark minus its position; -1 unknown).",
            &["group", "topic", "partition"],
        ),
    }
});

/// Sets `statistics.interval.ms` to [`STATS_INTERVAL_MS`] unless the properties set it.
pub(crate) fn enable_stats(c: &mut rdkafka::ClientConfig) {
    if c.get("statistics.interval.ms").is_none() {
        c.set("statistics.interval.ms", STATS_INTERVAL_MS);
    }
}

/// Registers the families (idempotent).
pub fn init() {
    LazyLock::force(&FAMILIES);
}

/// Sets the metrics from one statistics report of a `client` (`producer`/`consumer`) of
/// `group` (`""` for the producer).
pub(crate) fn record(s: &Statistics, client: &str, group: &str) {
    let f = &*FAMILIES;
    let c = [client, group];
    f.queue_messages.with(&c).set(s.msg_cnt as i64);
    f.queue_bytes.with(&c).set(s.msg_size as i64);
    f.tx_bytes.with(&c).set(s.tx_bytes.max(0) as u64);
    f.rx_bytes.with(&c).set(s.rx_bytes.max(0) as u64);
    for b in s.brokers.values().filter(|b| b.nodeid >= 0) {
        if let Some(rtt) = &b.rtt {
            let l = [client, group, b.name.as_str()];
            f.rtt_avg.with(&l).set(rtt.avg as f64 / 1e6);
            f.rtt_p99.with(&l).set(rtt.p99 as f64 / 1e6);
        }
    }
    if client == "consumer" {
        for (topic, t) in &s.topics {
            for (p, part) in t.partitions.iter().filter(|(p, _)| **p >= 0) {
                // partitions this consumer does not fetch report -1 and stay out
                if part.fetch_state == "active" {
                    let p = p.to_string();
                    f.fetch_lag.with(&[group, topic, &p]).set(part.consumer_lag);
                }
            }
        }
    }
}
