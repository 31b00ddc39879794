//! Kafka's own Java client (kafka-clients, from the same Maven artifacts as the test broker) on
//! conveyor's topics: it reads conveyor's records and headers as they were written, and records
//! it writes with its default partitioner are delivered by a conveyor worker in key order, each
//! key on the partition conveyor itself would choose. The Java side is `tests/java/Interop.java`,
//! run as a single-file program with the jars `scripts/kafka.sh` exports as
//! `CONVEYOR_TEST_KAFKA_LIBS`. Built only with `--features live`.

#![cfg(feature = "live")]

mod live;

use live::{brokers, unique};

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_core::partitioner::partition_for_key;
use conveyor_core::{Backend, TopicSpec};
use conveyor_kafka::{KafkaBackend, KafkaConfig};
use conveyor_runtime::{handler_fn, Client, Job, NewJob, Worker};
use tokio::sync::oneshot;

/// Runs `Interop.java` with the broker's jars and returns its standard output.
fn java(args: &[&str]) -> String {
    let libs = std::env::var("CONVEYOR_TEST_KAFKA_LIBS").expect(
        "CONVEYOR_TEST_KAFKA_LIBS (the Kafka jars) is not set: run the tests through scripts/kafka.sh",
    );
    let out = Command::new("java")
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
        .arg("-cp")
        .arg(format!("{libs}/*"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/java/Interop.java"
        ))
        .args(args)
        .output()
        .expect("java (Debian: openjdk-17-jdk-headless)");
    assert!(
        out.status.success(),
        "Interop.java {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn backend() -> Arc<dyn Backend> {
    let mut config = KafkaConfig::new(brokers());
    config.session_timeout = Duration::from_secs(6);
    Arc::new(KafkaBackend::connect(config).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_client_reads_conveyors_records_and_headers() {
    let backend = backend().await;
    let topic = unique("interop.read");
    backend
        .create_topic(&TopicSpec::new(&topic, 4))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&backend));
    let mut sent = HashMap::new();
    for i in 0..40 {
        let key = format!("user-{}", i % 7);
        let job = NewJob::json(
            "email.welcome",
            &serde_json::json!({"i": i, "to": "ada@example.com"}),
        )
        .unwrap()
        .with_key(key.clone())
        .with_header("tenant", "acme");
        let e = client.enqueue(&topic, job).await.unwrap();
        sent.insert(e.id.clone(), (key, i, e.partition, e.offset));
    }

    let lines = java(&["consume", &brokers(), &topic, "40", "60"]);
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 40, "{lines}");
    for r in &records {
        let h = &r["headers"];
        let id = h["message_id"].as_str().expect("message_id header");
        let (key, i, partition, offset) = sent.get(id).expect("a job conveyor sent");
        assert_eq!(r["key"], serde_json::json!(key));
        assert_eq!(r["partition"], serde_json::json!(partition));
        assert_eq!(r["offset"], serde_json::json!(offset));
        let value: serde_json::Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        assert_eq!(value["i"], serde_json::json!(i));
        assert_eq!(h["job_type"], "email.welcome");
        // JSON is the default content type: conveyor writes the header only for other types
        assert!(h["content_type"].is_null() || h["content_type"] == "application/json");
        assert_eq!(h["tenant"], "acme");
        assert_eq!(h["attempt"], "1");
        let produced_at = h["produced_at"].as_str().expect("produced_at header");
        assert!(
            conveyor_core::headers::parse_time(produced_at).is_some(),
            "produced_at {produced_at} is RFC 3339"
        );
    }
    eprintln!("interop: the Java client read 40 conveyor records with their headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_java_client_writes_are_delivered_in_key_order_on_conveyors_partitions() {
    const COUNT: usize = 400;
    const KEYS: usize = 12;
    const PARTITIONS: i32 = 6;
    let backend = backend().await;
    let topic = unique("interop.write");
    backend
        .create_topic(&TopicSpec::new(&topic, PARTITIONS))
        .await
        .unwrap();

    let lines = java(&[
        "produce",
        &brokers(),
        &topic,
        &COUNT.to_string(),
        &KEYS.to_string(),
    ]);
    let mut java_partition: HashMap<String, i32> = HashMap::new();
    for l in lines.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let p: i32 = f[1].parse().unwrap();
        if let Some(old) = java_partition.insert(f[0].to_owned(), p) {
            assert_eq!(old, p, "the Java client moved key {}", f[0]);
        }
    }
    assert_eq!(java_partition.len(), KEYS);
    for (key, p) in &java_partition {
        assert_eq!(
            partition_for_key(key.as_bytes(), PARTITIONS),
            *p,
            "key {key}: conveyor's partition differs from the Java client's"
        );
    }
    // the spread is real: a partitioner sending every key to one partition would pass the above
    // only by accident
    let used: std::collections::BTreeSet<i32> = java_partition.values().copied().collect();
    assert!(used.len() > 1, "{java_partition:?}");

    // a conveyor worker (no job_type header: the fallback handler) delivers them in key order
    let seen: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    // handler panics are retried by the worker: record violations, check them after the run
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let (s, r, v) = (
        Arc::clone(&seen),
        Arc::clone(&running),
        Arc::clone(&violations),
    );
    let worker = Worker::builder(Arc::clone(&backend), unique("interop.g"), [topic.clone()])
        .concurrency(16)
        .fallback(handler_fn(move |job: Job| {
            let (s, r, v) = (Arc::clone(&s), Arc::clone(&r), Arc::clone(&v));
            async move {
                let value: serde_json::Value = job.json().unwrap();
                let key = value["key"].as_str().unwrap().to_owned();
                if job.record.key.as_deref() != Some(key.as_bytes()) {
                    v.lock()
                        .unwrap()
                        .push(format!("record key differs from {key}"));
                }
                {
                    let mut running = r.lock().unwrap();
                    let n = running.entry(key.clone()).or_default();
                    if *n != 0 {
                        v.lock()
                            .unwrap()
                            .push(format!("two jobs of key {key} at once"));
                    }
                    *n += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                s.lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default()
                    .push(value["seq"].as_u64().unwrap());
                *r.lock().unwrap().get_mut(&key).unwrap() -= 1;
            }
        }))
        .build();
    let stats = worker.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while (stats.done.load(std::sync::atomic::Ordering::SeqCst) as usize) < COUNT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {COUNT} records were delivered",
            stats.done.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
    assert!(
        violations.lock().unwrap().is_empty(),
        "{:?}",
        violations.lock().unwrap()
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), KEYS);
    for (key, seqs) in seen.iter() {
        let n = (COUNT / KEYS + usize::from(key_index(key) < COUNT % KEYS)) as u64;
        assert_eq!(
            *seqs,
            (0..n).collect::<Vec<_>>(),
            "key {key}: out of order or repeated"
        );
    }
    eprintln!(
        "interop: {COUNT} records from the Java client, {KEYS} keys on {} of {PARTITIONS} partitions, all delivered in key order, partitions equal to conveyor's",
        used.len()
    );
}

fn key_index(key: &str) -> usize {
    key.trim_start_matches("key-").parse().unwrap()
}
