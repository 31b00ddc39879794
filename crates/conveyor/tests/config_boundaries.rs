//! The other half of the configuration walk (`conveyor-server`'s `config::walk` refuses 49
//! malformed values): `conveyor dev` started with every embedded-backend key at its boundary —
//! the smallest accepted limits, counts and intervals, the longest topic name whose delay-tier
//! topics (`<topic>.delay.10m`, 10 characters more) Kafka still allows — starts and works as each
//! setting says (issue 14 item 7); every value that feeds clock or size arithmetic at its extreme
//! is refused naming its key, or works without a panic (issue 21 item 8).

mod util;

use std::time::Duration;

use serde_json::{json, Value};
use util::{receiver, start_dev_on_a_free_port, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_at_its_boundary_starts_and_works() {
    let (hook, received) = receiver(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    // its `.delay.10m` tier is the longest name Kafka allows (249 characters)
    let topic = "t".repeat(249 - ".delay.10m".len());
    let config = dir.path().join("conveyor.toml");
    let write_config = |port: u16| {
        std::fs::write(
            &config,
            format!(
                r#"
data_dir = "{data}"
backend = "embedded"

[api]
listen = "127.0.0.1:{port}"
max_body_bytes = 1024
max_batch = 1

[embedded]
durability = "os"
max_record_bytes = 16384
retention_interval_secs = 1

[retry]
max_attempts = 1
initial_delay_ms = 0
max_delay_ms = 0
multiplier = 1.0
max_retry_after_ms = 0

[[topics]]
name = "{topic}"
partitions = 1
retention_ms = 3600000
retention_bytes = 16384
cleanup_policy = "delete"

[[routes]]
topic = "{topic}"
url = "http://{hook}/hook"
group = "g"
concurrency = 1
timeout_ms = 1000
max_buffered = 1

[routes.retry]
max_attempts = 1
initial_delay_ms = 0
max_delay_ms = 0
"#,
                data = dir.path().join("data").display()
            ),
        )
        .unwrap();
        config.clone()
    };
    let (_dev, base) = start_dev_on_a_free_port(write_config).await;
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let jobs = format!("/v1/topics/{topic}/jobs");

    // max_batch = 1: one job per batch
    let (s, v) = post(
        format!("{jobs}/batch"),
        json!({"jobs": [{"type": "ok", "payload": 1}, {"type": "ok", "payload": 2}]}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (422, Some("jobs")),
        "{v}"
    );
    // max_body_bytes = 1024: a body of 1100 bytes is refused, one just below accepted
    let (s, v) = post(
        jobs.clone(),
        json!({"type": "ok", "payload": "x".repeat(1100)}),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    for (i, t) in ["ok", "flaky", "ok"].iter().enumerate() {
        let (s, v) = post(
            jobs.clone(),
            json!({"type": t, "key": "k", "payload": {"i": i, "pad": "x".repeat(900)}}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    // concurrency 1, max_buffered 1, one attempt: the flaky job (503) is dead-lettered at once
    // and the key's next job still runs after it
    wait_for(Duration::from_secs(30), "three deliveries", || {
        received.total() == 3
    })
    .await;
    let types: Vec<String> = received
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, t)| t.clone())
        .collect();
    assert_eq!(types, ["ok", "flaky", "ok"], "in key order, each once");
    let dlq: Value = util::get_json(
        &http,
        &format!("{base}/v1/topics/{topic}.dlq/records?partition=0&offset=0"),
    )
    .await;
    let dead = dlq["records"]
        .as_array()
        .expect("the dead-letter topic reads");
    assert_eq!(dead.len(), 1, "{dlq}");
    assert_eq!(dead[0]["headers"]["dlq_reason"], "exhausted");
    assert_eq!(dead[0]["headers"]["dlq_attempts"], "1");
}

/// One `conveyor dev` run of the extremes test: its stderr goes to a file, read at the end.
struct Run {
    dev: util::Dev,
    stderr: std::path::PathBuf,
}

impl Run {
    fn start(dir: &std::path::Path, name: &str, toml: &str, env: &[(&str, &str)]) -> Run {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        let stderr = dir.join(format!("{name}.stderr"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_conveyor"));
        cmd.args(["dev", "--config"])
            .arg(&config)
            .env("CONVEYOR_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run {
            dev: util::Dev(cmd.spawn().expect("start conveyor dev")),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// One case of the extremes test: name, `[section]` lines, environment, the key an error must
/// name (none: it must start and work).
type Case = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

/// `conveyor dev` with a value that feeds clock or size arithmetic at its extreme (the largest
/// TOML integer, or `u64::MAX` through the environment): it refuses to start, naming the key,
/// or it starts and works without a thread panicking. Before the bounds, three of these
/// started and panicked: the log's writer (`embedded.retention_interval_secs`), a delivery whose
/// retry moved to a delay tier past the year 9999 (`retry.max_delay_ms`), and the configuration
/// check itself (`api.max_body_bytes + 8 KiB`). The values at their bounds start and work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_values_are_refused_or_work_without_a_panic() {
    let (hook, received) = receiver(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let max = i64::MAX;
    let year_ms = 366u64 * 24 * 3600 * 1000;
    let cases: Vec<Case> = vec![
        (
            "retry",
            format!("[retry]\nmax_attempts = 3\ninitial_delay_ms = {max}\nmax_delay_ms = {max}\n"),
            vec![],
            "retry.initial_delay_ms",
        ),
        (
            "retention",
            format!("[embedded]\nretention_interval_secs = {max}\n"),
            vec![],
            "embedded.retention_interval_secs",
        ),
        (
            "body",
            String::new(),
            vec![("CONVEYOR_API__MAX_BODY_BYTES", "18446744073709551615")],
            "api.max_body_bytes",
        ),
        (
            "grace",
            format!("[scheduler]\ngrace_ms = {max}\n"),
            vec![],
            "scheduler.grace_ms",
        ),
        (
            "route-timeout",
            String::new(),
            vec![],
            "routes[0].timeout_ms",
        ),
        // at the bounds: accepted, and works
        (
            "at-bounds",
            format!("[retry]\nmax_attempts = 3\ninitial_delay_ms = {year_ms}\nmax_delay_ms = {year_ms}\nmax_retry_after_ms = {year_ms}\n[embedded]\nretention_interval_secs = 86400\n[scheduler]\ngrace_ms = 86400000\n"),
            vec![],
            "",
        ),
    ];
    let http = reqwest::Client::new();
    let mut refused = Vec::new();
    for (name, sections, env, key) in &cases {
        let port = util::free_port();
        let route_timeout = match *name {
            "route-timeout" => max.to_string(),
            _ => "10000".to_owned(),
        };
        let toml = format!(
            "data_dir = \"{data}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n{sections}\n[[routes]]\ntopic = \"t\"\nurl = \"http://{hook}/hook\"\ntimeout_ms = {route_timeout}\n",
            data = dir.path().join(name).display(),
        );
        let run = Run::start(dir.path(), name, &toml, env);
        let base = format!("http://127.0.0.1:{port}");
        let mut dev = run.dev;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let started = loop {
            if let Some(status) = dev.try_wait().unwrap() {
                break Err(status);
            }
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    break Ok(());
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: neither started nor refused within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let run = Run { dev, ..run };
        match started {
            Err(status) => {
                let err = run.stderr();
                assert!(
                    !err.contains("panicked"),
                    "{name}: panicked at start: {err}"
                );
                assert!(!status.success(), "{name}: exited 0 at start: {err}");
                assert!(
                    !key.is_empty() && err.contains(&format!("`{key}`")),
                    "{name}: refused without naming `{key}`: {err}"
                );
                refused.push(*name);
            }
            Ok(()) => {
                // a keyed job whose first attempt fails (503): its retry waits its backoff
                let before = received.total();
                let r = http
                    .post(format!("{base}/v1/topics/t/jobs"))
                    .json(&json!({"type": "flaky", "key": name, "payload": {}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201, "{name}: {}", run.stderr());
                wait_for(Duration::from_secs(20), "the first attempt", || {
                    received.total() > before
                })
                .await;
                // time for the retry to be scheduled (a move to a delay tier)
                tokio::time::sleep(Duration::from_secs(2)).await;
                let r = http
                    .post(format!("{base}/v1/topics/t/jobs"))
                    .json(&json!({"type": "ok", "payload": {}}))
                    .send()
                    .await;
                let err = run.stderr();
                assert!(
                    !err.contains("panicked"),
                    "{name}: a thread panicked: {err}"
                );
                let status = r.map(|r| r.status().as_u16());
                assert_eq!(
                    status.ok(),
                    Some(201),
                    "{name}: an enqueue after the retry: {err}"
                );
                assert!(
                    key.is_empty(),
                    "{name}: `{key}` at its extreme was accepted"
                );
            }
        }
    }
    eprintln!("extremes refused at start, naming the key: {refused:?}");
}
