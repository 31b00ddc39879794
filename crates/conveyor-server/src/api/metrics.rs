//! `GET /metrics` and the HTTP API's own metrics.
//!
//! [`scrape`] refreshes the gauges read from the backend (lag, delayed jobs, dead letters:
//! `conveyor_runtime::observation::metrics::refresh`) and answers the exposition of
//! [`conveyor_metrics::global`]. [`track`], a middleware around every route, counts requests by
//! method, route (axum's [`MatchedPath`], the route's template such as
//! `/v1/topics/:topic/jobs`: never the raw path, whose topic names and ids would make the
//! series unbounded), status and error code, times them,
//! and counts answers replayed for an `Idempotency-Key`.
//!
//! [`router`] is `/metrics` alone, for `metrics.listen` (a port of its own).

use std::sync::{Arc, LazyLock};

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use conveyor_metrics::{global, Counter, Family, Histogram};

use crate::error::ErrorCode;

struct Families {
    requests: Arc<Family<Counter>>,
    seconds: Arc<Family<Histogram>>,
    replays: Arc<Family<Counter>>,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let g = global();
    Families {
        requests: g.counter(
            "conveyor_http_requests_total",
            "HTTP API requests by method, route template, status and error code (\"\" for successes).",
            &["method", "route", "status", "code"],
        ),
        seconds: g.histogram(
            "conveyor_http_request_seconds",
            "How long HTTP API requests took, in seconds, by method and route template.",
            &["method", "route"],
            conveyor_metrics::DURATION_BUCKETS,
        ),
        replays: g.counter(
            "conveyor_idempotent_replays_total",
            "Requests with an Idempotency-Key answered again with their first answer (nothing stored twice).",
            &["route"],
        ),
    }
});

/// Registers every family of conveyor's crates, so a scrape lists them all from the start.
pub fn init() {
    LazyLock::force(&FAMILIES);
    conveyor_runtime::observation::metrics::init();
    conveyor_kafka::metrics::init();
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn scrape() -> Response {
    init();
    conveyor_runtime::observation::metrics::refresh().await;
    (
        [(header::CONTENT_TYPE, conveyor_metrics::CONTENT_TYPE)],
        global().render(),
    )
        .into_response()
}

/// The router of `metrics.listen`: `/metrics` only.
pub fn router() -> Router {
    Router::new().route("/metrics", get(scrape))
}

/// A route template as a label: `/v1/topics/{topic}/jobs` becomes `/v1/topics/:topic/jobs`, so
/// a PromQL regex matcher on it needs no escaping (`{` is an operator in a regex) and every
/// exposition parser reads it (some stop a label set at the first `}`).
fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

/// Counts and times a request of the API.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| route_label(p.as_str()));
    let route = route.as_deref().unwrap_or("unmatched");
    // any token is a valid method: those outside the standard ones share one label, so a
    // client cannot grow the series without bound
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        axum::http::Method::PATCH => "PATCH",
        _ => "other",
    };
    let began = std::time::Instant::now();
    let response = next.run(req).await;
    let f = &*FAMILIES;
    let status = response.status();
    let code = response.extensions().get::<ErrorCode>().map_or("", |c| c.0);
    f.requests
        .with(&[method, route, status.as_str(), code])
        .inc();
    f.seconds
        .with(&[method, route])
        .observe_duration(began.elapsed());
    if response
        .headers()
        .get(crate::api::idempotency::REPLAYED_HEADER)
        .is_some_and(|v| v == "true")
    {
        f.replays.with(&[route]).inc();
    }
    response
}
