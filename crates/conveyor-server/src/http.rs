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
//! [`serve`] stops accepting when its shutdown future completes and then waits for the open
//! connections to finish their requests (idle ones are closed at once); the caller bounds that
//! wait (`conveyor dev` and `serve`: 5 s).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
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
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_requests_in_flight: 1024,
        }
    }
}

/// The answer to a connection beyond the cap, written before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 110\r\n\r\n{\"error\":{\"code\":\"overloaded\",\"message\":\"too many open connections (api.max_connections); retry in a second\"}}";

/// Refuses requests beyond `limit` at once with `503 overloaded`.
async fn in_flight(limit: Arc<Semaphore>, req: Request, next: Next) -> Response {
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
    let router = router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| in_flight(Arc::clone(&requests), req, next),
    ));
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
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tokio::spawn(refuse(stream));
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
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // a client that hangs up, times out or sends garbage ends its connection only
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection beyond the cap and closes it, within a second whatever the client does.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(OVER_CAPACITY).await?;
        stream.shutdown().await
    })
    .await;
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
