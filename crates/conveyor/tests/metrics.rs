//! `/metrics` of a real `conveyor dev` process after a known workload: each count and the lag
//! checked against what happened, on the embedded backend and on live Kafka
//! (`live_kafka_...`, run by `scripts/live.sh`); the exposition parsed with `prometheus-parse`.
//! Also: every metric the shipped Grafana dashboard and Prometheus alert rules query exists in
//! a real scrape.

mod util;

use std::collections::BTreeSet;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use serde_json::json;
use util::{receiver, start_dev_on_a_free_port};

/// A parsed scrape.
struct Metrics {
    text: String,
    scrape: Scrape,
}

impl Metrics {
    async fn get(http: &reqwest::Client, url: &str) -> Metrics {
        let r = http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {url}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = r.text().await.unwrap();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .unwrap_or_else(|e| panic!("the exposition does not parse: {e}\n{text}"));
        Metrics { text, scrape }
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(b) => b.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => panic!("no summaries"),
            })
            .sum()
    }

    /// The names a query may use: every family, with `_bucket`, `_sum` and `_count` for
    /// histograms.
    fn names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for line in self.text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                names.insert(name.to_owned());
                if kind == "histogram" {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
            }
        }
        names
    }
}

/// Waits until `cond` holds on a scrape of `url`, up to 60 s; returns that scrape.
async fn scrape_until(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    cond: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = Metrics::get(http, url).await;
        if cond(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}\n{}",
            m.text
                .lines()
                .filter(|l| l.starts_with("conveyor_jobs_total")
                    || l.starts_with("conveyor_consumer")
                    || l.starts_with("conveyor_delayed")
                    || l.starts_with("conveyor_dead"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(http: &reqwest::Client, url: &str, body: serde_json::Value) -> reqwest::Response {
    http.post(url).json(&body).send().await.unwrap()
}

/// Runs the workload against a `conveyor dev` with `backend` (TOML lines) and checks
/// `/metrics` on the API port and on `metrics.listen`.
async fn known_workload(backend: &str, topic: &str) {
    let (hook, _received) = receiver(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = util::free_port();
    let config_for = |port: u16| {
        let path = dir.path().join(format!("conveyor-{port}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}\"\n{backend}[api]\nlisten = \"127.0.0.1:{port}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[[topics]]\nname = \"{topic}\"\npartitions = 2\n[[routes]]\ntopic = \"{topic}\"\nurl = \"http://{hook}/hook\"\nretry = {{ max_attempts = 4, initial_delay_ms = 10, max_delay_ms = 50 }}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        path
    };
    let (_dev, base) = start_dev_on_a_free_port(config_for).await;
    let http = reqwest::Client::new();
    let jobs = format!("{base}/v1/topics/{topic}/jobs");
    let group = format!("webhook.{topic}");
    let enqueue = |job_type: &str, extra: serde_json::Value| {
        let mut body = json!({"type": job_type, "payload": {}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        post(&http, &jobs, body)
    };
    let mut stored = 0;
    // 5 succeed; 2 fail twice (503) then succeed; 3 are refused (400) and dead-lettered
    for (job_type, n) in [("ok", 5), ("flaky", 2), ("bad", 3)] {
        for _ in 0..n {
            assert_eq!(enqueue(job_type, json!({})).await.status(), 201);
            stored += 1;
        }
    }
    // one delayed job, due in 2 minutes: it waits in a delay tier
    assert_eq!(
        enqueue("ok", json!({"delay_ms": 120_000})).await.status(),
        201
    );
    stored += 1;
    // two jobs with one unique key: the second is a duplicate (refused at enqueue by a backend
    // that claims keys when it stores, dropped by the worker otherwise)
    assert_eq!(
        enqueue("ok", json!({"unique_key": "u1"})).await.status(),
        201
    );
    stored += 1;
    let second = enqueue("ok", json!({"unique_key": "u1"})).await.status();
    let duplicate_refused = match second.as_u16() {
        409 => true,
        201 => {
            stored += 1;
            false
        }
        other => panic!("the second unique job answered {other}"),
    };
    // an enqueue error: a topic that does not exist
    let r = post(
        &http,
        &format!("{base}/v1/topics/no-such-topic/jobs"),
        json!({"type": "ok", "payload": {}}),
    )
    .await;
    assert_eq!(r.status(), 404);
    // one enqueue repeated with its Idempotency-Key: answered again, stored once
    for _ in 0..2 {
        let r = http
            .post(&jobs)
            .header("Idempotency-Key", "idem-1")
            .json(&json!({"type": "ok", "payload": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    stored += 1;

    let url = format!("{base}/metrics");
    let jobs_of = |m: &Metrics, outcome: &str| {
        m.sum(
            "conveyor_jobs_total",
            &[("group", &group), ("topic", topic), ("outcome", outcome)],
        )
    };
    // 5 + 2 + 1 unique (+ the duplicate when the worker drops it) + 1 idempotent
    let succeeded = 9.0;
    let m = scrape_until(&http, &url, "every job finished", |m| {
        jobs_of(m, "succeeded") >= succeeded
            && jobs_of(m, "dead_lettered") >= 3.0
            && m.sum("conveyor_delayed_jobs", &[("topic", topic)]) >= 1.0
            && m.sum(
                "conveyor_consumer_lag",
                &[("group", &group), ("topic", topic)],
            ) == 0.0
    })
    .await;
    assert_eq!(jobs_of(&m, "succeeded"), succeeded, "succeeded");
    assert_eq!(
        jobs_of(&m, "failed"),
        4.0 + 3.0,
        "failed attempts: 2 x 2 flaky, 3 bad"
    );
    assert_eq!(jobs_of(&m, "retried"), 4.0, "retried");
    assert_eq!(jobs_of(&m, "dead_lettered"), 3.0, "dead-lettered");
    assert_eq!(jobs_of(&m, "deadline"), 0.0);
    assert_eq!(jobs_of(&m, "cancelled"), 0.0);
    let l = [("group", group.as_str()), ("topic", topic)];
    let started = m.sum("conveyor_job_attempts_started_total", &l);
    assert_eq!(
        started,
        succeeded + 4.0 + 3.0,
        "attempts: every success and failure"
    );
    assert_eq!(m.sum("conveyor_job_handler_seconds", &l), started);
    assert_eq!(
        m.sum("conveyor_job_queue_delay_seconds", &l),
        succeeded + 3.0,
        "first attempts"
    );
    assert_eq!(m.sum("conveyor_jobs_in_flight", &l), 0.0);
    assert_eq!(
        m.sum("conveyor_delayed_jobs", &[("topic", topic)]),
        1.0,
        "the delayed job waits in a tier"
    );
    assert_eq!(
        m.sum("conveyor_dead_letters", &[("topic", topic)]),
        3.0,
        "records in {topic}.dlq"
    );
    assert_eq!(
        m.sum(
            "conveyor_consumer_committed_offset",
            &[("group", &group), ("topic", topic)]
        ),
        stored as f64,
        "committed offsets: every record of the topic finished"
    );
    assert_eq!(
        m.sum("conveyor_topic_high_watermark", &[("topic", topic)]),
        stored as f64
    );
    assert_eq!(
        m.sum("conveyor_enqueued_jobs_total", &[("topic", topic)]),
        stored as f64,
        "jobs stored"
    );
    assert_eq!(
        m.sum(
            "conveyor_enqueue_errors_total",
            &[("code", "unknown_topic")]
        ),
        1.0
    );
    let enqueue_route = [("route", "/v1/topics/:topic/jobs")];
    assert_eq!(
        m.sum(
            "conveyor_http_requests_total",
            &[enqueue_route[0], ("status", "201")]
        ),
        stored as f64 + 1.0,
        "201 answers (the idempotent repeat included)"
    );
    assert_eq!(
        m.sum(
            "conveyor_http_requests_total",
            &[
                enqueue_route[0],
                ("status", "404"),
                ("code", "unknown_topic")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.sum("conveyor_idempotent_replays_total", &enqueue_route),
        1.0
    );
    assert_eq!(
        m.sum("conveyor_http_request_seconds", &enqueue_route),
        m.sum("conveyor_http_requests_total", &enqueue_route)
    );
    assert!(
        !m.text.contains("no-such-topic"),
        "a raw path or unknown topic became a label"
    );
    match duplicate_refused {
        true => {
            assert_eq!(
                m.sum(
                    "conveyor_enqueue_errors_total",
                    &[("code", "duplicate_job")]
                ),
                1.0
            );
            assert_eq!(jobs_of(&m, "duplicate"), 0.0);
        }
        false => assert_eq!(jobs_of(&m, "duplicate"), 1.0, "the second unique job"),
    }
    assert_eq!(
        m.sum("conveyor_webhook_deliveries_total", &[("status", "2xx")]),
        succeeded
    );
    assert_eq!(
        m.sum("conveyor_webhook_deliveries_total", &[("status", "5xx")]),
        4.0
    );
    assert_eq!(
        m.sum("conveyor_webhook_deliveries_total", &[("status", "4xx")]),
        3.0
    );

    // lag: the topic paused for the group, four jobs of one key enqueued (one cancelled):
    // none finishes, so the lag is 4 and the committed offsets stay where they are
    let r = post(
        &http,
        &format!("{base}/v1/groups/{group}/topics/{topic}:pause"),
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut ids = Vec::new();
    for _ in 0..4 {
        let r = enqueue("ok", json!({"key": "paused"})).await;
        assert_eq!(r.status(), 201);
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let r = http
        .delete(format!("{base}/v1/jobs/{}", ids[3]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "cancel: {}", r.status());
    let committed = |m: &Metrics| {
        m.sum(
            "conveyor_consumer_committed_offset",
            &[("group", &group), ("topic", topic)],
        )
    };
    let lag = |m: &Metrics| {
        m.sum(
            "conveyor_consumer_lag",
            &[("group", &group), ("topic", topic)],
        )
    };
    // lag is read from the backend at most once a second: a scrape may show the last read
    let m = scrape_until(&http, &url, "lag 4 while paused", |m| lag(m) == 4.0).await;
    assert_eq!(lag(&m), 4.0, "lag while paused");
    assert_eq!(committed(&m), stored as f64);
    assert_eq!(jobs_of(&m, "succeeded"), succeeded);
    // resumed: three succeed, the cancelled one is dropped, the lag is 0 again
    let r = post(
        &http,
        &format!("{base}/v1/groups/{group}/topics/{topic}:resume"),
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let own = format!("http://127.0.0.1:{metrics_port}/metrics");
    let m = scrape_until(&http, &own, "the paused jobs finished", |m| {
        lag(m) == 0.0 && jobs_of(m, "succeeded") == succeeded + 3.0
    })
    .await;
    assert_eq!(jobs_of(&m, "cancelled"), 1.0);
    assert_eq!(committed(&m), stored as f64 + 4.0);
    if backend.contains("kafka") {
        // librdkafka's statistics (every 500 ms here): traffic both ways, a round trip per
        // broker, and the route's consumer fetching both partitions, caught up
        let fetch_lag =
            format!("conveyor_kafka_consumer_fetch_lag{{group=\"{group}\",topic=\"{topic}\"");
        let m = scrape_until(&http, &own, "librdkafka's statistics", |m| {
            m.sum("conveyor_kafka_tx_bytes_total", &[("client", "producer")]) > 0.0
                && m.sum(
                    "conveyor_kafka_rx_bytes_total",
                    &[("client", "consumer"), ("group", &group)],
                ) > 0.0
                && m.sum(
                    "conveyor_kafka_broker_rtt_seconds",
                    &[("client", "producer")],
                ) > 0.0
                && m.text.matches(&fetch_lag).count() == 2
                && m.sum(
                    "conveyor_kafka_consumer_fetch_lag",
                    &[("group", &group), ("topic", topic)],
                ) == 0.0
        })
        .await;
        assert!(m.sum("conveyor_rebalances_total", &[("group", &group)]) >= 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_a_known_workload_did_on_embedded() {
    known_workload("", "orders").await;
}

/// On the live broker (`CONVEYOR_TEST_BROKERS`, set by `scripts/kafka.sh`).
#[cfg(feature = "live")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_kafka_metrics_count_what_a_known_workload_did() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS, or run through scripts/live.sh");
    let topic = format!("metrics-{}", util::unique_suffix());
    let backend = format!(
        "backend = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\nreplication_factor = 1\nproperties = {{ \"statistics.interval.ms\" = \"500\" }}\n"
    );
    known_workload(&backend, &topic).await;
}

/// Every metric the shipped dashboard (`deploy/grafana/conveyor.json`) and alert rules
/// (`deploy/prometheus/alerts.yml`) query is in a real scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alert_rules_query_only_metrics_that_exist() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/conveyor.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queries: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            queries.push((
                format!("panel `{title}`"),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap(),
    )
    .expect("the alert rules are YAML");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            queries.push((
                format!("alert {name}"),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(queries.len() >= 8, "{queries:?}");
    // a real scrape, of a dev process with a route (its families are all registered at start)
    let dir = tempfile::tempdir().unwrap();
    let config_for = |port: u16| {
        let path = dir.path().join(format!("conveyor-{port}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"t\"\n[[routes]]\ntopic = \"t\"\nurl = \"http://127.0.0.1:9/hook\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        path
    };
    let (_dev, base) = start_dev_on_a_free_port(config_for).await;
    let m = Metrics::get(&reqwest::Client::new(), &format!("{base}/metrics")).await;
    let names = m.names();
    let mut missing = Vec::new();
    for (whose, expr) in &queries {
        let mut used = 0;
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if token.starts_with("conveyor_") {
                used += 1;
                if !names.contains(token) {
                    missing.push(format!("{whose}: {token}"));
                }
            }
        }
        assert!(used > 0, "{whose} queries no conveyor metric: {expr}");
    }
    assert!(
        missing.is_empty(),
        "queried but not in /metrics:\n{}",
        missing.join("\n")
    );
}
