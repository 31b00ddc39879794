//! conveyor's own topics (`conveyor.*`) through the `conveyor` binary on the embedded backend, as
//! a user meets them (issue 21 item 1):
//! - the issue's reproduction: a schedule on `conveyor.idempotency` whose payload is an
//!   idempotency answer made the genuine first enqueue with that key answer `201` with
//!   `Idempotent-Replayed: true` while storing nothing. `conveyor schedules put` is refused now,
//!   and the genuine enqueue stores its job;
//! - `conveyor enqueue` to one of them is refused;
//! - `conveyor.toml` naming one as a schedule's topic, a route's topic or priority topic, or the
//!   reply topic stops `conveyor dev` at start with an error naming the key;
//! - `conveyor dlq replay` does not move a dead letter whose original topic is one of them (a
//!   forged pause command for the control log here), and says why.
//!
//! (The HTTP API's answers in detail: `conveyor-server/tests/reserved.rs`; on Kafka:
//! `reserved_topics_live.rs`.)

mod util;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use conveyor_core::{headers, Backend, TopicSpec};
use conveyor_server::api::idempotency::{fingerprint, message_id};
use serde_json::{json, Value};
use util::{conveyor, get_json, receiver, start_dev_on_a_free_port};

fn config(dir: &std::path::Path, port: u16, extra: &str) -> std::path::PathBuf {
    let path = dir.join(format!("conveyor-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"hooks\"\npartitions = 3\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// Records retained in `topic`, read through the API.
async fn retained(http: &reqwest::Client, base: &str, topic: &str) -> i64 {
    let v = get_json(http, &format!("{base}/v1/topics/{topic}")).await;
    v["partitions"].as_array().map_or(0, |ps| {
        ps.iter()
            .map(|p| p["high"].as_i64().unwrap() - p["low"].as_i64().unwrap())
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_cannot_forge_an_idempotency_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, base) = start_dev_on_a_free_port(|port| config(dir.path(), port, "")).await;
    let http = reqwest::Client::new();
    let url = ["--url", base.as_str()];

    // the request a client will send, and the answer a forger writes for it: consistent with
    // it (the message id its job would get), naming a place where no such job is
    let body = json!({"type": "invoice.paid", "payload": {"invoice": 42}});
    let fp = fingerprint("jobs", "hooks", &body);
    let forged = json!({
        "topic": "hooks", "key": "evt_42", "fingerprint": fp, "status": 201,
        "body": json!({"id": message_id("hooks", "evt_42", &fp, None), "topic": "hooks", "partition": 0, "offset": 0}).to_string(),
        "at_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
    });
    let (put_ok, out, err) = conveyor(
        &[
            &["schedules", "put", "forge", "--cron", "* * * * * *"][..],
            &["--topic", "conveyor.idempotency", "--type", "answer"],
            &["--payload", &forged.to_string()],
            &url,
        ]
        .concat(),
    );
    if put_ok {
        // its ticks fire every second
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let (enqueue_ok, _, enqueue_err) = conveyor(
        &[
            &["enqueue", "conveyor.control", "-t", "forged"][..],
            &[
                "-p",
                r#"{"kind":"pause","group":"webhook.hooks","topic":"hooks"}"#,
            ],
            &url,
        ]
        .concat(),
    );

    let r = http
        .post(format!("{base}/v1/topics/hooks/jobs"))
        .header("idempotency-key", "evt_42")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    let answer: Value = r.json().await.unwrap();
    let stored = retained(&http, &base, "hooks").await;
    assert!(
        !put_ok && status == 201 && !replayed && stored == 1 && !enqueue_ok,
        "conveyor schedules put --topic conveyor.idempotency: {}{out}{err}\n\
         then the genuine enqueue with that key: {status}, Idempotent-Replayed: {replayed}, {answer}; hooks holds {stored} jobs\n\
         conveyor enqueue conveyor.control: {}{enqueue_err}",
        if put_ok { "accepted " } else { "refused " },
        if enqueue_ok { "accepted " } else { "refused " },
    );
    assert!(err.contains("conveyor's own topics"), "{err}");
    assert!(err.contains("topic"), "{err}");
    assert!(
        enqueue_err.contains("conveyor's own topics"),
        "{enqueue_err}"
    );
    // the job is where its answer says
    let p = answer["partition"].as_i64().unwrap();
    let o = answer["offset"].as_i64().unwrap();
    let v = get_json(
        &http,
        &format!("{base}/v1/topics/hooks/records?partition={p}&offset={o}&limit=1"),
    )
    .await;
    assert_eq!(
        v["records"][0]["headers"]["message_id"], answer["id"],
        "{v}"
    );
}

/// Runs `conveyor dev --config` on a configuration that must be refused; returns whether it
/// exited with an error within 20 s, and its standard error. One still running is stopped.
async fn start_refused(path: &std::path::Path) -> (bool, String) {
    let mut child = util::Dev(
        Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args(["dev", "--config"])
            .arg(path)
            .env("CONVEYOR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if tokio::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (exited.is_some_and(|s| !s.success()), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conveyor_toml_naming_one_of_conveyors_own_topics_stops_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let route = |rest: &str| format!("[[routes]]\nurl = \"http://127.0.0.1:9/hook\"\n{rest}\n");
    let cases = [
        (
            "[[schedules]]\nname = \"forge\"\ncron = \"* * * * * *\"\ntopic = \"conveyor.idempotency\"\ntype = \"answer\"\n".to_owned(),
            "schedules[0].topic",
        ),
        (route("topic = \"conveyor.control\""), "routes[0].topic"),
        (
            route("topic = \"hooks\"\npriorities = { \"conveyor.unique\" = 1, \"hooks\" = 2 }"),
            "routes[0].priorities",
        ),
        (
            "[api]\nreply_topic = \"conveyor.control\"\n".to_owned(),
            "api.reply_topic",
        ),
    ];
    let mut accepted = Vec::new();
    for (i, (extra, key)) in cases.iter().enumerate() {
        // `[api]` twice is a TOML error: the reply topic goes into the one `[api]` table
        let path = match extra.strip_prefix("[api]\n") {
            Some(api) => {
                let p = config(dir.path(), 10_000 + i as u16, "");
                let text = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("[api]\n", &format!("[api]\n{api}"));
                std::fs::write(&p, text).unwrap();
                p
            }
            None => config(dir.path(), 10_000 + i as u16, extra),
        };
        let (refused, err) = start_refused(&path).await;
        if !(refused && err.contains(&format!("`{key}`")) && err.contains("conveyor's own topics"))
        {
            accepted.push(format!(
                "{key}: {}; stderr: {err}",
                if refused { "refused" } else { "started" }
            ));
        }
    }
    assert!(accepted.is_empty(), "{}", accepted.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_moves_nothing_into_conveyors_own_topics() {
    let dir = tempfile::tempdir().unwrap();
    // dead letters in `emails.dlq`, as a producer writing to it directly can leave them: one
    // aimed at the control log (a pause of the route below), one at the answers, one genuine
    {
        let backend: Arc<dyn Backend> = Arc::new(
            conveyor_embedded::EmbeddedBackend::open(conveyor_embedded::EmbeddedConfig::new(
                dir.path().join("data").join("log"),
            ))
            .unwrap(),
        );
        for (t, n) in [("emails", 2), ("emails.dlq", 2)] {
            backend.create_topic(&TopicSpec::new(t, n)).await.unwrap();
        }
        let client = conveyor_runtime::Client::new(Arc::clone(&backend));
        for (original, value) in [
            (
                "conveyor.control",
                json!({"kind": "pause", "group": "webhook.emails", "topic": "emails"}),
            ),
            (
                "conveyor.idempotency",
                json!({"topic": "emails", "key": "k", "fingerprint": "f", "status": 201, "body": "{}", "at_ms": 0}),
            ),
            ("emails", json!({"genuine": true})),
        ] {
            let (_, mut r) =
                client.to_record(conveyor_runtime::NewJob::json("charge", &value).unwrap());
            r.partition = Some(0);
            for (h, v) in [
                (headers::dlq::ORIGINAL_TOPIC, original),
                (headers::dlq::ORIGINAL_PARTITION, "0"),
                (headers::dlq::ORIGINAL_OFFSET, "0"),
                (headers::dlq::REASON, "failed"),
                (headers::dlq::ERROR, "boom"),
                (headers::dlq::GROUP, "webhook.emails"),
            ] {
                r.headers.insert(h, v);
            }
            backend.publish("emails.dlq", vec![r]).await.unwrap();
        }
        backend.close().await.unwrap();
    }
    let (hook, received) = receiver(Duration::ZERO).await;
    let (_dev, base) = start_dev_on_a_free_port(|port| {
        config(
            dir.path(),
            port,
            &format!("[[routes]]\ntopic = \"emails\"\nurl = \"http://{hook}/hook\"\n"),
        )
    })
    .await;
    let http = reqwest::Client::new();
    let control_before = retained(&http, &base, "conveyor.control").await;
    let (ok, out, err) = conveyor(&["dlq", "replay", "emails", "--url", &base]);
    eprintln!("$ conveyor dlq replay emails\n{err}{out}");
    assert!(ok, "{err}");
    // the control log's readers fold what is written within 250 ms
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let paused = get_json(&http, &format!("{base}/v1/groups/webhook.emails/paused")).await;
    let control_after = retained(&http, &base, "conveyor.control").await;
    assert!(
        out.contains("moved 1 dead letters of emails.dlq to their topics; 0 already replayed, 2 unroutable")
            && out.matches("conveyor's own topics").count() == 2
            && control_after == control_before,
        "the replay moved dead letters into conveyor's own topics:\n{out}\nconveyor.control: {control_before} records before, {control_after} after; paused: {paused}"
    );
    assert_eq!(paused["paused"], json!([]), "{paused}");
    // the genuine one is delivered
    util::wait_for(Duration::from_secs(30), "the replayed job", || {
        received.total() == 1
    })
    .await;
}
