//! The HTTP phase of `conveyor bench --http-jobs N`: single-job enqueues through the API as a
//! production process serves it (the same router, job lookup's `waiting` states, the hardened
//! listener), from `connections` keep-alive connections on 127.0.0.1, each sending its next
//! request once the answer to the last one is read.
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

use crate::http::HttpLimits;
use crate::{app, AppState};

/// What the HTTP phase measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpReport {
    /// Enqueue requests answered `201` per second.
    pub requests_s: f64,
}

/// Enqueues `requests` jobs of about `payload_bytes` to `topic` (which must exist) through the
/// API, over `connections` connections.
pub async fn run(
    backend: Arc<dyn Backend>,
    topic: &str,
    requests: usize,
    connections: usize,
    payload_bytes: usize,
) -> Result<HttpReport> {
    let mut state = AppState::new(Arc::clone(&backend));
    state.client = state
        .client
        .with_job_states(conveyor_runtime::job_states::EnqueueLog::start(
            Arc::clone(&backend),
            Default::default(),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::http::serve(
        listener,
        app(state),
        HttpLimits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let (next, topic) = (Arc::clone(&next), topic.to_owned());
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true).ok();
            let pad = "x".repeat(payload_bytes.saturating_sub(40));
            let mut buf = Vec::with_capacity(4096);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<(), Error>(());
                }
                let body = format!(
                    r#"{{"type":"noop","key":"user-{}","payload":{{"n":{i},"pad":"{pad}"}}}}"#,
                    i % 1000
                );
                let request = format!(
                    "POST /v1/topics/{topic}/jobs HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(request.as_bytes()).await?;
                let status = read_answer(&mut stream, &mut buf).await?;
                if status != 201 {
                    return Err(failed(format!(
                        "the enqueue answered {status}: {}",
                        String::from_utf8_lossy(&buf)
                    )));
                }
            }
        }));
    }
    for c in clients {
        c.await.map_err(|e| failed(e.to_string()))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = server.await;
    Ok(HttpReport {
        requests_s: requests as f64 / secs.max(f64::MIN_POSITIVE),
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
