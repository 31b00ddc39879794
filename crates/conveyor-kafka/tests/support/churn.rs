//! The churn scenario shared by `group_churn_live.rs` (Apache Kafka) and `group_churn_mock.rs`
//! (librdkafka's mock cluster): three workers of one consumer group join and leave under load;
//! every acknowledged job is delivered, no key runs on two members at once, each key's jobs are
//! first delivered in order, and the group's committed offsets never pass unfinished work.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_core::{Backend, TopicSpec};
use conveyor_runtime::{handler_fn, Client, Job, NewJob, Worker};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PARTITIONS: i32 = 6;
const KEYS: usize = 24;

/// Makes a backend: each member and the producer get their own client.
pub(crate) type MakeBackend = Arc<dyn Fn() -> Arc<dyn Backend> + Send + Sync>;

/// What the handlers saw, shared by every member.
#[derive(Default)]
struct Seen {
    /// key -> the member running a job of it now
    running: HashMap<String, String>,
    /// key -> sequence numbers in delivery order (repeats included)
    order: HashMap<String, Vec<u64>>,
    /// message id -> deliveries
    runs: HashMap<String, usize>,
    /// (partition, offset) whose handler returned
    finished: HashSet<(i32, i64)>,
    violations: Vec<String>,
}

struct Member {
    name: String,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<conveyor_core::Result<()>>,
}

fn start(
    name: &str,
    backend: &MakeBackend,
    group: &str,
    topic: &str,
    seen: &Arc<Mutex<Seen>>,
) -> Member {
    let seen = Arc::clone(seen);
    let me = name.to_owned();
    let worker = Worker::builder(backend(), group, [topic.to_owned()])
        .concurrency(8)
        .fallback(handler_fn(move |job: Job| {
            let (seen, me) = (Arc::clone(&seen), me.clone());
            async move {
                let v: serde_json::Value = job.json().unwrap();
                let key = v["key"].as_str().unwrap().to_owned();
                {
                    let mut s = seen.lock().unwrap();
                    if let Some(other) = s.running.insert(key.clone(), me.clone()) {
                        let msg = format!("key {key} ran on {me} while {other} ran it");
                        s.violations.push(msg);
                    }
                    s.order
                        .entry(key.clone())
                        .or_default()
                        .push(v["seq"].as_u64().unwrap());
                    *s.runs.entry(job.id().unwrap().to_owned()).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(1 + v["seq"].as_u64().unwrap() % 7)).await;
                let mut s = seen.lock().unwrap();
                s.running.remove(&key);
                s.finished.insert((job.record.partition, job.record.offset));
            }
        }))
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Member {
        name: name.to_owned(),
        stop,
        handle,
    }
}

async fn leave(m: Member) {
    let _ = m.stop.send(());
    // a worker drains within its 30 s shutdown timeout; a member still running after 90 s is
    // stuck, and the test says which instead of hanging
    tokio::time::timeout(Duration::from_secs(90), m.handle)
        .await
        .unwrap_or_else(|_| panic!("member {} did not stop within 90 s of its shutdown", m.name))
        .unwrap()
        .unwrap_or_else(|e| panic!("member {} failed: {e}", m.name));
}

/// The churn scenario on the backends `backend` makes, with `jobs` jobs; `label` names the run
/// in its summary line.
pub(crate) async fn churn(backend: MakeBackend, label: &str, jobs: usize) {
    let admin = backend();
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (topic, group) = (format!("churn.{id}"), format!("churn.g.{id}"));
    admin
        .create_topic(&TopicSpec::new(&topic, PARTITIONS))
        .await
        .unwrap();
    let seen: Arc<Mutex<Seen>> = Arc::default();

    // the load: `jobs` jobs over ~15 s, keys in turn, a sequence number per key
    let client = Client::new(backend());
    let producer = tokio::spawn({
        let topic = topic.clone();
        async move {
            let mut acked = Vec::new();
            let mut seq: HashMap<String, u64> = HashMap::new();
            for i in 0..jobs {
                let key = format!("k{}", i % KEYS);
                let n = seq.entry(key.clone()).or_default();
                let job = NewJob::json("t", &serde_json::json!({"key": key, "seq": *n}))
                    .unwrap()
                    .with_key(key.clone());
                *n += 1;
                acked.push(client.enqueue(&topic, job).await.unwrap().id);
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            acked
        }
    });

    // commits never pass unfinished work: sample the group's committed offsets while it churns
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (admin, topic, group, seen, sampling) = (
            Arc::clone(&admin),
            topic.clone(),
            group.clone(),
            Arc::clone(&seen),
            Arc::clone(&sampling),
        );
        async move {
            let mut samples = 0;
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                // a read that fails on a loaded machine (its timeout, a rebalance) is no sample
                let Ok(committed) = admin.committed_offsets(&group, &topic).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                {
                    let s = seen.lock().unwrap();
                    for (p, c) in committed {
                        if let Some(c) = c {
                            if let Some(o) = (0..c).find(|o| !s.finished.contains(&(p, *o))) {
                                panic!("partition {p} committed at {c} while offset {o} had not finished");
                            }
                        }
                    }
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        }
    });

    let pause = |s: u64| tokio::time::sleep(Duration::from_secs(s));
    let a = start("a", &backend, &group, &topic, &seen);
    pause(3).await;
    let b = start("b", &backend, &group, &topic, &seen);
    pause(3).await;
    let c = start("c", &backend, &group, &topic, &seen);
    pause(3).await;
    leave(b).await;
    pause(2).await;
    let b2 = start("b2", &backend, &group, &topic, &seen);
    pause(3).await;
    leave(c).await;
    let acked = tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .expect("the producer did not finish its jobs within 120 s")
        .unwrap();
    assert_eq!(acked.len(), jobs);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = {
            let s = seen.lock().unwrap();
            acked.iter().filter(|id| s.runs.contains_key(*id)).count()
        };
        if delivered == jobs {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{delivered} of {jobs} acknowledged jobs delivered after the churn"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the group commits everything once the work finished: a departed member's last commits
    // may have failed in a rebalance, and its partitions' next owner repeats that work first
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let committed: i64 = match admin.committed_offsets(&group, &topic).await {
            Ok(c) => c.iter().map(|(_, c)| c.unwrap_or(0)).sum(),
            Err(_) => -1,
        };
        if committed == jobs as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group committed {committed} of {jobs} offsets 120 s after every job was delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    // one after the other: b2 is handed a's partitions while it leaves
    leave(a).await;
    leave(b2).await;

    let repeated = check_seen(&seen.lock().unwrap());
    eprintln!(
        "churn ({label}): {jobs} jobs acknowledged, {jobs} delivered, {repeated} delivered more than once, 0 keys on two members at once, {samples} commit samples never past unfinished work"
    );
}

/// No key ran on two members at once and each key's first deliveries are in order; returns
/// how many jobs were delivered more than once.
fn check_seen(s: &Seen) -> usize {
    assert!(s.violations.is_empty(), "{:#?}", s.violations);
    for (key, seqs) in &s.order {
        // redeliveries after a rebalance repeat earlier jobs; first deliveries are in order
        let mut first = Vec::new();
        let mut had = HashSet::new();
        for q in seqs {
            if had.insert(*q) {
                first.push(*q);
            }
        }
        assert!(
            first.windows(2).all(|w| w[0] < w[1]),
            "key {key} first delivered out of order: {seqs:?}"
        );
    }
    s.runs.values().filter(|n| **n > 1).count()
}
