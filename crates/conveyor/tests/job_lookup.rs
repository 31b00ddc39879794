//! Job lookup end to end (issue 22 item 6): jobs enqueued through the HTTP API go through
//! successes, a failure then a success, retries to exhaustion, permanent failures, long delays
//! and cancellations, run by an in-process worker; each job's state from `GET /v1/jobs/{id}`
//! must match what happened to it (state, attempts, last error, place, the dead letter's place,
//! the due time), listings by state must count them, and after the API, the worker and the
//! backend are stopped and opened again the states are the same. Also: a topic nobody works on
//! answers `waiting` at the place the `201` gave, a topic with `job_states` off is not tracked
//! (`404`), malformed ids are `422 invalid_field` and unknown ones `404 not_found`.
//! Embedded: 10,000 jobs; live Kafka (`--features live`, `scripts/live.sh`): 1,000.

mod util;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conveyor_core::{headers, Backend, RetryPolicy, TopicSpec};
use conveyor_embedded::{Durability, EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::observation::job_states::EnqueueLog;
use conveyor_runtime::{json_handler, Job, JobError, Worker, WorkerStats};
use conveyor_server::{app, AppState};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// What each tenth of the jobs does, by `n % 10`.
const KINDS: [&str; 10] = [
    "ok", "ok", "ok", "ok", "ok", "once", "exhaust", "fail", "delay", "cancel",
];

/// The API on port 0 over `backend`, writing `waiting` states except for the `off` topics.
async fn api(backend: &Arc<dyn Backend>, off: &[&str]) -> (String, oneshot::Sender<()>) {
    let mut state = AppState::new(Arc::clone(backend));
    let off: HashSet<String> = off.iter().map(|t| t.to_string()).collect();
    state.client = state
        .client
        .with_job_states(EnqueueLog::start(Arc::clone(backend), off));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (base, stop)
}

/// The worker of `topic`: `ok` succeeds, `once` fails its first attempt, `exhaust` fails every
/// attempt (3 allowed), `fail` fails for good; lookup on or off.
fn worker(
    backend: &Arc<dyn Backend>,
    group: &str,
    topic: &str,
    states: bool,
) -> (
    Arc<WorkerStats>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let worker = Worker::builder(Arc::clone(backend), group, [topic])
        .retry(RetryPolicy::fast(3))
        .concurrency(32)
        .job_states(states)
        .fallback(json_handler(|p: Value, job: Job| async move {
            match (p["kind"].as_str().unwrap_or(""), job.attempt) {
                ("once", 1) => Err(JobError::retry("the first attempt fails")),
                ("exhaust", a) => Err(JobError::retry(format!("attempt {a} fails"))),
                ("fail", _) => Err(JobError::fail("no such account")),
                _ => Ok(()),
            }
        }))
        .build();
    let stats = worker.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stats, stop, handle)
}

/// An enqueued job and what must become of it.
#[derive(Debug, Clone)]
struct Expect {
    n: usize,
    kind: &'static str,
    /// Where the `201` said it is.
    place: (i32, i64),
    /// `delay`: the due time asked for.
    run_at: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    headers::format_time(t)
}

/// Enqueues `n` jobs to `topic` in batches of 500, kinds by `n % 10`; cancels the `cancel`
/// ones (due `cancel_delay_ms` after the enqueue: long enough for every cancellation to reach
/// the worker first, 6 s on embedded, 20 s on Kafka where each takes a produce and a read) at
/// once.
async fn enqueue(
    http: &reqwest::Client,
    base: &str,
    topic: &str,
    n: usize,
    cancel_delay_ms: u64,
) -> HashMap<String, Expect> {
    let run_at = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let mut out = HashMap::new();
    for from in (0..n).step_by(500) {
        let jobs: Vec<Value> = (from..(from + 500).min(n))
            .map(|i| {
                let kind = KINDS[i % 10];
                let mut job = json!({"type": "lookup", "payload": {"n": i, "kind": kind}, "key": format!("k{}", i % 97)});
                match kind {
                    "delay" => job["run_at"] = json!(run_at),
                    "cancel" => job["delay_ms"] = json!(cancel_delay_ms),
                    _ => {}
                }
                job
            })
            .collect();
        let r = http
            .post(format!("{base}/v1/topics/{topic}/jobs/batch"))
            .json(&json!({ "jobs": jobs }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let body: Value = r.json().await.unwrap();
        for (k, at) in body["jobs"].as_array().unwrap().iter().enumerate() {
            let i = from + k;
            let kind = KINDS[i % 10];
            out.insert(
                at["id"].as_str().unwrap().to_owned(),
                Expect {
                    n: i,
                    kind,
                    place: (
                        at["partition"].as_i64().unwrap() as i32,
                        at["offset"].as_i64().unwrap(),
                    ),
                    run_at: (kind == "delay").then(|| run_at.clone()),
                },
            );
        }
    }
    let cancels: Vec<String> = out
        .iter()
        .filter(|(_, e)| e.kind == "cancel")
        .map(|(id, _)| id.clone())
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in cancels.chunks(cancels.len().div_ceil(16).max(1)) {
        let (http, base, chunk) = (http.clone(), base.to_owned(), chunk.to_vec());
        tasks.spawn(async move {
            for id in chunk {
                let r = http
                    .delete(format!("{base}/v1/jobs/{id}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    out
}

/// How many jobs `GET /v1/jobs?state=` lists for `topic`, page by page.
async fn count(http: &reqwest::Client, base: &str, topic: &str, state: &str) -> usize {
    let (mut n, mut after): (usize, Option<String>) = (0, None);
    loop {
        let mut q = vec![
            ("state", state.to_owned()),
            ("topic", topic.to_owned()),
            ("limit", "1000".to_owned()),
        ];
        if let Some(a) = &after {
            q.push(("after", a.clone()));
        }
        let page: Value = http
            .get(format!("{base}/v1/jobs"))
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        n += page["jobs"].as_array().unwrap().len();
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return n,
        }
    }
}

/// Waits until the listings count what the jobs must come to.
async fn settle(http: &reqwest::Client, base: &str, topic: &str, n: usize, stats: &WorkerStats) {
    let tenth = n / 10;
    let want = [
        ("succeeded", 6 * tenth),
        ("dead", 2 * tenth),
        ("delayed", tenth),
        ("cancelled", tenth),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut got = Vec::new();
        for (state, _) in want {
            got.push((state, count(http, base, topic, state).await));
        }
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "listings by state: {got:?}, want {want:?}; the worker: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET /v1/jobs/{id}` of every job, 16 at a time; each must say what happened to it.
async fn check_all(
    http: &reqwest::Client,
    base: &str,
    backend: &Arc<dyn Backend>,
    topic: &str,
    expected: &HashMap<String, Expect>,
) {
    let jobs: Vec<(String, Expect)> = expected
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in jobs.chunks(jobs.len().div_ceil(16).max(1)) {
        let (http, base, chunk) = (http.clone(), base.to_owned(), chunk.to_vec());
        tasks.spawn(async move {
            let mut got = Vec::new();
            for (id, e) in chunk {
                let v: Value = http
                    .get(format!("{base}/v1/jobs/{id}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                got.push((id, e, v));
            }
            got
        });
    }
    let mut dead_letters = Vec::new();
    while let Some(r) = tasks.join_next().await {
        for (id, e, v) in r.unwrap() {
            let what = format!("job {id} (n {}, {}): {v}", e.n, e.kind);
            assert_eq!(v["id"], json!(id), "{what}");
            assert_eq!(v["topic"], json!(topic), "{what}");
            let state = v["state"].as_str().unwrap_or("");
            let attempts = v["attempts"].as_u64().unwrap_or(99);
            let error = v["last_error"].as_str().unwrap_or("");
            match e.kind {
                "ok" => assert_eq!((state, attempts, error), ("succeeded", 1, ""), "{what}"),
                "once" => assert_eq!(
                    (state, attempts, error),
                    ("succeeded", 2, "the first attempt fails"),
                    "{what}"
                ),
                "exhaust" => {
                    assert_eq!(
                        (state, attempts, error, v["reason"].as_str()),
                        ("dead", 3, "attempt 3 fails", Some("exhausted")),
                        "{what}"
                    );
                    dead_letters.push((id.clone(), v["dead_letter"].clone()));
                }
                "fail" => {
                    assert_eq!(
                        (state, attempts, error, v["reason"].as_str()),
                        ("dead", 1, "no such account", Some("failed")),
                        "{what}"
                    );
                    dead_letters.push((id.clone(), v["dead_letter"].clone()));
                }
                "delay" => assert_eq!(
                    (state, attempts, v["until"].as_str()),
                    ("delayed", 0, e.run_at.as_deref()),
                    "{what}"
                ),
                "cancel" => assert_eq!((state, attempts), ("cancelled", 0), "{what}"),
                _ => unreachable!(),
            }
            let place = (
                v["partition"].as_i64().unwrap() as i32,
                v["offset"].as_i64().unwrap(),
            );
            if matches!(e.kind, "ok" | "once" | "exhaust" | "fail") {
                // never moved through a tier: still where the enqueue put it
                assert_eq!(place, e.place, "{what}");
            }
            if e.kind == "cancel" {
                // where the enqueue put it, or its copy back from a delay tier (same partition)
                assert!(place.0 == e.place.0 && place.1 >= e.place.1, "{what}");
            }
            if e.kind != "delay" {
                assert!(
                    v["finished_at"].is_string() && v["enqueued_at"].is_string(),
                    "{what}"
                );
            }
            if matches!(e.kind, "ok" | "once" | "exhaust" | "fail") {
                assert!(v["started_at"].is_string(), "{what}");
            }
        }
    }
    // each dead letter is where its state says, and is that job's
    for (id, at) in dead_letters.iter().step_by(7) {
        let (t, p, o) = (
            at["topic"].as_str().unwrap(),
            at["partition"].as_i64().unwrap() as i32,
            at["offset"].as_i64().unwrap(),
        );
        assert_eq!(t, format!("{topic}.dlq"));
        let records = backend.fetch(t, p, o, 1).await.unwrap();
        assert_eq!(records[0].offset, o);
        assert_eq!(
            records[0].headers.get_str(headers::MESSAGE_ID),
            Some(id.as_str()),
            "the dead letter at {t}/{p}@{o}"
        );
    }
}

/// The whole run on `backend`: `n` jobs of `topic` (which must exist with its worker not yet
/// running); returns what was expected.
async fn run_jobs(
    backend: &Arc<dyn Backend>,
    base: &str,
    topic: &str,
    n: usize,
    cancel_delay_ms: u64,
) -> HashMap<String, Expect> {
    let http = reqwest::Client::new();
    let (stats, stop, handle) = worker(backend, &format!("{topic}-workers"), topic, true);
    let expected = enqueue(&http, base, topic, n, cancel_delay_ms).await;
    assert_eq!(expected.len(), n);
    settle(&http, base, topic, n, &stats).await;
    // (cancelled jobs are dropped by the worker or, in a delay tier, by its forwarder)
    let s = &stats;
    assert_eq!(
        (
            s.done.load(Ordering::Relaxed),
            s.dead_lettered.load(Ordering::Relaxed)
        ),
        ((6 * n / 10) as u64, (2 * n / 10) as u64),
        "what the worker did"
    );
    check_all(&http, base, backend, topic, &expected).await;
    let _ = stop.send(());
    handle.await.unwrap();
    expected
}

async fn status_and_code(http: &reqwest::Client, url: &str) -> (u16, String, String) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_owned(),
        v["error"]["field"].as_str().unwrap_or("").to_owned(),
    )
}

/// Malformed and unknown ids, a listing without or with an unknown state.
async fn check_refusals(http: &reqwest::Client, base: &str) {
    let long = "x".repeat(256);
    assert_eq!(
        status_and_code(http, &format!("{base}/v1/jobs/{long}")).await,
        (422, "invalid_field".into(), "id".into()),
        "an id of 256 characters"
    );
    // an id of a producer's own form that names no job: an error, never a made-up state
    for unknown in ["hello", "0192f0c4-5a1e-7b3c-9d2e-4f6a8b0c1d2", "tab%09here"] {
        let (status, code, _) = status_and_code(http, &format!("{base}/v1/jobs/{unknown}")).await;
        assert_eq!((status, code.as_str()), (404, "not_found"), "{unknown}");
    }
    let unknown = headers::new_message_id();
    let (status, code, _) = status_and_code(http, &format!("{base}/v1/jobs/{unknown}")).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    for q in ["", "?state=done", "?state=dead&limit=0"] {
        let (status, code, _) = status_and_code(http, &format!("{base}/v1/jobs{q}")).await;
        assert_eq!((status, code.as_str()), (422, "invalid_field"), "{q}");
    }
}

fn embedded(dir: &std::path::Path) -> Arc<dyn Backend> {
    let mut config = EmbeddedConfig::new(dir);
    config.durability = Durability::Os;
    Arc::new(EmbeddedBackend::open(config).unwrap())
}

/// 10,000 jobs on the embedded backend; the states survive a restart of everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_each_jobs_state_matches_what_happened_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let backend = embedded(dir.path());
    for t in ["lookup", "lookup-idle", "lookup-off"] {
        backend.create_topic(&TopicSpec::new(t, 4)).await.unwrap();
    }
    let (base, stop_api) = api(&backend, &["lookup-off"]).await;
    let http = reqwest::Client::new();
    check_refusals(&http, &base).await;
    let expected = run_jobs(&backend, &base, "lookup", 10_000, 6_000).await;
    let idle = enqueue_plain(&http, &base, "lookup-idle", 5).await;
    check_waiting(&http, &base, &idle).await;
    check_untracked(&backend, &http, &base).await;

    // everything stops; the log is opened again by a fresh backend and a fresh API
    let _ = stop_api.send(());
    backend.close().await.unwrap();
    drop(backend);
    let backend = embedded(dir.path());
    let (base, _stop_api) = api(&backend, &[]).await;
    check_all(&http, &base, &backend, "lookup", &expected).await;
    check_waiting(&http, &base, &idle).await;
    check_cli(&base, &expected).await;
}

/// `conveyor jobs show` and `list` print what the API answers; a malformed id fails with the
/// API's message.
async fn check_cli(base: &str, expected: &HashMap<String, Expect>) {
    let (id, _) = expected.iter().find(|(_, e)| e.kind == "fail").unwrap();
    let base = base.to_owned();
    let id = id.clone();
    let (show, list, bad) = tokio::task::spawn_blocking(move || {
        (
            util::conveyor(&["jobs", "show", &id, "--url", &base]),
            util::conveyor(&[
                "jobs",
                "list",
                "--state",
                "cancelled",
                "--topic",
                "lookup",
                "--limit",
                "3",
                "--url",
                &base,
            ]),
            util::conveyor(&["jobs", "show", "hello", "--url", &base]),
        )
    })
    .await
    .unwrap();
    let (ok, out, err) = show;
    assert!(ok, "{out}{err}");
    for line in [
        "  state        dead\n",
        "  attempts     1\n",
        "  reason       failed\n",
        "  last error   no such account\n",
        "  dead letter  lookup.dlq/",
    ] {
        assert!(out.contains(line), "`{line}` in:\n{out}");
    }
    let (ok, out, err) = list;
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("  cancelled  lookup/"))
            .count(),
        3,
        "{out}"
    );
    assert!(
        out.lines().last().unwrap().starts_with("more: --after "),
        "{out}"
    );
    let (ok, _, err) = bad;
    assert!(!ok && err.contains("404 not_found"), "{err}");
}

/// Enqueues `n` plain jobs one by one; returns their ids with the places the `201`s gave.
async fn enqueue_plain(
    http: &reqwest::Client,
    base: &str,
    topic: &str,
    n: usize,
) -> Vec<(String, i32, i64)> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = http
            .post(format!("{base}/v1/topics/{topic}/jobs"))
            .json(&json!({"type": "lookup", "payload": {"n": i, "kind": "ok"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().await.unwrap();
        out.push((
            v["id"].as_str().unwrap().to_owned(),
            v["partition"].as_i64().unwrap() as i32,
            v["offset"].as_i64().unwrap(),
        ));
    }
    out
}

/// Jobs nobody works on: `waiting`, where the enqueue put them.
async fn check_waiting(http: &reqwest::Client, base: &str, jobs: &[(String, i32, i64)]) {
    for (id, p, o) in jobs {
        let url = format!("{base}/v1/jobs/{id}");
        let mut v = util::get_json(http, &url).await;
        for _ in 0..100 {
            if v["state"] == "waiting" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            v = util::get_json(http, &url).await;
        }
        assert_eq!(
            (
                v["state"].as_str(),
                v["partition"].as_i64(),
                v["offset"].as_i64(),
                v["attempts"].as_u64()
            ),
            (Some("waiting"), Some(*p as i64), Some(*o), Some(0)),
            "{v}"
        );
    }
}

/// A topic with `job_states` off (the API's and the worker's switch): its jobs run, and no
/// state of them is known.
async fn check_untracked(backend: &Arc<dyn Backend>, http: &reqwest::Client, base: &str) {
    let (stats, stop, handle) = worker(backend, "lookup-off-workers", "lookup-off", false);
    let jobs = enqueue_plain(http, base, "lookup-off", 20).await;
    util::wait_for(Duration::from_secs(30), "20 untracked jobs done", || {
        stats.done.load(Ordering::Relaxed) == 20
    })
    .await;
    // a commit interval later their states would have been written
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (id, _, _) in &jobs {
        let (status, code, _) = status_and_code(http, &format!("{base}/v1/jobs/{id}")).await;
        assert_eq!(
            (status, code.as_str()),
            (404, "not_found"),
            "untracked job {id}"
        );
    }
    let _ = stop.send(());
    handle.await.unwrap();
}

/// 1,000 jobs on a live Kafka broker; the states are read again by a fresh API on a fresh
/// connection (a restarted process reads the compacted topic from its start).
#[cfg(feature = "live")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_kafka_each_jobs_state_matches_what_happened() {
    use conveyor_kafka::{KafkaBackend, KafkaConfig};
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS=host:port, or run the tests through scripts/kafka.sh");
    let kafka = || -> Arc<dyn Backend> {
        Arc::new(KafkaBackend::connect(KafkaConfig::new(brokers.clone())).unwrap())
    };
    let backend = kafka();
    let topic = format!("lookup-{}", util::unique_suffix());
    backend
        .create_topic(&TopicSpec::new(topic.clone(), 3))
        .await
        .unwrap();
    let (base, stop_api) = api(&backend, &[]).await;
    let http = reqwest::Client::new();
    check_refusals(&http, &base).await;
    let expected = run_jobs(&backend, &base, &topic, 1_000, 20_000).await;
    let _ = stop_api.send(());
    backend.close().await.unwrap();
    drop(backend);
    let backend = kafka();
    let (base, _stop_api) = api(&backend, &[]).await;
    check_all(&http, &base, &backend, &topic, &expected).await;
}
