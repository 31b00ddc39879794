//! The webhook handler against a real HTTP server (axum on 127.0.0.1): redirects are not
//! followed (a 302 is a failure, the redirect target never sees the job), `Retry-After` is
//! honoured in seconds and as an HTTP date beyond `max_delay_ms` up to its own bound, and an
//! error answer's body is read only up to a bound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use conveyor_core::headers::dlq;
use conveyor_core::{Backend, RetryPolicy, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::{Client, NewJob, WebhookHandler, Worker};
use tokio::sync::oneshot;

/// Serves `app` on a free port; returns its address.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Runs one job through a webhook worker until `done` holds; returns the backend.
async fn deliver(
    url: String,
    policy: RetryPolicy,
    done: impl Fn(&Arc<dyn Backend>) -> bool + Send,
) -> Arc<dyn Backend> {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new("hooks", 1))
        .await
        .unwrap();
    Client::new(Arc::clone(&backend))
        .enqueue(
            "hooks",
            NewJob::json("t", &serde_json::json!({"n": 1})).unwrap(),
        )
        .await
        .unwrap();
    let worker = Worker::builder(Arc::clone(&backend), "g", ["hooks"])
        .retry(policy)
        .fallback(WebhookHandler::new(url, Duration::from_secs(10)))
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&backend) {
        assert!(
            Instant::now() < deadline,
            "the delivery did not finish in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
    std::mem::forget(dir);
    backend
}

fn dead_letters(backend: &Arc<dyn Backend>) -> Vec<conveyor_core::ConsumedRecord> {
    let b = Arc::clone(backend);
    futures::executor::block_on(async move {
        match b.describe_topic("hooks.dlq").await.unwrap() {
            Some(_) => b.fetch("hooks.dlq", 0, 0, 10).await.unwrap(),
            None => Vec::new(),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_fails_the_job() {
    let target_hits = Arc::new(Mutex::new(0usize));
    let t = Arc::clone(&target_hits);
    let app = Router::new()
        .route(
            "/hook",
            post(|| async { (StatusCode::FOUND, [("location", "/elsewhere")]) }),
        )
        .route(
            "/elsewhere",
            post({
                let t = Arc::clone(&t);
                move || async move {
                    *t.lock().unwrap() += 1;
                    StatusCode::OK
                }
            })
            .get(move || async move {
                *t.lock().unwrap() += 1;
                StatusCode::OK
            }),
        );
    let base = serve(app).await;
    let backend = deliver(format!("{base}/hook"), RetryPolicy::fast(3), |b| {
        !dead_letters(b).is_empty()
    })
    .await;
    let dead = dead_letters(&backend);
    assert_eq!(dead[0].headers.get_str(dlq::REASON), Some("failed"));
    assert!(
        dead[0].headers.get_str(dlq::ERROR).unwrap().contains("302"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(
        *target_hits.lock().unwrap(),
        0,
        "the redirect target was called"
    );
}

/// `Retry-After` answers, then 200; returns the times of the attempts.
/// Runs a delivery whose first answer is a 503 with `Retry-After: value()` (called when the
/// receiver answers, so an HTTP date counts from then, not from before the set-up).
async fn retry_after_run(
    value: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Vec<Instant> {
    let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let t = Arc::clone(&times);
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let t = Arc::clone(&t);
            let value = value.clone();
            async move {
                t.lock().unwrap().push(Instant::now());
                let attempt = headers
                    .get("conveyor-attempt")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                if attempt == "1" {
                    (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", value())]).into_response()
                } else {
                    StatusCode::OK.into_response()
                }
            }
        }),
    );
    let base = serve(app).await;
    let policy = RetryPolicy {
        max_delay_ms: 100,
        ..RetryPolicy::fast(3)
    };
    let count = Arc::clone(&times);
    deliver(format!("{base}/hook"), policy, move |_| {
        count.lock().unwrap().len() >= 2
    })
    .await;
    let t = times.lock().unwrap().clone();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_is_honoured_beyond_max_delay() {
    let t = retry_after_run(|| "2".into()).await;
    let waited = t[1] - t[0];
    assert!(
        waited >= Duration::from_millis(1_900),
        "retried after {waited:?}, not the 2 s asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_is_honoured() {
    let t = retry_after_run(|| httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(4)))
        .await;
    let waited = t[1] - t[0];
    // the date is written when the receiver answers, in whole seconds: at least 3 s of the 4 remain
    assert!(
        waited >= Duration::from_millis(2_500),
        "retried after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_falls_back_to_the_policy() {
    let t = retry_after_run(|| "-5".into()).await;
    assert!(t[1] - t[0] < Duration::from_secs(1), "{:?}", t[1] - t[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_answer_is_read_only_up_to_a_bound() {
    // a 400 whose body never ends: reading it whole would hang until the request timeout
    // (10 s here) and hold it all in memory
    let app = Router::new().route(
        "/hook",
        post(|| async {
            let chunk = bytes::Bytes::from(vec![b'e'; 64 * 1024]);
            let endless =
                futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            (
                StatusCode::BAD_REQUEST,
                axum::body::Body::from_stream(endless),
            )
        }),
    );
    let base = serve(app).await;
    let started = Instant::now();
    let backend = deliver(format!("{base}/hook"), RetryPolicy::fast(1), |b| {
        !dead_letters(b).is_empty()
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let error = dead_letters(&backend)[0]
        .headers
        .get_str(dlq::ERROR)
        .unwrap()
        .to_owned();
    assert!(
        error.contains("400") && error.len() < 5_000,
        "{} bytes of error",
        error.len()
    );
}

/// A request delivered to a webhook gets the receiver's 2xx body as its reply, so a worker in
/// any language answers requests by answering the POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhooks_answer_is_the_reply_to_a_request() {
    let app = Router::new().route(
        "/",
        post(|body: axum::body::Bytes| async move {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            axum::Json(serde_json::json!({ "doubled": v["n"].as_i64().unwrap() * 2 }))
        }),
    );
    let url = serve(app).await;
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new("hooks", 1))
        .await
        .unwrap();
    let worker = Worker::builder(Arc::clone(&backend), "g", ["hooks"])
        .fallback(WebhookHandler::new(url, Duration::from_secs(10)))
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let client = Client::new(Arc::clone(&backend));
    for n in [1, 21] {
        let reply = client
            .request(
                "hooks",
                NewJob::json("double", &serde_json::json!({ "n": n })).unwrap(),
                Duration::from_secs(20),
            )
            .await
            .expect("a reply");
        let v: serde_json::Value = reply.json().unwrap();
        assert_eq!(v, serde_json::json!({ "doubled": n * 2 }));
    }
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
