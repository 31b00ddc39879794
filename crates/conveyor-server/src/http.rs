//! The API's listener: HTTP/1.1 with bounds a server facing the network needs.
//!
//! - **Header-read timeout** (`api.header_read_timeout_ms`, default 10 s): a connection that has
//!   not sent a whole request head within it, from its start or from the end of its previous
//!   answer (a kept-alive connection left idle), is closed. Slow or stalled clients (a
//!   slowloris) hold nothing longer than that.
//! - **Connection cap** (`api.max_connections`, default 4096): a connection beyond it is answered
//!   `503 overloaded` with `Retry-After: 1` and closed at once.
//! - **In-flight cap** (`api.max_requests_in_flight`, default 1024): a request beyond it is
//!   answered `503 overloaded` with `Retry-After: 1` at once, never queued. `/healthz` and
//!   `/readyz` are not counted, so probes answer under load.
//!
//! - **Stall timeout** (`api.stall_timeout_ms`, default 30 s): an answer the client does not
//!   read for that long (a full socket buffer: a client that pipelines requests and never
//!   reads) closes the connection, and a request body must arrive whole within it
//!   (`408 body_timeout`), so neither holds a connection or an in-flight slot longer.
//!
//! [`serve`] stops accepting when its shutdown future completes and then waits for the open
//! connections to finish their requests (idle ones are closed at once); the caller bounds that
//! wait (`conveyor dev` and `serve`: 5 s). Dropping the future closes every connection still
//! open (their tasks are aborted), so nothing outlives it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// The listener's bounds (from `[api]`, see [`crate::config::ApiConfig::http_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client has to send a request head.
    pub header_read_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// Most requests handled at once.
    pub max_requests_in_flight: usize,
    /// How long a write may stall (the client not reading) and a body may take to arrive.
    pub stall_timeout: Duration,
}

/// How long the request's body may take to arrive (a request extension the listener sets; the
/// API's body extractor reads it).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_requests_in_flight: 1024,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// The answer to a connection beyond the cap, written before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 110\r\n\r\n{\"error\":{\"code\":\"overloaded\",\"message\":\"too many open connections (api.max_connections); retry in a second\"}}";

/// Refuses requests beyond `limit` at once with `503 overloaded`.
async fn in_flight(
    limit: Arc<Semaphore>,
    body: Duration,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(BodyTimeout(body));
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    match limit.try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(req).await;
            drop(permit);
            response
        }
        Err(_) => ApiError::Overloaded(
            "too many requests in flight (api.max_requests_in_flight); retry after a second".into(),
        )
        .into_response(),
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then waits for the
/// open connections' requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let requests = Arc::new(Semaphore::new(limits.max_requests_in_flight));
    let stall = limits.stall_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| in_flight(Arc::clone(&requests), stall, req, next),
    ));
    // answers to connections beyond the cap: a bounded number at once, the rest just closed
    let refusals = Arc::new(Semaphore::new(256));
    // the connections' tasks: aborted when this future is dropped
    let mut open = tokio::task::JoinSet::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of file descriptors or a connection reset before accept: keep
                    // serving the open connections and try again shortly
                    tracing::warn!(error = %e, "cannot accept a connection; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = open.join_next(), if !open.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            if let Ok(slot) = Arc::clone(&refusals).try_acquire_owned() {
                open.spawn(async move {
                    refuse(stream).await;
                    drop(slot);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let router = router.clone();
                async move {
                    use tower::ServiceExt;
                    router.oneshot(req.map(axum::body::Body::new)).await
                }
            });
        let io = TokioIo::new(WriteDeadline::new(stream, limits.stall_timeout));
        let conn = graceful.watch(builder.serve_connection(io, service));
        open.spawn(async move {
            // a client that hangs up, times out or sends garbage ends its connection only
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection beyond the cap and closes it, within 3 s whatever the client does:
/// reads its request head first (so the client reads the answer, not a reset), answers, and
/// drains what else it sent for a moment before closing.
async fn refuse(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(OVER_CAPACITY).await?;
        stream.shutdown().await
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A stream whose writes fail once they have made no progress for `timeout` (the client reads
/// none of its answer), so hyper closes the connection.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// A write's result: `Pending` starts (or goes on with) the stall's clock, which fails the
    /// write once `timeout` has passed; progress stops it.
    fn progressed<T>(
        &mut self,
        p: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match p {
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read none of its answer within api.stall_timeout_ms",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(p, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(p, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(p, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progressed(p, cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_over_capacity_answer_has_the_length_it_says() {
        let text = std::str::from_utf8(super::OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
    }
}
