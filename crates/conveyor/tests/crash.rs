//! kill -9 of `conveyor dev` (the real binary) while jobs are posted and delivered, then a restart:
//! every acknowledged job is delivered, and redeliveries stay within what was in flight. Both
//! `embedded.durability` modes: `fsync` and `os` (written to the OS, which survives the crash of
//! the process).

mod util;

use std::time::Duration;

use util::{free_port, post_jobs, receiver, start_dev, wait_for, wait_ok};

const CONCURRENCY: usize = 16;
const MAX_BUFFERED: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_loses_no_acknowledged_job() {
    crash_during_delivery("fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_loses_no_acknowledged_job_with_os_durability() {
    crash_during_delivery("os").await;
}

/// The reproduction of the bug where `durability = "os"` kept acknowledged jobs in an
/// in-process buffer: an API-only `conveyor dev`, 20 jobs each answered 201, `kill -9` half a
/// second later, restart: the topic holds all 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_durability_keeps_jobs_acknowledged_just_before_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[embedded]\ndurability = \"os\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"jobs\"\npartitions = 2\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_dev(&config);
    wait_ok(&base, "/healthz", Duration::from_secs(10)).await;
    let acked = post_jobs(&base, "jobs", "t", 20, 1).await;
    assert_eq!(acked.len(), 20);
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().expect("kill -9");
    child.wait().unwrap();

    let _child = start_dev(&config);
    wait_ok(&base, "/healthz", Duration::from_secs(10)).await;
    let topic: serde_json::Value = reqwest::get(format!("{base}/v1/topics/jobs"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: i64 = topic["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high"].as_i64().unwrap())
        .sum();
    assert_eq!(stored, 20, "the log after the restart: {topic}");
}

async fn crash_during_delivery(durability: &str) {
    let (hook, received) = receiver(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{data}"
[embedded]
durability = "{durability}"
[api]
listen = "127.0.0.1:{port}"
[[topics]]
name = "jobs"
partitions = 4
[[routes]]
topic = "jobs"
url = "http://{hook}/hook"
concurrency = {CONCURRENCY}
max_buffered = {MAX_BUFFERED}
[routes.retry]
max_attempts = 5
initial_delay_ms = 10
max_delay_ms = 100
"#,
            data = dir.path().join("data").display()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");

    let mut child = start_dev(&config);
    wait_ok(&base, "/healthz", Duration::from_secs(10)).await;
    let poster = tokio::spawn({
        let base = base.clone();
        async move { post_jobs(&base, "jobs", "slow", 6_000, 16).await }
    });
    wait_for(
        Duration::from_secs(60),
        "1,000 deliveries before the crash",
        || received.total() >= 1_000,
    )
    .await;
    child.kill().expect("kill -9"); // SIGKILL on Unix
    child.wait().unwrap();
    let acked = poster.await.unwrap();
    let delivered_before = received.total();
    assert!(
        acked.len() > delivered_before.min(1_000),
        "the crash must happen with work outstanding"
    );
    assert!(acked.len() < 6_000, "the crash must interrupt the posting");

    let mut child = start_dev(&config);
    wait_ok(&base, "/healthz", Duration::from_secs(10)).await;
    wait_for(
        Duration::from_secs(90),
        "every acknowledged job delivered after the restart",
        || {
            let ids = received.ids();
            acked.iter().all(|id| ids.contains_key(id))
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    let ids = received.ids();
    let duplicates: usize = ids.values().map(|n| n - 1).sum();
    eprintln!(
        "durability {durability}: acknowledged {}, delivered before the crash {delivered_before}, unique delivered {}, duplicates {duplicates}",
        acked.len(),
        ids.len()
    );
    assert!(
        duplicates <= MAX_BUFFERED + CONCURRENCY,
        "{duplicates} duplicates exceed what can be in flight ({MAX_BUFFERED} buffered + {CONCURRENCY} running)"
    );
}
