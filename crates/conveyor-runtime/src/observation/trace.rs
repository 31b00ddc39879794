//! Traces: one trace from an enqueue to every handler it leads to, exported with OTLP.
//!
//! The W3C trace context (`traceparent`) travels in each job's headers. With tracing on
//! ([`init`], or `[tracing] otlp_endpoint` in `conveyor.toml`), conveyor adds spans:
//!
//! | span | kind | parent | the records it writes carry |
//! |---|---|---|---|
//! | `publish {topic}` ([`crate::Client::enqueue`], the HTTP API's enqueue) | producer | the job's own `traceparent`, else the HTTP request's | this span |
//! | `process {topic}` (a worker running a handler, a webhook call included) | consumer | the record's `traceparent` | this span: jobs the handler emits, and the webhook call's `traceparent` header |
//!
//! so an HTTP enqueue, its handler, a job that handler emits and that job's handler share one
//! trace id. Spans are sampled at the root by [`TraceConfig::sample_ratio`] (on the trace id),
//! children follow their parent's decision (W3C `sampled` flag). Finished spans are batched and
//! POSTed as OTLP/HTTP JSON to `{endpoint}/v1/traces` (an OpenTelemetry Collector, Jaeger, Tempo
//! take it) every second or 512 spans; at most 8,192 wait (more are dropped and counted, never
//! blocking a job). With tracing off nothing is recorded and the context passes through
//! unchanged: a job's `traceparent` reaches its emitted jobs and its webhook call as it came.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::mpsc;

mod otlp;

/// Tracing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The OTLP/HTTP endpoint's base, e.g. `http://127.0.0.1:4318` (`/v1/traces` is added).
    pub endpoint: String,
    /// The share of new traces recorded, 0.0 to 1.0 (children follow their parent).
    pub sample_ratio: f64,
    /// `service.name` of the spans' resource.
    pub service_name: String,
}

/// A span's identity, as `traceparent` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The span id.
    pub span_id: [u8; 8],
    /// Whether the trace is recorded.
    pub sampled: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl SpanContext {
    /// Reads a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`); `None` when malformed or
    /// all-zero.
    pub fn parse(traceparent: &str) -> Option<SpanContext> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id = unhex::<16>(trace)?;
        let span_id = unhex::<8>(span)?;
        let flags = unhex::<1>(flags)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(SpanContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header value.
    pub fn to_traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.sampled as u8
        )
    }

    /// The trace id in hex, as logs and backends show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// What a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Writes jobs.
    Producer,
    /// Runs a job.
    Consumer,
    /// Answers a request.
    Server,
}

/// A started span; [`Span::end`] records it (dropping it records nothing).
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    parent: Option<[u8; 8]>,
    name: String,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<(&'static str, Value)>,
}

impl Span {
    /// This span's context: what the records it writes carry.
    pub fn context(&self) -> SpanContext {
        self.context
    }

    /// Adds an attribute (OpenTelemetry's semantic names, e.g. `messaging.destination.name`).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push((key, value.into()));
    }

    /// Ends the span: `error` sets its status to an error with that message.
    pub fn end(self, error: Option<&str>) {
        let Some(t) = TRACER.get() else { return };
        if !self.context.sampled {
            return;
        }
        let end = SystemTime::now();
        let nanos = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                .to_string()
        };
        let attributes: Vec<Value> = self
            .attributes
            .iter()
            .map(|(k, v)| json!({"key": k, "value": otlp::any_value(v)}))
            .collect();
        let mut span = json!({
            "traceId": hex(&self.context.trace_id),
            "spanId": hex(&self.context.span_id),
            "name": self.name,
            "kind": match self.kind { SpanKind::Server => 2, SpanKind::Producer => 4, SpanKind::Consumer => 5 },
            "startTimeUnixNano": nanos(self.start),
            "endTimeUnixNano": nanos(end),
            "attributes": attributes,
            "status": match error { Some(m) => json!({"code": 2, "message": m}), None => json!({"code": 1}) },
        });
        if let Some(p) = self.parent {
            span["parentSpanId"] = json!(hex(&p));
        }
        if t.spans.try_send(span).is_err() {
            t.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Tracer {
    spans: mpsc::Sender<Value>,
    /// `sample_ratio` as a bound on the trace id's last 8 bytes.
    sample_below: u64,
    dropped: AtomicU64,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Turns tracing on for this process: spans are exported to `config.endpoint` by a task on the
/// current tokio runtime. A second call changes nothing (returns `false`).
pub fn init(config: TraceConfig) -> bool {
    let (tx, rx) = mpsc::channel(otlp::MAX_WAITING);
    let ratio = config.sample_ratio.clamp(0.0, 1.0);
    let sample_below = if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio * u64::MAX as f64) as u64
    };
    let tracer = Tracer {
        spans: tx,
        sample_below,
        dropped: AtomicU64::new(0),
    };
    if TRACER.set(tracer).is_err() {
        return false;
    }
    tokio::spawn(otlp::export(rx, config));
    true
}

/// Whether tracing is on.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Spans dropped because the exporter fell behind.
pub fn dropped() -> u64 {
    TRACER
        .get()
        .map_or(0, |t| t.dropped.load(Ordering::Relaxed))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    loop {
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
        if b != [0u8; N] {
            return b;
        }
    }
}

/// Starts a span under `parent` (a `traceparent` value; a new trace when `None` or malformed).
/// `None` when tracing is off.
pub fn start(name: impl Into<String>, kind: SpanKind, parent: Option<&str>) -> Option<Span> {
    let t = TRACER.get()?;
    let parent = parent.and_then(SpanContext::parse);
    let context = match parent {
        Some(p) => SpanContext {
            trace_id: p.trace_id,
            span_id: random_bytes(),
            sampled: p.sampled,
        },
        None => {
            let trace_id: [u8; 16] = random_bytes();
            let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
            SpanContext {
                trace_id,
                span_id: random_bytes(),
                sampled: t.sample_below == u64::MAX || low < t.sample_below,
            }
        }
    };
    Some(Span {
        context,
        parent: parent.map(|p| p.span_id),
        name: name.into(),
        kind,
        start: SystemTime::now(),
        attributes: Vec::new(),
    })
}

/// Waits up to `limit` for the spans ended so far to be sent (a stopping process calls this).
pub async fn flush(limit: Duration) {
    if let Some(t) = TRACER.get() {
        let deadline = tokio::time::Instant::now() + limit;
        while t.spans.capacity() < t.spans.max_capacity() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        otlp::wait_idle(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = SpanContext::parse(tp).unwrap();
        assert!(c.sampled);
        assert_eq!(c.to_traceparent(), tp);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(SpanContext::parse(bad), None, "{bad}");
        }
    }
}
