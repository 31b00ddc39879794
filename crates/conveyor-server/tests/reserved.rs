//! conveyor's own topics (`conveyor.*`: the idempotency answers, the control log, the unique-key
//! ledger, the scheduler's topic, reply topics) over HTTP on the embedded backend (issue 21
//! item 1):
//! - every way in refuses them: jobs, batches, requests and schedules answer `422 invalid_field`
//!   naming `topic`, and a dead letter whose original topic is one of them is not replayed
//!   (listed as unroutable with the reason); nothing reaches those topics;
//! - the API does not trust an answer in `conveyor.idempotency` it cannot have written: one a
//!   job path wrote (a schedule's tick, as before the refusal), one whose message ids are not
//!   those of the request, or one naming a position where that job is not stored is not given
//!   again: the genuine first request stores its job, and its own answer is given from then on.
//!
//! (The same through the `conveyor` binary, and `conveyor.toml`: `conveyor/tests/reserved_topics.rs`;
//! on Kafka: `conveyor/tests/reserved_topics_live.rs`.)

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use conveyor_core::{headers, Backend, Record, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_server::api::idempotency::{fingerprint, message_id, IDEMPOTENCY_TOPIC};
use conveyor_server::{app, AppState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// conveyor's own topics, as they exist on a backend conveyor runs on.
const RESERVED: [&str; 5] = [
    IDEMPOTENCY_TOPIC,
    "conveyor.control",
    "conveyor.unique",
    "conveyor.scheduler",
    "conveyor.replies.0123456789ab",
];

struct Api {
    _dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    router: axum::Router,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    for (name, partitions) in [("hooks", 3), ("emails", 2), ("emails.dlq", 2)] {
        backend
            .create_topic(&TopicSpec::new(name, partitions))
            .await
            .unwrap();
    }
    let state = AppState::new(Arc::clone(&backend));
    Api {
        _dir: dir,
        router: app(state),
        backend,
    }
}

/// Sends a request; returns the status, whether it was marked `Idempotent-Replayed`, and the body.
async fn send(
    api: &Api,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: &Value,
) -> (StatusCode, bool, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = api
        .router
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
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, replayed, v)
}

/// Records retained in a topic (0 when it does not exist).
async fn retained(backend: &Arc<dyn Backend>, topic: &str) -> i64 {
    backend
        .describe_topic(topic)
        .await
        .unwrap()
        .map_or(0, |t| t.retained())
}

#[tokio::test]
async fn every_way_in_over_http_refuses_conveyors_own_topics() {
    let a = api().await;
    // conveyor's own topics exist, as on any backend conveyor has run on (a schedule's topic
    // must exist)
    for t in RESERVED {
        a.backend.create_topic(&TopicSpec::new(t, 1)).await.unwrap();
    }
    let (s, _, v) = send(
        &a,
        "POST",
        "/v1/topics/hooks/jobs",
        Some("opens-the-answers"),
        &json!({"type": "x", "payload": {}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut before = Vec::new();
    for t in RESERVED {
        before.push(retained(&a.backend, t).await);
    }
    let job =
        json!({"type": "forged", "payload": {"kind": "pause", "group": "g", "topic": "hooks"}});
    let mut leaks = Vec::new();
    for (i, t) in RESERVED.iter().enumerate() {
        let ways: [(&str, String, Value); 4] = [
            ("POST", format!("/v1/topics/{t}/jobs"), job.clone()),
            (
                "POST",
                format!("/v1/topics/{t}/jobs/batch"),
                json!({ "jobs": [job.clone()] }),
            ),
            (
                "POST",
                format!("/v1/topics/{t}/requests"),
                json!({"type": "forged", "payload": {}, "reply_timeout_ms": 50}),
            ),
            (
                "PUT",
                format!("/v1/schedules/forge-{i}"),
                json!({"cron": "* * * * * *", "topic": t, "type": "forged", "payload": job["payload"]}),
            ),
        ];
        for (method, uri, body) in ways {
            let (s, _, v) = send(&a, method, &uri, None, &body).await;
            let refused = s == StatusCode::UNPROCESSABLE_ENTITY
                && v["error"]["code"] == "invalid_field"
                && v["error"]["field"] == "topic"
                && v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("conveyor's own topics"));
            if !refused {
                leaks.push(format!("{method} {uri}: {s} {v}"));
            }
        }
    }

    // dead letters whose original topic is one of conveyor's own: as a producer writing to the
    // dead-letter topic directly can leave them
    let (s, _, v) = send(
        &a,
        "POST",
        "/v1/topics/emails/jobs",
        None,
        &json!({"type": "charge", "key": "k", "payload": {}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (p, o) = (
        v["partition"].as_i64().unwrap() as i32,
        v["offset"].as_i64().unwrap(),
    );
    let job_record = a.backend.fetch("emails", p, o, 1).await.unwrap().remove(0);
    for t in RESERVED {
        let mut dead = conveyor_runtime::worker::dead_letter::dead_letter_record(
            &job_record,
            "g",
            1,
            conveyor_runtime::worker::dead_letter::DeadLetterReason::Failed,
            "boom",
        );
        dead.headers.insert(headers::dlq::ORIGINAL_TOPIC, t);
        dead.value = json!({"kind": "pause", "group": "g", "topic": "emails"})
            .to_string()
            .into();
        a.backend.publish("emails.dlq", vec![dead]).await.unwrap();
    }
    let (s, _, v) = send(
        &a,
        "POST",
        "/v1/topics/emails.dlq/dlq:replay",
        None,
        &json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let skipped = v["skipped"].as_array().cloned().unwrap_or_default();
    let refused = skipped
        .iter()
        .filter(|s| {
            s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("conveyor's own topics"))
        })
        .count();
    if v["replayed"] != 0 || refused != RESERVED.len() {
        leaks.push(format!(
            "POST /v1/topics/emails.dlq/dlq:replay replayed {} dead letters into conveyor's own topics, refused {refused}: {v}",
            v["replayed"]
        ));
    }
    for (t, n) in RESERVED.iter().zip(before) {
        let now = retained(&a.backend, t).await;
        if now != n {
            leaks.push(format!("{t} holds {now} records, {n} before"));
        }
    }
    assert!(
        leaks.is_empty(),
        "ways into conveyor's own topics left open:\n{}",
        leaks.join("\n")
    );
}

/// The answer a forger writes for the request `body` with idempotency key `key` on `hooks`:
/// consistent with the request (its message id is the one the request's job would get) unless
/// `id` says otherwise, naming `hooks/<partition>/<offset>` as where the job was stored.
fn forged_answer(key: &str, body: &Value, id: Option<&str>, partition: i32, offset: i64) -> Value {
    let fp = fingerprint("jobs", "hooks", body);
    let id = id.map_or_else(|| message_id("hooks", key, &fp, None), str::to_owned);
    json!({
        "topic": "hooks",
        "key": key,
        "fingerprint": fp,
        "status": 201,
        "body": json!({"id": id, "topic": "hooks", "partition": partition, "offset": offset}).to_string(),
        "at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    })
}

/// The record a schedule on `conveyor.idempotency` wrote at each tick before schedules refused
/// conveyor's own topics: a job whose payload is `answer`.
fn as_a_schedule_tick(answer: &Value) -> Record {
    let schedule = conveyor_runtime::time::schedule::Schedule {
        name: "forge".into(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        // compiled for a topic of its own: the record is the same whatever its topic
        topic: "anywhere".into(),
        job_type: "answer".into(),
        payload: answer.clone(),
        key: None,
        missed: Default::default(),
    };
    let mut r = schedule.compile().unwrap().record(1_767_225_600_000, 1);
    r.partition = None;
    r
}

#[tokio::test]
async fn a_forged_answer_in_the_log_is_not_given_again() {
    let a = api().await;
    // a job stored without a key: the forged answers below name its position
    let (s, _, other) = send(
        &a,
        "POST",
        "/v1/topics/hooks/jobs",
        None,
        &json!({"type": "other", "payload": {}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{other}");
    let (p, o) = (
        other["partition"].as_i64().unwrap() as i32,
        other["offset"].as_i64().unwrap(),
    );
    let body = |n: u32| json!({"type": "invoice.paid", "payload": {"invoice": n}});
    // (key, what the forger wrote to conveyor.idempotency, headerless)
    let cases: Vec<(&str, Value, bool)> = vec![
        // a schedule's tick, as the reproduction wrote it (naming the other job's place)
        (
            "by-a-schedule",
            forged_answer("by-a-schedule", &body(1), None, p, o),
            false,
        ),
        // by hand: consistent with the request, but at that position is another job
        (
            "another-job-there",
            forged_answer("another-job-there", &body(2), None, p, o),
            true,
        ),
        // by hand: a position that was never written
        (
            "never-written",
            forged_answer("never-written", &body(3), None, 0, 1_000_000),
            true,
        ),
        // by hand: a message id the request's job would not have
        (
            "not-its-id",
            forged_answer(
                "not-its-id",
                &body(4),
                Some(other["id"].as_str().unwrap()),
                p,
                o,
            ),
            true,
        ),
    ];
    // the answers topic as the API creates it, the forgeries in it before the API reads it
    let mut spec = TopicSpec::new(IDEMPOTENCY_TOPIC, 1);
    spec.retention_ms = Some(25 * 3600 * 1000);
    a.backend.create_topic(&spec).await.unwrap();
    for (key, answer, by_hand) in &cases {
        let record = match by_hand {
            true => Record::new(answer.to_string()).with_key(format!("hooks\0{key}").into_bytes()),
            false => as_a_schedule_tick(answer),
        };
        a.backend
            .publish(IDEMPOTENCY_TOPIC, vec![record])
            .await
            .unwrap();
    }
    // one more, written after the API read the log (read by its refresh): an answer for
    // another request with the same key, which would make the genuine one `422`
    let (s, _, v) = send(
        &a,
        "POST",
        "/v1/topics/hooks/jobs",
        Some("opens-the-answers"),
        &body(0),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let reused = forged_answer(
        "reused",
        &json!({"type": "something.else", "payload": {}}),
        None,
        p,
        o,
    );
    a.backend
        .publish(
            IDEMPOTENCY_TOPIC,
            vec![Record::new(reused.to_string()).with_key(&b"hooks\0reused"[..])],
        )
        .await
        .unwrap();

    let mut wrong = Vec::new();
    let keys: Vec<(&str, Value)> = cases
        .iter()
        .enumerate()
        .map(|(i, (k, _, _))| (*k, body(i as u32 + 1)))
        .chain([("reused", body(5))])
        .collect();
    for (key, body) in &keys {
        let stored_before = retained(&a.backend, "hooks").await;
        let (s, replayed, v) = send(&a, "POST", "/v1/topics/hooks/jobs", Some(key), body).await;
        let id = message_id("hooks", key, &fingerprint("jobs", "hooks", body), None);
        let stored = retained(&a.backend, "hooks").await - stored_before;
        if s != StatusCode::CREATED || replayed || v["id"] != json!(id) || stored != 1 {
            wrong.push(format!(
                "key {key}: {s}, Idempotent-Replayed: {replayed}, {v}; {stored} job stored"
            ));
            continue;
        }
        // the job is where the answer says
        let (jp, jo) = (
            v["partition"].as_i64().unwrap() as i32,
            v["offset"].as_i64().unwrap(),
        );
        let r = a.backend.fetch("hooks", jp, jo, 1).await.unwrap();
        assert_eq!(
            r.first()
                .and_then(|r| r.headers.get_str(headers::MESSAGE_ID)),
            Some(id.as_str()),
            "key {key}"
        );
        // from now on its own answer is given again, storing nothing
        let (s, replayed, again) = send(&a, "POST", "/v1/topics/hooks/jobs", Some(key), body).await;
        if (s, replayed, &again) != (StatusCode::CREATED, true, &v) {
            wrong.push(format!(
                "key {key}, repeated: {s}, Idempotent-Replayed: {replayed}, {again} (first answer {v})"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "forged answers trusted:\n{}",
        wrong.join("\n")
    );
    // one job per key, plus the other job and the warm-up
    assert_eq!(retained(&a.backend, "hooks").await, keys.len() as i64 + 2);
}
