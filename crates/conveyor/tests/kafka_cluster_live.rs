//! Broker faults on a three-node Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas` 2), started by `scripts/kafka.sh --nodes 3` (the test command does it;
//! this test needs that script's node folders to kill and restart brokers). Jobs enqueued over
//! HTTP to `conveyor dev` and delivered to a webhook while:
//! - the leader of their partition is killed with SIGKILL and later restarted: every
//!   acknowledged job is delivered and the worker carries on under the new leader;
//! - two of the three brokers are killed, fewer than `min.insync.replicas` remain: an enqueue
//!   answers 503 `backend_unavailable` within `kafka.delivery_timeout_ms` (never a 201, never a
//!   hang), and enqueueing works again once the brokers are back.
//!
//! Built only with `--features live`.

#![cfg(feature = "live")]

mod util;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use util::{free_port, receiver, start_dev, wait_for, wait_ok, Dev};

/// The partitions of each test's topic.
const PARTITIONS: i32 = 3;

/// The two tests kill brokers of one cluster: they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster `scripts/kafka.sh --nodes 3` started: node folders with `pid`, `id` and `start`.
/// Brokers a test killed are restarted when it ends, also when it fails, so the next test
/// finds three.
struct Cluster {
    dir: PathBuf,
    brokers: String,
    down: Mutex<Vec<i32>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.down.lock().unwrap().drain(..) {
            let _ = std::process::Command::new(self.node(id).join("start"))
                .arg("--wait")
                .status();
        }
    }
}

impl Cluster {
    fn from_env() -> Self {
        let dir = std::env::var("CONVEYOR_TEST_KAFKA_NODES").expect(
            "this test kills and restarts brokers: run it through `scripts/kafka.sh --nodes 3` (scripts/test.sh does)",
        );
        let n: usize = std::env::var("CONVEYOR_TEST_KAFKA_NODE_COUNT")
            .unwrap_or_default()
            .parse()
            .unwrap_or(0);
        assert_eq!(
            n, 3,
            "needs the three-node cluster of `scripts/kafka.sh --nodes 3`"
        );
        Cluster {
            dir: PathBuf::from(dir),
            brokers: std::env::var("CONVEYOR_TEST_BROKERS").unwrap(),
            down: Mutex::new(Vec::new()),
        }
    }

    fn node(&self, id: i32) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    fn kill(&self, id: i32) {
        let pid = std::fs::read_to_string(self.node(id).join("pid")).unwrap();
        let ok = std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -9 broker {id} (pid {pid})");
        self.down.lock().unwrap().push(id);
        eprintln!("cluster: killed broker {id} (pid {})", pid.trim());
    }

    fn start(&self, id: i32) {
        let ok = std::process::Command::new(self.node(id).join("start"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "restart broker {id}");
        self.down.lock().unwrap().retain(|d| *d != id);
        eprintln!("cluster: restarted broker {id}");
    }

    /// A client of the cluster, in `group` when given (to read its committed offsets).
    fn client(&self, group: Option<&str>) -> rdkafka::error::KafkaResult<BaseConsumer> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        if let Some(group) = group {
            config.set("group.id", group);
        }
        config.create()
    }

    /// The leader of `topic`'s `partition` (-1 while there is none), from any live broker.
    fn leader(&self, topic: &str, partition: i32) -> i32 {
        let c = self.client(None).unwrap();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        md.topics()[0]
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .map_or(-1, |p| p.leader())
    }

    /// Waits until metadata lists all three brokers again.
    async fn wait_brokers(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.client(None).unwrap();
            if let Ok(md) = c.fetch_metadata(None, Duration::from_secs(5)) {
                if md.brokers().len() == n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not list {n} brokers in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits up to 120 s until every job of `acked` (placed at `placed`) reached the webhook;
    /// on a timeout the panic says, per partition, what is missing and where the route's group
    /// committed, so a failure tells a stalled member from lost records.
    async fn wait_delivered(
        &self,
        topic: &str,
        acked: &[String],
        placed: &[(i32, i64)],
        received: &util::Received,
    ) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ids = received.ids();
            let missing: Vec<(i32, i64)> = acked
                .iter()
                .zip(placed)
                .filter(|(id, _)| !ids.contains_key(*id))
                .map(|(_, at)| *at)
                .collect();
            if missing.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let group = format!("webhook.{topic}");
                panic!(
                    "{} of {} acknowledged jobs not delivered after 120 s; missing (partition, offset): {missing:?}; {}",
                    missing.len(),
                    acked.len(),
                    self.group_state(&group, topic)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The group's committed offset and the end of each partition of `topic`, for a failure's
    /// message.
    fn group_state(&self, group: &str, topic: &str) -> String {
        let c = match self.client(Some(group)) {
            Ok(c) => c,
            Err(e) => return format!("(cannot read group {group}: {e})"),
        };
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS {
            list.add_partition(topic, p);
        }
        let committed = c.committed_offsets(list, Duration::from_secs(10));
        let mut out = format!("group {group}:");
        for p in 0..PARTITIONS {
            let at = committed
                .as_ref()
                .ok()
                .and_then(|l| l.find_partition(topic, p))
                .map(|e| format!("{:?}", e.offset()))
                .unwrap_or_else(|| "unknown".into());
            let end = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| high.to_string())
                .unwrap_or_else(|e| format!("unknown ({e})"));
            out.push_str(&format!(" partition {p} committed {at}, end {end};"));
        }
        out
    }
}

/// `conveyor dev` on the cluster: one topic, replicated 3 times, routed to `hook`.
async fn dev(
    cluster: &Cluster,
    dir: &std::path::Path,
    topic: &str,
    hook: std::net::SocketAddr,
    delivery_timeout_ms: u64,
) -> (Dev, String) {
    let port = free_port();
    let config = dir.join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            r#"
backend = "kafka"
[kafka]
brokers = "{brokers}"
replication_factor = 3
session_timeout_ms = 6000
delivery_timeout_ms = {delivery_timeout_ms}
[api]
listen = "127.0.0.1:{port}"
[[topics]]
name = "{topic}"
partitions = {PARTITIONS}
min_insync_replicas = 2
[[routes]]
topic = "{topic}"
url = "http://{hook}/hook"
concurrency = 8
[routes.retry]
initial_delay_ms = 50
max_delay_ms = 500
max_attempts = 10
"#,
            brokers = cluster.brokers
        ),
    )
    .unwrap();
    let child = start_dev(&config);
    let base = format!("http://127.0.0.1:{port}");
    wait_ok(&base, "/readyz", Duration::from_secs(60)).await;
    (child, base)
}

/// What a poster saw.
#[derive(Default, Debug)]
struct Posted {
    attempted: usize,
    acked: Vec<String>,
    /// (partition, offset) of each acknowledged job, in the order of `acked`
    placed: Vec<(i32, i64)>,
    /// (status, error code, seconds until the answer)
    refused: Vec<(u16, String, f64)>,
    slowest: f64,
}

/// One enqueue over HTTP, with its answer time.
async fn post(http: &reqwest::Client, base: &str, topic: &str, i: usize, posted: &Mutex<Posted>) {
    let body =
        serde_json::json!({"type": "ok", "key": format!("k{}", i % 31), "payload": {"i": i}});
    let started = Instant::now();
    let r = http
        .post(format!("{base}/v1/topics/{topic}/jobs"))
        .json(&body)
        .send()
        .await
        .expect("the API answers");
    let took = started.elapsed().as_secs_f64();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap();
    let mut p = posted.lock().unwrap();
    p.attempted += 1;
    p.slowest = p.slowest.max(took);
    match status {
        201 => {
            p.acked.push(v["id"].as_str().unwrap().to_owned());
            let partition = v["partition"].as_i64().unwrap() as i32;
            p.placed.push((partition, v["offset"].as_i64().unwrap()));
        }
        _ => p.refused.push((
            status,
            v["error"]["code"].as_str().unwrap_or("").to_owned(),
            took,
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_partition_leader_loses_no_acknowledged_job() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::from_env();
    cluster.wait_brokers(3, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("ha.{}", std::process::id());
    let (hook, received) = receiver(Duration::from_millis(1)).await;
    let (_dev, base) = dev(&cluster, dir.path(), &topic, hook, 30_000).await;

    let posted = Arc::new(Mutex::new(Posted::default()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // 4 clients post 1,200 jobs, ~40 ms apart each, so enqueueing spans the kill
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (http, base, topic, posted) = (
                http.clone(),
                base.clone(),
                topic.clone(),
                Arc::clone(&posted),
            );
            tokio::spawn(async move {
                for i in (c..1_200).step_by(4) {
                    post(&http, &base, &topic, i, &posted).await;
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            })
        })
        .collect();
    wait_for(
        Duration::from_secs(60),
        "300 jobs delivered before the kill",
        || received.total() >= 300,
    )
    .await;
    let victim = cluster.leader(&topic, 0);
    assert!(victim > 0, "partition 0 has a leader");
    cluster.kill(victim);
    let (acked_at_kill, delivered_at_kill) = (posted.lock().unwrap().acked.len(), received.total());
    let killed_at = Instant::now();
    // a new leader is elected once the controller misses the dead broker's heartbeats
    let mut new_leader = -1;
    while killed_at.elapsed() < Duration::from_secs(60) {
        new_leader = cluster.leader(&topic, 0);
        if new_leader > 0 && new_leader != victim {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        new_leader > 0 && new_leader != victim,
        "no new leader for partition 0 after the kill"
    );
    let elected = killed_at.elapsed();
    for c in clients {
        c.await.unwrap();
    }
    let acked_after_kill = posted.lock().unwrap().acked.len() - acked_at_kill;
    let (acked, placed) = {
        let p = posted.lock().unwrap();
        (p.acked.clone(), p.placed.clone())
    };
    cluster
        .wait_delivered(&topic, &acked, &placed, &received)
        .await;
    cluster.start(victim);
    cluster.wait_brokers(3, Duration::from_secs(60)).await;

    let p = posted.lock().unwrap();
    let ids = received.ids();
    let lost = p.acked.iter().filter(|id| !ids.contains_key(*id)).count();
    let duplicated = ids.values().filter(|n| **n > 1).count();
    eprintln!(
        "leader kill: broker {victim} killed, broker {new_leader} leads partition 0 {:.1} s later; enqueued {}, acknowledged {} ({acked_after_kill} after the kill), refused {} {:?}, delivered {} of them, {lost} lost, {duplicated} delivered more than once; slowest enqueue {:.1} s",
        elected.as_secs_f64(),
        p.attempted,
        p.acked.len(),
        p.refused.len(),
        p.refused.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(),
        p.acked.len() - lost,
        p.slowest
    );
    assert_eq!(lost, 0, "acknowledged jobs were lost");
    assert!(acked_after_kill > 0, "enqueueing carried on after the kill");
    assert!(
        received.total() > delivered_at_kill,
        "the worker carried on delivering after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_insync_replicas_an_enqueue_fails_in_bounded_time_and_recovers() {
    const DELIVERY_TIMEOUT_MS: u64 = 8_000;
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::from_env();
    cluster.wait_brokers(3, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("minisr.{}", std::process::id());
    let (hook, received) = receiver(Duration::from_millis(1)).await;
    let (_dev, base) = dev(&cluster, dir.path(), &topic, hook, DELIVERY_TIMEOUT_MS).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let before = Mutex::new(Posted::default());
    for i in 0..20 {
        post(&http, &base, &topic, i, &before).await;
    }
    assert_eq!(
        before.lock().unwrap().acked.len(),
        20,
        "{:?}",
        before.lock().unwrap()
    );

    // the route's worker runs (its first 20 jobs delivered) before the brokers go: what is
    // measured here is a running worker and the API below min ISR. (A worker whose brokers die
    // while it starts was seen never to start: a separate, known problem, see DEVELOPERS.md.)
    let (acked, placed) = {
        let b = before.lock().unwrap();
        (b.acked.clone(), b.placed.clone())
    };
    cluster
        .wait_delivered(&topic, &acked, &placed, &received)
        .await;
    // two of three down: one replica left, fewer than min.insync.replicas = 2
    let survivor = cluster.leader(&topic, 0);
    assert!(survivor > 0, "partition 0 has a leader before the kill");
    let down: Vec<i32> = (1..=3).filter(|id| *id != survivor).collect();
    for id in &down {
        cluster.kill(*id);
    }
    let during = Mutex::new(Posted::default());
    for i in 100..106 {
        post(&http, &base, &topic, i, &during).await;
    }
    {
        let d = during.lock().unwrap();
        eprintln!(
            "below min ISR: {} enqueues, {} acknowledged, answers {:?}",
            d.attempted,
            d.acked.len(),
            d.refused
        );
        assert!(
            d.acked.is_empty(),
            "a 201 for a job fewer than min.insync.replicas hold"
        );
        for (status, code, took) in &d.refused {
            assert_eq!((*status, code.as_str()), (503, "backend_unavailable"));
            assert!(
                *took < (DELIVERY_TIMEOUT_MS as f64 / 1000.0) + 1.0,
                "an enqueue took {took:.1} s, beyond the delivery timeout"
            );
        }
    }

    for id in &down {
        cluster.start(*id);
    }
    cluster.wait_brokers(3, Duration::from_secs(90)).await;
    let recovered_at = Instant::now();
    let after = Mutex::new(Posted::default());
    let mut i = 200;
    while after.lock().unwrap().acked.len() < 20 {
        assert!(
            recovered_at.elapsed() < Duration::from_secs(120),
            "enqueueing did not recover: {:?}",
            after.lock().unwrap()
        );
        post(&http, &base, &topic, i, &after).await;
        i += 1;
    }
    let recovery = recovered_at.elapsed();
    let acked: Vec<String> = [&before, &after]
        .iter()
        .flat_map(|p| p.lock().unwrap().acked.clone())
        .collect();
    let placed: Vec<(i32, i64)> = [&before, &after]
        .iter()
        .flat_map(|p| p.lock().unwrap().placed.clone())
        .collect();
    cluster
        .wait_delivered(&topic, &acked, &placed, &received)
        .await;
    eprintln!(
        "below min ISR: recovered {:.1} s after the brokers were back ({} refused on the way); all {} acknowledged jobs delivered",
        recovery.as_secs_f64(),
        after.lock().unwrap().refused.len(),
        acked.len()
    );
}
