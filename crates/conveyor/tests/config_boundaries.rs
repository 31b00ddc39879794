//! The other half of the configuration walk (`conveyor-server`'s `config::walk` refuses 49
//! malformed values): `conveyor dev` started with every embedded-backend key at its boundary —
//! the smallest accepted limits, counts and intervals, the longest topic name whose delay-tier
//! topics (`<topic>.delay.10m`, 10 characters more) Kafka still allows — starts and works as each
//! setting says (issue 14 item 7).

mod util;

use std::time::Duration;

use serde_json::{json, Value};
use util::{receiver, start_dev_on_a_free_port, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_at_its_boundary_starts_and_works() {
    let (hook, received) = receiver(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    // its `.delay.10m` tier is the longest name Kafka allows (249 characters)
    let topic = "t".repeat(249 - ".delay.10m".len());
    let config = dir.path().join("conveyor.toml");
    let write_config = |port: u16| {
        std::fs::write(
            &config,
            format!(
                r#"
data_dir = "{data}"
backend = "embedded"

[api]
listen = "127.0.0.1:{port}"
max_body_bytes = 1024
max_batch = 1

[embedded]
durability = "os"
max_record_bytes = 16384
retention_interval_secs = 1

[retry]
max_attempts = 1
initial_delay_ms = 0
max_delay_ms = 0
multiplier = 1.0
max_retry_after_ms = 0

[[topics]]
name = "{topic}"
partitions = 1
retention_ms = 3600000
retention_bytes = 16384
cleanup_policy = "delete"

[[routes]]
topic = "{topic}"
url = "http://{hook}/hook"
group = "g"
concurrency = 1
timeout_ms = 1000
max_buffered = 1

[routes.retry]
max_attempts = 1
initial_delay_ms = 0
max_delay_ms = 0
"#,
                data = dir.path().join("data").display()
            ),
        )
        .unwrap();
        config.clone()
    };
    let (_dev, base) = start_dev_on_a_free_port(write_config).await;
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let jobs = format!("/v1/topics/{topic}/jobs");

    // max_batch = 1: one job per batch
    let (s, v) = post(
        format!("{jobs}/batch"),
        json!({"jobs": [{"type": "ok", "payload": 1}, {"type": "ok", "payload": 2}]}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (422, Some("jobs")),
        "{v}"
    );
    // max_body_bytes = 1024: a body of 1100 bytes is refused, one just below accepted
    let (s, v) = post(
        jobs.clone(),
        json!({"type": "ok", "payload": "x".repeat(1100)}),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    for (i, t) in ["ok", "flaky", "ok"].iter().enumerate() {
        let (s, v) = post(
            jobs.clone(),
            json!({"type": t, "key": "k", "payload": {"i": i, "pad": "x".repeat(900)}}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    // concurrency 1, max_buffered 1, one attempt: the flaky job (503) is dead-lettered at once
    // and the key's next job still runs after it
    wait_for(Duration::from_secs(30), "three deliveries", || {
        received.total() == 3
    })
    .await;
    let types: Vec<String> = received
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, t)| t.clone())
        .collect();
    assert_eq!(types, ["ok", "flaky", "ok"], "in key order, each once");
    let dlq: Value = util::get_json(
        &http,
        &format!("{base}/v1/topics/{topic}.dlq/records?partition=0&offset=0"),
    )
    .await;
    let dead = dlq["records"]
        .as_array()
        .expect("the dead-letter topic reads");
    assert_eq!(dead.len(), 1, "{dlq}");
    assert_eq!(dead[0]["headers"]["dlq_reason"], "exhausted");
    assert_eq!(dead[0]["headers"]["dlq_attempts"], "1");
}
