//! The chaos run: jobs enqueued over HTTP while the worker processes are killed (SIGKILL) and
//! restarted several times and group members join and leave, with handlers that sometimes fail,
//! sometimes panic, sometimes take long. Afterwards every acknowledged job completed or is in
//! the dead-letter topic, no key ran two jobs at once, and per-key first deliveries are in
//! enqueue order. Bounded (a fixed number of jobs and kills, every wait has a deadline), on
//! 127.0.0.1 only.
//!
//! A *node* is this test binary again, running the ignored `chaos_node_process`: the HTTP API
//! (conveyor-server's router) and a worker pool on one backend, where one member stays and a
//! second joins and leaves every few seconds. Each handler run appends `S` (start) and `E` (end)
//! lines to the node's log, which the parent reads afterwards.
//! - embedded: one node (the log lives inside its process), killed and restarted 5 times;
//! - Kafka (`--features live`, `CONVEYOR_TEST_BROKERS`): two nodes, killed in turn.

mod util;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conveyor_core::{Backend, Error, Outcome, RetryPolicy, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::{handler_fn, Job, Worker};
use serde_json::{json, Value};
use util::free_port;

const KEYS: usize = 12;
const JOBS: usize = 600;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent test"))
}

/// What a job does, by its sequence number.
fn mode(i: usize) -> &'static str {
    match i {
        _ if i.is_multiple_of(29) => "fail",
        _ if i.is_multiple_of(11) => "panic_once",
        _ if i.is_multiple_of(7) => "fail_once",
        _ if i.is_multiple_of(13) => "slow",
        _ => "ok",
    }
}

fn log_line(path: &Path, line: String) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap(); // one write per line: appends never interleave
}

fn member(backend: Arc<dyn Backend>, log: PathBuf) -> Worker {
    Worker::builder(backend, var("CHAOS_GROUP"), [var("CHAOS_TOPIC")])
        .retry(RetryPolicy {
            max_attempts: 4,
            initial_delay_ms: 20,
            max_delay_ms: 200,
            ..RetryPolicy::default()
        })
        .concurrency(4)
        .handler(
            "chaos",
            handler_fn(move |job: Job| {
                let log = log.clone();
                async move {
                    let p: Value = job.json().unwrap();
                    let (key, seq, mode) = (
                        p["key"].as_str().unwrap().to_owned(),
                        p["seq"].as_u64().unwrap(),
                        p["mode"].as_str().unwrap().to_owned(),
                    );
                    let id = job.id().unwrap_or("-").to_owned();
                    let (pid, a) = (std::process::id(), job.attempt);
                    log_line(&log, format!("S {key} {seq} {a} {} {pid} {id}\n", now_ns()));
                    let outcome = match mode.as_str() {
                        "fail" => "fail",
                        "fail_once" | "panic_once" if a == 1 => mode.as_str(),
                        "slow" => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            "done"
                        }
                        _ => "done",
                    };
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    log_line(
                        &log,
                        format!("E {key} {seq} {a} {} {pid} {id} {outcome}\n", now_ns()),
                    );
                    match outcome {
                        "fail" => Outcome::fail("permanent failure"),
                        "fail_once" => Outcome::retry("transient failure"),
                        "panic_once" => panic!("chaos: a handler panics"),
                        _ => Outcome::Done,
                    }
                }
            }),
        )
        .build()
}

fn open_backend() -> Arc<dyn Backend> {
    match var("CHAOS_BACKEND").as_str() {
        "embedded" => {
            Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(var("CHAOS_DATA"))).unwrap())
        }
        _ => {
            let mut c = conveyor_kafka::KafkaConfig::new(var("CHAOS_BROKERS"));
            c.session_timeout = Duration::from_secs(6);
            Arc::new(conveyor_kafka::KafkaBackend::connect(c).unwrap())
        }
    }
}

/// A node: the API and a churning worker pool, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the chaos tests in child processes"]
async fn chaos_node_process() {
    let backend = open_backend();
    match backend
        .create_topic(&TopicSpec::new(var("CHAOS_TOPIC"), 4))
        .await
    {
        Ok(_) | Err(Error::TopicConflict { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    let log = PathBuf::from(var("CHAOS_LOG"));
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", var("CHAOS_PORT").parse::<u16>().unwrap()))
            .await
            .unwrap();
    let api = conveyor_server::api::app(conveyor_server::api::AppState::new(Arc::clone(&backend)));
    tokio::spawn(async move { axum::serve(listener, api).await });
    let stays = member(Arc::clone(&backend), log.clone());
    tokio::spawn(stays.run(std::future::pending::<()>()));
    loop {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (leave, left) = tokio::sync::oneshot::channel::<()>();
        let visitor = tokio::spawn(member(Arc::clone(&backend), log.clone()).run(async {
            let _ = left.await;
        }));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = leave.send(());
        visitor.await.unwrap().unwrap();
    }
}

struct Node {
    child: Child,
    env: Vec<(String, String)>,
    base: String,
    /// When each killed process was seen dead, by pid.
    deaths: Vec<(u32, u128)>,
}

impl Node {
    fn start(env: Vec<(String, String)>) -> Node {
        let port = env
            .iter()
            .find(|(k, _)| k == "CHAOS_PORT")
            .unwrap()
            .1
            .clone();
        let child = Self::spawn(&env);
        Node {
            child,
            env,
            base: format!("http://127.0.0.1:{port}"),
            deaths: Vec::new(),
        }
    }

    fn spawn(env: &[(String, String)]) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args(["chaos_node_process", "--exact", "--ignored", "--nocapture"])
            .envs(env.iter().cloned())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(format!("{}.stderr", Self::var_of(env, "CHAOS_LOG")))
                    .unwrap(),
            )
            .spawn()
            .unwrap()
    }

    fn var_of(env: &[(String, String)], name: &str) -> String {
        env.iter().find(|(k, _)| k == name).unwrap().1.clone()
    }

    fn kill(&mut self) {
        let pid = self.child.id();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.deaths.push((pid, now_ns()));
    }

    fn restart(&mut self) {
        self.child = Self::spawn(&self.env);
    }
}

struct Acked {
    id: String,
    key: String,
    seq: usize,
    mode: &'static str,
}

/// Enqueues `JOBS` jobs over `KEYS` keys, one job at a time per key in sequence order; a job
/// whose request fails (its node is down) is sent again, to the next node, until acknowledged.
async fn enqueue_all(bases: Vec<String>, topic: String) -> Vec<Acked> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut acked = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut node = 0;
    for i in 0..JOBS {
        let (key, seq) = (format!("k{}", i % KEYS), i / KEYS);
        let body = json!({"type": "chaos", "key": key, "payload": {"key": key, "seq": seq, "mode": mode(i)}});
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "enqueueing took over 120 s"
            );
            let url = format!("{}/v1/topics/{topic}/jobs", bases[node % bases.len()]);
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status() == 201 => {
                    let v: Value = r.json().await.unwrap();
                    let id = v["id"].as_str().unwrap().to_owned();
                    acked.push(Acked {
                        id,
                        key: key.clone(),
                        seq,
                        mode: mode(i),
                    });
                    break;
                }
                _ => {
                    node += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    acked
}

/// Waits until the group's lag on the topic is 0 (asked of any node that answers).
async fn wait_drained(bases: &[String], topic: &str, group: &str, timeout: Duration) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        for base in bases {
            if let Ok(r) = http
                .get(format!("{base}/v1/groups/{group}/lag?topic={topic}"))
                .send()
                .await
            {
                if let Ok(v) = r.json::<Value>().await {
                    if v["lag"] == 0 {
                        return;
                    }
                    last = v;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the group did not finish within {timeout:?}: {last}");
}

struct Run {
    start: u128,
    end: Option<u128>,
    pid: u32,
    id: String,
    seq: usize,
}

/// Reads the nodes' logs and checks what the run must show; returns the counts it prints.
fn check(
    dir: &Path,
    acked: &[Acked],
    dead_ids: &HashSet<String>,
    deaths: &[(u32, u128)],
    kills: usize,
) {
    let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    // per process, job and attempt, in time order: a job can run twice in one process (its
    // partition moved to another member of the process and back), never at once
    let mut ends: HashMap<(u32, String, String), Vec<(u128, String)>> = HashMap::new();
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let t: u128 = f[4].parse().unwrap();
            let pid: u32 = f[5].parse().unwrap();
            match f[0] {
                "S" => starts.push((
                    f[1].to_owned(),
                    f[2].parse().unwrap(),
                    f[3].to_owned(),
                    t,
                    pid,
                    f[6].to_owned(),
                )),
                "E" => {
                    ends.entry((pid, f[6].to_owned(), f[3].to_owned()))
                        .or_default()
                        .push((t, f[7].to_owned()));
                }
                other => panic!("bad log line {other}"),
            }
        }
    }
    let mut done: HashSet<String> = HashSet::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for e in ends.values_mut() {
        e.sort();
        e.reverse();
    }
    starts.sort_by_key(|s| s.3);
    for (key, seq, attempt, start, pid, id) in starts {
        let end = ends
            .get_mut(&(pid, id.clone(), attempt.clone()))
            .and_then(|e| e.pop());
        let end = end.as_ref();
        if let Some((_, outcome)) = end {
            *outcomes.entry(outcome.clone()).or_default() += 1;
            if outcome == "done" {
                done.insert(id.clone());
            }
        } else {
            *outcomes.entry("interrupted".into()).or_default() += 1;
        }
        // a run that never ended ended when its process was killed
        let end = end
            .map(|(t, _)| *t)
            .or_else(|| deaths.iter().find(|(p, _)| *p == pid).map(|(_, t)| *t));
        runs.entry(key).or_default().push(Run {
            start,
            end,
            pid,
            id,
            seq,
        });
    }
    for a in acked {
        match a.mode {
            "fail" => assert!(
                dead_ids.contains(&a.id),
                "job {} ({} #{}) should be dead-lettered",
                a.id,
                a.key,
                a.seq
            ),
            _ => assert!(
                done.contains(&a.id),
                "acknowledged job {} ({} #{}, {}) never completed",
                a.id,
                a.key,
                a.seq,
                a.mode
            ),
        }
    }
    let mut total_runs = 0;
    for (key, runs) in &mut runs {
        total_runs += runs.len();
        runs.sort_by_key(|r| r.start);
        for w in runs.windows(2) {
            let end = w[0].end.unwrap_or_else(|| {
                panic!(
                    "a run of {key} (pid {}) never ended and its process was not killed",
                    w[0].pid
                )
            });
            assert!(
                w[1].start >= end,
                "key {key} ran two jobs at once: job {} (pid {}) started {} µs before job {} (pid {}) ended",
                w[1].id, w[1].pid, (end - w[1].start) / 1000, w[0].id, w[0].pid
            );
        }
        let mut first: Vec<(usize, u128)> = Vec::new();
        for r in runs.iter() {
            if !first.iter().any(|(s, _)| *s == r.seq) {
                first.push((r.seq, r.start));
            }
        }
        let seqs: Vec<usize> = first.iter().map(|(s, _)| *s).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(
            seqs, sorted,
            "first deliveries of key {key} out of enqueue order"
        );
    }
    let ids: HashSet<&str> = acked.iter().map(|a| a.id.as_str()).collect();
    println!(
        "chaos: {} jobs acknowledged over {} keys; {} completed, {} dead-lettered; {} handler runs ({} redeliveries or retries), outcomes {:?}; {} process kills",
        acked.len(),
        KEYS,
        done.len(),
        dead_ids.len(),
        total_runs,
        total_runs - ids.len(),
        outcomes,
        kills
    );
}

async fn dead_letter_ids(backend: &dyn Backend, topic: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let info = backend
        .describe_topic(&format!("{topic}.dlq"))
        .await
        .unwrap()
        .expect("the dead-letter topic exists");
    for p in info.partitions {
        for r in backend
            .fetch(&info.name, p.partition, p.low, 100_000)
            .await
            .unwrap()
        {
            ids.insert(r.headers.get_str("message_id").unwrap().to_owned());
        }
    }
    ids
}

fn node_env(
    backend: &str,
    dir: &Path,
    name: &str,
    names: &(String, String),
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("CHAOS_BACKEND".to_owned(), backend.to_owned()),
        ("CHAOS_TOPIC".to_owned(), names.0.clone()),
        ("CHAOS_GROUP".to_owned(), names.1.clone()),
        ("CHAOS_PORT".to_owned(), free_port().to_string()),
        (
            "CHAOS_LOG".to_owned(),
            dir.join(format!("{name}.log")).display().to_string(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    env
}

/// Kills and restarts the nodes in turn, `kills` times, every `every`, while `enqueue` runs;
/// returns the acknowledged jobs.
async fn chaos(
    nodes: &mut [Node],
    names: &(String, String),
    kills: usize,
    every: Duration,
) -> Vec<Acked> {
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    for b in &bases {
        util::wait_ok(b, "/healthz", Duration::from_secs(60)).await;
    }
    let enqueue = tokio::spawn(enqueue_all(bases.clone(), names.0.clone()));
    for k in 0..kills {
        tokio::time::sleep(every).await;
        let n = k % nodes.len();
        nodes[n].kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes[n].restart();
    }
    let acked = enqueue.await.unwrap();
    wait_drained(&bases, &names.0, &names.1, Duration::from_secs(120)).await;
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let names = ("chaos".to_owned(), "chaos-workers".to_owned());
    let extra = [("CHAOS_DATA", data.display().to_string())];
    let mut nodes = vec![Node::start(node_env(
        "embedded",
        dir.path(),
        "node",
        &names,
        &extra,
    ))];
    let kills = 5;
    let acked = chaos(&mut nodes, &names, kills, Duration::from_millis(2500)).await;
    nodes[0].kill();
    let backend = EmbeddedBackend::open(EmbeddedConfig::new(&data)).unwrap();
    let dead = dead_letter_ids(&backend, &names.0).await;
    check(dir.path(), &acked, &dead, &nodes[0].deaths, kills);
}

#[cfg(feature = "live")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kafka_live() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect("CONVEYOR_TEST_BROKERS=host:port");
    let dir = tempfile::tempdir().unwrap();
    let suffix = util::unique_suffix();
    let names = (format!("chaos.{suffix}"), format!("chaos-workers.{suffix}"));
    let extra = [("CHAOS_BROKERS", brokers.clone())];
    let mut nodes = vec![
        Node::start(node_env("kafka", dir.path(), "a", &names, &extra)),
        Node::start(node_env("kafka", dir.path(), "b", &names, &extra)),
    ];
    let kills = 4;
    let acked = chaos(&mut nodes, &names, kills, Duration::from_secs(4)).await;
    let mut deaths = Vec::new();
    for n in &mut nodes {
        n.kill();
        deaths.extend_from_slice(&n.deaths);
    }
    let backend =
        conveyor_kafka::KafkaBackend::connect(conveyor_kafka::KafkaConfig::new(brokers)).unwrap();
    let dead = dead_letter_ids(&backend, &names.0).await;
    check(dir.path(), &acked, &dead, &deaths, kills);
}
