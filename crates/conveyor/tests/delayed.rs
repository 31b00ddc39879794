//! Delayed jobs end to end through the real `conveyor dev`: 10,000 jobs enqueued over HTTP with
//! delays spread over 0-60 s, delivered to a webhook; `kill -9` half way and a restart. Every
//! acknowledged job is delivered, none before its due time; the lateness is printed (the route
//! runs with the default `max_buffered`, 256, as docs/delays.md's figure says). The same
//! with fewer jobs on the live broker (`live_kafka_...`, run by `scripts/live.sh`). Also the CLI:
//! `enqueue --in`, `cancel`, `pause` and `resume`.

mod util;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use util::{conveyor, post_batch, start_dev_on_a_free_port, wait_for};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Per message id: the lateness (ms) of each delivery.
type Seen = Arc<Mutex<HashMap<String, Vec<i64>>>>;

async fn receiver() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |axum::extract::State(seen): axum::extract::State<Seen>, h: HeaderMap| async move {
                    let get = |n: &str| {
                        h.get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let due = conveyor_core::headers::parse_time(&get("conveyor-due-at"))
                        .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64);
                    let late = due.map_or(i64::MIN, |d| now_ms() - d);
                    seen.lock()
                        .unwrap()
                        .entry(get("conveyor-message-id"))
                        .or_default()
                        .push(late);
                    StatusCode::OK
                },
            ),
        )
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Enqueues `n` jobs in batches of 100 with delays spread over `0..max_delay_ms`; returns the ids.
async fn enqueue_delayed(base: &str, topic: &str, n: usize, max_delay_ms: u64) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for chunk in 0..n.div_ceil(100) {
        let jobs: Vec<serde_json::Value> = (chunk * 100..((chunk + 1) * 100).min(n))
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                serde_json::json!({"type": "t", "key": format!("k{}", i % 50), "payload": {"i": i}, "delay_ms": x % max_delay_ms})
            })
            .collect();
        ids.extend(post_batch(&http, base, topic, jobs).await);
    }
    ids
}

async fn delayed_jobs_survive_kill_9(backend_toml: &str, topic: &str, n: usize, max_delay_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (hook, seen) = receiver().await;
    let data = dir.path().join("data");
    let config_for = |port: u16| {
        let path = dir.path().join(format!("conveyor-{port}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}\"\n{backend_toml}\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"{topic}\"\npartitions = 4\n[[routes]]\ntopic = \"{topic}\"\nurl = \"http://{hook}/hook\"\nconcurrency = 64\n",
                data.display()
            ),
        )
        .unwrap();
        path
    };
    let (mut dev, base) = start_dev_on_a_free_port(config_for).await;
    let started = std::time::Instant::now();
    let ids = enqueue_delayed(&base, topic, n, max_delay_ms).await;
    println!("{n} delayed jobs acknowledged in {:?}", started.elapsed());
    // kill -9 half way through the delays, and start again
    tokio::time::sleep(Duration::from_millis(max_delay_ms / 2).saturating_sub(started.elapsed()))
        .await;
    let before = seen.lock().unwrap().len();
    dev.kill().unwrap();
    dev.wait().unwrap();
    println!(
        "kill -9 after {:?} with {before} of {n} jobs delivered",
        started.elapsed()
    );
    assert!(
        before < n,
        "every job ran before the kill: the kill proves nothing"
    );
    let (_dev, _base) = start_dev_on_a_free_port(config_for).await;
    wait_for(
        Duration::from_millis(max_delay_ms + 60_000),
        "every delayed job delivered",
        || seen.lock().unwrap().len() >= n,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = seen.lock().unwrap().clone();
    let mut late = Vec::new();
    let mut repeated = 0;
    for id in &ids {
        let l = seen
            .get(id)
            .unwrap_or_else(|| panic!("job {id} was never delivered"));
        repeated += l.len() - 1;
        for &x in l {
            assert!(
                x != i64::MIN,
                "job {id} was delivered without Conveyor-Due-At"
            );
            assert!(x >= 0, "job {id} was delivered {} ms early", -x);
        }
        late.push(l[0]);
    }
    late.sort_unstable();
    println!(
        "{n} delayed jobs over 0-{} s, kill -9 half way: all delivered, none early; lateness p50 {} ms, p99 {} ms, max {} ms; {repeated} repeated deliveries (the kill's at-least-once window)",
        max_delay_ms / 1000,
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late[late.len() - 1],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_delayed_jobs_survive_kill_9() {
    delayed_jobs_survive_kill_9("", "delayed", 10_000, 60_000).await;
}

/// On the live broker (`CONVEYOR_TEST_BROKERS`, set by `scripts/kafka.sh`), with fewer jobs.
#[cfg(feature = "live")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_kafka_delayed_jobs_survive_kill_9() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS, or run through scripts/live.sh");
    let topic = format!("delayed-{}", util::unique_suffix());
    let backend =
        format!("backend = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\nreplication_factor = 1\n");
    delayed_jobs_survive_kill_9(&backend, &topic, 2_000, 30_000).await;
}

/// `conveyor enqueue --in`, `conveyor cancel`, `conveyor pause` and `conveyor resume`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_delays_cancels_pauses_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, seen) = receiver().await;
    let config_for = |port: u16| {
        let path = dir.path().join(format!("conveyor-{port}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"jobs\"\npartitions = 2\n[[routes]]\ntopic = \"jobs\"\nurl = \"http://{hook}/hook\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        path
    };
    let (_dev, base) = start_dev_on_a_free_port(config_for).await;
    let enqueue = |extra: &[&str]| {
        let mut args = vec!["enqueue", "jobs", "--type", "t", "--url", &base];
        args.extend_from_slice(extra);
        let (ok, out, err) = conveyor(&args);
        assert!(ok, "enqueue failed: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["id"].as_str().unwrap().to_owned()
    };
    let kept = enqueue(&["--in", "6s"]);
    let doomed = enqueue(&["--in", "6s"]);
    let (ok, out, err) = conveyor(&["cancel", &doomed, "--url", &base]);
    assert!(
        ok && out.contains("cancelled"),
        "cancel failed: {out} {err}"
    );
    let at =
        humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(2)).to_string();
    let scheduled = enqueue(&["--at", &at]);
    // an offset after fractional seconds, as Python's and Java's formatters write it, means
    // what it says (it was once read as UTC: this job ran 5.5 h late, the expired one ran)
    let in_india = |t: SystemTime| {
        let local = humantime::format_rfc3339_millis(t + Duration::from_secs(5 * 3600 + 1800));
        local.to_string().replace('Z', "+05:30")
    };
    let offset_at = enqueue(&[
        "--at",
        &in_india(SystemTime::now() + Duration::from_secs(2)),
    ]);
    // a deadline already past (+05:30) is refused at enqueue: the job could never run
    let past = in_india(SystemTime::now() - Duration::from_secs(60));
    let (ok, out, err) = conveyor(&[
        "enqueue",
        "jobs",
        "--type",
        "t",
        "--url",
        &base,
        "--deadline",
        &past,
    ]);
    assert!(
        !ok && err.contains("invalid_field") && err.contains("deadline"),
        "a --deadline in the past was accepted: {out} {err}"
    );
    wait_for(
        Duration::from_secs(30),
        "the kept, the scheduled and the --at +05:30 job",
        || {
            let s = seen.lock().unwrap();
            s.contains_key(&kept) && s.contains_key(&scheduled) && s.contains_key(&offset_at)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let s = seen.lock().unwrap();
        assert!(!s.contains_key(&doomed), "the cancelled job was delivered");
        assert!(
            s[&kept][0] >= 0 && s[&scheduled][0] >= 0 && s[&offset_at][0] >= 0,
            "a job ran early: {s:?}"
        );
    }
    // pause the route's group, enqueue, nothing is delivered; resume, it is
    let (ok, _, err) = conveyor(&["pause", "webhook.jobs", "jobs", "--url", &base]);
    assert!(ok, "pause failed: {err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = enqueue(&[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !seen.lock().unwrap().contains_key(&held),
        "a job of the paused topic was delivered"
    );
    let paused: serde_json::Value = reqwest::get(format!("{base}/v1/groups/webhook.jobs/paused"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paused["paused"], serde_json::json!(["jobs"]));
    let (ok, _, err) = conveyor(&["resume", "webhook.jobs", "jobs", "--url", &base]);
    assert!(ok, "resume failed: {err}");
    wait_for(Duration::from_secs(10), "the held job after resume", || {
        seen.lock().unwrap().contains_key(&held)
    })
    .await;
    let (ok, _, err) = conveyor(&["pause", "webhook.jobs", "nope", "--url", &base]);
    assert!(
        !ok && err.contains("unknown_topic"),
        "pausing a missing topic: {err}"
    );
    // inputs that name nothing real are errors (each was once accepted, exit 0)
    for (args, code) in [
        (&["cancel", "hello"][..], "not_found"),
        (&["pause", "webhook.jbos", "jobs"][..], "unknown_group"),
        (&["lag", "webhook.jbos"][..], "unknown_group"),
    ] {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--url", &base]);
        let (ok, out, err) = conveyor(&a);
        assert!(
            !ok && err.contains(code),
            "`conveyor {}` was accepted: {out} {err}",
            args.join(" ")
        );
    }
}
