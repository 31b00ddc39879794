//! Two `conveyor dev` processes on the Kafka backend, one consumer group, a 6-partition topic:
//! they share the partitions; after `kill -9` of one, the other takes its partitions and every
//! acknowledged job is delivered. Needs a live broker: `scripts/live-kafka.sh` (tansu) or
//! `CONVEYOR_TEST_BROKERS=host:port`. Built only with `--features live`.

#![cfg(feature = "live")]

mod util;

use std::collections::HashSet;
use std::time::Duration;

use util::{free_port, post_jobs, receiver, start_dev, wait_for, wait_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_hands_its_partitions_to_the_other() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect("CONVEYOR_TEST_BROKERS=host:port");
    let (hook, received) = receiver(Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let suffix = uuid_like();
    let topic = format!("failover.{suffix}");
    let mut configs = Vec::new();
    let mut bases = Vec::new();
    for name in ["a", "b"] {
        let port = free_port();
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
backend = "kafka"
[kafka]
brokers = "{brokers}"
session_timeout_ms = 6000
[api]
listen = "127.0.0.1:{port}"
[[topics]]
name = "{topic}"
partitions = 6
[[routes]]
topic = "{topic}"
url = "http://{hook}/hook"
group = "failover.{suffix}"
concurrency = 8
[routes.retry]
max_attempts = 5
initial_delay_ms = 10
max_delay_ms = 100
"#
            ),
        )
        .unwrap();
        configs.push(path);
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let mut a = start_dev(&configs[0]);
    wait_ok(&bases[0], "/readyz", Duration::from_secs(30)).await;
    let mut b = start_dev(&configs[1]);
    wait_ok(&bases[1], "/readyz", Duration::from_secs(30)).await;

    // both members own partitions: keys spread over all 6, deliveries come from both processes
    let first = post_jobs(&bases[0], &topic, "ok", 600, 8).await;
    assert_eq!(first.len(), 600);
    wait_for(
        Duration::from_secs(120),
        "the first 600 jobs delivered by both workers",
        || {
            let ids = received.ids();
            let workers: HashSet<String> =
                received.workers.lock().unwrap().iter().cloned().collect();
            first.iter().all(|id| ids.contains_key(id)) && workers.len() == 2
        },
    )
    .await;

    a.kill().expect("kill -9 worker a");
    a.wait().unwrap();
    let killed = format!("pid-{}", a.id());
    let before = received.total();
    let second = post_jobs(&bases[1], &topic, "ok", 600, 8).await;
    assert_eq!(second.len(), 600);
    wait_for(
        Duration::from_secs(120),
        "every job delivered after the kill",
        || {
            let ids = received.ids();
            second.iter().all(|id| ids.contains_key(id))
        },
    )
    .await;
    let after: Vec<String> = received.workers.lock().unwrap()[before..].to_vec();
    assert!(!after.contains(&killed), "a dead process cannot deliver");
    let ids = received.ids();
    assert!(
        first.iter().chain(&second).all(|id| ids.contains_key(id)),
        "no job lost"
    );
    b.kill().unwrap();
    b.wait().unwrap();
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
