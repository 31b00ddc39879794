//! TLS and SASL handshakes on real listeners: `conveyor dev` connects to Apache Kafka's
//! `SASL_SSL` listener (SCRAM-SHA-512, the password from the environment as
//! docs/kafka-and-redpanda.md shows) and to its mutual-TLS `SSL` listener with exactly that
//! page's settings, enqueues and delivers a job through each; a wrong password, an untrusted CA and a client certificate from another
//! CA are refused at start with a clear error that never echoes the secret. Needs the listeners
//! of `scripts/kafka.sh --security` (the test command starts it). Built only with
//! `--features live`.

#![cfg(feature = "live")]

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{free_port, receiver, wait_for, wait_ok};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run this test through `scripts/kafka.sh --security` (scripts/test.sh does)")
    })
}

/// The `[kafka.properties]` of docs/kafka-and-redpanda.md for SASL_SSL, without the password
/// (it comes from `CONVEYOR_KAFKA__PROPERTIES__SASL_PASSWORD`).
fn sasl_properties(ca: &str) -> String {
    format!(
        r#"
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "{user}"
"ssl.ca.location" = "{ca}"
"#,
        user = var("CONVEYOR_TEST_KAFKA_SASL_USER")
    )
}

fn mtls_properties(ca: &str, cert: &str, key: &str) -> String {
    format!(
        r#"
[kafka.properties]
"security.protocol" = "SSL"
"ssl.ca.location" = "{ca}"
"ssl.certificate.location" = "{cert}"
"ssl.key.location" = "{key}"
"#
    )
}

fn config(
    dir: &std::path::Path,
    brokers: &str,
    port: u16,
    topic: &str,
    hook: &str,
    properties: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{port}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
backend = "kafka"
[kafka]
brokers = "{brokers}"
session_timeout_ms = 6000
request_timeout_ms = 10000
[api]
listen = "127.0.0.1:{port}"
[[topics]]
name = "{topic}"
partitions = 2
[[routes]]
topic = "{topic}"
url = "http://{hook}/hook"
{properties}
"#
        ),
    )
    .unwrap();
    path
}

/// Starts `conveyor dev` with `properties` and the SASL password in the environment, enqueues
/// a job over HTTP and waits for its delivery.
async fn connects_and_delivers(brokers: &str, properties: &str, password: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let (hook, received) = receiver(Duration::from_millis(1)).await;
    let port = free_port();
    let topic = format!("secure.{port}.{}", std::process::id());
    let path = config(
        dir.path(),
        brokers,
        port,
        &topic,
        &hook.to_string(),
        properties,
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conveyor"));
    cmd.args(["dev", "--config"])
        .arg(&path)
        .env("CONVEYOR_LOG", "warn")
        .stdout(Stdio::null());
    if let Some(p) = password {
        cmd.env("CONVEYOR_KAFKA__PROPERTIES__SASL_PASSWORD", p);
    }
    let _dev = util::Dev(cmd.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    wait_ok(&base, "/readyz", Duration::from_secs(60)).await;
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/topics/{topic}/jobs"))
        .json(&serde_json::json!({"type": "ok", "key": "k", "payload": {"secure": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(
        Duration::from_secs(60),
        "the job delivered over the secure listener",
        || received.ids().contains_key(&id),
    )
    .await;
}

/// Starts `conveyor dev` and expects it to stop at start: returns its stderr and the time taken.
fn refused(brokers: &str, properties: &str, password: Option<&str>) -> (String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = config(
        dir.path(),
        brokers,
        port,
        &format!("refused.{port}"),
        "127.0.0.1:9",
        properties,
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conveyor"));
    cmd.args(["dev", "--config"])
        .arg(&path)
        .env("CONVEYOR_LOG", "warn");
    if let Some(p) = password {
        cmd.env("CONVEYOR_KAFKA__PROPERTIES__SASL_PASSWORD", p);
    }
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // a start that is not refused would run forever: stop it and fail
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("conveyor dev was not refused within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "conveyor dev started anyway: {err}");
    // refused at once, not after the 10 s request timeout
    assert!(
        took < Duration::from_secs(5),
        "refused only after {took:?}: {err}"
    );
    (err, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_over_tls_connects_with_the_readme_settings() {
    let ca = var("CONVEYOR_TEST_KAFKA_CA");
    let password = var("CONVEYOR_TEST_KAFKA_SASL_PASSWORD");
    connects_and_delivers(
        &var("CONVEYOR_TEST_KAFKA_SASL_SSL"),
        &sasl_properties(&ca),
        Some(&password),
    )
    .await;
    eprintln!("security: SASL_SSL with SCRAM-SHA-512: connected, enqueued and delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_connects_with_the_readme_settings() {
    let props = mtls_properties(
        &var("CONVEYOR_TEST_KAFKA_CA"),
        &var("CONVEYOR_TEST_KAFKA_CLIENT_CERT"),
        &var("CONVEYOR_TEST_KAFKA_CLIENT_KEY"),
    );
    connects_and_delivers(&var("CONVEYOR_TEST_KAFKA_SSL"), &props, None).await;
    eprintln!("security: mutual TLS: connected, enqueued and delivered");
}

#[test]
fn a_wrong_password_is_refused_at_start_without_echoing_it() {
    let wrong = "not-the-Passw0rd-4711";
    let (err, took) = refused(
        &var("CONVEYOR_TEST_KAFKA_SASL_SSL"),
        &sasl_properties(&var("CONVEYOR_TEST_KAFKA_CA")),
        Some(wrong),
    );
    assert!(!err.contains(wrong), "the password was echoed: {err}");
    assert!(!err.contains(&var("CONVEYOR_TEST_KAFKA_SASL_PASSWORD")));
    assert!(err.to_lowercase().contains("authentication"), "{err}");
    assert!(err.contains("refused the connection"), "{err}");
    eprintln!(
        "security: wrong password refused in {:.1} s: {}",
        took.as_secs_f64(),
        last_line(&err)
    );
}

#[test]
fn an_untrusted_ca_is_refused_at_start() {
    let (err, took) = refused(
        &var("CONVEYOR_TEST_KAFKA_SASL_SSL"),
        &sasl_properties(&var("CONVEYOR_TEST_KAFKA_OTHER_CA")),
        Some(&var("CONVEYOR_TEST_KAFKA_SASL_PASSWORD")),
    );
    assert!(!err.contains(&var("CONVEYOR_TEST_KAFKA_SASL_PASSWORD")));
    assert!(
        err.contains("certificate verify failed") || err.contains("SSL handshake failed"),
        "{err}"
    );
    eprintln!(
        "security: untrusted CA refused in {:.1} s: {}",
        took.as_secs_f64(),
        last_line(&err)
    );
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_at_start() {
    let props = mtls_properties(
        &var("CONVEYOR_TEST_KAFKA_CA"),
        &var("CONVEYOR_TEST_KAFKA_OTHER_CLIENT_CERT"),
        &var("CONVEYOR_TEST_KAFKA_OTHER_CLIENT_KEY"),
    );
    let (err, took) = refused(&var("CONVEYOR_TEST_KAFKA_SSL"), &props, None);
    assert!(
        err.contains("refused the connection") && err.contains("bad certificate"),
        "{err}"
    );
    eprintln!(
        "security: foreign client certificate refused in {:.1} s: {}",
        took.as_secs_f64(),
        last_line(&err)
    );
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}
