//! One trace from an HTTP enqueue through the handler, a job it emits, and that job's handler (a
//! webhook call), exported as OTLP/HTTP JSON to a receiver in this process (issue 22 item 5).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use conveyor_core::{Backend, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::observation::trace::{SpanContext, TraceConfig};
use conveyor_runtime::{Job, NewJob, WebhookHandler, Worker};
use conveyor_server::{app, AppState};
use serde_json::{json, Value};

/// Serves `router` on a free port; returns its address.
async fn listen(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// The spans the receiver got: (name, trace id, span id, parent span id, kind, status code).
type Spans = Arc<Mutex<Vec<Value>>>;

async fn otlp_receiver() -> (std::net::SocketAddr, Spans) {
    let spans: Spans = Arc::default();
    let s = Arc::clone(&spans);
    let router = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::Json<Value>| {
            let s = Arc::clone(&s);
            async move {
                for rs in body["resourceSpans"].as_array().unwrap() {
                    let service = &rs["resource"]["attributes"][0]["value"]["stringValue"];
                    assert_eq!(service, "conveyor-test");
                    for ss in rs["scopeSpans"].as_array().unwrap() {
                        s.lock()
                            .unwrap()
                            .extend(ss["spans"].as_array().unwrap().iter().cloned());
                    }
                }
                axum::Json(json!({}))
            }
        }),
    );
    (listen(router).await, spans)
}

fn find<'a>(spans: &'a [Value], name: &str, trace: &str) -> Option<&'a Value> {
    spans
        .iter()
        .find(|s| s["name"] == name && s["traceId"] == trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_http_enqueue_to_the_emitted_jobs_webhook() {
    let (otlp, spans) = otlp_receiver().await;
    assert!(conveyor_runtime::observation::trace::init(TraceConfig {
        endpoint: format!("http://{otlp}"),
        sample_ratio: 1.0,
        service_name: "conveyor-test".into(),
    }));
    // the webhook receiver keeps the traceparent of each call
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let c = Arc::clone(&calls);
    let hook = listen(axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap| {
            let c = Arc::clone(&c);
            async move {
                let tp = headers
                    .get("traceparent")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                c.lock().unwrap().push(tp);
                "ok"
            }
        }),
    ))
    .await;

    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    for t in ["orders", "emails"] {
        backend.create_topic(&TopicSpec::new(t, 2)).await.unwrap();
    }
    let api = listen(app(AppState::new(Arc::clone(&backend)))).await;
    let orders = Worker::builder(Arc::clone(&backend), "g-orders", ["orders"])
        .job("order", |v: Value, job: Job| async move {
            job.emit(
                "emails",
                NewJob::json("email", &json!({"order": v["n"]})).unwrap(),
            );
            Ok::<(), conveyor_runtime::JobError>(())
        })
        .build();
    let emails = Worker::builder(Arc::clone(&backend), "g-emails", ["emails"])
        .fallback(WebhookHandler::new(
            format!("http://{hook}/hook"),
            Duration::from_secs(5),
        ))
        .build();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for w in [orders, emails] {
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(w.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }

    // the caller's trace: its span id is the enqueue's parent
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{api}/v1/topics/orders/jobs"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&json!({"type": "order", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // and one without: a trace of its own, rooted at the enqueue
    let r = http
        .post(format!("http://{api}/v1/topics/orders/jobs"))
        .json(&json!({"type": "order", "payload": {"n": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while calls.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook got {:?}",
            calls.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conveyor_runtime::observation::trace::flush(Duration::from_secs(5)).await;
    let _ = stop.send(true);
    for w in workers {
        w.await.unwrap().unwrap();
    }
    conveyor_runtime::observation::trace::flush(Duration::from_secs(5)).await;

    let spans = spans.lock().unwrap().clone();
    let names: Vec<String> = spans
        .iter()
        .map(|s| format!("{} {} {}", s["name"], s["traceId"], s["parentSpanId"]))
        .collect();
    let publish = find(&spans, "publish orders", trace).unwrap_or_else(|| panic!("{names:#?}"));
    assert_eq!(
        publish["parentSpanId"], caller,
        "the enqueue continues the caller's span"
    );
    assert_eq!(publish["kind"], 4);
    let order = find(&spans, "process orders", trace).unwrap_or_else(|| panic!("{names:#?}"));
    assert_eq!(order["parentSpanId"], publish["spanId"], "{names:#?}");
    assert_eq!(order["status"]["code"], 1);
    let email = find(&spans, "process emails", trace).unwrap_or_else(|| panic!("{names:#?}"));
    assert_eq!(
        email["parentSpanId"], order["spanId"],
        "the emitted job's handler is a child of the emitting one"
    );
    let calls = calls.lock().unwrap().clone();
    let call = calls
        .iter()
        .filter_map(|tp| SpanContext::parse(tp))
        .find(|c| c.trace_id_hex() == trace)
        .unwrap_or_else(|| panic!("no webhook call in the trace: {calls:?}"));
    assert_eq!(
        format!("\"{}\"", call.to_traceparent().split('-').nth(2).unwrap()),
        email["spanId"].to_string(),
        "the webhook call carries its process span as parent"
    );
    // the enqueue without a trace started one of its own, through both handlers
    let other: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "publish orders" && s["traceId"] != trace)
        .collect();
    assert_eq!(other.len(), 1, "{names:#?}");
    assert!(
        other[0].get("parentSpanId").is_none(),
        "a new trace's root has no parent"
    );
    let t2 = other[0]["traceId"].as_str().unwrap();
    assert!(
        find(&spans, "process orders", t2).is_some()
            && find(&spans, "process emails", t2).is_some(),
        "{names:#?}"
    );
}
