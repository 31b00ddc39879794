//! The unique-job scenario, shared by `conveyor-runtime/tests/unique.rs` (embedded) and
//! `conveyor-kafka/tests/time_live.rs` (Apache Kafka): 1,000 concurrent enqueues of one unique
//! key, exactly one job runs. On the embedded backend the other 999 are refused at enqueue
//! (`DuplicateJob` naming the holder); on Kafka they are stored and dropped before they run.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conveyor_core::{Backend, Error, Outcome, TopicSpec};
use conveyor_runtime::{handler_fn, Client, Job, NewJob, Worker};

pub(crate) async fn one_of_a_thousand_concurrent_unique_jobs_runs(
    backend: Arc<dyn Backend>,
    prefix: &str,
    refused_at_enqueue: bool,
) {
    let t = format!("{prefix}.unique");
    backend.create_topic(&TopicSpec::new(&t, 4)).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let worker = Worker::builder(Arc::clone(&backend), format!("{prefix}.g"), [t.clone()])
        .concurrency(16)
        .fallback(handler_fn(move |_job: Job| {
            let r = Arc::clone(&r);
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Outcome::Done
            }
        }))
        .build();
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let client = Client::new(Arc::clone(&backend));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (client, t) = (client.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let job = NewJob::json("report", &i)
                .unwrap()
                .unique("report:daily", Duration::from_secs(600));
            client.enqueue(&t, job).await
        }));
    }
    let (mut stored, mut refused, mut holders) = (Vec::new(), 0, std::collections::HashSet::new());
    for task in tasks {
        match task.await.unwrap() {
            Ok(e) => stored.push(e.id),
            Err(Error::DuplicateJob { existing_id, .. }) => {
                refused += 1;
                holders.insert(existing_id);
            }
            Err(e) => panic!("enqueue failed: {e}"),
        }
    }
    if refused_at_enqueue {
        assert_eq!((stored.len(), refused), (1, 999), "stored and refused");
        assert_eq!(
            holders.into_iter().collect::<Vec<_>>(),
            stored,
            "the refusals name the stored job"
        );
    } else {
        assert_eq!(stored.len(), 1000, "Kafka cannot refuse at enqueue");
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(180);
    let dropped = || stats.unique_dropped.load(Ordering::SeqCst) as usize;
    while runs.load(Ordering::SeqCst) + dropped() < stored.len() {
        assert!(
            tokio::time::Instant::now() < until,
            "{} ran, {} dropped of {}",
            runs.load(Ordering::SeqCst),
            dropped(),
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "exactly one job of the unique key ran"
    );
    assert_eq!(
        dropped(),
        stored.len() - 1,
        "the stored duplicates were dropped and counted"
    );
    println!(
        "1000 concurrent enqueues of one unique key on {}: {} stored, {refused} refused at enqueue, {} dropped before running, 1 ran",
        backend.name(),
        stored.len(),
        dropped()
    );
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

/// Duplicates another producer wrote straight to the topic (no enqueue-time check can see them):
/// the worker runs one and drops the others, also across a restart of the worker.
pub(crate) async fn duplicates_written_past_the_client_are_dropped_before_running(
    backend: Arc<dyn Backend>,
    prefix: &str,
) {
    let t = format!("{prefix}.foreign");
    backend.create_topic(&TopicSpec::new(&t, 2)).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let start = |runs: Arc<AtomicUsize>| {
        let worker = Worker::builder(Arc::clone(&backend), format!("{prefix}.g"), [t.clone()])
            .fallback(handler_fn(move |_job: Job| {
                let r = Arc::clone(&runs);
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    Outcome::Done
                }
            }))
            .build();
        let stats = worker.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        (stats, stop, handle)
    };
    let client = Client::new(Arc::clone(&backend));
    let records = |n: usize| {
        (0..n)
            .map(|i| {
                client
                    .to_record(
                        NewJob::json("report", &i)
                            .unwrap()
                            .unique("nightly", Duration::from_secs(600)),
                    )
                    .1
            })
            .collect::<Vec<_>>()
    };
    backend.publish(&t, records(50)).await.unwrap();
    let (stats, stop, handle) = start(Arc::clone(&runs));
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.unique_dropped.load(Ordering::SeqCst) < 49 {
        assert!(
            tokio::time::Instant::now() < until,
            "only {} dropped",
            stats.unique_dropped.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
    // a new worker process: the hold is in the ledger, so later duplicates are dropped too
    backend.publish(&t, records(10)).await.unwrap();
    let (stats, stop, handle) = start(Arc::clone(&runs));
    while stats.unique_dropped.load(Ordering::SeqCst) < 10 {
        assert!(
            tokio::time::Instant::now() < until,
            "after the restart only {} dropped",
            stats.unique_dropped.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // duplicates with keys of their own land on both partitions: the ledger's order decides
    let spread: Vec<_> = records(10)
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.key = Some(format!("other-key-{i}").into_bytes().into());
            r
        })
        .collect();
    backend.publish(&t, spread).await.unwrap();
    while stats.unique_dropped.load(Ordering::SeqCst) < 20 {
        assert!(
            tokio::time::Instant::now() < until,
            "of the spread duplicates only {} dropped",
            stats.unique_dropped.load(Ordering::SeqCst) - 10
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "exactly one of 70 duplicates ran"
    );
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
