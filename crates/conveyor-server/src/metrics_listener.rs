//! `metrics.listen`: `GET /metrics` on an address of its own, for a scraper kept off the API
//! port. It serves until the returned [`MetricsServer`] is dropped (when `conveyor dev` stops).

use conveyor_core::Error;
use tokio::net::TcpListener;

/// The metrics server's task; dropping it stops the server.
#[derive(Debug)]
pub struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
    /// Where it listens (the port chosen, for `:0`).
    pub addr: std::net::SocketAddr,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `/metrics` there.
pub async fn spawn(addr: &str) -> Result<MetricsServer, Error> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot listen on metrics.listen = `{addr}`: {e}; choose a free port or remove the key"
        ))
    })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    let task = tokio::spawn(async move {
        // the API's listener and its bounds (header timeout, connection and in-flight caps):
        // this port needs no token, so it is the first a flood would find
        let limits = crate::http::HttpLimits {
            max_connections: 256,
            max_requests_in_flight: 16,
            ..Default::default()
        };
        let serve = crate::http::serve(
            listener,
            crate::api::metrics::router(),
            limits,
            std::future::pending(),
        );
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    });
    Ok(MetricsServer { task, addr })
}
