//! Two `conveyor dev` processes on the Kafka backend, one consumer group, a 6-partition topic:
//! they share the partitions; after `kill -9` of one, the other takes its partitions and every
//! acknowledged job is delivered. Needs a live broker: `scripts/kafka.sh` (Apache Kafka; the test
//! command starts it) or `CONVEYOR_TEST_BROKERS=host:port`. Built only with `--features live`.

#![cfg(feature = "live")]

mod util;

use std::collections::HashSet;
use std::time::Duration;

use util::{post_jobs, receiver, start_dev_on_a_free_port, wait_for};

/// The process started second is killed: usually not the group leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_hands_its_partitions_to_the_other() {
    failover(1).await;
}

/// The process started first is killed: it usually leads the group, and the coordinator must
/// hand leadership to the survivor (tansu 0.6, the earlier test broker, never did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_group_leader_hands_its_partitions_to_the_other() {
    failover(0).await;
}

/// Two `conveyor dev` processes in one group; `victim` (0 or 1, in start order) is killed with
/// SIGKILL while jobs flow.
async fn failover(victim: usize) {
    let survivor = 1 - victim;
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect("CONVEYOR_TEST_BROKERS=host:port");
    let (hook, received) = receiver(Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let suffix = util::unique_suffix();
    let topic = format!("failover.{suffix}");
    let write_config = |name: &str, port: u16| {
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
        path
    };
    let mut procs = Vec::new();
    let mut bases = Vec::new();
    for name in ["a", "b"] {
        let (dev, base) = start_dev_on_a_free_port(|port| write_config(name, port)).await;
        procs.push(dev);
        bases.push(base);
    }
    let api = bases[survivor].clone();

    // both members own partitions once the group has rebalanced (a few seconds after the second
    // is ready): keep enqueueing rounds, keys spread over all 6 partitions, until both deliver
    let mut first = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let round = post_jobs(&api, &topic, "ok", 100, 8).await;
        assert_eq!(round.len(), 100);
        first.extend(round);
        let workers: HashSet<String> = received.workers.lock().unwrap().iter().cloned().collect();
        if workers.len() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second process never delivered: the group did not share the partitions"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // kill the victim while the next 600 jobs are being enqueued and delivered
    let start = received.total();
    let posting = tokio::spawn({
        let (api, topic) = (api.clone(), topic.clone());
        async move { post_jobs(&api, &topic, "ok", 600, 4).await }
    });
    wait_for(Duration::from_secs(60), "deliveries under way", || {
        received.total() >= start + 100
    })
    .await;
    let killed = format!("pid-{}", procs[victim].id());
    let killed_at = std::time::Instant::now();
    procs[victim].kill().expect("kill -9");
    procs[victim].wait().unwrap();
    // a request the victim sent just before dying may still be recorded
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_kill = received.total();
    let second = posting.await.unwrap();
    assert_eq!(
        second.len(),
        600,
        "the survivor's API acknowledged every job"
    );
    wait_for(
        Duration::from_secs(120),
        "every job delivered after the kill",
        || {
            let ids = received.ids();
            first.iter().chain(&second).all(|id| ids.contains_key(id))
        },
    )
    .await;
    let recovered = killed_at.elapsed();
    let after: Vec<String> = received.workers.lock().unwrap()[after_kill..].to_vec();
    assert!(!after.contains(&killed), "a dead process cannot deliver");
    assert!(
        after
            .iter()
            .all(|w| *w == format!("pid-{}", procs[survivor].id())),
        "the survivor delivered everything after the kill"
    );
    let ids = received.ids();
    let repeated = ids.values().filter(|n| **n > 1).count();
    eprintln!(
        "failover: {} jobs acknowledged, all delivered {:.1} s after the kill (session timeout 6 s), {repeated} delivered more than once (at-least-once)",
        first.len() + second.len(),
        recovered.as_secs_f64()
    );
}
