//! `Idempotency-Key` on enqueue, over HTTP on the embedded backend: a repeat gets the first
//! answer and stores nothing more (single and batch), also after a restart of the server on the
//! same data folder and after a `kill -9` of the API process; another request with the same key
//! is `422 idempotency_key_reused`; concurrent repeats store one job; malformed keys are `400
//! invalid_idempotency_key` and store nothing; a repeat after a crash between the job and its
//! answer stores a second record with the same message id (which an inbox drops).
//!
//! The crash test runs this binary again as the API process (the ignored
//! `idempotency_api_process`: `conveyor_server::dev::run` on a data folder and port it is given).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use conveyor_core::{Backend, Record, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_server::api::idempotency::{fingerprint, message_id, IDEMPOTENCY_TOPIC};
use conveyor_server::{app, AppState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOPIC: &str = "hooks";

fn open(dir: &Path) -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir)).unwrap())
}

async fn router(backend: &Arc<dyn Backend>) -> axum::Router {
    match backend.create_topic(&TopicSpec::new(TOPIC, 3)).await {
        Ok(_) | Err(conveyor_core::Error::TopicConflict { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    let mut state = AppState::new(Arc::clone(backend));
    state.max_batch = 10;
    app(state)
}

/// The answer: status, body, and whether it was marked as given again.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
    replayed: bool,
}

async fn post(router: &axum::Router, uri: &str, key: Option<&[u8]>, body: &Value) -> Answer {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header(
            "idempotency-key",
            axum::http::HeaderValue::from_bytes(k).unwrap(),
        );
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap(),
        replayed,
    }
}

/// Every record of the topic, as (message id, job type).
async fn records(backend: &Arc<dyn Backend>, topic: &str) -> Vec<(String, String)> {
    let info = backend.describe_topic(topic).await.unwrap().unwrap();
    let mut out = Vec::new();
    for (p, part) in info.partitions.iter().enumerate() {
        for r in backend
            .fetch(topic, p as i32, part.low, 10_000)
            .await
            .unwrap()
        {
            out.push((
                r.headers.get_str("message_id").unwrap_or("").to_owned(),
                r.headers.get_str("job_type").unwrap_or("").to_owned(),
            ));
        }
    }
    out
}

fn job(n: u32) -> Value {
    json!({"type": "invoice.paid", "key": format!("customer-{n}"), "payload": {"invoice": n}})
}

const JOBS: &str = "/v1/topics/hooks/jobs";
const BATCH: &str = "/v1/topics/hooks/jobs/batch";

#[tokio::test]
async fn a_repeat_gets_the_first_answer_and_stores_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    let api = router(&backend).await;

    let first = post(&api, JOBS, Some(b"evt_1"), &job(1)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert!(!first.replayed);
    assert_eq!(
        first.body["id"],
        json!(message_id(
            TOPIC,
            "evt_1",
            &fingerprint("jobs", TOPIC, &job(1)),
            None
        ))
    );
    // the same request with its members in another order and other whitespace is the same
    let same = serde_json::from_str::<Value>(
        r#"{ "payload": {"invoice": 1}, "key": "customer-1", "type": "invoice.paid" }"#,
    )
    .unwrap();
    for _ in 0..3 {
        let again = post(&api, JOBS, Some(b"evt_1"), &same).await;
        assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
        assert_eq!(again.body, first.body);
        assert!(again.replayed);
    }
    assert_eq!(records(&backend, TOPIC).await.len(), 1);

    // without a key, every request is a new job
    post(&api, JOBS, None, &job(1)).await;
    post(&api, JOBS, None, &job(1)).await;
    assert_eq!(records(&backend, TOPIC).await.len(), 3);

    // a batch: the whole answer again, its jobs stored once
    let batch = json!({"jobs": [job(2), job(3), job(4)]});
    let first = post(&api, BATCH, Some(b"batch-1"), &batch).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let again = post(&api, BATCH, Some(b"batch-1"), &batch).await;
    assert_eq!((again.status, again.replayed), (StatusCode::CREATED, true));
    assert_eq!(again.body, first.body);
    assert_eq!(
        first.body["jobs"][2]["id"],
        json!(message_id(
            TOPIC,
            "batch-1",
            &fingerprint("batch", TOPIC, &batch),
            Some(2)
        ))
    );
    assert_eq!(records(&backend, TOPIC).await.len(), 6);
    // one answer per key in the idempotency log
    assert_eq!(records(&backend, IDEMPOTENCY_TOPIC).await.len(), 2);
}

#[tokio::test]
async fn the_same_key_for_another_request_is_422_and_keys_are_per_topic() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    backend
        .create_topic(&TopicSpec::new("other", 1))
        .await
        .unwrap();
    let api = router(&backend).await;
    let first = post(&api, JOBS, Some(b"k-1"), &job(1)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    for (uri, body) in [(JOBS, job(2)), (BATCH, json!({"jobs": [job(1)]}))] {
        let other = post(&api, uri, Some(b"k-1"), &body).await;
        assert_eq!(
            other.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{uri}: {:?}",
            other.body
        );
        assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
        assert!(
            other.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("use a new key"),
            "{:?}",
            other.body
        );
    }
    assert_eq!(records(&backend, TOPIC).await.len(), 1);
    // the same key on another topic is another key
    let elsewhere = post(&api, "/v1/topics/other/jobs", Some(b"k-1"), &job(1)).await;
    assert_eq!(elsewhere.status, StatusCode::CREATED);
    assert!(!elsewhere.replayed);
    assert_ne!(elsewhere.body["id"], first.body["id"]);
    // a refused request keeps no answer: its repeat is judged again
    let unknown = post(&api, "/v1/topics/nope/jobs", Some(b"k-2"), &job(1)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    backend
        .create_topic(&TopicSpec::new("nope", 1))
        .await
        .unwrap();
    let now = post(&api, "/v1/topics/nope/jobs", Some(b"k-2"), &job(1)).await;
    assert_eq!(now.status, StatusCode::CREATED, "{:?}", now.body);
}

#[tokio::test]
async fn concurrent_repeats_store_one_job_and_all_get_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    let api = router(&backend).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { post(&api, JOBS, Some(b"same-key"), &job(7)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(
        answers.iter().all(|a| a.status == StatusCode::CREATED),
        "{answers:?}"
    );
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    assert_eq!(records(&backend, TOPIC).await.len(), 1);
}

#[tokio::test]
async fn malformed_keys_are_400_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    let api = router(&backend).await;
    let long = vec![b'k'; 256];
    let cases: [(&str, &[u8]); 5] = [
        ("empty", b""),
        ("256 bytes", &long),
        ("a tab", b"a\tb"),
        ("not ASCII", b"caf\xc3\xa9"),
        ("a trailing space", b"key "),
    ];
    for (what, key) in cases {
        for uri in [JOBS, BATCH] {
            let body = if uri == JOBS {
                job(1)
            } else {
                json!({"jobs": [job(1)]})
            };
            let a = post(&api, uri, Some(key), &body).await;
            assert_eq!(
                a.status,
                StatusCode::BAD_REQUEST,
                "{what} {uri}: {:?}",
                a.body
            );
            assert_eq!(a.body["error"]["code"], "invalid_idempotency_key", "{what}");
        }
    }
    // two keys in one request
    let req = Request::builder()
        .method("POST")
        .uri(JOBS)
        .header("content-type", "application/json")
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body(Body::from(job(1).to_string()))
        .unwrap();
    assert_eq!(
        api.clone().oneshot(req).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    // the longest key works
    let a = post(&api, JOBS, Some(&long[..255]), &job(1)).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(records(&backend, TOPIC).await.len(), 1);
}

#[tokio::test]
async fn a_restarted_server_gives_the_first_answer_again() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let backend = open(dir.path());
        let api = router(&backend).await;
        let a = post(&api, JOBS, Some(b"before-restart"), &job(1)).await;
        assert_eq!(a.status, StatusCode::CREATED);
        backend.close().await.unwrap();
        a.body
    };
    let backend = open(dir.path());
    let api = router(&backend).await;
    let again = post(&api, JOBS, Some(b"before-restart"), &job(1)).await;
    assert_eq!((again.status, again.replayed), (StatusCode::CREATED, true));
    assert_eq!(again.body, first);
    let other = post(&api, JOBS, Some(b"before-restart"), &job(2)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(records(&backend, TOPIC).await.len(), 1);
}

#[tokio::test]
async fn a_crash_between_job_and_answer_leaves_a_repeat_with_the_same_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    let api = router(&backend).await;
    // what a crash after storing the job and before storing its answer leaves: the job alone
    let id = message_id(
        TOPIC,
        "lost-answer",
        &fingerprint("jobs", TOPIC, &job(1)),
        None,
    );
    let (_, record) = conveyor_runtime::Client::new(Arc::clone(&backend)).to_record(
        conveyor_runtime::NewJob::json("invoice.paid", &json!({"invoice": 1}))
            .unwrap()
            .with_id(id.clone()),
    );
    let record: Record = record;
    backend.publish(TOPIC, vec![record]).await.unwrap();
    let a = post(&api, JOBS, Some(b"lost-answer"), &job(1)).await;
    assert_eq!((a.status, a.replayed), (StatusCode::CREATED, false));
    assert_eq!(a.body["id"], json!(id));
    let ids: Vec<String> = records(&backend, TOPIC)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, vec![id.clone(), id], "two records, one message id");
}

/// The API process of the crash test: `conveyor dev` on `IDEM_DATA`, listening on `IDEM_PORT`.
#[tokio::test]
#[ignore = "run by kill_9_of_the_api_process_keeps_every_answer_it_sent"]
async fn idempotency_api_process() {
    let var = |n: &str| std::env::var(n).unwrap_or_else(|_| panic!("{n} is not set"));
    let config = conveyor_server::Config {
        data_dir: var("IDEM_DATA").into(),
        topics: vec![TopicSpec::new(TOPIC, 3)],
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", var("IDEM_PORT").parse().unwrap()))
        .await
        .unwrap();
    conveyor_server::dev::run(config, listener, std::future::pending())
        .await
        .unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct ApiProcess(std::process::Child);

impl ApiProcess {
    async fn start(data: &Path, port: u16) -> Self {
        // killed and waited for by kill_9 or Drop
        let child = ApiProcess(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "idempotency_api_process",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env("IDEM_DATA", data)
                .env("IDEM_PORT", port.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let url = format!("http://127.0.0.1:{port}/healthz");
        for _ in 0..300 {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the API process did not answer on port {port} within 15 s");
    }

    fn kill_9(mut self) {
        self.0.kill().unwrap(); // SIGKILL
        self.0.wait().unwrap();
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn kill_9_of_the_api_process_keeps_every_answer_it_sent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let send = |port: u16, key: String, n: u32| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("http://127.0.0.1:{port}{JOBS}"))
                .header("idempotency-key", key)
                .json(&job(n))
                .send()
                .await
                .unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (
                r.status().as_u16(),
                replayed,
                r.json::<Value>().await.unwrap(),
            )
        }
    };
    const KEYS: u32 = 20;
    let port = free_port();
    let api = ApiProcess::start(&data, port).await;
    let mut first = Vec::new();
    for n in 0..KEYS {
        let (status, replayed, body) = send(port, format!("crash-{n}"), n).await;
        assert_eq!((status, replayed), (201, false), "{body}");
        first.push(body);
    }
    api.kill_9();
    let port = free_port();
    let api = ApiProcess::start(&data, port).await;
    for n in 0..KEYS {
        let (status, replayed, body) = send(port, format!("crash-{n}"), n).await;
        assert_eq!((status, replayed), (201, true), "key crash-{n}: {body}");
        assert_eq!(body, first[n as usize], "key crash-{n}");
    }
    api.kill_9();
    let backend = open(&data.join("log"));
    assert_eq!(records(&backend, TOPIC).await.len(), KEYS as usize);
    eprintln!("kill -9 of the API process: {KEYS} answers given again after the restart, {KEYS} jobs stored");
}

/// conveyor's own topics take no jobs over HTTP: a job written to the answers topic (or the
/// control log) would be read as one of conveyor's records, forging an answer or a command.
#[tokio::test]
async fn conveyors_own_topics_take_no_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    let api = router(&backend).await;
    // make the answers topic exist
    let first = post(&api, JOBS, Some(b"k-1"), &job(1)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let before = records(&backend, IDEMPOTENCY_TOPIC).await.len();
    let forged =
        json!({"type": "x", "payload": {"topic": TOPIC, "key": "k-2", "answer": {"id": "forged"}}});
    for uri in [
        format!("/v1/topics/{IDEMPOTENCY_TOPIC}/jobs"),
        format!("/v1/topics/{IDEMPOTENCY_TOPIC}/jobs/batch"),
        "/v1/topics/conveyor.control/jobs".to_owned(),
        format!("/v1/topics/{IDEMPOTENCY_TOPIC}/requests"),
    ] {
        let body = match uri.ends_with("batch") {
            true => json!({ "jobs": [forged.clone()] }),
            false => forged.clone(),
        };
        let a = post(&api, &uri, None, &body).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{uri}: {:?}",
            a.body
        );
        assert!(
            a.body.to_string().contains("conveyor's own topics"),
            "{uri}: {:?}",
            a.body
        );
    }
    assert_eq!(records(&backend, IDEMPOTENCY_TOPIC).await.len(), before);
}
