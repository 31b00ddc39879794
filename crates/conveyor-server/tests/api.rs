//! The HTTP API through the router (no socket): enqueue, and every bad input's status and code.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use conveyor_core::{Backend, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_server::{app, AppState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    _dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    router: axum::Router,
    routes: Arc<conveyor_server::supervise::RouteHealth>,
}

async fn api() -> Api {
    api_with(|_| {}).await
}

async fn api_with(f: impl FnOnce(&mut AppState)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new("emails", 3))
        .await
        .unwrap();
    let mut state = AppState::new(Arc::clone(&backend));
    state.max_body_bytes = 64 * 1024;
    state.max_batch = 10;
    f(&mut state);
    Api {
        _dir: dir,
        routes: Arc::clone(&state.routes),
        router: app(state),
        backend,
    }
}

async fn send(
    api: &Api,
    method: &str,
    uri: &str,
    ct: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    let resp = api
        .router
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

async fn post(api: &Api, uri: &str, body: Value) -> (StatusCode, Value) {
    send(api, "POST", uri, Some("application/json"), body.to_string()).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {v}"))
}

#[tokio::test]
async fn enqueue_stores_the_job_with_its_metadata() {
    let a = api().await;
    let (s, v) = post(&a, "/v1/topics/emails/jobs", json!({"type": "email.send", "key": "user-1", "payload": {"to": "a@b.c"}, "headers": {"tenant": "acme"}})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (p, o) = (
        v["partition"].as_i64().unwrap() as i32,
        v["offset"].as_i64().unwrap(),
    );
    assert_eq!(
        p,
        conveyor_core::partitioner::partition_for_key(b"user-1", 3)
    );
    let stored = a.backend.fetch("emails", p, o, 1).await.unwrap();
    let r = &stored[0];
    assert_eq!(&r.value[..], br#"{"to":"a@b.c"}"#);
    assert_eq!(r.headers.get_str("job_type"), Some("email.send"));
    assert_eq!(r.headers.get_str("message_id"), v["id"].as_str());
    assert_eq!(r.headers.get_str("producer"), Some("conveyor-api"));
    assert_eq!(r.headers.get_str("tenant"), Some("acme"));
    assert!(r.headers.get_str("produced_at").is_some());
}

#[tokio::test]
async fn binary_payloads_pass_through_as_bytes() {
    let a = api().await;
    let (s, v) = post(
        &a,
        "/v1/topics/emails/jobs",
        json!({"type": "img", "payload_base64": "AP8A/w==", "content_type": "image/png"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let r = &a
        .backend
        .fetch(
            "emails",
            v["partition"].as_i64().unwrap() as i32,
            v["offset"].as_i64().unwrap(),
            1,
        )
        .await
        .unwrap()[0];
    assert_eq!(&r.value[..], &[0u8, 255, 0, 255]);
    assert_eq!(r.headers.get_str("content_type"), Some("image/png"));
}

#[tokio::test]
async fn batch_is_stored_in_order() {
    let a = api().await;
    let jobs: Vec<Value> = (0..5)
        .map(|i| json!({"type": "t", "key": "same", "payload": i}))
        .collect();
    let (s, v) = post(&a, "/v1/topics/emails/jobs/batch", json!({"jobs": jobs})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let offsets: Vec<i64> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let a = api().await;
    let (s, v) = send(
        &a,
        "POST",
        "/v1/topics/emails/jobs",
        Some("application/json"),
        "{\"type\": ",
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "malformed_json"));
}

#[tokio::test]
async fn unknown_topic_is_404() {
    let a = api().await;
    let (s, v) = post(
        &a,
        "/v1/topics/nope/jobs",
        json!({"type": "t", "payload": 1}),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "unknown_topic"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("conveyor topics create nope"));
    let (s, v) = send(&a, "GET", "/v1/topics/nope", None, "").await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "unknown_topic"));
    let (s, v) = send(&a, "GET", "/no/such/route", None, "").await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn oversized_body_is_413_and_nothing_is_stored() {
    let a = api().await;
    let big = "x".repeat(70 * 1024);
    let (s, v) = post(
        &a,
        "/v1/topics/emails/jobs",
        json!({"type": "t", "payload": big}),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let info = a.backend.describe_topic("emails").await.unwrap().unwrap();
    assert_eq!(info.retained(), 0);
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let a = api().await;
    let (s, v) = send(
        &a,
        "POST",
        "/v1/topics/emails/jobs",
        Some("text/plain"),
        "{\"type\":\"t\",\"payload\":1}",
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let (s, v) = send(&a, "POST", "/v1/topics/emails/jobs", None, "{}").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
}

#[tokio::test]
async fn invalid_fields_are_422_and_name_the_field() {
    let a = api().await;
    let cases = [
        (json!({"payload": 1}), "type"),
        (json!({"type": 5, "payload": 1}), ""),
        (json!({"type": "", "payload": 1}), "type"),
        (json!({"type": "t"}), "payload"),
        (
            json!({"type": "t", "payload": 1, "payload_base64": "AA=="}),
            "payload",
        ),
        (
            json!({"type": "t", "payload_base64": "%%%"}),
            "payload_base64",
        ),
        (
            json!({"type": "t", "payload": 1, "headers": {"message_id": "x"}}),
            "headers.message_id",
        ),
        (
            json!({"type": "t", "payload": 1, "surprise": true}),
            "surprise",
        ),
        (json!({"type": "t", "payload": 1, "key": 7}), ""),
        // control characters cannot travel in a webhook's HTTP headers
        (json!({"type": "t\nx", "payload": 1}), "type"),
        (json!({"type": "t", "payload": 1, "key": "a\u{1}b"}), "key"),
        (
            json!({"type": "t", "payload": 1, "headers": {"traceparent": "00-x\r\nInjected: 1"}}),
            "headers.traceparent",
        ),
        (
            json!({"type": "t", "payload_base64": "AA==", "content_type": "a/b\u{7f}"}),
            "content_type",
        ),
        // as the OpenAPI document says (schemathesis checks the rest): a `null` optional field
        // is an absent one, and the type counts characters, not bytes
        (json!({"type": "t", "payload_base64": null}), "payload"),
        (json!({"type": "   ", "payload": 1}), "type"),
        (json!({"type": "ü".repeat(256), "payload": 1}), "type"),
    ];
    for (body, field) in cases {
        let (s, v) = post(&a, "/v1/topics/emails/jobs", body.clone()).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            "{body}: {v}"
        );
        if !field.is_empty() {
            assert_eq!(v["error"]["field"], field, "{body}: {v}");
        }
    }
    let (s, v) = post(
        &a,
        "/v1/topics/emails/jobs/batch",
        json!({"jobs": [{"type": "t", "payload": 1}, {"type": ""}]}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("jobs[1].type"))
    );
    let (s, _) = post(&a, "/v1/topics/emails/jobs/batch", json!({"jobs": []})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let many: Vec<Value> = (0..11)
        .map(|_| json!({"type": "t", "payload": 1}))
        .collect();
    let (s, v) = post(&a, "/v1/topics/emails/jobs/batch", json!({"jobs": many})).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("jobs"))
    );
    // a rejected batch stores nothing
    let info = a.backend.describe_topic("emails").await.unwrap().unwrap();
    assert_eq!(info.retained(), 0);

    // accepted: a `null` JSON payload, 255 two-byte characters, base64 with trailing bits
    for body in [
        json!({"type": "t", "payload": null, "key": null, "content_type": null}),
        json!({"type": "ü".repeat(255), "payload": 1}),
        json!({"type": "t", "payload_base64": "QR=="}),
    ] {
        let (s, v) = post(&a, "/v1/topics/emails/jobs", body.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "{body}: {v}");
    }
    let info = a.backend.describe_topic("emails").await.unwrap().unwrap();
    let mut values = Vec::new();
    for p in &info.partitions {
        for r in a.backend.fetch("emails", p.partition, 0, 10).await.unwrap() {
            values.push(r.value.to_vec());
        }
    }
    assert_eq!(values.len(), 3);
    assert!(
        values.contains(&b"null".to_vec()),
        "the null payload is stored as JSON null"
    );
    assert!(values.contains(&vec![0x41]), "QR== decodes to `A`");
}

#[tokio::test]
async fn topics_health_readiness_records_and_openapi() {
    let a = api().await;
    let (s, v) = post(&a, "/v1/topics", json!({"name": "orders", "partitions": 6})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["partitions"].as_array().unwrap().len(), 6);
    let (s, v) = post(&a, "/v1/topics", json!({"name": "orders", "partitions": 2})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "topic_conflict"));
    let (s, v) = post(&a, "/v1/topics", json!({"name": "bad name"})).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field")
    );
    let (_, v) = send(&a, "GET", "/v1/topics", None, "").await;
    let names: Vec<&str> = v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["emails", "orders"]);

    post(
        &a,
        "/v1/topics/orders/jobs",
        json!({"type": "t", "payload": {"n": 1}, "key": "k"}),
    )
    .await;
    let p = conveyor_core::partitioner::partition_for_key(b"k", 6);
    let (s, v) = send(
        &a,
        "GET",
        &format!("/v1/topics/orders/records?partition={p}"),
        None,
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["records"][0]["value"], json!({"n": 1}));
    assert_eq!(v["next_offset"], 1);
    let (s, v) = send(
        &a,
        "GET",
        "/v1/topics/orders/records?partition=99",
        None,
        "",
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "unknown_partition"));
    for bad in ["limit=0", "limit=1001", "partition=-1", "offset=-5"] {
        let (s, v) = send(
            &a,
            "GET",
            &format!("/v1/topics/orders/records?{bad}"),
            None,
            "",
        )
        .await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            "{bad}"
        );
    }
    // a group that is neither configured nor has committed offsets names nothing real
    let (s, v) = send(&a, "GET", "/v1/groups/g/lag?topic=orders", None, "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::NOT_FOUND, "unknown_group"),
        "{v}"
    );

    let (s, v) = send(&a, "GET", "/healthz", None, "").await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, v) = send(&a, "GET", "/readyz", None, "").await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::OK, Some("embedded"))
    );
    let (s, v) = send(&a, "DELETE", "/healthz", None, "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );

    let (s, v) = send(&a, "GET", "/openapi.json", None, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["openapi"], "3.1.0");
    for path in [
        "/v1/topics/{topic}/jobs",
        "/v1/topics/{topic}/jobs/batch",
        "/v1/topics",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            v["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }

    a.backend.close().await.unwrap();
    // /readyz reuses the backend's answer for a second (probes are not rate-limited)
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, v) = send(&a, "GET", "/readyz", None, "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable")
    );
    let (s, v) = post(
        &a,
        "/v1/topics/orders/jobs",
        json!({"type": "t", "payload": 1}),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable")
    );
}

#[tokio::test]
async fn topics_apply_plans_applies_and_is_idempotent() {
    let a = api().await;
    let post = |body: Value| {
        let a = &a;
        async move {
            send(
                a,
                "POST",
                "/v1/topics:apply",
                Some("application/json"),
                body.to_string(),
            )
            .await
        }
    };
    let topics = json!([
        {"name": "emails", "partitions": 3},
        {"name": "events", "partitions": 2, "retention_ms": null, "replication_factor": 3}
    ]);
    let (s, v) = post(json!({"topics": topics, "dry_run": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["plan"][0]["action"], "unchanged");
    assert_eq!(v["plan"][1]["action"], "create");
    assert_eq!(v["applied"], false);
    assert!(
        a.backend.describe_topic("events").await.unwrap().is_none(),
        "a dry run changes nothing"
    );

    let (s, v) = post(json!({"topics": topics})).await;
    assert_eq!((s, &v["applied"]), (StatusCode::OK, &json!(true)), "{v}");
    let events = a.backend.topic_spec("events").await.unwrap().unwrap();
    assert_eq!((events.partitions, events.retention_ms), (2, None));

    // applying again changes nothing; the replication warning is shown for the embedded backend
    let (_, v) = post(json!({"topics": topics, "dry_run": true})).await;
    assert_eq!(v["plan"][1]["action"], "unchanged", "{v}");
    assert!(v["plan"][1]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("do not apply"));

    // growing and changing retention is an update, with the key-mapping warning
    let grown = json!([{"name": "events", "partitions": 4, "retention_ms": 86400000}]);
    let (_, v) = post(json!({"topics": grown, "dry_run": true})).await;
    assert_eq!(v["plan"][0]["action"], "update");
    assert_eq!(v["plan"][0]["changes"].as_array().unwrap().len(), 2);
    assert!(v["plan"][0]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("moves keys"));
    let (s, _) = post(json!({"topics": grown})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        a.backend
            .describe_topic("events")
            .await
            .unwrap()
            .unwrap()
            .partition_count(),
        4
    );

    // shrinking is refused and nothing in the request is applied
    let shrink = json!([{"name": "new-one", "partitions": 1}, {"name": "events", "partitions": 2}]);
    let (s, v) = post(json!({"topics": shrink})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "plan_refused"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot shrink"));
    assert!(a.backend.describe_topic("new-one").await.unwrap().is_none());

    // compaction is not something the embedded backend does: the plan refuses it, in a dry run
    // as in the apply, and the topic listed before it is not applied either
    let compact = json!([{"name": "before-state", "partitions": 1}, {"name": "state", "cleanup_policy": "compact"}]);
    let (s, v) = post(json!({"topics": compact, "dry_run": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["plan"][1]["action"], "refused", "{v}");
    assert!(v["plan"][1]["refused"]
        .as_str()
        .unwrap()
        .contains("does not compact"));
    let (s, v) = post(json!({"topics": compact})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "plan_refused"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nothing was applied"));
    assert!(a
        .backend
        .describe_topic("before-state")
        .await
        .unwrap()
        .is_none());

    // bad input: unknown field, bad policy, invalid spec
    let (s, v) = post(json!({"topics": [{"name": "x", "replicas": 3}]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, _) = post(json!({"topics": [{"name": "x", "cleanup_policy": "shred"}]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, v) = post(json!({"topics": [{"name": "x", "partitions": 0}]})).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("topics[0]"))
    );
}

#[tokio::test]
async fn lag_per_partition_and_for_every_committed_topic() {
    use conveyor_core::{CommitOffset, Record, TopicPartition};
    let a = api().await;
    let records = (0..6)
        .map(|i| Record::new("x").with_partition(i % 3))
        .collect();
    a.backend.publish("emails", records).await.unwrap();
    let (s, v) = send(&a, "GET", "/v1/groups/g/lag", None, "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::NOT_FOUND, "unknown_group"),
        "a group with no commits that no route runs: {v}"
    );

    let mut sub = a
        .backend
        .subscribe(conveyor_core::SubscribeOptions::new("g", ["emails"]))
        .await
        .unwrap();
    let _ = sub
        .poll(10, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    sub.commit(&[CommitOffset::new(TopicPartition::new("emails", 0), 2)])
        .await
        .unwrap();
    let (s, v) = send(&a, "GET", "/v1/groups/g/lag", None, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["lag"], 4, "{v}");
    let t = &v["topics"][0];
    assert_eq!(t["topic"], "emails");
    assert_eq!(
        t["partitions"][0],
        json!({"partition": 0, "committed": 2, "low_watermark": 0, "high_watermark": 2, "lag": 0})
    );
    assert_eq!(t["partitions"][1]["committed"], Value::Null);
    assert_eq!(t["partitions"][1]["lag"], 2);
    let (s, v) = send(&a, "GET", "/v1/groups/g/lag?topic=nope", None, "").await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "unknown_topic"));
}

/// A topic listed twice is refused before anything is planned: the dry run and the apply agree
/// and nothing is created (the apply used to create the first topics, then answer 409).
#[tokio::test]
async fn topics_apply_with_a_duplicate_name_applies_nothing() {
    let a = api().await;
    let body = json!({"topics": [
        {"name": "other", "partitions": 1},
        {"name": "x", "partitions": 1},
        {"name": "x", "partitions": 2},
    ]});
    for dry_run in [true, false] {
        let mut b = body.clone();
        b["dry_run"] = json!(dry_run);
        let (s, v) = post(&a, "/v1/topics:apply", b).await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("topics[2].name")),
            "dry_run {dry_run}: {v}"
        );
    }
    for t in ["other", "x"] {
        assert!(
            a.backend.describe_topic(t).await.unwrap().is_none(),
            "{t} was created"
        );
    }
}

#[tokio::test]
async fn readyz_fails_naming_a_route_whose_worker_is_down() {
    let a = api().await;
    let (s, _) = send(&a, "GET", "/readyz", None, "").await;
    assert_eq!(s, StatusCode::OK);
    a.routes.set(
        "emails -> http://h/x",
        Some("the worker failed: boom".into()),
    );
    let (s, v) = send(&a, "GET", "/readyz", None, "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "route_down")
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("emails -> http://h/x") && msg.contains("boom"),
        "{msg}"
    );
    a.routes.set("emails -> http://h/x", None);
    let (s, _) = send(&a, "GET", "/readyz", None, "").await;
    assert_eq!(s, StatusCode::OK);
}

/// `POST /v1/topics/{dlq topic}/dlq:replay`: the selected dead letters go back to their topic as
/// fresh jobs, once; a dry run writes nothing; a missing topic is 404, bad fields 422.
#[tokio::test]
async fn dlq_replay_moves_dead_letters_back_once_and_refuses_bad_requests() {
    use conveyor_runtime::worker::dead_letter::{dead_letter_record, DeadLetterReason};
    let a = api().await;
    a.backend
        .create_topic(&TopicSpec::new("emails.dlq", 3))
        .await
        .unwrap();
    // three jobs over HTTP, dead-lettered as a worker does it
    let mut ids = Vec::new();
    for (i, t) in ["charge", "email", "charge"].iter().enumerate() {
        let (s, v) = post(
            &a,
            "/v1/topics/emails/jobs",
            json!({"type": t, "key": format!("k{i}"), "payload": {"i": i}}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (p, o) = (
            v["partition"].as_i64().unwrap() as i32,
            v["offset"].as_i64().unwrap(),
        );
        let job = &a.backend.fetch("emails", p, o, 1).await.unwrap()[0];
        let dead = dead_letter_record(job, "g", 1, DeadLetterReason::Failed, "broken");
        a.backend.publish("emails.dlq", vec![dead]).await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let retained = |a: &Api| {
        let b = Arc::clone(&a.backend);
        async move {
            b.describe_topic("emails")
                .await
                .unwrap()
                .unwrap()
                .retained()
        }
    };
    let uri = "/v1/topics/emails.dlq/dlq:replay";

    let (s, v) = post(&a, uri, json!({"type": "charge", "dry_run": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["dry_run"], &v["scanned"], &v["replayed"]),
        (&json!(true), &json!(3), &json!(2)),
        "{v}"
    );
    assert_eq!(retained(&a).await, 3, "a dry run writes nothing");

    let (s, v) = post(&a, uri, json!({"type": "charge"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["replayed"], &v["already_replayed"]),
        (&json!(2), &json!(0)),
        "{v}"
    );
    assert_eq!(v["ledger_topic"], "emails.dlq.replayed");
    for m in v["moved"].as_array().unwrap() {
        assert_eq!(m["topic"], "emails");
        let (p, o) = (
            m["partition"].as_i64().unwrap() as i32,
            m["offset"].as_i64().unwrap(),
        );
        let r = &a.backend.fetch("emails", p, o, 1).await.unwrap()[0];
        assert_eq!(r.headers.get_str("attempt"), Some("1"));
        assert_eq!(
            r.headers.get_str("replayed_from"),
            m["replayed_from"].as_str()
        );
        assert_eq!(r.headers.get_str("message_id"), m["message_id"].as_str());
        assert!(r.headers.get_str("dlq_error").is_none());
        assert!([&ids[0], &ids[2]].contains(&&r.headers.get_str("message_id").unwrap().to_owned()));
    }
    assert_eq!(retained(&a).await, 5);
    let (_, v) = post(&a, uri, json!({"type": "charge"})).await;
    assert_eq!(
        (&v["replayed"], &v["already_replayed"]),
        (&json!(0), &json!(2)),
        "{v}"
    );
    let (_, v) = post(&a, uri, json!({})).await;
    assert_eq!(
        (&v["replayed"], &v["already_replayed"]),
        (&json!(1), &json!(2)),
        "{v}"
    );
    assert_eq!(v["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(retained(&a).await, 6);

    let (s, v) = post(&a, "/v1/topics/nothing.dlq/dlq:replay", json!({})).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::NOT_FOUND, "unknown_topic"),
        "{v}"
    );
    for (body, field) in [
        (json!({"from_offset": -1}), "from_offset"),
        (json!({"to_offset": -5}), "to_offset"),
        (json!({"from_offset": 3, "to_offset": 2}), "from_offset"),
        (json!({"partition": -1}), "partition"),
        (json!({"partition": 3}), "partition"),
        (json!({"limit": 0}), "limit"),
        (json!({"surprise": true}), "surprise"),
        (json!({"dry_run": "yes"}), ""),
        (json!([null, true]), ""),
        (json!({"limit": 1.5}), ""),
    ] {
        let (s, v) = post(&a, uri, body.clone()).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            "{body}: {v}"
        );
        if !field.is_empty() {
            assert_eq!(v["error"]["field"], field, "{body}: {v}");
        }
    }
    assert_eq!(retained(&a).await, 6, "refused requests replay nothing");
}

#[tokio::test]
async fn delays_deadlines_and_timeouts_are_stored_as_headers_and_checked() {
    let api = api().await;
    let before = std::time::SystemTime::now();
    let (s, v) = post(
        &api,
        "/v1/topics/emails/jobs",
        json!({"type": "t", "payload": {}, "delay_ms": 60000, "deadline": "2030-01-01T10:00:00+02:00", "timeout_ms": 1500}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let p = v["partition"].as_i64().unwrap() as i32;
    let r = api
        .backend
        .fetch("emails", p, v["offset"].as_i64().unwrap(), 1)
        .await
        .unwrap();
    let h = &r[0].headers;
    let due = conveyor_core::headers::parse_time(h.get_str("due_at").unwrap()).unwrap();
    let ahead = due.duration_since(before).unwrap();
    assert!(
        ahead >= std::time::Duration::from_secs(60) && ahead < std::time::Duration::from_secs(61),
        "{ahead:?}"
    );
    assert_eq!(h.get_str("deadline"), Some("2030-01-01T08:00:00.000Z"));
    assert_eq!(h.get_str("timeout_ms"), Some("1500"));
    let (s, _) = post(
        &api,
        "/v1/topics/emails/jobs/batch",
        json!({"jobs": [{"type": "t", "payload": 1, "run_at": "2026-12-01T09:00:00Z"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    for (body, field) in [
        (
            json!({"type": "t", "payload": 1, "delay_ms": 5, "run_at": "2026-12-01T09:00:00Z"}),
            "delay_ms",
        ),
        (
            json!({"type": "t", "payload": 1, "delay_ms": 31_622_400_001u64}),
            "delay_ms",
        ),
        (
            json!({"type": "t", "payload": 1, "delay_ms": -1}),
            "delay_ms",
        ),
        (
            json!({"type": "t", "payload": 1, "run_at": "tomorrow"}),
            "run_at",
        ),
        (
            json!({"type": "t", "payload": 1, "deadline": "2026-13-01T00:00:00Z"}),
            "deadline",
        ),
        (
            json!({"type": "t", "payload": 1, "timeout_ms": 0}),
            "timeout_ms",
        ),
        (
            json!({"type": "t", "payload": 1, "timeout_ms": 86_400_001}),
            "timeout_ms",
        ),
        (
            json!({"type": "t", "payload": 1, "headers": {"due_at": "2026-12-01T09:00:00Z"}}),
            "headers.due_at",
        ),
    ] {
        let (s, v) = post(&api, "/v1/topics/emails/jobs", body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
}

/// Every RFC 3339 form of `run_at` and `deadline` names the instant it says: an offset after
/// fractional seconds (Python's `isoformat()`, Java's `OffsetDateTime`) was once read as UTC.
/// A time without an offset names no instant and is refused.
#[tokio::test]
async fn times_with_offsets_mean_the_instant_they_name() {
    let api = api().await;
    for (form, utc) in [
        ("2030-12-07T10:00:16.000+05:30", "2030-12-07T04:30:16.000Z"),
        (
            "2030-12-07T10:00:16.250000+05:30",
            "2030-12-07T04:30:16.250Z",
        ),
        ("2030-12-06T23:30:16.5-05:00", "2030-12-07T04:30:16.500Z"),
        ("2030-12-07 04:30:16Z", "2030-12-07T04:30:16.000Z"),
    ] {
        // one job each: a deadline at the time the job is due is refused (it could never run)
        for (field, header) in [("run_at", "due_at"), ("deadline", "deadline")] {
            let (s, v) = post(
                &api,
                "/v1/topics/emails/jobs",
                json!({"type": "t", "payload": {}, field: form}),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{field} {form}: {v}");
            let p = v["partition"].as_i64().unwrap() as i32;
            let r = api
                .backend
                .fetch("emails", p, v["offset"].as_i64().unwrap(), 1)
                .await
                .unwrap();
            assert_eq!(r[0].headers.get_str(header), Some(utc), "{field} {form}");
        }
    }
    for field in ["run_at", "deadline"] {
        let (s, v) = post(
            &api,
            "/v1/topics/emails/jobs",
            json!({"type": "t", "payload": {}, field: "2030-12-07T10:00:16.000"}),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
}

#[tokio::test]
async fn cancel_pause_and_resume_go_to_the_control_log() {
    let api = api_with(|s| s.known_groups = Arc::new(vec!["g1".into()])).await;
    // names no job: refused, nothing written (it was once "cancelled", exit 0); with force, a
    // producer's own id job lookup does not know is taken
    let (s, v) = send(&api, "DELETE", "/v1/jobs/hello", None, Body::empty()).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
    let (s, v) = send(
        &api,
        "DELETE",
        "/v1/jobs/order-42?force=true",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = "0193a3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b";
    let (s, v) = send(
        &api,
        "DELETE",
        &format!("/v1/jobs/{id}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["cancelled"], true);
    // a misspelled group is refused: no route runs it and it never committed
    let (s, v) = send(
        &api,
        "POST",
        "/v1/groups/g1-typo/topics/emails:pause",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::NOT_FOUND, "unknown_group"),
        "{v}"
    );
    let (s, v) = send(
        &api,
        "POST",
        "/v1/groups/g1/topics/emails:pause",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["paused"], true);
    let (s, v) = send(&api, "GET", "/v1/groups/g1/paused", None, Body::empty()).await;
    assert_eq!((s, &v["paused"]), (StatusCode::OK, &json!(["emails"])));
    let (s, _) = send(
        &api,
        "POST",
        "/v1/groups/g1/topics/emails:resume",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = send(&api, "GET", "/v1/groups/g1/paused", None, Body::empty()).await;
    assert_eq!(v["paused"], json!([]));
    // what the log holds, in order
    let log = api
        .backend
        .fetch("conveyor.control", 0, 0, 10)
        .await
        .unwrap();
    let kinds: Vec<String> = log
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.value).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["cancel", "cancel", "pause", "resume"]);
    let (s, v) = send(
        &api,
        "POST",
        "/v1/groups/g1/topics/nope:pause",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "unknown_topic"));
    let (s, _) = send(
        &api,
        "POST",
        "/v1/groups/g1/topics/emails:stop",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let long = "x".repeat(256);
    let (s, v) = send(
        &api,
        "DELETE",
        &format!("/v1/jobs/{long}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field")
    );
}

#[tokio::test]
async fn schedules_are_put_listed_replaced_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new("reports", 2))
        .await
        .unwrap();
    let mut state = AppState::new(Arc::clone(&backend));
    state.configured_schedules = Arc::new(vec![conveyor_runtime::time::schedule::Schedule {
        name: "nightly".into(),
        cron: "0 3 * * *".into(),
        timezone: "Europe/Berlin".into(),
        topic: "reports".into(),
        job_type: "report.nightly".into(),
        payload: json!({}),
        key: None,
        missed: conveyor_runtime::time::schedule::Missed::Once,
    }]);
    let a = Api {
        _dir: dir,
        routes: Arc::clone(&state.routes),
        router: app(state),
        backend,
    };
    let put = |name: &str, body: Value| {
        let (a, uri) = (&a, format!("/v1/schedules/{name}"));
        async move { send(a, "PUT", &uri, Some("application/json"), body.to_string()).await }
    };
    let body = json!({"cron": "*/10 * * * * *", "topic": "reports", "type": "report.tick", "payload": {"n": 1}, "key": "k1"});
    let (s, v) = put("tick", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "tick");
    assert_eq!(v["timezone"], "UTC");
    assert_eq!(v["missed"], "skip");
    assert_eq!(v["source"], "api");
    assert!(v["next"].as_str().unwrap().ends_with('Z'), "{v}");
    // the same again replaces it: 200
    let mut changed = body.clone();
    changed["missed"] = json!("once");
    changed["timezone"] = json!("America/New_York");
    let (s, v) = put("tick", changed).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = send(&a, "GET", "/v1/schedules/tick", None, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            v["missed"].as_str(),
            v["timezone"].as_str(),
            v["key"].as_str()
        ),
        (Some("once"), Some("America/New_York"), Some("k1"))
    );
    let (s, v) = send(&a, "GET", "/v1/schedules", None, "").await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<(&str, &str)> = v["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, vec![("nightly", "config"), ("tick", "api")]);
    // stored in the control log: a second view of the backend sees it
    let control = conveyor_runtime::time::control::Control::open(Arc::clone(&a.backend))
        .await
        .unwrap();
    assert_eq!(control.schedule("tick").unwrap().cron, "*/10 * * * * *");

    // bad input: 422 naming the field, 404 for a topic that does not exist
    for (body, field) in [
        (
            json!({"cron": "61 * * * *", "topic": "reports", "type": "t"}),
            "cron",
        ),
        (
            json!({"cron": "* * *", "topic": "reports", "type": "t"}),
            "cron",
        ),
        (
            json!({"cron": "* * * * *", "topic": "reports", "type": "t", "timezone": "Mars/Olympus"}),
            "timezone",
        ),
        (
            json!({"cron": "* * * * *", "topic": "bad topic", "type": "t"}),
            "topic",
        ),
        (
            json!({"cron": "* * * * *", "topic": "reports", "type": "t", "missed": "always"}),
            "missed",
        ),
        (
            json!({"cron": "* * * * *", "topic": "reports", "type": ""}),
            "type",
        ),
        (
            json!({"cron": "* * * * *", "topic": "reports", "type": "t", "key": "a\u{1}"}),
            "key",
        ),
        (
            json!({"cron": "* * * * *", "topic": "reports", "type": "t", "name": "x"}),
            "name",
        ),
        (json!({"topic": "reports", "type": "t"}), "cron"),
    ] {
        let (s, v) = put("bad", body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (s, v) = put("a%20b", body.clone()).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name")),
        "{v}"
    );
    let (s, v) = send(
        &a,
        "PUT",
        "/v1/schedules/x",
        Some("application/json"),
        "[1]",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = put(
        "x",
        json!({"cron": "* * * * *", "topic": "nope", "type": "t"}),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::NOT_FOUND, "unknown_topic"),
        "{v}"
    );
    let (s, v) = send(&a, "GET", "/v1/schedules/bad", None, "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::NOT_FOUND, "unknown_schedule"),
        "nothing was stored: {v}"
    );

    // the configuration's schedule is read-only here
    let (s, v) = send(&a, "GET", "/v1/schedules/nightly", None, "").await;
    assert_eq!((s, v["source"].as_str()), (StatusCode::OK, Some("config")));
    let (s, v) = put("nightly", body.clone()).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "schedule_in_config"),
        "{v}"
    );
    let (s, v) = send(&a, "DELETE", "/v1/schedules/nightly", None, "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "schedule_in_config"),
        "{v}"
    );

    // delete, then it is gone
    let (s, v) = send(&a, "DELETE", "/v1/schedules/tick", None, "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"name": "tick", "deleted": true}));
    let (s, v) = send(&a, "DELETE", "/v1/schedules/tick", None, "").await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "unknown_schedule"));
    let (s, v) = send(&a, "GET", "/v1/schedules/tick", None, "").await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "unknown_schedule"));
    control.refresh().await.unwrap();
    assert!(control.schedule("tick").is_none());
}

#[tokio::test]
async fn a_duplicate_unique_job_is_409_naming_the_holder() {
    let api = api().await;
    let body = json!({"type": "t", "payload": 1, "unique_key": "nightly", "unique_for_ms": 60000});
    let (s, first) = post(&api, "/v1/topics/emails/jobs", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let (s, v) = post(&api, "/v1/topics/emails/jobs", body.clone()).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "duplicate_job"),
        "{v}"
    );
    let holder = first["id"].as_str().unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains(holder),
        "{v}"
    );
    // a batch holding a duplicate stores nothing
    let before = api.backend.describe_topic("emails").await.unwrap().unwrap();
    let (s, _) = post(
        &api,
        "/v1/topics/emails/jobs/batch",
        json!({"jobs": [{"type": "t", "payload": 2}, body]}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        api.backend.describe_topic("emails").await.unwrap().unwrap(),
        before
    );
    // another key, and the default hold
    let (s, _) = post(
        &api,
        "/v1/topics/emails/jobs",
        json!({"type": "t", "payload": 1, "unique_key": "other"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    for (body, field) in [
        (
            json!({"type": "t", "payload": 1, "unique_for_ms": 5}),
            "unique_for_ms",
        ),
        (
            json!({"type": "t", "payload": 1, "unique_key": ""}),
            "unique_key",
        ),
        (
            json!({"type": "t", "payload": 1, "unique_key": "k", "unique_for_ms": 0}),
            "unique_for_ms",
        ),
        (
            json!({"type": "t", "payload": 1, "headers": {"unique_key": "k"}}),
            "headers.unique_key",
        ),
    ] {
        let (s, v) = post(&api, "/v1/topics/emails/jobs", body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
}
