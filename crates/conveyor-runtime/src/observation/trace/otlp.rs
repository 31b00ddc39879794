//! The OTLP/HTTP JSON exporter: batches finished spans and POSTs them to `{endpoint}/v1/traces`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::TraceConfig;

/// Most finished spans waiting to be sent; more are dropped (and counted).
pub(super) const MAX_WAITING: usize = 8192;
/// Most spans in one request.
const BATCH: usize = 512;
/// How often a partial batch is sent.
const INTERVAL: Duration = Duration::from_secs(1);

/// Batches being sent now (for [`wait_idle`]).
static SENDING: AtomicUsize = AtomicUsize::new(0);
/// Wakes the exporter to send what it has at once.
static FLUSH: Notify = Notify::const_new();

/// An attribute value in OTLP's JSON form.
pub(super) fn any_value(v: &Value) -> Value {
    match v {
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n.as_f64()}),
        Value::String(s) => json!({"stringValue": s}),
        other => json!({"stringValue": other.to_string()}),
    }
}

/// Sends batches until every sender is gone.
pub(super) async fn export(mut rx: mpsc::Receiver<Value>, config: TraceConfig) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("the HTTP client builds with static settings");
    let url = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut failed = 0u64;
    loop {
        let mut batch = Vec::new();
        let deadline = tokio::time::Instant::now() + INTERVAL;
        while batch.len() < BATCH {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(s) => batch.push(s),
                    None if batch.is_empty() => return,
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
                () = FLUSH.notified() => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        SENDING.fetch_add(1, Ordering::SeqCst);
        let n = batch.len();
        let body = json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": config.service_name}},
                {"key": "telemetry.sdk.name", "value": {"stringValue": "conveyor"}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "conveyor", "version": env!("CARGO_PKG_VERSION")},
                "spans": batch,
            }],
        }]});
        let sent = http.post(&url).json(&body).send().await;
        SENDING.fetch_sub(1, Ordering::SeqCst);
        let problem = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("answered {}", r.status())),
            Err(e) => Some(e.without_url().to_string()),
        };
        if let Some(p) = problem {
            failed += n as u64;
            // one warning a minute, with the count, whatever the rate of spans
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(endpoint = %conveyor_core::redact::url(&config.endpoint), spans_lost = failed, "cannot export spans: {p}; check [tracing] otlp_endpoint (an OTLP/HTTP receiver, e.g. a collector on port 4318)");
                last_warning = Some(tokio::time::Instant::now());
                failed = 0;
            }
        }
    }
}

/// Sends what waits at once and waits, up to `deadline`, until no batch is being sent.
pub(super) async fn wait_idle(deadline: tokio::time::Instant) {
    FLUSH.notify_one();
    tokio::time::sleep(Duration::from_millis(20)).await;
    while SENDING.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
