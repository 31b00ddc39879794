//! Helpers for the end-to-end tests: a webhook receiver on port 0, and concurrent HTTP posting.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

/// What the receiver saw: per message id, the attempts delivered.
#[derive(Debug, Default)]
pub struct Received {
    pub deliveries: Mutex<Vec<(String, u32, String)>>,
    /// The `Conveyor-Worker` of each delivery, in the same order.
    pub workers: Mutex<Vec<String>>,
}

impl Received {
    pub fn ids(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (id, _, _) in self.deliveries.lock().unwrap().iter() {
            *m.entry(id.clone()).or_insert(0) += 1;
        }
        m
    }
    pub fn total(&self) -> usize {
        self.deliveries.lock().unwrap().len()
    }
}

/// Starts a receiver: job type `ok` -> 200, `bad` -> 400, `flaky` -> 503 until attempt 3, `slow`
/// -> 200 after `delay`.
pub async fn receiver(delay: Duration) -> (SocketAddr, Arc<Received>) {
    let received = Arc::new(Received::default());
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State((r, delay)): State<(Arc<Received>, Duration)>,
                 headers: HeaderMap,
                 _body: bytes::Bytes| async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let attempt: u32 = h("conveyor-attempt").parse().unwrap_or(0);
                    let job_type = h("conveyor-job-type");
                    {
                        // one lock order for both lists, so their entries line up
                        let mut deliveries = r.deliveries.lock().unwrap();
                        r.workers.lock().unwrap().push(h("conveyor-worker"));
                        deliveries.push((h("conveyor-message-id"), attempt, job_type.clone()));
                    }
                    match job_type.as_str() {
                        "bad" => StatusCode::BAD_REQUEST,
                        "flaky" if attempt < 3 => StatusCode::SERVICE_UNAVAILABLE,
                        "slow" => {
                            tokio::time::sleep(delay).await;
                            StatusCode::OK
                        }
                        _ => StatusCode::OK,
                    }
                },
            ),
        )
        .with_state((Arc::clone(&received), delay));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

/// A suffix that makes a topic or group name unique to this run (nanoseconds since the epoch,
/// in hex).
pub fn unique_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Posts `n` jobs of `job_type` with `workers` concurrent clients; returns the ids acknowledged
/// with 201 (requests that failed are not acknowledged and not returned).
pub async fn post_jobs(
    base: &str,
    topic: &str,
    job_type: &str,
    n: usize,
    workers: usize,
) -> Vec<String> {
    let http = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (http, next, url, job_type) = (
            http.clone(),
            Arc::clone(&next),
            format!("{base}/v1/topics/{topic}/jobs"),
            job_type.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return acked;
                }
                let body = serde_json::json!({"type": job_type, "key": format!("k{}", i % 97), "payload": {"i": i}});
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                        let v: serde_json::Value = match r.json().await { Ok(v) => v, Err(_) => continue };
                        acked.push(v["id"].as_str().unwrap().to_owned());
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => {
                        // the server died (crash test): stop this client
                        return acked;
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Posts `jobs` (request bodies) as one batch to `topic`; returns their ids (anything but a
/// `201` fails the test).
pub async fn post_batch(
    http: &reqwest::Client,
    base: &str,
    topic: &str,
    jobs: Vec<serde_json::Value>,
) -> Vec<String> {
    let r = http
        .post(format!("{base}/v1/topics/{topic}/jobs/batch"))
        .json(&serde_json::json!({ "jobs": jobs }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET url` with `http`, its body decoded as JSON (a transport or decoding error fails the test).
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// Waits until `cond` holds, up to `timeout`.
pub async fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves no
/// `conveyor dev` running.
#[derive(Debug)]
pub struct Dev(pub Child);

impl std::ops::Deref for Dev {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Dev {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real `conveyor dev` binary with a configuration file.
pub fn start_dev(config: &std::path::Path) -> Dev {
    Dev(Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["dev", "--config"])
        .arg(config)
        .env(
            "CONVEYOR_LOG",
            std::env::var("CONVEYOR_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start conveyor dev"))
}

/// Runs the `conveyor` binary to completion; returns (success, stdout, stderr).
pub fn conveyor(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(args)
        .env("CONVEYOR_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run conveyor");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `GET {base}{path}` answers 2xx, up to `timeout`.
pub async fn wait_ok(base: &str, path: &str, timeout: Duration) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}{path}")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("conveyor dev did not answer {path} at {base} within {timeout:?}");
}

/// Starts `conveyor dev` with the configuration `config_for(port)` writes, on a port that was
/// free a moment ago, and waits until it answers `/readyz`. A port can be taken in between
/// (another test's server, or a client connection's local port): the process then exits with
/// "cannot listen", and this tries again with another port. Returns the process and its base URL.
pub async fn start_dev_on_a_free_port(
    config_for: impl FnMut(u16) -> std::path::PathBuf,
) -> (Dev, String) {
    start_on_a_free_port(config_for, start_dev).await
}

/// [`start_dev_on_a_free_port`] with `start` starting the process from the configuration file.
pub async fn start_on_a_free_port(
    mut config_for: impl FnMut(u16) -> std::path::PathBuf,
    mut start: impl FnMut(&std::path::Path) -> Dev,
) -> (Dev, String) {
    for _ in 0..5 {
        let port = free_port();
        let mut dev = start(&config_for(port));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut ready = false;
        while tokio::time::Instant::now() < deadline {
            if dev.try_wait().unwrap().is_some() {
                break; // it could not start (the port was taken): try another
            }
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // a foreign listener on the port answers too: the process must still be running
        tokio::time::sleep(Duration::from_millis(500)).await;
        if ready && dev.try_wait().unwrap().is_none() {
            return (dev, base);
        }
        eprintln!("conveyor dev did not come up on port {port}; trying another port");
    }
    panic!("conveyor dev did not start on any of 5 free ports");
}
