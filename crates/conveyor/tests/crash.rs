//! kill -9 of `conveyor dev` (the real binary) while jobs are posted and delivered, then a restart:
//! every acknowledged job is delivered, and redeliveries stay within what was in flight.

mod util;

use std::time::Duration;

use util::{free_port, post_jobs, receiver, start_dev, wait_for, wait_ok};

const CONCURRENCY: usize = 16;
const MAX_BUFFERED: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_loses_no_acknowledged_job() {
    let (hook, received) = receiver(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{data}"
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
        "acknowledged {}, delivered before the crash {delivered_before}, unique delivered {}, duplicates {duplicates}",
        acked.len(),
        ids.len()
    );
    assert!(
        duplicates <= MAX_BUFFERED + CONCURRENCY,
        "{duplicates} duplicates exceed what can be in flight ({MAX_BUFFERED} buffered + {CONCURRENCY} running)"
    );
}
