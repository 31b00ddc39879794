//! `POST /v1/topics/{topic}/requests` over a real socket: the reply comes back as JSON with its
//! correlation id; a request nobody serves is a 504 `request_timeout` after its bound; a
//! dead-lettered one a 502 `request_failed`; a client that disconnects leaves nothing waiting,
//! and its late reply is counted in `GET /v1/requests/stats`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor_core::{Backend, RetryPolicy, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::{json_handler, Job, JobError, Worker};
use conveyor_server::{app, AppState};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};

struct Server {
    _dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    base: String,
    http: reqwest::Client,
    gate: Arc<Semaphore>,
    _stop: Vec<oneshot::Sender<()>>,
}

/// The API on port 0 with `max_reply`, and a worker serving `quotes` (`echo`, `fail`, and
/// `gated`, which waits for a permit of the gate); `unserved` has no worker.
async fn server(max_reply: Duration) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    for t in ["quotes", "unserved"] {
        backend.create_topic(&TopicSpec::new(t, 2)).await.unwrap();
    }
    let gate = Arc::new(Semaphore::new(0));
    let g = Arc::clone(&gate);
    let worker = Worker::builder(Arc::clone(&backend), "quotes-workers", ["quotes"])
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .handler(
            "echo",
            json_handler(
                |p: Value, _job: Job| async move { Ok::<_, JobError>(json!({ "quoted": p })) },
            ),
        )
        .handler(
            "fail",
            json_handler(|_p: Value, _job: Job| async move {
                Err::<(), _>(JobError::fail("no such sku"))
            }),
        )
        .handler(
            "gated",
            json_handler(move |p: Value, _job: Job| {
                let g = Arc::clone(&g);
                async move {
                    g.acquire().await.unwrap().forget();
                    Ok::<_, JobError>(json!({ "quoted": p }))
                }
            }),
        )
        .build();
    let (stop_worker, stopped) = oneshot::channel::<()>();
    tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let mut state = AppState::new(Arc::clone(&backend));
    state.max_reply_timeout = max_reply;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_api, api_stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async {
                let _ = api_stopped.await;
            })
            .await
            .unwrap();
    });
    Server {
        _dir: dir,
        backend,
        base,
        http: reqwest::Client::new(),
        gate,
        _stop: vec![stop_worker, stop_api],
    }
}

impl Server {
    async fn post(&self, topic: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/topics/{topic}/requests", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/v1/requests/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_stats(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.stats().await;
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_its_reply_as_json_with_its_correlation_id() {
    let s = server(Duration::from_secs(60)).await;
    let (status, v) = s
        .post(
            "quotes",
            json!({"type": "echo", "payload": {"sku": "A-1"}, "reply_timeout_ms": 30000}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reply"], json!({"quoted": {"sku": "A-1"}}), "{v}");
    let id = v["correlation_id"].as_str().expect("correlation id");
    // the request as stored: its message id is the correlation id, and it names the reply topic
    let stats = s.stats().await;
    let mut found = false;
    for p in 0..2 {
        for r in s.backend.fetch("quotes", p, 0, 10).await.unwrap() {
            if r.headers.get_str("message_id") == Some(id) {
                assert_eq!(r.headers.get_str("correlation_id"), Some(id));
                assert_eq!(r.headers.get_str("reply_to"), stats["reply_topic"].as_str());
                found = true;
            }
        }
    }
    assert!(found, "the request {id} is stored");
    assert_eq!(
        (
            stats["sent"].as_u64(),
            stats["replied"].as_u64(),
            stats["pending"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_serves_is_a_504_request_timeout_after_its_bound() {
    let s = server(Duration::from_secs(60)).await;
    let started = Instant::now();
    let (status, v) = s
        .post(
            "unserved",
            json!({"type": "echo", "payload": 1, "reply_timeout_ms": 400}),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (504, Some("request_timeout")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("unserved"),
        "{v}"
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let stats = s.stats().await;
    assert_eq!(
        (stats["timed_out"].as_u64(), stats["pending"].as_u64()),
        (Some(1), Some(0)),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_bound_caps_the_wait_a_request_asks_for() {
    let s = server(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, v) = s
        .post(
            "unserved",
            json!({"type": "echo", "payload": 1, "reply_timeout_ms": 60000}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (504, Some("request_timeout")),
        "{v}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_request_is_a_502_request_failed_with_the_error() {
    let s = server(Duration::from_secs(60)).await;
    let (status, v) = s
        .post(
            "quotes",
            json!({"type": "fail", "payload": {"sku": "Z"}, "reply_timeout_ms": 30000}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (502, Some("request_failed")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no such sku"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_anything_is_sent() {
    let s = server(Duration::from_secs(60)).await;
    for (body, field) in [
        (
            json!({"type": "echo", "payload": 1, "reply_timeout_ms": 0}),
            "reply_timeout_ms",
        ),
        (
            json!({"type": "echo", "payload": 1, "reply_timeout_ms": 60001}),
            "reply_timeout_ms",
        ),
        (
            json!({"type": "echo", "payload": 1, "reply_timeout_ms": "soon"}),
            "reply_timeout_ms",
        ),
        (json!({"type": "echo", "payload": 1, "wait": 5}), "wait"),
        (json!({"payload": 1}), "type"),
        (
            json!({"type": "echo", "payload": 1, "headers": {"reply_to": "x"}}),
            "headers.reply_to",
        ),
    ] {
        let (status, v) = s.post("quotes", body.clone()).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (422, Some("invalid_field")),
            "{body}: {v}"
        );
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (status, v) = s.post("nope", json!({"type": "echo", "payload": 1})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("unknown_topic")),
        "{v}"
    );
    let stats = s.stats().await;
    assert_eq!(
        (stats["sent"].as_u64(), stats["pending"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_leaves_nothing_waiting_and_its_reply_is_counted_late() {
    let s = server(Duration::from_secs(60)).await;
    let gone = s
        .http
        .post(format!("{}/v1/topics/quotes/requests", s.base))
        .timeout(Duration::from_millis(300))
        .json(&json!({"type": "gated", "payload": 1, "reply_timeout_ms": 60000}))
        .send()
        .await;
    assert!(gone.unwrap_err().is_timeout());
    let stats = s
        .wait_stats("the dropped caller's entry removed", |v| {
            v["abandoned"] == 1 && v["pending"] == 0
        })
        .await;
    assert_eq!(stats["sent"], 1, "{stats}");
    s.gate.add_permits(1);
    let stats = s
        .wait_stats("its late reply counted", |v| v["late"] == 1)
        .await;
    assert_eq!(
        (stats["pending"].as_u64(), stats["replied"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
}
