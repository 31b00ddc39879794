//! Production concerns of webhook routes, through the real `conveyor dev` binary:
//! - calls are signed in the Standard Webhooks scheme: a Python receiver verifying with the
//!   `standardwebhooks` package from PyPI (installed by `scripts/python-tools.sh`) accepts them,
//!   with either secret of a rotation, and refuses forged and replayed ones;
//! - planted credentials (a URL password, static header values, a signing secret) appear in no
//!   log line, dead letter or API answer; JSON logs are one object per line;
//! - 2,000 dead letters write a bounded number of warning lines whose counts add up; a log
//!   format conveyor cannot read stops the start.

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use util::{post_jobs, receiver, start_on_a_free_port, wait_for, Dev};

/// The Python with `standardwebhooks`, or a failure saying how to install it.
fn python() -> String {
    let python = std::env::var("CONVEYOR_TEST_PYTHON").unwrap_or_else(|_| {
        let cache = std::env::var("CONVEYOR_CACHE").unwrap_or_else(|_| {
            format!(
                "{}/.cache/conveyor",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        format!("{cache}/python-tools-swh1.1.0/bin/python")
    });
    let ok = Command::new(&python)
        .args(["-c", "import standardwebhooks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} cannot import `standardwebhooks`: run scripts/python-tools.sh (scripts/test.sh runs it first), or set CONVEYOR_TEST_PYTHON to a python that has the package"
    );
    python
}

/// The Python receiver (`util/standardwebhooks_receiver.py`) holding `secrets` ({name: whsec}),
/// and its base URL.
fn python_receiver(secrets: &Value) -> (Dev, String) {
    use std::io::BufRead as _;
    let mut child = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/util/standardwebhooks_receiver.py"
        ))
        .env("RECEIVER_SECRETS", secrets.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python receiver");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("the receiver said {line:?}"));
    let base = format!("http://127.0.0.1:{port}");
    (Dev(child), base)
}

/// `whsec_` and the base64 of `key`.
fn whsec(key: &[u8]) -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Starts `conveyor dev` with `toml(port)` as its configuration, `env` set, its stderr in a
/// file; returns the process, the API's base URL and the stderr file.
async fn dev(
    dir: &std::path::Path,
    toml: impl Fn(u16) -> String,
    env: &[(&str, &str)],
) -> (Dev, String, std::path::PathBuf) {
    let log = dir.join("stderr.log");
    let (dev, base) = start_on_a_free_port(
        |port| {
            let p = dir.join("conveyor.toml");
            std::fs::write(&p, toml(port)).unwrap();
            p
        },
        |config| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_conveyor"));
            cmd.args(["dev", "--config"])
                .arg(config)
                .env("CONVEYOR_LOG", "info,fjall=warn,lsm_tree=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            for (k, v) in env {
                cmd.env(k, v);
            }
            Dev(cmd.spawn().expect("start conveyor dev"))
        },
    )
    .await;
    (dev, base, log)
}

/// SIGTERM, then waits (bounded) for the process to stop.
async fn stop(dev: &mut Dev) {
    let ok = Command::new("kill")
        .args(["-TERM", &dev.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let until = Instant::now() + Duration::from_secs(40);
    while dev.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "conveyor dev did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Polls `GET url` (JSON) until `done` holds, up to 60 s; returns the last answer.
async fn poll(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = serde_json::from_str(&get(http, url).await).unwrap_or(Value::Null);
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn enqueue(http: &reqwest::Client, base: &str, topic: &str, payload: Value) -> String {
    let r = http
        .post(format!("{base}/v1/topics/{topic}/jobs"))
        .json(&json!({ "type": "t", "payload": payload }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_calls_verify_with_standardwebhooks_in_rotation_and_forged_or_replayed_ones_do_not()
{
    let (new, old) = (whsec(&[7u8; 32]), whsec(&[9u8; 32]));
    // two receivers in one: each secret is tried alone, as a receiver holding only it would
    let (_receiver, hook) = python_receiver(&json!({ "new": new, "old": old }));
    let dir = tempfile::tempdir().unwrap();
    let toml = |port: u16| {
        format!(
            r#"data_dir = "{data}"
[api]
listen = "127.0.0.1:{port}"
[[routes]]
topic = "signed"
url = "{hook}/hook"
signing_secrets = ["{new}", "{old}"]
headers_env = {{ Authorization = "SIGNED_AUTH" }}
[[routes]]
topic = "flaky"
url = "{hook}/hook?flaky"
signing_secrets = ["{new}"]
signing_secret_env = "FLAKY_OLD_SECRET"
retry = {{ max_attempts = 3, initial_delay_ms = 50, multiplier = 1.0, max_delay_ms = 50 }}
"#,
            data = dir.path().join("data").display()
        )
    };
    let (mut dev, base, _log) = dev(
        dir.path(),
        toml,
        &[("SIGNED_AUTH", "Bearer t0k3n"), ("FLAKY_OLD_SECRET", &old)],
    )
    .await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(enqueue(&http, &base, "signed", json!({ "i": i, "text": "grüße ✓" })).await);
    }
    let calls = poll(&http, &format!("{hook}/calls"), "3 signed calls", |v| {
        v.as_array().is_some_and(|a| a.len() >= 3)
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut seen = Vec::new();
    for c in calls.as_array().unwrap() {
        let h = |n: &str| c["headers"][n].as_str().unwrap_or("").to_owned();
        assert_eq!(c["verified"], json!({ "new": "ok", "old": "ok" }), "{c}");
        for secret in ["new", "old"] {
            let replayed = c["replayed_6_min_later"][secret].as_str().unwrap();
            assert!(
                replayed.contains("too old"),
                "a replay 6 minutes later: {replayed}"
            );
        }
        assert_eq!(h("webhook-id"), h("conveyor-message-id"), "{c}");
        let ts: u64 = h("webhook-timestamp").parse().unwrap();
        assert!(now.abs_diff(ts) < 120, "timestamp {ts}, now {now}");
        assert_eq!(h("webhook-signature").split(' ').count(), 2, "{c}");
        assert_eq!(h("authorization"), "Bearer t0k3n");
        seen.push(h("webhook-id"));
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "each job signed once, under its message id");

    // forgeries: the headers of a real call with another body; the Conveyor-* headers alone
    let real = &calls[0];
    let mut forged = reqwest::header::HeaderMap::new();
    for (k, v) in real["headers"].as_object().unwrap() {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("host") {
            continue;
        }
        forged.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.as_str().unwrap().parse().unwrap(),
        );
    }
    let another_body = calls[1]["body"].as_str().unwrap().to_owned();
    let r = http
        .post(format!("{hook}/hook"))
        .headers(forged.clone())
        .body(another_body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "copied headers with another body must be refused"
    );
    for n in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        forged.remove(n);
    }
    let r = http
        .post(format!("{hook}/hook"))
        .headers(forged)
        .body(real["body"].as_str().unwrap().to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the Conveyor-* headers alone must be refused"
    );
    let all = get(&http, &format!("{hook}/calls")).await;
    let all: Value = serde_json::from_str(&all).unwrap();
    let verdicts: Vec<String> = all.as_array().unwrap()[3..5]
        .iter()
        .map(|c| c["verified"]["new"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        verdicts[0].contains("No matching signature"),
        "{verdicts:?}"
    );
    assert!(
        verdicts[1].contains("Missing required headers"),
        "{verdicts:?}"
    );

    // a retried job keeps its webhook-id, with a new timestamp and signature; the old secret
    // came from the environment
    let flaky = enqueue(&http, &base, "flaky", json!({ "retry": true })).await;
    let calls = poll(
        &http,
        &format!("{hook}/calls"),
        "a failed and a retried call",
        |v| {
            v.as_array()
                .is_some_and(|a| a.iter().filter(|c| c["path"] == "/hook?flaky").count() >= 2)
        },
    )
    .await;
    let tries: Vec<&Value> = calls
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["path"] == "/hook?flaky")
        .collect();
    for c in &tries {
        assert_eq!(c["headers"]["webhook-id"], flaky.as_str(), "{c}");
        assert_eq!(c["verified"], json!({ "new": "ok", "old": "ok" }), "{c}");
    }
    assert_eq!(tries[0]["headers"]["conveyor-attempt"], "1");
    assert_eq!(tries[1]["headers"]["conveyor-attempt"], "2");
    stop(&mut dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_appear_in_no_log_dead_letter_or_api_answer_and_json_logs_parse() {
    const URL_PASSWORD: &str = "pw-PLANTED-url-7f3a";
    const DOWN_PASSWORD: &str = "pw-PLANTED-down-41c2";
    const QUERY_TOKEN: &str = "tok-PLANTED-query-9b0d";
    const FILE_HEADER: &str = "hdr-PLANTED-file-c3e1";
    const ENV_HEADER: &str = "env-PLANTED-header-88aa";
    let signing_key = b"sig-PLANTED-secret-0123456789abcdef";
    let signing = whsec(signing_key);
    let planted = [
        URL_PASSWORD.to_owned(),
        DOWN_PASSWORD.to_owned(),
        QUERY_TOKEN.to_owned(),
        FILE_HEADER.to_owned(),
        ENV_HEADER.to_owned(),
        signing.trim_start_matches("whsec_").to_owned(),
        // the URL's user info as the receiver gets it (`Authorization: Basic`), echoed back
        base64::engine::general_purpose::STANDARD.encode(format!("alice:{URL_PASSWORD}")),
        "PLANTED".to_owned(),
    ];
    let (_receiver, hook) = python_receiver(&json!({ "planted": signing }));
    let hook_port = hook.rsplit(':').next().unwrap().to_owned();
    let closed = util::free_port();
    let dir = tempfile::tempdir().unwrap();
    let toml = |port: u16| {
        format!(
            r#"data_dir = "{data}"
[api]
listen = "127.0.0.1:{port}"
[log]
format = "json"
[[topics]]
name = "rejected"
partitions = 1
[[topics]]
name = "down"
partitions = 1
[[routes]]
topic = "rejected"
url = "http://alice:{URL_PASSWORD}@127.0.0.1:{hook_port}/reject?token={QUERY_TOKEN}"
signing_secret_env = "REJECTED_SIGNING_SECRET"
headers = {{ X-Api-Key = "Bearer {FILE_HEADER}" }}
headers_env = {{ X-Env-Key = "REJECTED_ENV_HEADER" }}
[[routes]]
topic = "down"
url = "http://bob:{DOWN_PASSWORD}@127.0.0.1:{closed}/hook"
retry = {{ max_attempts = 2, initial_delay_ms = 10, multiplier = 1.0, max_delay_ms = 10 }}
"#,
            data = dir.path().join("data").display()
        )
    };
    let (mut dev, base, log) = dev(
        dir.path(),
        toml,
        &[
            ("REJECTED_SIGNING_SECRET", &signing),
            ("REJECTED_ENV_HEADER", ENV_HEADER),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    for i in 0..2 {
        enqueue(&http, &base, "rejected", json!({ "i": i })).await;
        enqueue(&http, &base, "down", json!({ "i": i })).await;
    }
    let mut answers = String::new();
    let mut dead = Vec::new();
    for dlq in ["rejected.dlq", "down.dlq"] {
        let url = format!("{base}/v1/topics/{dlq}/records?partition=0");
        let v = poll(&http, &url, &format!("2 dead letters in {dlq}"), |v| {
            v["records"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await;
        answers.push_str(&v.to_string());
        dead.push(v);
    }
    // the dead letters say what happened, with the URL as it may be shown, and the receiver's
    // echo of the headers it got, without their secret values
    let error = dead[0]["records"][0]["headers"]["dlq_error"]
        .as_str()
        .unwrap();
    assert!(error.contains("http://***@127.0.0.1:"), "{error}");
    assert!(error.contains("token=***"), "{error}");
    assert!(
        error.contains("answered 400") && error.contains("you_sent"),
        "{error}"
    );
    assert!(error.contains(r#""x-api-key": "***""#), "{error}");
    assert!(error.contains(r#""authorization": "Basic ***""#), "{error}");
    assert!(error.contains(r#""x-env-key": "***""#), "{error}");
    let error = dead[1]["records"][0]["headers"]["dlq_error"]
        .as_str()
        .unwrap();
    assert!(
        error.contains("http://***@127.0.0.1:") && error.contains("unreachable"),
        "{error}"
    );
    for path in [
        "/readyz",
        "/healthz",
        "/v1/topics",
        "/v1/groups/webhook.rejected/lag?topic=rejected",
        "/v1/groups/webhook.down/lag?topic=down",
        "/v1/topics/rejected/records?partition=0",
    ] {
        answers.push_str(&get(&http, &format!("{base}{path}")).await);
    }
    // the receiver really got the planted values (so their absence below means something)
    let calls: Value = serde_json::from_str(&get(&http, &format!("{hook}/calls")).await).unwrap();
    let c = &calls[0]["headers"];
    assert_eq!(c["x-api-key"], format!("Bearer {FILE_HEADER}"));
    assert_eq!(c["x-env-key"], ENV_HEADER);
    assert_eq!(calls[0]["verified"]["planted"], "ok", "{}", calls[0]);
    stop(&mut dev).await;
    let stderr = std::fs::read_to_string(&log).unwrap();
    for secret in &planted {
        assert!(
            !stderr.contains(secret.as_str()),
            "`{secret}` is in the log:\n{stderr}"
        );
        assert!(
            !answers.contains(secret.as_str()),
            "`{secret}` is in an API answer:\n{answers}"
        );
    }

    // JSON logs: every line an object; the dead letters' lines carry the job's coordinates
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(Value::is_object));
    let dl: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "job dead-lettered" && l["topic"] == "rejected")
        .collect();
    assert_eq!(dl.len(), 2, "{stderr}");
    for l in dl {
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["partition"], 0);
        assert!(l["offset"].is_u64(), "{l}");
        let id = l["message_id"].as_str().unwrap();
        assert!(answers.contains(id), "{id} names a dead letter");
    }
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("  route    rejected -> http://***@127.0.0.1:"))),
        "the banner is in the log, redacted:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_dead_letters_write_a_bounded_number_of_counted_warning_lines() {
    const JOBS: usize = 2000;
    let (addr, received) = receiver(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = |port: u16| {
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[routes]]\ntopic = \"many\"\nurl = \"http://{addr}/hook\"\n",
            dir.path().join("data").display()
        )
    };
    let (mut dev, base, log) = dev(dir.path(), toml, &[]).await;
    let started = Instant::now();
    // type `bad`: the receiver answers 400, so each job is dead-lettered at its first attempt
    let acked = post_jobs(&base, "many", "bad", JOBS, 16).await;
    assert_eq!(acked.len(), JOBS);
    wait_for(Duration::from_secs(120), "2,000 deliveries", || {
        received.total() >= JOBS
    })
    .await;
    let http = reqwest::Client::new();
    poll(
        &http,
        &format!("{base}/v1/groups/webhook.many/lag?topic=many"),
        "every dead letter written and committed",
        |v| v["lag"] == 0,
    )
    .await;
    stop(&mut dev).await;
    let windows = started.elapsed().as_secs() / 10 + 2;
    let stderr = std::fs::read_to_string(&log).unwrap();
    let written = stderr
        .lines()
        .filter(|l| l.contains("job dead-lettered"))
        .count();
    let summarized: u64 = stderr
        .lines()
        .filter(|l| l.contains("more dead letters on topic many"))
        .map(|l| {
            let n = &l[l.find("suppressed=").expect("the count is a field") + 11..];
            n[..n.find(|c: char| !c.is_ascii_digit()).unwrap_or(n.len())]
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    eprintln!("{written} lines, {summarized} summarized, over {windows} windows at most");
    assert_eq!(
        written as u64 + summarized,
        JOBS as u64,
        "every dead letter is written or counted:\n{stderr}"
    );
    assert!(
        written as u64 <= conveyor_runtime::worker::warn_limit::BURST as u64 * windows,
        "{written} dead-letter lines in {windows} windows"
    );
    assert!(
        stderr.lines().count() < 200,
        "{} lines",
        stderr.lines().count()
    );
}

#[test]
fn a_log_format_conveyor_cannot_read_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("conveyor.toml");
    std::fs::write(&config, "[api]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["dev", "--config"])
        .arg(&config)
        .env("CONVEYOR_LOG_FORMAT", "xml")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("CONVEYOR_LOG_FORMAT") && stderr.contains("use `text` or `json`"),
        "{stderr}"
    );
}
