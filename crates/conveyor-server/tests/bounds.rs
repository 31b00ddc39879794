//! What a client can make the API process keep is bounded, with a clear error when a bound is
//! reached (issue 21 item 8): schedules (count, bytes, ticks a minute: `507 limit_reached`
//! naming the key, nothing stored), requests waiting for their reply (`507 limit_reached`,
//! nothing published), idempotency answers (bytes: the oldest forgotten, a repeat of one stores
//! its job again with the same message id, never loses it).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use conveyor_core::{Backend, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::time::schedule::ScheduleLimits;
use conveyor_server::api::idempotency::IdempotencyOptions;
use conveyor_server::api::requests::WaitingLimit;
use conveyor_server::{app, AppState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    _dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    state: AppState,
    router: axum::Router,
}

async fn api(configure: impl FnOnce(&mut AppState)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    for t in ["emails", "unserved"] {
        backend.create_topic(&TopicSpec::new(t, 2)).await.unwrap();
    }
    let mut state = AppState::new(Arc::clone(&backend));
    configure(&mut state);
    Api {
        _dir: dir,
        router: app(state.clone()),
        state,
        backend,
    }
}

async fn send(
    api: &Api,
    method: &str,
    uri: &str,
    idempotency_key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    let resp = api
        .router
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Records stored in `topic`, all partitions.
async fn stored(backend: &Arc<dyn Backend>, topic: &str) -> i64 {
    let info = backend.describe_topic(topic).await.unwrap().unwrap();
    info.partitions.iter().map(|p| p.high - p.low).sum()
}

fn schedule(cron: &str, payload: Value) -> Value {
    json!({"cron": cron, "topic": "emails", "type": "tick", "payload": payload})
}

/// Schedules are bounded by count, bytes and ticks a minute: the `PUT` that would pass a bound
/// is `507 limit_reached` naming its key, and stores nothing; a replacement counts instead of
/// its namesake, and a delete makes room.
#[tokio::test]
async fn schedules_past_a_limit_are_507_naming_it_and_store_nothing() {
    let a = api(|s| {
        s.schedule_limits = ScheduleLimits {
            max_schedules: 3,
            max_bytes: 8_000,
            max_ticks_per_minute: 120,
        }
    })
    .await;
    let put = |name: &str, body: Value| {
        let uri = format!("/v1/schedules/{name}");
        let a = &a;
        async move { send(a, "PUT", &uri, None, &body).await }
    };
    let every_second = schedule("* * * * * *", json!({}));
    assert_eq!(put("a", every_second.clone()).await.0, 201);
    assert_eq!(put("b", every_second.clone()).await.0, 201);
    // a third every second: 180 ticks a minute at the peak, beyond 120
    let (s, v) = put("c", every_second.clone()).await;
    assert_eq!(s, 507, "{v}");
    assert_eq!(v["error"]["code"], "limit_reached", "{v}");
    assert_eq!(v["error"]["limit"], "scheduler.max_ticks_per_minute", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("180") && message.contains("120"),
        "{message}"
    );
    // replacing `b` by itself changes nothing: it counts once
    assert_eq!(put("b", every_second.clone()).await.0, 200);
    // `b` made daily (61 ticks a minute) leaves room for a daily `c`
    assert_eq!(put("b", schedule("@daily", json!({}))).await.0, 200);
    assert_eq!(put("c", schedule("@daily", json!({}))).await.0, 201);
    // a fourth: beyond max_schedules
    let (s, v) = put("d", schedule("@daily", json!({}))).await;
    assert_eq!(
        (s, v["error"]["limit"].as_str()),
        (507, Some("scheduler.max_schedules")),
        "{v}"
    );
    // a payload that takes the bytes past 8,000
    let (s, v) = put("c", schedule("@daily", json!("x".repeat(7_800)))).await;
    assert_eq!(
        (s, v["error"]["limit"].as_str()),
        (507, Some("scheduler.max_schedule_bytes")),
        "{v}"
    );
    // nothing of the refused ones was stored: `c` is still the small daily one
    let (_, list) = send(&a, "GET", "/v1/schedules", None, &Value::Null).await;
    let names: Vec<&str> = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{list}");
    let (_, c) = send(&a, "GET", "/v1/schedules/c", None, &Value::Null).await;
    assert_eq!(c["payload"], json!({}), "{c}");
    // a delete makes room
    assert_eq!(
        send(&a, "DELETE", "/v1/schedules/a", None, &Value::Null)
            .await
            .0,
        200
    );
    assert_eq!(put("d", every_second).await.0, 201);
}

/// Requests waiting for their reply are bounded: with 2 waiting (nobody serves `unserved`), a
/// third is `507 limit_reached` at once and publishes nothing; once the two have timed out
/// (504), a request is taken again.
#[tokio::test]
async fn a_request_beyond_the_waiting_bound_is_507_and_publishes_nothing() {
    let a = api(|s| {
        s.waiting_requests = WaitingLimit::new(2);
        s.max_reply_timeout = Duration::from_secs(2);
    })
    .await;
    let request = json!({"type": "quote", "payload": {}, "reply_timeout_ms": 2000});
    let a = Arc::new(a);
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let (a, request) = (Arc::clone(&a), request.clone());
        waiting.push(tokio::spawn(async move {
            send(&a, "POST", "/v1/topics/unserved/requests", None, &request).await
        }));
    }
    // both are waiting once both are published
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored(&a.backend, "unserved").await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two requests were not published"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = tokio::time::Instant::now();
    let (s, v) = send(&a, "POST", "/v1/topics/unserved/requests", None, &request).await;
    assert_eq!(s, 507, "{v}");
    assert_eq!(v["error"]["code"], "limit_reached", "{v}");
    assert_eq!(v["error"]["limit"], "api.max_waiting_requests", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not after waiting"
    );
    assert_eq!(
        stored(&a.backend, "unserved").await,
        2,
        "the refused request published nothing"
    );
    let (_, stats) = send(&a, "GET", "/v1/requests/stats", None, &Value::Null).await;
    assert_eq!(stats["pending"], 2, "{stats}");
    for w in waiting {
        let (s, v) = w.await.unwrap();
        assert_eq!(s, 504, "{v}");
    }
    // room again: this one is taken (and times out, nobody serves it)
    let (s, v) = send(&a, "POST", "/v1/topics/unserved/requests", None, &request).await;
    assert_eq!(s, 504, "{v}");
    assert_eq!(stored(&a.backend, "unserved").await, 3);
}

/// Idempotency answers are bounded in bytes: batch answers (an id per job) push the oldest out
/// though far fewer than `max_keys` are kept; the bytes kept stay within the bound; a repeat of
/// a forgotten answer stores its jobs again with the same message ids (a duplicate an inbox
/// drops, never a lost job), while a repeat of a kept one is answered without storing anything.
#[tokio::test]
async fn idempotency_answers_are_bounded_in_bytes_and_a_forgotten_one_repeats_its_jobs() {
    let max_bytes = 64 * 1024;
    let a = api(|s| {
        s.max_batch = 100;
        s.idempotency_options = IdempotencyOptions {
            max_bytes,
            max_keys: 100_000,
            ..IdempotencyOptions::default()
        };
    })
    .await;
    let batch = |n: usize| json!({"jobs": (0..n).map(|i| json!({"type": "t", "payload": i})).collect::<Vec<_>>()});
    let mut first_ids = Vec::new();
    for k in 0..20 {
        let (s, v) = send(
            &a,
            "POST",
            "/v1/topics/emails/jobs/batch",
            Some(&format!("key-{k}")),
            &batch(100),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        if k == 0 {
            first_ids = v["jobs"].as_array().unwrap().clone();
        }
        let idem = a
            .state
            .idempotency
            .get()
            .expect("opened by the first request");
        assert!(
            idem.bytes() <= max_bytes,
            "{} bytes of answers kept, bound {max_bytes}",
            idem.bytes()
        );
    }
    let idem = a.state.idempotency.get().unwrap();
    eprintln!(
        "answers kept: {} ({} bytes of {max_bytes}); forgotten early: {}",
        idem.len(),
        idem.bytes(),
        idem.forgotten_early()
    );
    assert!(idem.forgotten_early() > 0 && idem.len() < 20);
    assert_eq!(stored(&a.backend, "emails").await, 2_000);
    // the newest is kept: its repeat stores nothing
    let (s, v) = send(
        &a,
        "POST",
        "/v1/topics/emails/jobs/batch",
        Some("key-19"),
        &batch(100),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(stored(&a.backend, "emails").await, 2_000);
    // the oldest was forgotten: its repeat stores its 100 jobs again, with the same ids
    let (s, v) = send(
        &a,
        "POST",
        "/v1/topics/emails/jobs/batch",
        Some("key-0"),
        &batch(100),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(stored(&a.backend, "emails").await, 2_100);
    let again = v["jobs"].as_array().unwrap();
    for (first, again) in first_ids.iter().zip(again) {
        assert_eq!(
            first["id"], again["id"],
            "a forgotten answer's repeat keeps its message ids"
        );
    }
}
