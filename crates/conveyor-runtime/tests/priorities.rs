//! Weighted and strict priorities across a worker's topics, on the embedded backend: a
//! low-priority backlog does not starve high-priority jobs enqueued after it, and each topic gets
//! its weight's share of the starts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_core::{Backend, Outcome, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::{handler_fn, Client, Job, NewJob, Priorities, Worker};

async fn setup() -> (tempfile::TempDir, Arc<dyn Backend>, Client) {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    for t in ["critical", "default", "low"] {
        b.create_topic(&TopicSpec::new(t, 2)).await.unwrap();
    }
    let c = Client::new(Arc::clone(&b));
    (dir, b, c)
}

async fn fill(c: &Client, topic: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let jobs = chunk
            .iter()
            .map(|i| NewJob::json("j", i).unwrap())
            .collect();
        c.enqueue_batch(topic, jobs).await.unwrap();
    }
}

/// Runs a worker with one slot over the three topics until `n` jobs started; returns the topic
/// of each start, in order.
async fn starts(
    b: &Arc<dyn Backend>,
    p: Priorities,
    buffer: usize,
    n: usize,
    during: impl std::future::Future<Output = ()>,
) -> Vec<String> {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = Arc::clone(&log);
    let worker = Worker::builder(Arc::clone(b), "g", ["low", "default", "critical"])
        .concurrency(1)
        .max_buffered(buffer)
        .priorities(p)
        .fallback(handler_fn(move |job: Job| {
            let l = Arc::clone(&l);
            async move {
                let first = {
                    let mut l = l.lock().unwrap();
                    l.push(job.record.topic.clone());
                    l.len() == 1
                };
                // the first job holds the only slot a moment, so every topic's jobs are
                // fetched before the order is decided
                let pause = if first { 1500 } else { 0 };
                tokio::time::sleep(Duration::from_millis(pause) + Duration::from_micros(200)).await;
                Outcome::Done
            }
        }))
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    during.await;
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while log.lock().unwrap().len() < n {
        assert!(
            tokio::time::Instant::now() < until,
            "only {} starts",
            log.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    h.await.unwrap().unwrap();
    let v = log.lock().unwrap().clone();
    v
}

fn count(v: &[String], t: &str) -> usize {
    v.iter().filter(|x| *x == t).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_topics_share_the_starts_and_critical_jobs_overtake_a_low_backlog() {
    let (_d, b, c) = setup().await;
    fill(&c, "low", 3000).await;
    let log = starts(
        &b,
        Priorities::weighted([("critical", 6), ("default", 3), ("low", 1)]),
        400,
        1000,
        async {
            // the backlog is being worked on: now critical and default jobs arrive
            tokio::time::sleep(Duration::from_millis(300)).await;
            fill(&c, "critical", 300).await;
            fill(&c, "default", 300).await;
        },
    )
    .await;
    let first_critical = log
        .iter()
        .position(|t| t == "critical")
        .expect("a critical job ran");
    let last_critical = log.iter().rposition(|t| t == "critical").unwrap();
    let low_meanwhile = count(&log[first_critical..=last_critical], "low");
    println!(
        "weighted 6/3/1: {} low jobs ran before the first critical one; the 300 critical ran within {} starts, {low_meanwhile} of them low; first 1000 starts: critical {}, default {}, low {}",
        first_critical,
        last_critical - first_critical + 1,
        count(&log, "critical"),
        count(&log, "default"),
        count(&log, "low")
    );
    assert_eq!(
        count(&log, "critical"),
        300,
        "every critical job ran in the first 1000 starts"
    );
    // with critical and default busy, low gets about a tenth, never none
    let window = &log[first_critical..=last_critical];
    assert!(low_meanwhile > 0, "low was starved while critical ran");
    assert!(
        low_meanwhile * 100 <= window.len() * 20,
        "low took {low_meanwhile} of {} starts while critical had work: its weight is a tenth",
        window.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_priorities_run_higher_topics_first() {
    let (_d, b, c) = setup().await;
    fill(&c, "low", 1000).await;
    fill(&c, "default", 100).await;
    fill(&c, "critical", 100).await;
    let log = starts(
        &b,
        Priorities::weighted([("critical", 3), ("default", 2), ("low", 1)]).strict(),
        // room for every job: strict order is over the jobs fetched
        4096,
        600,
        async {},
    )
    .await;
    // after the first start (which held the slot while the buffer filled): critical, then
    // default, then low
    let order = &log[1..];
    let others = order[..100].iter().filter(|t| *t != "critical").count();
    let defaults = order[100..190].iter().filter(|t| *t != "default").count();
    println!("strict: of the 100 starts after the first, {others} not critical; of the next 90, {defaults} not default");
    assert!(
        others <= 1,
        "strict order let {others} other jobs run while critical had work: {:?}",
        &order[..100]
    );
    assert!(
        defaults <= 1,
        "strict order let {defaults} low jobs run while default had work"
    );
}
