//! The outbox under chaos: 10,000 jobs enqueued inside PostgreSQL transactions by 8 concurrent
//! writers, every tenth rolled back, while the relay process (`conveyor postgres relay`) is
//! killed with SIGKILL at random moments and restarted; afterwards exactly the 9,000 committed
//! jobs have run, once each (a worker through the inbox writes one row per run into a table
//! without constraints), and none of the rolled-back ones.
//!
//! - embedded: the relay process owns the log while it runs (one process per data folder), so
//!   the worker runs in this test after the last relay stopped: the kills hit the relay
//!   publishing and marking, which is what is under test;
//! - Kafka (`--features live`, `CONVEYOR_TEST_BROKERS`): the worker runs in this test while
//!   the relay process is killed and restarted.
//!
//! Bounded (fixed counts, every wait with a deadline), 127.0.0.1 only. PostgreSQL comes from
//! `conveyor_postgres::testing`.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor_core::{Backend, TopicSpec};
use conveyor_postgres::testing::TestDb;
use conveyor_postgres::{Inbox, Outbox};
use conveyor_runtime::{Job, NewJob, Worker, WorkerStats};
use rand::Rng;
use sqlx::PgPool;

const JOBS: usize = 10_000;
const WRITERS: usize = 8;
const TOPIC: &str = "outbox-jobs";

fn relay(args: &[String], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["postgres", "relay"])
        .args(args)
        .env("CONVEYOR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

async fn tables(pool: &PgPool) {
    // what the application committed, and what the worker ran: no constraints on either
    for t in ["committed", "ran"] {
        sqlx::query(&format!("CREATE TABLE {t} (message_id text NOT NULL)"))
            .execute(pool)
            .await
            .unwrap();
    }
}

/// `WRITERS` writers enqueue `JOBS` jobs, one transaction each; every tenth is rolled back.
async fn write_all(pool: PgPool, topic: String) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let rolled_back = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (pool, next, rolled_back, topic) = (
            pool.clone(),
            Arc::clone(&next),
            Arc::clone(&rolled_back),
            topic.clone(),
        );
        writers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= JOBS {
                    return;
                }
                let mut tx = pool.begin().await.unwrap();
                let job = NewJob::json("work", &serde_json::json!({ "i": i }))
                    .unwrap()
                    .with_key(format!("k{}", i % 16));
                let id = Outbox::enqueue(&mut tx, &topic, job).await.unwrap();
                sqlx::query("INSERT INTO committed VALUES ($1)")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                // transactions overlap and commit out of id order
                let pause = rand::rng().random_range(0..3);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if i % 10 == 0 {
                    tx.rollback().await.unwrap();
                    rolled_back.fetch_add(1, Ordering::Relaxed);
                } else {
                    tx.commit().await.unwrap();
                }
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    rolled_back.load(Ordering::Relaxed)
}

/// Kills the relay every 0.3-1.2 s (restarting it) until `done`; returns the kills.
async fn kill_while(
    args: &[String],
    log: &Path,
    child: &mut Child,
    done: &tokio::task::JoinHandle<usize>,
) -> usize {
    let mut kills = 0;
    while !done.is_finished() {
        let pause = rand::rng().random_range(300..1200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        *child = relay(args, log);
    }
    kills
}

async fn until(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pending(pool: &PgPool) -> i64 {
    Outbox::pending(&mut pool.acquire().await.unwrap())
        .await
        .unwrap()
}

fn worker(backend: Arc<dyn Backend>, inbox: &Inbox, topic: &str) -> Worker {
    Worker::builder(backend, "outbox-workers", [topic])
        .concurrency(16)
        .job(
            "work",
            inbox.job(|mut tx, _payload: serde_json::Value, job: Job| async move {
                sqlx::query("INSERT INTO ran VALUES ($1)")
                    .bind(job.id().unwrap_or(""))
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }),
        )
        .build()
}

async fn records(backend: &Arc<dyn Backend>, topic: &str) -> i64 {
    let info = backend.describe_topic(topic).await.unwrap().unwrap();
    info.partitions.iter().map(|p| p.high - p.low).sum()
}

/// Exactly the committed jobs ran, once each.
async fn check(pool: &PgPool, rolled_back: usize, kills: usize, published: i64, inbox: &Inbox) {
    let ids = |table: &'static str| async move {
        let rows: Vec<(String,)> = sqlx::query_as(&format!("SELECT message_id FROM {table}"))
            .fetch_all(pool)
            .await
            .unwrap();
        rows.into_iter().map(|(id,)| id).collect::<Vec<_>>()
    };
    let committed: HashSet<String> = ids("committed").await.into_iter().collect();
    let ran = ids("ran").await;
    let ran_set: HashSet<String> = ran.iter().cloned().collect();
    let foreign = ran_set.difference(&committed).count();
    let missing = committed.difference(&ran_set).count();
    println!(
        "outbox chaos: {JOBS} jobs written in transactions, {rolled_back} rolled back, {} committed; relay killed {kills} times; \
         {published} records published ({} second copies); the worker ran {} jobs ({} distinct), the inbox dropped {} duplicates; \
         missing {missing}, not committed but ran {foreign}",
        committed.len(),
        published - committed.len() as i64,
        ran.len(),
        ran_set.len(),
        inbox.stats().duplicates(),
    );
    assert_eq!(rolled_back, JOBS / 10);
    assert_eq!(committed.len(), JOBS - JOBS / 10, "committed jobs");
    assert_eq!(missing, 0, "committed jobs that never ran");
    assert_eq!(foreign, 0, "rolled-back jobs that ran");
    assert_eq!(ran.len(), committed.len(), "a job ran twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_jobs_run_once_while_the_relay_is_killed_embedded() {
    let db = TestDb::migrated().await;
    tables(db.pool()).await;
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    {
        let backend = conveyor_embedded::EmbeddedBackend::open(
            conveyor_embedded::EmbeddedConfig::new(&log_dir),
        )
        .unwrap();
        backend
            .create_topic(&TopicSpec::new(TOPIC, 4))
            .await
            .unwrap();
        backend.close().await.unwrap();
    }
    let args: Vec<String> = [
        "--database-url",
        db.url(),
        "--backend",
        "embedded",
        "--data-dir",
        &dir.path().display().to_string(),
        "--batch",
        "100",
    ]
    .map(String::from)
    .into();
    let log = dir.path().join("relay.stderr");
    let mut child = relay(&args, &log);
    let started = Instant::now();
    let writing = tokio::spawn(write_all(db.pool().clone(), TOPIC.into()));
    let mut kills = kill_while(&args, &log, &mut child, &writing).await;
    let rolled_back = writing.await.unwrap();
    // once more, then let the last one drain the outbox
    child.kill().unwrap();
    child.wait().unwrap();
    kills += 1;
    let log = dir.path().join("relay-last.stderr"); // the last relay's own log
    child = relay(&args, &log);
    let pool = db.pool().clone();
    until("the outbox to drain", 120, async || {
        pending(&pool).await == 0
    })
    .await;
    let relayed = started.elapsed();
    // SIGTERM only once the last relay runs (installed its signal handler, holds the lock)
    until("the last relay to take the lock", 30, async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("holding the lock")
    })
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "the relay stops cleanly on SIGTERM ({status}); its log ends: {}",
        &text[text.len().saturating_sub(3000)..]
    );

    let backend: Arc<dyn Backend> = Arc::new(
        conveyor_embedded::EmbeddedBackend::open(conveyor_embedded::EmbeddedConfig::new(&log_dir))
            .unwrap(),
    );
    let published = records(&backend, TOPIC).await;
    let inbox = Inbox::new(db.pool().clone());
    let w = worker(Arc::clone(&backend), &inbox, TOPIC);
    let stats: Arc<WorkerStats> = w.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(w.run(async {
        let _ = stopped.await;
    }));
    until("the worker to finish every record", 120, async || {
        stats.finished() >= published as u64
    })
    .await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    println!(
        "outbox chaos: relayed with kills in {:.1} s",
        relayed.as_secs_f64()
    );
    check(db.pool(), rolled_back, kills, published, &inbox).await;
}

#[cfg(feature = "live")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_jobs_run_once_while_the_relay_is_killed_kafka_live() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect(
        "CONVEYOR_TEST_BROKERS=host:port (scripts/live.sh starts Apache Kafka and sets it)",
    );
    let db = TestDb::migrated().await;
    tables(db.pool()).await;
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(
        conveyor_kafka::KafkaBackend::connect(conveyor_kafka::KafkaConfig::new(brokers.clone()))
            .unwrap(),
    );
    // a topic of this run's own: the writers name it in their outbox rows
    let topic = format!("outbox-jobs-{}", uuid::Uuid::now_v7().simple());
    backend
        .create_topic(&TopicSpec::new(&topic, 4))
        .await
        .unwrap();
    let inbox = Inbox::new(db.pool().clone());
    let w = worker(Arc::clone(&backend), &inbox, &topic);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(w.run(async {
        let _ = stopped.await;
    }));
    let args: Vec<String> = [
        "--database-url",
        db.url(),
        "--backend",
        "kafka",
        "--brokers",
        &brokers,
    ]
    .map(String::from)
    .into();
    let log = dir.path().join("relay.stderr");
    let mut child = relay(&args, &log);
    let writing = tokio::spawn(write_all(db.pool().clone(), topic.clone()));
    let kills = kill_while(&args, &log, &mut child, &writing).await;
    let rolled_back = writing.await.unwrap();
    let pool = db.pool().clone();
    until("the outbox to drain", 120, async || {
        pending(&pool).await == 0
    })
    .await;
    until("the worker to run every committed job", 120, async || {
        let (n,): (i64,) = sqlx::query_as("SELECT count(DISTINCT message_id) FROM ran")
            .fetch_one(&pool)
            .await
            .unwrap();
        n >= (JOBS - JOBS / 10) as i64
    })
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // second copies still arriving
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let published = records(&backend, &topic).await;
    check(db.pool(), rolled_back, kills, published, &inbox).await;
}
