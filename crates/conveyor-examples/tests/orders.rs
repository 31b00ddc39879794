//! The orders example under chaos: 20,000 orders posted over HTTP while the processes that run
//! the workers are killed with SIGKILL at random moments and restarted; at the end PostgreSQL
//! holds exactly one row per order (`count(*)` and `count(DISTINCT order_id)` both 20,000, and
//! every posted id among them). The `orders` table has no unique constraint: the inbox alone
//! keeps redelivered jobs (offsets not committed when a process died) and second copies (a
//! client retrying a POST whose answer it never got, with the same order id) from writing twice.
//!
//! - embedded: one `orders` process (API and workers: the log lives in it), killed 6 times at
//!   random points of the acknowledged count, and once more after the last order was
//!   acknowledged; the load generator retries every
//!   POST that failed, with the same order id.
//! - Kafka (`--features live`, `CONVEYOR_TEST_BROKERS`): one API process kept up and three
//!   worker processes killed in turn, 5 times at random points of the rows written, and once
//!   more after the last order was acknowledged.
//!
//! Bounded: a fixed number of orders and kills, every wait with a deadline; 127.0.0.1 only.
//! PostgreSQL comes from `conveyor_postgres::testing` (a fresh database; a clear failure when
//! there is none).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor_postgres::testing::TestDb;
use rand::Rng;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const ORDERS: usize = 20_000;
/// Concurrent clients posting orders.
const CLIENTS: usize = 32;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `orders` process, restarted with the same arguments.
struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Child,
}

impl Proc {
    fn start(name: &str, args: Vec<String>, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.stderr"));
        let child = Self::spawn(&args, &log);
        Proc {
            name: name.to_owned(),
            args,
            log,
            child,
        }
    }

    fn spawn(args: &[String], log: &Path) -> Child {
        Command::new(env!("CARGO_BIN_EXE_orders"))
            .args(args)
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

    /// SIGKILL, then wait for it.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn restart(&mut self) {
        self.child = Self::spawn(&self.args, &self.log);
    }

    /// SIGTERM (drain), then wait at most 60 s for a clean exit.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{} exited with {status} on SIGTERM; its log: {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Load {
    elapsed: Duration,
    /// POSTs sent again after a failure (connection refused or reset, timeout, 5xx).
    retries: usize,
}

/// Posts every order once acknowledged (201), `CLIENTS` at a time; a POST that fails is sent
/// again with the same order id, to the next base URL, until acknowledged (at most 240 s).
async fn post_all(bases: Vec<String>, orders: Arc<Vec<Uuid>>, acked: Arc<AtomicUsize>) -> Load {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(240);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (http, next, retries, orders, bases, acked) = (
            http.clone(),
            Arc::clone(&next),
            Arc::clone(&retries),
            Arc::clone(&orders),
            bases.clone(),
            Arc::clone(&acked),
        );
        clients.spawn(async move {
            let mut base = c % bases.len();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = orders.get(i) else { return };
                let body = json!({
                    "id": id, "src_currency": 1 + (i % 3), "dst_currency": 2,
                    "description": format!("order {i}"), "channel": 1 + (i % 2),
                });
                loop {
                    assert!(Instant::now() < deadline, "posting took over 240 s");
                    let sent = http
                        .post(format!("{}/orders", bases[base]))
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(r) if r.status().is_client_error() => {
                            panic!("order {i} refused: {}", r.text().await.unwrap_or_default())
                        }
                        _ => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            base = (base + 1) % bases.len();
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    Load {
        elapsed: started.elapsed(),
        retries: retries.load(Ordering::Relaxed),
    }
}

async fn counts(pool: &PgPool) -> (i64, i64, i64) {
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT order_id) FROM orders")
            .fetch_one(pool)
            .await
            .unwrap_or((0, 0)); // the table is created by the first process
    let (inbox,): (i64,) = sqlx::query_as("SELECT count(*) FROM conveyor_inbox")
        .fetch_one(pool)
        .await
        .unwrap_or((0,));
    (rows, distinct, inbox)
}

/// Waits (at most 120 s) until every order has its row.
async fn until_written(pool: &PgPool) -> Duration {
    let started = Instant::now();
    loop {
        let (rows, _, inbox) = counts(pool).await;
        if rows >= ORDERS as i64 && inbox >= ORDERS as i64 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "after 120 s only {rows} order rows ({inbox} in the inbox) of {ORDERS}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Exactly one row per posted order.
async fn check(pool: &PgPool, orders: &[Uuid], kills: usize, load: &Load, drained: Duration) {
    let (rows, distinct, inbox) = counts(pool).await;
    let ids: Vec<(String,)> = sqlx::query_as("SELECT order_id FROM orders")
        .fetch_all(pool)
        .await
        .unwrap();
    let stored: HashSet<String> = ids.into_iter().map(|(id,)| id).collect();
    let missing = orders
        .iter()
        .filter(|id| !stored.contains(&id.to_string()))
        .count();
    println!(
        "orders chaos: {ORDERS} orders acknowledged over HTTP in {:.1} s ({:.0} orders/s, {} POSTs retried) with {kills} kill -9s; \
         written {:.1} s after the last one; PostgreSQL: count(*) = {rows}, count(DISTINCT order_id) = {distinct}, inbox = {inbox}, missing = {missing}",
        load.elapsed.as_secs_f64(),
        ORDERS as f64 / load.elapsed.as_secs_f64(),
        load.retries,
        drained.as_secs_f64(),
    );
    assert_eq!(missing, 0, "orders without a row");
    assert_eq!(distinct, ORDERS as i64, "distinct order ids");
    assert_eq!(rows, ORDERS as i64, "rows: an order written twice");
    assert_eq!(stored.len(), ORDERS);
}

fn random_pause(min_ms: u64, max_ms: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(min_ms..max_ms))
}

/// `n` random points of progress between 5% and 95% of the orders, in order: a kill is due
/// when the progress passes each. Tied to progress, not to the clock, so a fast machine gets
/// as many kills in the middle of the work as a slow one (a CI run on a fast machine
/// acknowledged all 20,000 orders before the fourth timed kill).
fn kill_points(n: usize) -> Vec<usize> {
    let mut points: Vec<usize> = (0..n)
        .map(|_| rand::rng().random_range(ORDERS / 20..ORDERS * 19 / 20))
        .collect();
    points.sort_unstable();
    points
}

/// Waits (at most 240 s) until `progress` reaches `point`, then a random moment more.
async fn until_progress<F, Fut>(point: usize, progress: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let started = Instant::now();
    loop {
        let now = progress().await;
        if now >= point {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "progress stuck at {now} of {ORDERS} (waiting for {point})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(random_pause(0, 300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_written_once_while_the_process_is_killed_embedded() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args: Vec<String> = [
        "--database-url",
        db.url(),
        "--backend",
        "embedded",
        "--data",
        &dir.path().join("log").display().to_string(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]
    .map(String::from)
    .into();
    let mut node = Proc::start("orders", args, dir.path());
    let orders: Arc<Vec<Uuid>> = Arc::new((0..ORDERS).map(|_| Uuid::now_v7()).collect());
    let acked = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(post_all(
        vec![format!("http://127.0.0.1:{port}")],
        Arc::clone(&orders),
        Arc::clone(&acked),
    ));
    // six kills while orders are being acknowledged, at random points of the progress
    let mut kills = 0;
    for point in kill_points(6) {
        until_progress(point, || async { acked.load(Ordering::Relaxed) }).await;
        node.kill9();
        kills += 1;
        tokio::time::sleep(random_pause(50, 500)).await;
        node.restart();
    }
    let load = load.await.unwrap();
    // the jobs finished since the last commit run again after this one
    node.kill9();
    kills += 1;
    node.restart();
    let drained = until_written(db.pool()).await;
    node.stop();
    check(db.pool(), &orders, kills, &load, drained).await;
}

#[cfg(feature = "live")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_written_once_while_workers_are_killed_kafka_live() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect(
        "CONVEYOR_TEST_BROKERS=host:port (scripts/live.sh starts Apache Kafka and sets it)",
    );
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let run = Uuid::now_v7().simple().to_string();
    let common = |role: &str, port: u16| -> Vec<String> {
        [
            "--database-url",
            db.url(),
            "--backend",
            "kafka",
            "--brokers",
            &brokers,
            "--role",
            role,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--topic",
            &format!("orders-{run}"),
            "--group",
            &format!("orders-writer-{run}"),
            "--session-timeout-ms",
            "6000",
            "--concurrency",
            "16",
        ]
        .map(String::from)
        .into()
    };
    let api_port = free_port();
    let mut api = Proc::start("api", common("api", api_port), dir.path());
    let mut workers: Vec<Proc> = (0..3)
        .map(|i| Proc::start(&format!("worker{i}"), common("worker", 0), dir.path()))
        .collect();
    let orders: Arc<Vec<Uuid>> = Arc::new((0..ORDERS).map(|_| Uuid::now_v7()).collect());
    let load = tokio::spawn(post_all(
        vec![format!("http://127.0.0.1:{api_port}")],
        Arc::clone(&orders),
        Arc::new(AtomicUsize::new(0)),
    ));
    // kills at random points of the writing, tied to the rows written rather than to the
    // clock (the POSTs may all be acknowledged before the workers are done: an idle machine
    // takes 20,000 in a few seconds); the three workers in turn
    let mut kills = 0;
    for point in kill_points(5) {
        until_progress(point, || async { counts(db.pool()).await.0 as usize }).await;
        let n = workers.len();
        let w = &mut workers[kills % n];
        w.kill9();
        kills += 1;
        tokio::time::sleep(random_pause(200, 1500)).await;
        w.restart();
    }
    let load = load.await.unwrap();
    workers[kills % 3].kill9();
    kills += 1;
    workers[(kills - 1) % 3].restart();
    let drained = until_written(db.pool()).await;
    for w in &mut workers {
        w.stop();
    }
    api.stop();
    check(db.pool(), &orders, kills, &load, drained).await;
}
