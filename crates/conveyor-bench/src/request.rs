//! Phase 5 of `conveyor bench`: request/reply round trips. `request_jobs` requests
//! ([`Client::request`]) are sent one at a time to an idle worker whose handler returns the
//! payload as its reply; each is measured from just before the call to the moment the caller
//! holds the reply (publish, worker pick-up, reply publish, reply-topic read, hand-over).

use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor_core::{Backend, Error, Result, TopicSpec};
use tokio::sync::oneshot;

use super::{payload, percentile, BenchOptions};
use conveyor_runtime::{json_handler, Client, Job, JobError, NewJob, Worker};

/// How long one request of the phase may wait for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns the round trip's p50 and p99, in milliseconds.
pub(super) async fn round_trips(
    backend: &Arc<dyn Backend>,
    opts: &BenchOptions,
    suffix: &str,
    progress: impl Fn(String) + Send + Sync + Clone + 'static,
) -> Result<(f64, f64)> {
    let n = opts.request_jobs;
    let topic = format!("bench.requests.{suffix}");
    backend
        .create_topic(&TopicSpec::new(topic.clone(), opts.partitions))
        .await?;
    progress(format!(
        "request/reply: {n} requests, one at a time, into an idle worker"
    ));
    let worker = Worker::builder(
        Arc::clone(backend),
        format!("bench.requests.{suffix}"),
        [topic.clone()],
    )
    .concurrency(opts.concurrency)
    .handler(
        "echo",
        json_handler(|p: serde_json::Value, _job: Job| async move { Ok::<_, JobError>(p) }),
    )
    .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let client = Client::new(Arc::clone(backend)).with_producer("conveyor-bench");
    let job = |i: usize| {
        NewJob::json("echo", &payload(i, opts.payload_bytes))
            .expect("json")
            .with_key(format!("user-{}", i % 1000))
    };
    // opens the reply topic and waits for the worker's group join (seconds on Kafka)
    client
        .request(&topic, job(usize::MAX >> 1), Duration::from_secs(120))
        .await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let sent = Instant::now();
        let reply = client.request(&topic, job(i), REQUEST_TIMEOUT).await?;
        samples.push(sent.elapsed().as_secs_f64() * 1000.0);
        let v: serde_json::Value = reply.json().map_err(|e| Error::Corrupt(e.to_string()))?;
        if v["n"].as_u64() != Some(i as u64) {
            return Err(Error::Corrupt(format!(
                "request {i} got the reply {v} (another request's)"
            )));
        }
        if (i + 1) % 500 == 0 {
            progress(format!("request/reply: {}/{n}", i + 1));
        }
    }
    let _ = stop.send(());
    handle.await.expect("worker task")?;
    samples.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    progress(format!(
        "request/reply: round trip p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms ({:?})",
        samples.last().copied().unwrap_or(0.0),
        client.request_counts()
    ));
    Ok((p50, p99))
}
