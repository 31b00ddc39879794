//! Forged idempotency answers on a live Kafka broker (issue 21 item 1): `conveyor dev` on Kafka
//! refuses a schedule on `conveyor.idempotency`, and answers written to that topic directly —
//! as a schedule's tick wrote them before the refusal, or by hand, consistent with the request
//! but naming a position where another job is or nothing was ever written — are not given
//! again: each genuine first request stores its job (read back from the broker where its answer
//! says), and its own answer is given to its repeat, which stores nothing. The API's check reads
//! the record at the answer's position, so it runs here against the broker's fetch. (Embedded:
//! `conveyor-server/tests/reserved.rs`.) Needs `CONVEYOR_TEST_BROKERS` (`scripts/kafka.sh`);
//! built only with `--features live`.

#![cfg(feature = "live")]

mod util;

use conveyor_core::{headers, Backend, Record};
use conveyor_kafka::{KafkaBackend, KafkaConfig};
use conveyor_server::api::idempotency::{fingerprint, message_id, IDEMPOTENCY_TOPIC};
use serde_json::{json, Value};
use util::start_dev_on_a_free_port;

fn answer(topic: &str, key: &str, body: &Value, partition: i64, offset: i64) -> Value {
    let fp = fingerprint("jobs", topic, body);
    json!({
        "topic": topic, "key": key, "fingerprint": fp, "status": 201,
        "body": json!({"id": message_id(topic, key, &fp, None), "topic": topic, "partition": partition, "offset": offset}).to_string(),
        "at_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_answers_are_not_given_again_on_kafka() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS=host:port, or run the tests through scripts/kafka.sh");
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("hooks-{}", util::unique_suffix());
    let (_dev, base) = start_dev_on_a_free_port(|port| {
        let path = dir.path().join(format!("conveyor-{port}.toml"));
        std::fs::write(
            &path,
            format!(
                "backend = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\nreplication_factor = 1\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"{topic}\"\npartitions = 3\n"
            ),
        )
        .unwrap();
        path
    })
    .await;
    let broker = KafkaBackend::connect(KafkaConfig::new(brokers)).unwrap();
    let http = reqwest::Client::new();
    let jobs = format!("{base}/v1/topics/{topic}/jobs");
    let post = |key: Option<String>, body: Value| {
        let (http, jobs) = (http.clone(), jobs.clone());
        async move {
            let mut req = http.post(&jobs).json(&body);
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (status, replayed, r.json::<Value>().await.unwrap())
        }
    };

    let mut wrong = Vec::new();
    // the way in of the issue is closed on Kafka too
    let r = http
        .put(format!(
            "{base}/v1/schedules/forge-{}",
            util::unique_suffix()
        ))
        .json(&json!({"cron": "* * * * * *", "topic": IDEMPOTENCY_TOPIC, "type": "answer"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    if (status, &v["error"]["field"]) != (422, &json!("topic")) {
        wrong.push(format!(
            "PUT a schedule on {IDEMPOTENCY_TOPIC}: {status} {v}"
        ));
    }

    // another job: the forged answers name its position
    let (s, _, other) = post(None, json!({"type": "other", "payload": {}})).await;
    assert_eq!(s, 201, "{other}");
    let (p, o) = (
        other["partition"].as_i64().unwrap(),
        other["offset"].as_i64().unwrap(),
    );
    let body = |n: u32| json!({"type": "invoice.paid", "payload": {"invoice": n}});
    let suffix = util::unique_suffix();
    let keys: Vec<String> = ["by-a-schedule", "another-job-there", "never-written"]
        .iter()
        .map(|k| format!("{k}-{suffix}"))
        .collect();
    let forged: Vec<Record> = vec![
        {
            let schedule = conveyor_runtime::time::schedule::Schedule {
                name: "forge".into(),
                cron: "* * * * * *".into(),
                timezone: "UTC".into(),
                topic: "anywhere".into(),
                job_type: "answer".into(),
                payload: answer(&topic, &keys[0], &body(0), p, o),
                key: None,
                missed: Default::default(),
            };
            let mut r = schedule.compile().unwrap().record(1_767_225_600_000, 1);
            r.partition = None;
            r
        },
        Record::new(answer(&topic, &keys[1], &body(1), p, o).to_string()),
        Record::new(answer(&topic, &keys[2], &body(2), 0, 1_000_000).to_string()),
    ];
    broker.publish(IDEMPOTENCY_TOPIC, forged).await.unwrap();

    for (i, key) in keys.iter().enumerate() {
        let body = body(i as u32);
        let (s, replayed, v) = post(Some(key.clone()), body.clone()).await;
        let id = message_id(&topic, key, &fingerprint("jobs", &topic, &body), None);
        if (s, replayed, &v["id"]) != (201, false, &json!(id)) {
            wrong.push(format!("{key}: {s}, Idempotent-Replayed: {replayed}, {v}"));
            continue;
        }
        // stored on the broker where the answer says
        let (jp, jo) = (
            v["partition"].as_i64().unwrap() as i32,
            v["offset"].as_i64().unwrap(),
        );
        let r = broker.fetch(&topic, jp, jo, 1).await.unwrap();
        assert_eq!(
            r.first()
                .filter(|r| r.offset == jo)
                .and_then(|r| r.headers.get_str(headers::MESSAGE_ID)),
            Some(id.as_str()),
            "{key}"
        );
        let (s, replayed, again) = post(Some(key.clone()), body).await;
        if (s, replayed, &again) != (201, true, &v) {
            wrong.push(format!(
                "{key}, repeated: {s}, Idempotent-Replayed: {replayed}, {again} (first {v})"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "ways in left open, forged answers trusted:\n{}",
        wrong.join("\n")
    );
    let stored = broker
        .describe_topic(&topic)
        .await
        .unwrap()
        .unwrap()
        .retained();
    assert_eq!(
        stored,
        1 + keys.len() as i64,
        "one job per key and the other"
    );
}
