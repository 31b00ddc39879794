//! The HTTP phase of `conveyor bench --http-jobs N`: enqueues through the API as a production
//! process serves it (the same router, job lookup's `waiting` states, the hardened listener),
//! from keep-alive connections on 127.0.0.1, each sending its next request once the answer to
//! the last one is read: as fast as the answers come, or at a fixed rate (`--http-rate`, latency
//! counted from when each request was due); single jobs, or batches (`--http-batch`).
//!
//! The client is a few lines over a `TcpStream` (one write per request, answers read to their
//! `Content-Length`), so the instructions it costs are few next to the server's: the CI guard
//! (`scripts/perf-guard.sh`) counts this phase's instructions per request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use conveyor_core::{Backend, Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use conveyor_server::http::HttpLimits;
use conveyor_server::{app, AppState};

/// What the HTTP phase sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpLoad {
    /// Requests in all.
    pub requests: usize,
    /// Keep-alive connections, each with one request in flight at a time.
    pub connections: usize,
    /// Approximate payload size of each job, in bytes.
    pub payload_bytes: usize,
    /// Jobs per request: 1 sends single-job enqueues, more the batch endpoint's.
    pub batch: usize,
    /// Requests per second in all (each connection its share at fixed intervals), or `None`
    /// for as fast as the answers come. At a fixed rate a request's latency counts from when
    /// it was due, not when it was sent, so a stall behind a slow answer is counted in full
    /// (no coordinated omission).
    pub rate: Option<f64>,
}

/// What the HTTP phase measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpReport {
    /// Enqueue requests answered `201` per second.
    pub requests_s: f64,
    /// Jobs enqueued per second (`requests_s` times the jobs per request).
    pub jobs_s: f64,
    /// Median latency of a request, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency of a request, in milliseconds.
    pub p99_ms: f64,
}

/// Enqueues `load.requests` requests of `load.batch` jobs to `topic` (which must exist) through
/// the API, over `load.connections` connections.
pub async fn run(backend: Arc<dyn Backend>, topic: &str, load: HttpLoad) -> Result<HttpReport> {
    let mut state = AppState::new(Arc::clone(&backend));
    state.client = state.client.with_job_states(
        conveyor_runtime::observation::job_states::EnqueueLog::start(
            Arc::clone(&backend),
            Default::default(),
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(conveyor_server::http::serve(
        listener,
        app(state),
        HttpLimits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let connections = load.connections.max(1);
    let batch = load.batch.max(1);
    let path = match batch {
        1 => format!("/v1/topics/{topic}/jobs"),
        _ => format!("/v1/topics/{topic}/jobs/batch"),
    };
    // each connection sends every `connections`-th request, due at its index over the rate
    let rate = load.rate.filter(|r| r.is_finite() && *r > 0.0);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..connections {
        let (next, path) = (Arc::clone(&next), path.clone());
        let (requests, payload_bytes) = (load.requests, load.payload_bytes);
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true).ok();
            let pad = "x".repeat(payload_bytes.saturating_sub(40));
            let mut buf = Vec::with_capacity(4096);
            let mut latencies = Vec::new();
            let mut own = c;
            loop {
                let i = match rate {
                    Some(_) => {
                        own += connections;
                        own - connections
                    }
                    None => next.fetch_add(1, Ordering::Relaxed),
                };
                if i >= requests {
                    return Ok::<_, Error>(latencies);
                }
                // tokio wakes a sleep at its next millisecond tick: that lateness is counted
                // too (it is what a client on this runtime sees), at most ~1 ms
                let due = match rate {
                    Some(r) => {
                        let due = started + std::time::Duration::from_secs_f64(i as f64 / r);
                        tokio::time::sleep_until(due.into()).await;
                        Some(due)
                    }
                    None => None,
                };
                let job = |n: usize| {
                    format!(
                        r#"{{"type":"noop","key":"user-{}","payload":{{"n":{n},"pad":"{pad}"}}}}"#,
                        n % 1000
                    )
                };
                let body = match batch {
                    1 => job(i),
                    _ => format!(
                        r#"{{"jobs":[{}]}}"#,
                        (0..batch)
                            .map(|j| job(i * batch + j))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                };
                let request = format!(
                    "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                // as fast as answered: from the send, after the body was built
                let due = due.unwrap_or_else(Instant::now);
                stream.write_all(request.as_bytes()).await?;
                let status = read_answer(&mut stream, &mut buf).await?;
                if status != 201 {
                    return Err(failed(format!(
                        "the enqueue answered {status}: {}",
                        String::from_utf8_lossy(&buf)
                    )));
                }
                latencies.push(due.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut latencies = Vec::with_capacity(load.requests);
    for c in clients {
        latencies.extend(c.await.map_err(|e| failed(e.to_string()))??);
    }
    let secs = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    let _ = stop.send(());
    let _ = server.await;
    latencies.sort_by(f64::total_cmp);
    // as the other phases' percentiles (`conveyor_bench`)
    let at = |q: f64| match latencies.len() {
        0 => 0.0,
        n => latencies[(((n - 1) as f64 * q).round() as usize).min(n - 1)],
    };
    Ok(HttpReport {
        requests_s: load.requests as f64 / secs,
        jobs_s: (load.requests * batch) as f64 / secs,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    })
}

fn failed(what: impl Into<String>) -> Error {
    Error::Io(std::io::Error::other(what.into()))
}

/// Reads one answer (head and `Content-Length` body) into `buf`; returns its status.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let io = Error::Io;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])
                .map_err(|_| failed("an answer head that is not UTF-8"))?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| failed(format!("not an HTTP answer: {head}")))?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.map_err(io)?;
                if n == 0 {
                    return Err(failed("the server closed the connection"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4);
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(failed("the server closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
