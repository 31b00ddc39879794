//! SIGTERM (what systemd, Docker and Kubernetes send) drains `conveyor dev` exactly like Ctrl-C
//! (SIGINT): the process exits on its own with status 0, the deliveries running at the signal
//! finish and are committed, and after a restart no job is delivered twice, also when a job
//! waiting in memory (due in seconds, or between in-process retries) held the commit point back
//! while the jobs behind it finished. Clients that send half a request do not hold the stop
//! past its grace. On the embedded backend, and with `--features live` on the Kafka broker of
//! `scripts/kafka.sh`.

mod util;

use std::process::Command;
use std::time::Duration;

use util::{
    free_port, post_batch, post_jobs, receiver, start_dev, wait_for, wait_ok, Dev, Received,
};

/// A `conveyor dev` configuration in a temporary folder: the `backend` lines, the API on a free
/// port, then `rest` (topics and routes); returns the folder, the file and the API's base URL.
fn configure(backend: &str, rest: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("conveyor.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n{backend}\n[api]\nlisten = \"127.0.0.1:{port}\"\n{rest}",
            data.display()
        ),
    )
    .unwrap();
    (dir, config, format!("http://127.0.0.1:{port}"))
}

/// Starts `conveyor dev` on `config` and waits until it is ready.
async fn start(config: &std::path::Path, base: &str) -> Dev {
    let child = start_dev(config);
    wait_ok(base, "/readyz", Duration::from_secs(60)).await;
    child
}

/// Starts `conveyor dev` on `config` again and waits until every job of `acked` was delivered
/// (at most `timeout`), then 3 s more, when a repeat would arrive; returns the process and the
/// deliveries per message id.
async fn restart_until_delivered(
    config: &std::path::Path,
    base: &str,
    received: &Received,
    acked: &[String],
    timeout: Duration,
) -> (Dev, std::collections::HashMap<String, usize>) {
    let child = start(config, base).await;
    wait_for(timeout, "every job delivered after the restart", || {
        let ids = received.ids();
        acked.iter().all(|id| ids.contains_key(id))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a repeat would arrive now
    (child, received.ids())
}

/// `backend`: the configuration lines choosing the backend (empty: embedded).
async fn drains_on(signal: &str, backend: &str, topic: &str) {
    // each delivery takes 2 s; 8 run at once
    let (hook, received) = receiver(Duration::from_secs(2)).await;
    let (_dir, config, base) = configure(
        backend,
        &format!("[[topics]]\nname = \"{topic}\"\npartitions = 4\n[[routes]]\ntopic = \"{topic}\"\nurl = \"http://{hook}/hook\"\nconcurrency = 8\n"),
    );
    let mut child = start(&config, &base).await;
    let acked = post_jobs(&base, topic, "slow", 16, 4).await;
    assert_eq!(acked.len(), 16);
    wait_for(Duration::from_secs(60), "8 deliveries running", || {
        received.total() >= 8
    })
    .await;
    let took = terminate(&mut child, signal, Duration::from_secs(40)).await;
    let before_restart = received.ids();

    let (_child, ids) =
        restart_until_delivered(&config, &base, &received, &acked, Duration::from_secs(60)).await;
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{signal}: delivered twice after the restart: {twice:?} ({} had been delivered before it)",
        before_restart.len()
    );
    eprintln!(
        "{signal}: drained in {:.1} s, exit 0; {} of 16 delivered before the restart, none twice",
        took.as_secs_f64(),
        before_restart.len()
    );
}

/// Sends `signal` (`-TERM`, `-INT`) to `child` and waits for it to exit with status 0 (at most
/// `bound`); returns how long it took.
async fn terminate(child: &mut Dev, signal: &str, bound: Duration) -> Duration {
    let ok = Command::new("kill")
        .args([signal, &child.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < bound,
            "conveyor dev still running {bound:?} after {signal}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "exited by signal or with an error: {status:?}"
    );
    started.elapsed()
}

/// Posts one job (`extra`: more fields of the body); returns its id.
async fn post_one(base: &str, topic: &str, body: serde_json::Value) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/topics/{topic}/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// A job waiting in memory holds its partition's commit point back: on `held`, a job due in
/// 4.9 s (below the shortest delay tier, so it waits in the worker); on `retried`, a job whose
/// first attempt fails and waits 2.25-4.5 s for its retry in memory. 25 jobs behind each finish, then
/// SIGTERM: after the restart none of the 50 runs again (the stop committed up to the waiting
/// job only, and every job behind it ran again: 50 of 50), and the two waiting jobs run.
async fn a_clean_stop_repeats_no_finished_job(backend: &str, suffix: &str) {
    let (hook, received) = receiver(Duration::from_millis(0)).await;
    let (held, retried) = (format!("held{suffix}"), format!("retried{suffix}"));
    let mut routes = String::new();
    for topic in [&held, &retried] {
        routes.push_str(&format!(
            "[[topics]]\nname = \"{topic}\"\npartitions = 1\n[[routes]]\ntopic = \"{topic}\"\nurl = \"http://{hook}/hook\"\nconcurrency = 4\n[routes.retry]\nmax_attempts = 5\ninitial_delay_ms = 4500\nmultiplier = 1.0\n"
        ));
    }
    let (_dir, config, base) = configure(backend, &routes);
    let mut child = start(&config, &base).await;
    let due_soon = post_one(
        &base,
        &held,
        serde_json::json!({"type": "ok", "payload": {}, "delay_ms": 4900}),
    )
    .await;
    let flaky = post_one(
        &base,
        &retried,
        serde_json::json!({"type": "flaky", "payload": {}}),
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "the flaky job's first attempt",
        || received.ids().contains_key(&flaky),
    )
    .await;
    let mut behind = post_jobs(&base, &held, "ok", 25, 4).await;
    behind.extend(post_jobs(&base, &retried, "ok", 25, 4).await);
    assert_eq!(behind.len(), 50);
    wait_for(
        Duration::from_secs(30),
        "the 50 jobs behind the waiting ones",
        || {
            let ids = received.ids();
            behind.iter().all(|id| ids.contains_key(id))
        },
    )
    .await;
    {
        let ids = received.ids();
        assert!(
            !ids.contains_key(&due_soon) && ids.get(&flaky) == Some(&1),
            "the waiting jobs must still wait at the signal (else this tests nothing): {:?} {:?}",
            ids.get(&due_soon),
            ids.get(&flaky)
        );
    }
    terminate(&mut child, "-TERM", Duration::from_secs(40)).await;
    drop(child);

    let _child = start(&config, &base).await;
    wait_for(
        Duration::from_secs(60),
        "the two waiting jobs after the restart",
        || {
            let ids = received.ids();
            ids.contains_key(&due_soon) && ids.get(&flaky).is_some_and(|n| *n >= 3)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a repeat would arrive now
    let ids = received.ids();
    let again: Vec<_> = behind.iter().filter(|id| ids[*id] > 1).collect();
    assert!(
        again.is_empty(),
        "{} of the 50 finished jobs ran again after a clean stop: {again:?}",
        again.len()
    );
    assert_eq!(ids[&due_soon], 1, "the delayed job ran twice");
}

/// A mixed load: 4,000 jobs on 4 partitions, half of them delayed 0-8 s (below 5 s they wait in
/// the worker, above it in the delay tiers), SIGTERM 2 s after the last enqueue, restart: every
/// job runs, and none of them twice (the review saw 728-896 repeated deliveries).
async fn a_clean_stop_under_a_delayed_mixed_load(backend: &str, topic: &str) {
    let (hook, received) = receiver(Duration::from_millis(0)).await;
    let (_dir, config, base) = configure(
        backend,
        &format!("[[topics]]\nname = \"{topic}\"\npartitions = 4\n[[routes]]\ntopic = \"{topic}\"\nurl = \"http://{hook}/hook\"\nconcurrency = 16\n"),
    );
    let mut child = start(&config, &base).await;
    let http = reqwest::Client::new();
    let mut acked = Vec::new();
    for b in 0..40 {
        let jobs: Vec<serde_json::Value> = (0..100)
            .map(|i| {
                let n = b * 100 + i;
                let mut job = serde_json::json!({"type": "ok", "key": format!("k{}", n % 61), "payload": {"n": n}});
                if n % 2 == 0 {
                    job["delay_ms"] = serde_json::json!((n * 7919) % 8000);
                }
                job
            })
            .collect();
        acked.extend(post_batch(&http, &base, topic, jobs).await);
    }
    assert_eq!(acked.len(), 4000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = received.total();
    terminate(&mut child, "-TERM", Duration::from_secs(40)).await;
    drop(child);
    let (_child, ids) =
        restart_until_delivered(&config, &base, &received, &acked, Duration::from_secs(90)).await;
    let again = ids.values().filter(|n| **n > 1).count();
    eprintln!("{before} of 4000 delivered before SIGTERM; {again} delivered twice");
    assert!(
        before < 4000,
        "every job ran before the signal: this tests nothing"
    );
    assert_eq!(again, 0, "{again} jobs ran again after a clean stop");
}

/// A client that sent half a request (headers without their end, or a body shorter than its
/// `Content-Length`) does not keep a stopping `conveyor dev` alive: the API gives requests
/// in flight 5 s, then closes what is still open (it was still up after 35 s, and further
/// signals did nothing).
async fn half_requests_do_not_hold_the_stop(backend: &str, topic: &str) {
    use tokio::io::AsyncWriteExt;
    let (_dir, config, base) = configure(backend, &format!("[[topics]]\nname = \"{topic}\"\n"));
    let port = base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let mut child = start(&config, &base).await;
    let mut open = Vec::new();
    for half in [
        format!("POST /v1/topics/{topic}/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: app"),
        format!("POST /v1/topics/{topic}/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\""),
        "GET /healthz HTTP/1.1\r\nHost: x\r\n".to_owned(),
    ] {
        for _ in 0..20 {
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            c.write_all(half.as_bytes()).await.unwrap();
            open.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = terminate(&mut child, "-TERM", Duration::from_secs(30)).await;
    eprintln!(
        "stopped {:.1} s after SIGTERM with {} half requests open",
        took.as_secs_f64(),
        open.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_repeats_no_finished_job_behind_a_waiting_one() {
    a_clean_stop_repeats_no_finished_job("", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_repeats_nothing_under_a_delayed_mixed_load() {
    a_clean_stop_under_a_delayed_mixed_load("", "mixed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_do_not_hold_a_stop() {
    half_requests_do_not_hold_the_stop("", "jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_like_ctrl_c() {
    drains_on("-TERM", "", "jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains() {
    drains_on("-INT", "", "jobs").await;
}

/// The same on the Kafka backend.
#[cfg(feature = "live")]
mod kafka {
    use super::drains_on;

    fn backend() -> String {
        let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect(
            "set CONVEYOR_TEST_BROKERS=host:port, or run the tests through scripts/kafka.sh",
        );
        format!("backend = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\nsession_timeout_ms = 6000")
    }

    fn topic(signal: &str) -> String {
        format!("signals{signal}.{}", std::process::id())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_drains_like_ctrl_c_on_kafka() {
        drains_on("-TERM", &backend(), &topic("term")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigint_drains_on_kafka() {
        drains_on("-INT", &backend(), &topic("int")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_stop_repeats_no_finished_job_on_kafka() {
        super::a_clean_stop_repeats_no_finished_job(&backend(), &topic("held")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_stop_repeats_nothing_under_a_delayed_mixed_load_on_kafka() {
        super::a_clean_stop_under_a_delayed_mixed_load(&backend(), &topic("mixed")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_sent_requests_do_not_hold_a_stop_on_kafka() {
        super::half_requests_do_not_hold_the_stop(&backend(), &topic("half")).await;
    }
}
