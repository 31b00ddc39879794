//! Worker behaviour on the embedded backend: retries, dead letters, per-key order, panics,
//! commits of finished work only, shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_core::headers::dlq;
use conveyor_core::{Backend, ConsumedRecord, Outcome, RetryPolicy, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::{handler_fn, Client, Job, JobError, NewJob, Worker};
use tokio::sync::oneshot;

struct Env {
    _dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    client: Client,
}

async fn env(topic: &str, partitions: i32) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new(topic, partitions))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&backend));
    Env {
        _dir: dir,
        backend,
        client,
    }
}

/// A worker running in a task until [`Started::stop`].
struct Started {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<conveyor_core::Result<()>>,
}

fn start(worker: Worker) -> Started {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Started { stop, handle }
}

impl Started {
    /// Shuts the worker down (it drains) and waits for it; its run must succeed.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.handle.await.unwrap().unwrap();
    }
}

/// Runs the worker until `done()` holds (or 20 s pass), then shuts it down.
async fn run_until(worker: Worker, done: impl Fn() -> bool) {
    let running = start(worker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await;
}

async fn read_all(backend: &Arc<dyn Backend>, topic: &str) -> Vec<ConsumedRecord> {
    let info = backend
        .describe_topic(topic)
        .await
        .unwrap()
        .expect("topic exists");
    let mut out = Vec::new();
    for p in info.partitions {
        out.extend(
            backend
                .fetch(topic, p.partition, p.low, 100_000)
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_job_is_dead_lettered_after_max_attempts() {
    let e = env("jobs", 2).await;
    let at = e
        .client
        .enqueue(
            "jobs",
            NewJob::json("charge", &serde_json::json!({"n": 1}))
                .unwrap()
                .with_key("c1"),
        )
        .await
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = Arc::clone(&attempts);
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .retry(RetryPolicy::fast(4))
        .handler(
            "charge",
            handler_fn(move |_job: Job| {
                a.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(JobError::retry("card declined")) }
            }),
        )
        .build();
    let stats = worker.stats();
    run_until(worker, || stats.dead_lettered.load(Ordering::SeqCst) == 1).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    let dead = read_all(&e.backend, "jobs.dlq").await;
    assert_eq!(dead.len(), 1);
    let h = &dead[0].headers;
    assert_eq!(h.get_str(dlq::ERROR), Some("card declined"));
    assert_eq!(h.get_str(dlq::REASON), Some("exhausted"));
    assert_eq!(h.get_str(dlq::ATTEMPTS), Some("4"));
    assert_eq!(h.get_str(dlq::ORIGINAL_TOPIC), Some("jobs"));
    assert_eq!(
        h.get_str(dlq::ORIGINAL_PARTITION),
        Some(at.partition.to_string().as_str())
    );
    assert_eq!(
        h.get_str(dlq::ORIGINAL_OFFSET),
        Some(at.offset.to_string().as_str())
    );
    assert_eq!(h.get_str(dlq::GROUP), Some("g"));
    assert!(h.get_str(dlq::FAILED_AT).is_some());
    assert_eq!(h.get_str("message_id"), Some(at.id.as_str()));
    assert_eq!(dead[0].key.as_deref(), Some(b"c1".as_slice()));
    assert_eq!(&dead[0].value[..], br#"{"n":1}"#);
    // the failed job was finished (dead-lettered), so its offset is committed
    let committed = e.backend.committed_offsets("g", "jobs").await.unwrap();
    assert_eq!(committed[at.partition as usize].1, Some(at.offset + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_failing_twice_then_succeeding_is_done_after_three_attempts() {
    let e = env("jobs", 1).await;
    e.client
        .enqueue("jobs", NewJob::json("flaky", &1).unwrap())
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .retry(RetryPolicy::fast(5))
        .handler(
            "flaky",
            handler_fn(move |job: Job| {
                s.lock().unwrap().push(job.attempt);
                async move {
                    if job.attempt < 3 {
                        Err(JobError::retry("not yet"))
                    } else {
                        Ok(())
                    }
                }
            }),
        )
        .build();
    let stats = worker.stats();
    run_until(worker, || stats.done.load(Ordering::SeqCst) == 1).await;
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
    assert_eq!(stats.retried.load(Ordering::SeqCst), 2);
    assert_eq!(stats.dead_lettered.load(Ordering::SeqCst), 0);
    assert!(read_all(&e.backend, "jobs.dlq").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_jobs_run_one_at_a_time_in_order_while_other_keys_proceed() {
    let e = env("jobs", 2).await;
    let keys = 16;
    let per_key = 25;
    let mut batch = Vec::new();
    for i in 0..per_key {
        for k in 0..keys {
            batch.push(
                NewJob::json("step", &serde_json::json!({"key": k, "seq": i}))
                    .unwrap()
                    .with_key(format!("k{k}")),
            );
        }
    }
    e.client.enqueue_batch("jobs", batch).await.unwrap();

    #[derive(serde::Deserialize)]
    struct Step {
        key: usize,
        seq: usize,
    }
    let running: Arc<Vec<AtomicBool>> =
        Arc::new((0..keys).map(|_| AtomicBool::new(false)).collect());
    let order: Arc<Mutex<HashMap<usize, Vec<usize>>>> = Arc::default();
    let overlap_violations = Arc::new(AtomicUsize::new(0));
    let now_running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let (r, o, v, n, m) = (
        running.clone(),
        order.clone(),
        overlap_violations.clone(),
        now_running.clone(),
        max_running.clone(),
    );
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .concurrency(8)
        .job("step", move |s: Step, _job: Job| {
            let (r, o, v, n, m) = (r.clone(), o.clone(), v.clone(), n.clone(), m.clone());
            async move {
                if r[s.key].swap(true, Ordering::SeqCst) {
                    v.fetch_add(1, Ordering::SeqCst);
                }
                let c = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(c, Ordering::SeqCst);
                o.lock().unwrap().entry(s.key).or_default().push(s.seq);
                tokio::time::sleep(Duration::from_micros(200 + (s.seq as u64 * 37 % 800))).await;
                n.fetch_sub(1, Ordering::SeqCst);
                r[s.key].store(false, Ordering::SeqCst);
                Outcome::Done
            }
        })
        .build();
    let stats = worker.stats();
    run_until(worker, || {
        stats.done.load(Ordering::SeqCst) == (keys * per_key) as u64
    })
    .await;
    assert_eq!(
        overlap_violations.load(Ordering::SeqCst),
        0,
        "two jobs of one key ran at once"
    );
    let order = order.lock().unwrap();
    for k in 0..keys {
        assert_eq!(
            order[&k],
            (0..per_key).collect::<Vec<_>>(),
            "key {k} ran out of order"
        );
    }
    assert!(
        max_running.load(Ordering::SeqCst) > 1,
        "other keys must run concurrently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_job_blocks_its_key_but_not_other_keys() {
    let e = env("jobs", 1).await;
    e.client
        .enqueue(
            "jobs",
            NewJob::json("t", &"slow-1").unwrap().with_key("slow"),
        )
        .await
        .unwrap();
    e.client
        .enqueue(
            "jobs",
            NewJob::json("t", &"slow-2").unwrap().with_key("slow"),
        )
        .await
        .unwrap();
    for i in 0..20 {
        e.client
            .enqueue(
                "jobs",
                NewJob::json("t", &format!("fast-{i}"))
                    .unwrap()
                    .with_key(format!("f{i}")),
            )
            .await
            .unwrap();
    }
    let log: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let l = Arc::clone(&log);
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .concurrency(1)
        .handler(
            "t",
            handler_fn(move |job: Job| {
                let name: String = job.json().unwrap();
                l.lock().unwrap().push((name.clone(), job.attempt));
                async move {
                    if name == "slow-1" && job.attempt == 1 {
                        Err(JobError::RetryAfter(
                            Duration::from_millis(300),
                            "busy".into(),
                        ))
                    } else {
                        Ok(())
                    }
                }
            }),
        )
        .build();
    let stats = worker.stats();
    run_until(worker, || stats.done.load(Ordering::SeqCst) == 22).await;
    let log = log.lock().unwrap();
    let pos = |n: &str, a: u32| log.iter().position(|(x, y)| x == n && *y == a).unwrap();
    // with a single concurrency slot, every fast job ran while slow-1 waited for its retry
    for i in 0..20 {
        assert!(pos(&format!("fast-{i}"), 1) < pos("slow-1", 2));
    }
    assert!(
        pos("slow-1", 2) < pos("slow-2", 1),
        "slow-2 must wait for slow-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_failure_and_the_worker_lives_on() {
    let e = env("jobs", 1).await;
    e.client
        .enqueue("jobs", NewJob::json("boom", &0).unwrap())
        .await
        .unwrap();
    e.client
        .enqueue("jobs", NewJob::json("ok", &0).unwrap())
        .await
        .unwrap();
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .retry(RetryPolicy::fast(2))
        .handler(
            "boom",
            handler_fn(|_job: Job| async { panic!("index out of bounds") as Outcome }),
        )
        .handler("ok", handler_fn(|_job: Job| async {}))
        .build();
    let stats = worker.stats();
    run_until(worker, || stats.finished() == 2).await;
    assert_eq!(stats.panicked.load(Ordering::SeqCst), 2);
    assert_eq!(stats.done.load(Ordering::SeqCst), 1);
    let dead = read_all(&e.backend, "jobs.dlq").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers.get_str(dlq::ERROR),
        Some("handler panicked: index out of bounds")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_and_unknown_job_types_are_dead_lettered_without_retries() {
    let e = env("jobs", 1).await;
    e.client
        .enqueue("jobs", NewJob::raw("typed", "not json", None))
        .await
        .unwrap();
    e.client
        .enqueue("jobs", NewJob::json("nobody-handles-this", &0).unwrap())
        .await
        .unwrap();
    #[derive(serde::Deserialize)]
    struct P {
        _x: u32,
    }
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .job("typed", |_p: P, _job: Job| async { Ok::<(), JobError>(()) })
        .build();
    let stats = worker.stats();
    run_until(worker, || stats.dead_lettered.load(Ordering::SeqCst) == 2).await;
    assert_eq!(stats.retried.load(Ordering::SeqCst), 0);
    let dead = read_all(&e.backend, "jobs.dlq").await;
    let mut errors: Vec<&str> = dead
        .iter()
        .map(|r| r.headers.get_str(dlq::ERROR).unwrap())
        .collect();
    errors.sort();
    assert_eq!(
        errors[0],
        "no handler registered for job type `nobody-handles-this`"
    );
    assert!(
        errors[1].starts_with("payload is not a valid `P`: expected ident"),
        "{errors:?}"
    );
    assert!(dead
        .iter()
        .all(|r| r.headers.get_str(dlq::REASON) == Some("failed")));
}

/// A job that never finishes holds the commit at its offset; the commit's metadata names the
/// nine behind it as finished, so the next worker runs the first again and skips the nine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_finished_work_is_committed_and_the_rest_is_redelivered_alone() {
    let e = env("jobs", 1).await;
    for i in 0..10 {
        e.client
            .enqueue(
                "jobs",
                NewJob::json("t", &i).unwrap().with_key(format!("k{i}")),
            )
            .await
            .unwrap();
    }
    // offset 0 never finishes in the first run; 1..9 do
    let first_run_done = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&first_run_done);
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .shutdown_timeout(Duration::from_millis(100))
        .handler(
            "t",
            handler_fn(move |job: Job| {
                let f = Arc::clone(&f);
                async move {
                    if job.record.offset == 0 {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                }
            }),
        )
        .build();
    run_until(worker, || first_run_done.load(Ordering::SeqCst) == 9).await;
    let committed = e.backend.committed_offsets("g", "jobs").await.unwrap();
    assert_eq!(
        committed[0].1,
        Some(0),
        "the commit must not pass the unfinished offset 0"
    );

    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let s = Arc::clone(&seen);
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .handler(
            "t",
            handler_fn(move |job: Job| {
                s.lock().unwrap().push(job.record.offset);
                async {}
            }),
        )
        .build();
    let stats = worker.stats();
    let s = Arc::clone(&stats);
    run_until(worker, move || {
        s.done.load(Ordering::SeqCst) == 1 && s.already_done.load(Ordering::SeqCst) == 9
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![0],
        "only the unfinished job runs again: the commit named 1..9 as finished"
    );
    let committed = e.backend.committed_offsets("g", "jobs").await.unwrap();
    assert_eq!(committed[0].1, Some(10));
}

/// A key stuck in retries fills its partition's share of the buffer; that partition is paused and
/// the others keep flowing, and the stuck partition resumes with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_partition_is_paused_and_does_not_starve_the_others() {
    let e = env("jobs", 2).await;
    // partition 0: one key, its first job retries for a while; partition 1: 200 independent jobs
    let part = |k: &str| conveyor_core::partitioner::partition_for_key(k.as_bytes(), 2);
    let stuck: Vec<NewJob> = (0..100)
        .map(|i| {
            NewJob::json("t", &format!("stuck-{i}"))
                .unwrap()
                .with_key("stuck")
        })
        .collect();
    e.client.enqueue_batch("jobs", stuck).await.unwrap();
    let other_keys = (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| part(k) != part("stuck"));
    let free: Vec<NewJob> = other_keys
        .take(200)
        .enumerate()
        .map(|(i, k)| NewJob::json("t", &format!("free-{i}")).unwrap().with_key(k))
        .collect();
    e.client.enqueue_batch("jobs", free).await.unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = Arc::clone(&log);
    let release = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&release);
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .concurrency(4)
        .max_buffered(20)
        .retry(RetryPolicy::fast(1_000_000))
        .handler(
            "t",
            handler_fn(move |job: Job| {
                let name: String = job.json().unwrap();
                let blocked = name == "stuck-0" && !r.load(Ordering::SeqCst);
                if !blocked {
                    l.lock().unwrap().push(name);
                }
                async move {
                    match blocked {
                        true => Err(JobError::RetryAfter(
                            Duration::from_millis(20),
                            "busy".into(),
                        )),
                        false => Ok(()),
                    }
                }
            }),
        )
        .build();
    let stats = worker.stats();
    let (l2, rel) = (Arc::clone(&log), Arc::clone(&release));
    run_until(worker, move || {
        let n_free = l2
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.starts_with("free-"))
            .count();
        eprintln!(
            "DEBUG free {n_free} done {} log {}",
            stats.done.load(Ordering::SeqCst),
            l2.lock().unwrap().len()
        );
        if n_free == 200 {
            // every free job ran while the stuck key was still blocked: now let it through
            rel.store(true, Ordering::SeqCst);
        }
        stats.done.load(Ordering::SeqCst) == 300
    })
    .await;
    let log = log.lock().unwrap();
    let first_stuck = log.iter().position(|n| n == "stuck-0").unwrap();
    let free_before = log[..first_stuck]
        .iter()
        .filter(|n| n.starts_with("free-"))
        .count();
    assert_eq!(
        free_before, 200,
        "partition 1 finished while partition 0 was stuck"
    );
    let stuck: Vec<&String> = log.iter().filter(|n| n.starts_with("stuck-")).collect();
    let want: Vec<String> = (0..100).map(|i| format!("stuck-{i}")).collect();
    assert_eq!(
        stuck,
        want.iter().collect::<Vec<_>>(),
        "the stuck key resumed in order, nothing lost"
    );
}

/// A job that fits the record limit but whose dead letter (its headers added) does not: the
/// worker writes a trimmed dead letter saying so and moves on, instead of retrying the write
/// forever with the partition's commit point frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_the_log_is_trimmed_and_the_partition_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.max_record_bytes = 4096;
    let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend::open(config).unwrap());
    backend
        .create_topic(&TopicSpec::new("big", 1))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&backend));
    let payload = serde_json::json!({"blob": "x".repeat(3_800)});
    let big = client
        .enqueue(
            "big",
            NewJob::json("reject", &payload).unwrap().with_key("k"),
        )
        .await
        .expect("the job itself fits");
    let after = client
        .enqueue(
            "big",
            NewJob::json("ok", &serde_json::json!({}))
                .unwrap()
                .with_key("k"),
        )
        .await
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&done);
    let worker = Worker::builder(Arc::clone(&backend), "g", ["big"])
        .handler(
            "reject",
            handler_fn(|_job: Job| async {
                // a long error too: it is cut, not copied whole
                Outcome::fail("no: ".to_owned() + &"why ".repeat(5_000))
            }),
        )
        .handler(
            "ok",
            handler_fn(move |_job: Job| {
                d.fetch_add(1, Ordering::SeqCst);
                async {}
            }),
        )
        .build();
    run_until(worker, || done.load(Ordering::SeqCst) == 1).await;

    let dead = read_all(&backend, "big.dlq").await;
    assert_eq!(dead.len(), 1);
    let h = &dead[0].headers;
    assert!(
        dead[0].value.is_empty(),
        "the trimmed dead letter drops the value"
    );
    assert!(
        h.get_str(dlq::TRIMMED)
            .is_some_and(|t| t.contains("dropped")),
        "{h:?}"
    );
    assert_eq!(
        h.get_str(dlq::ORIGINAL_OFFSET),
        Some(big.offset.to_string().as_str())
    );
    assert_eq!(h.get_str("message_id"), Some(big.id.as_str()));
    assert!(h.get_str(dlq::ERROR).unwrap().len() <= 4096);
    let committed = backend.committed_offsets("g", "big").await.unwrap();
    assert_eq!(
        committed,
        vec![(0, Some(after.offset + 1))],
        "the partition moved on past the dead letter"
    );
}

/// Panics on drop: a handler future holding one panics after `catch_unwind` returned.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("boom in Drop");
        }
    }
}

/// A handler future that is ready at once and panics when dropped, which happens after
/// `catch_unwind` returned it.
struct ReadyThenPanicOnDrop(#[allow(dead_code)] PanicOnDrop);

impl std::future::Future for ReadyThenPanicOnDrop {
    type Output = Outcome;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Outcome> {
        std::task::Poll::Ready(Outcome::Done)
    }
}

/// A handler written against the trait directly (what `#[async_trait]` expands to), returning
/// that future: the worker drops it after `catch_unwind`, so its panic escapes.
struct DropPanics(Arc<AtomicU32>);

impl conveyor_runtime::Handler for DropPanics {
    fn handle<'a, 'b>(
        &'a self,
        _job: Job,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(ReadyThenPanicOnDrop(PanicOnDrop))
    }
}

/// A panic that escapes the handler's `catch_unwind` (here in a future's `Drop`) is a failed
/// attempt: retried, then dead-lettered, and the key goes on to its next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_outside_the_handler_releases_the_key_and_counts_as_an_attempt() {
    let e = env("drops", 1).await;
    let first = e
        .client
        .enqueue(
            "drops",
            NewJob::json("drop-panics", &serde_json::json!({}))
                .unwrap()
                .with_key("k"),
        )
        .await
        .unwrap();
    e.client
        .enqueue(
            "drops",
            NewJob::json("ok", &serde_json::json!({}))
                .unwrap()
                .with_key("k"),
        )
        .await
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (a, d) = (Arc::clone(&attempts), Arc::clone(&done));
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["drops"])
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_delay_ms: 5,
            max_delay_ms: 10,
            ..RetryPolicy::default()
        })
        .handler("drop-panics", DropPanics(a))
        .handler(
            "ok",
            handler_fn(move |_job: Job| {
                d.store(true, Ordering::SeqCst);
                async {}
            }),
        )
        .build();
    let stats = worker.stats();
    run_until(worker, || done.load(Ordering::SeqCst)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "each escaped panic is one attempt"
    );
    assert!(stats.panicked.load(Ordering::SeqCst) >= 3);
    let dead = read_all(&e.backend, "drops.dlq").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers.get_str("message_id"),
        Some(first.id.as_str())
    );
    assert_eq!(dead[0].headers.get_str(dlq::REASON), Some("exhausted"));
}

/// A handler that never finishes is cancelled after the handler timeout and counts as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_handler_is_cancelled_after_the_handler_timeout() {
    let e = env("hangs", 1).await;
    e.client
        .enqueue(
            "hangs",
            NewJob::json("hang", &serde_json::json!({}))
                .unwrap()
                .with_key("k"),
        )
        .await
        .unwrap();
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["hangs"])
        .handler_timeout(Duration::from_millis(100))
        .retry(RetryPolicy {
            max_attempts: 2,
            initial_delay_ms: 5,
            max_delay_ms: 10,
            ..RetryPolicy::default()
        })
        .handler("hang", handler_fn(|_job: Job| std::future::pending::<()>()))
        .build();
    let stats = worker.stats();
    let s = Arc::clone(&stats);
    run_until(worker, move || s.dead_lettered.load(Ordering::SeqCst) == 1).await;
    let dead = read_all(&e.backend, "hangs.dlq").await;
    assert!(
        dead[0]
            .headers
            .get_str(dlq::ERROR)
            .unwrap()
            .contains("handler timeout"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(stats.retried.load(Ordering::SeqCst), 1);
}

/// A job's own `timeout_ms` wins over the worker's timeouts, longer or shorter: with a handler
/// timeout and a type timeout of 300 ms, a job allowed 3 s whose handler takes 600 ms is done,
/// one without its own timeout is cancelled at 300 ms, and one allowed 100 ms at 100 ms (the
/// handler sees its timeout as `Job::timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_own_timeout_wins_over_the_workers() {
    let e = env("timed", 1).await;
    for (key, own) in [
        ("longer", Some(3_000)),
        ("none", None),
        ("shorter", Some(100)),
    ] {
        let mut job = NewJob::json("slow", &serde_json::json!({}))
            .unwrap()
            .with_key(key);
        if let Some(ms) = own {
            job = job.timeout(Duration::from_millis(ms));
        }
        e.client.enqueue("timed", job).await.unwrap();
    }
    let seen: Arc<Mutex<HashMap<String, Option<Duration>>>> = Arc::default();
    let s = Arc::clone(&seen);
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["timed"])
        .handler_timeout(Duration::from_millis(300))
        .timeout_for("slow", Duration::from_millis(300))
        .retry(RetryPolicy::fast(1))
        .handler(
            "slow",
            handler_fn(move |job: Job| {
                let s = Arc::clone(&s);
                async move {
                    let key = String::from_utf8(job.record.key.clone().unwrap().to_vec()).unwrap();
                    s.lock().unwrap().insert(key, job.timeout());
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    Outcome::Done
                }
            }),
        )
        .build();
    let stats = worker.stats();
    let st = Arc::clone(&stats);
    run_until(worker, move || {
        st.done.load(Ordering::SeqCst) + st.dead_lettered.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(
        stats.done.load(Ordering::SeqCst),
        1,
        "only the job allowed 3 s finishes"
    );
    let dead = read_all(&e.backend, "timed.dlq").await;
    let error = |key: &str| {
        dead.iter()
            .find(|r| r.key.as_deref() == Some(key.as_bytes()))
            .and_then(|r| r.headers.get_str(dlq::ERROR))
            .unwrap_or_else(|| panic!("{key} is not dead-lettered"))
            .to_owned()
    };
    assert!(
        error("none").contains("its job type's timeout (300ms)"),
        "{}",
        error("none")
    );
    assert!(
        error("shorter").contains("the job's timeout_ms (100ms)"),
        "{}",
        error("shorter")
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen["longer"], Some(Duration::from_secs(3)));
    assert_eq!(seen["none"], None);
}

/// What a handler emits is published only for the attempt that finished: a failed attempt's
/// emits are discarded and its retry emits again, so each job's follow-up appears once (no
/// crash here), in emit order, in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_records_count_only_for_the_attempt_that_finished() {
    for transactional in [false, true] {
        let e = env("orders", 2).await;
        e.backend
            .create_topic(&TopicSpec::new("followups", 2))
            .await
            .unwrap();
        let jobs: Vec<NewJob> = (0..50)
            .map(|i| {
                NewJob::json("order", &serde_json::json!({ "n": i }))
                    .unwrap()
                    .with_key(format!("k{i}"))
            })
            .collect();
        e.client.enqueue_batch("orders", jobs).await.unwrap();
        let worker = Worker::builder(Arc::clone(&e.backend), "g", ["orders"])
            .transactional(transactional)
            .retry(RetryPolicy {
                initial_delay_ms: 1,
                max_delay_ms: 2,
                ..RetryPolicy::default()
            })
            .job("order", |v: serde_json::Value, job: Job| async move {
                let n = v["n"].as_u64().unwrap();
                for step in ["first", "second"] {
                    job.emit(
                        "followups",
                        NewJob::json(
                            "followup",
                            &serde_json::json!({ "n": n, "step": step, "attempt": job.attempt }),
                        )
                        .unwrap()
                        .with_key(format!("k{n}")),
                    );
                }
                if job.attempt == 1 && n.is_multiple_of(2) {
                    return Err(JobError::retry(
                        "the first attempt of even jobs fails after emitting",
                    ));
                }
                Ok(())
            })
            .build();
        let stats = worker.stats();
        run_until(worker, || {
            stats.done.load(Ordering::Relaxed) == 50 && stats.emitted.load(Ordering::Relaxed) == 100
        })
        .await;
        let out = read_all(&e.backend, "followups").await;
        let mut by_job: HashMap<u64, Vec<(String, u64)>> = HashMap::new();
        for r in &out {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            by_job.entry(v["n"].as_u64().unwrap()).or_default().push((
                v["step"].as_str().unwrap().to_owned(),
                v["attempt"].as_u64().unwrap(),
            ));
        }
        assert_eq!(
            out.len(),
            100,
            "transactional={transactional}: two follow-ups per job"
        );
        for (n, got) in by_job {
            let attempt = if n.is_multiple_of(2) { 2 } else { 1 };
            assert_eq!(
                got,
                vec![("first".to_owned(), attempt), ("second".to_owned(), attempt)],
                "transactional={transactional}: job {n}'s follow-ups, from its finishing attempt, in emit order"
            );
        }
    }
}

/// In a transactional worker, a job emitting to a topic that does not exist, or a record too
/// large for the log, is dead-lettered alone; the other jobs' outputs and offsets still commit
/// (one bad record would otherwise fail every transaction). Jobs finishing while the worker
/// drains at shutdown commit with their outputs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_emit_the_log_refuses_fails_only_its_job() {
    let e = env("jobs", 2).await;
    e.backend
        .create_topic(&TopicSpec::new("out", 1))
        .await
        .unwrap();
    let jobs: Vec<NewJob> = (0..20)
        .map(|i| NewJob::json("j", &serde_json::json!({ "n": i })).unwrap())
        .collect();
    e.client.enqueue_batch("jobs", jobs).await.unwrap();
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .transactional(true)
        .job("j", |v: serde_json::Value, job: Job| async move {
            match v["n"].as_u64().unwrap() {
                7 => job.emit("no-such-topic", NewJob::json("e", &v).unwrap()),
                9 => job.emit("out", NewJob::raw("big", vec![b'x'; 1_500_000], None)),
                _ => job.emit("out", NewJob::json("e", &v).unwrap()),
            }
            Ok(())
        })
        .build();
    let stats = worker.stats();
    run_until(worker, || {
        stats.dead_lettered.load(Ordering::Relaxed) == 2
            && stats.emitted.load(Ordering::Relaxed) == 18
    })
    .await;
    assert_eq!(read_all(&e.backend, "out").await.len(), 18);
    let dead = read_all(&e.backend, "jobs.dlq").await;
    let mut errors: Vec<&str> = dead
        .iter()
        .map(|d| d.headers.get_str(dlq::ERROR).unwrap())
        .collect();
    errors.sort();
    assert!(
        errors[0].contains("1000000") || errors[1].contains("1000000"),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("no-such-topic")),
        "{errors:?}"
    );
    let committed: u64 = e
        .backend
        .committed_offsets("g", "jobs")
        .await
        .unwrap()
        .iter()
        .map(|(_, o)| o.unwrap_or(0) as u64)
        .sum();
    assert_eq!(committed, 20, "every offset committed");
}

/// Jobs that finish while a transactional worker drains at shutdown are committed with their
/// outputs, not redone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_worker_commits_what_finishes_during_its_drain() {
    let e = env("jobs", 1).await;
    e.backend
        .create_topic(&TopicSpec::new("out", 1))
        .await
        .unwrap();
    e.client
        .enqueue(
            "jobs",
            NewJob::json("slow", &serde_json::json!({})).unwrap(),
        )
        .await
        .unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&started);
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .transactional(true)
        .job("slow", move |v: serde_json::Value, job: Job| {
            let s = Arc::clone(&s);
            async move {
                s.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(500)).await;
                job.emit("out", NewJob::json("e", &v).unwrap());
                Ok(())
            }
        })
        .build();
    // stops as soon as the job started: it finishes during the drain
    run_until(worker, || started.load(Ordering::SeqCst)).await;
    assert_eq!(read_all(&e.backend, "out").await.len(), 1, "its output");
    assert_eq!(
        e.backend.committed_offsets("g", "jobs").await.unwrap(),
        vec![(0, Some(1))],
        "its offset"
    );
}

/// A transactional worker commits once the outputs waiting for their commit reach
/// `TRANSACTION_BYTES`, not only at its commit interval: 64 jobs each emitting 900 KB (56 MiB
/// in all) with a 60 s interval have the outputs of all but the last transaction's worth (at
/// most 18 jobs) committed within 20 s, while the worker still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_worker_commits_when_its_outputs_reach_the_byte_bound() {
    const JOBS: usize = 64;
    const BYTES: usize = 900_000;
    let e = env("jobs", 1).await;
    e.backend
        .create_topic(&TopicSpec::new("out", 1))
        .await
        .unwrap();
    let jobs: Vec<NewJob> = (0..JOBS)
        .map(|i| NewJob::json("j", &serde_json::json!({ "n": i })).unwrap())
        .collect();
    e.client.enqueue_batch("jobs", jobs).await.unwrap();
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .transactional(true)
        .commit_interval(Duration::from_secs(60))
        .job("j", |_: serde_json::Value, job: Job| async move {
            job.emit("out", NewJob::raw("big", vec![b'x'; BYTES], None));
            Ok(())
        })
        .build();
    let per_tx = conveyor_runtime::worker::TRANSACTION_BYTES.div_ceil(BYTES);
    let expected = (JOBS - (per_tx - 1)) as i64;
    let running = start(worker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // what a committed reader sees: outputs commit with their jobs' offsets, or with the
        // commit's metadata naming those jobs finished past its offset
        let out = read_all(&e.backend, "out").await.len() as i64;
        if out >= expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 20 s only {out} of the {expected} outputs a byte-triggered commit must cover were committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    assert_eq!(
        read_all(&e.backend, "out").await.len(),
        JOBS,
        "after the drain"
    );
}

/// Outputs of jobs that finished behind a job that still runs (at the partition's commit point)
/// commit in transactions with the commit metadata naming those jobs finished, instead of
/// waiting in memory for the first: behind one job that waits, 200 jobs emit 900 KB each
/// (172 MiB); a committed reader sees all 200 outputs while the first still waits, and the
/// worker holds no more than a transaction's worth. Once the first is let go all 201 commit.
/// (Before commits named finished jobs, the outputs waited and fetching stopped at
/// `HELD_OUTPUT_BYTES`: what still happens when commits fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_worker_commits_outputs_of_jobs_finished_behind_a_waiting_one() {
    const BYTES: usize = 900_000;
    let e = env("jobs", 1).await;
    e.backend
        .create_topic(&TopicSpec::new("out", 1))
        .await
        .unwrap();
    let enqueue = |from: usize, to: usize| {
        let jobs: Vec<NewJob> = (from..to)
            .map(|i| NewJob::json("j", &serde_json::json!({ "n": i })).unwrap())
            .collect();
        e.client.enqueue_batch("jobs", jobs)
    };
    enqueue(0, 101).await.unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = Arc::clone(&gate);
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .transactional(true)
        .concurrency(8)
        .max_buffered(1024)
        .job("j", move |v: serde_json::Value, job: Job| {
            let g = Arc::clone(&g);
            async move {
                if v["n"] == 0 {
                    g.notified().await;
                }
                job.emit("out", NewJob::raw("big", vec![b'x'; BYTES], None));
                Ok(())
            }
        })
        .build();
    let stats = worker.stats();
    let running = start(worker);
    enqueue(101, 201).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = read_all(&e.backend, "out").await.len();
        if out == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{out} of the 200 outputs of jobs finished behind the waiting one committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats.done.load(Ordering::Relaxed), 200);
    assert_eq!(
        e.backend.committed_offsets("g", "jobs").await.unwrap()[0].1,
        Some(0),
        "the offset stays at the waiting job"
    );
    gate.notify_one();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while e.backend.committed_offsets("g", "jobs").await.unwrap()[0].1 != Some(201) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every job committed after the first was let go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    assert_eq!(read_all(&e.backend, "out").await.len(), 201);
}

/// A handler's emits to conveyor's own topics are refused, in both modes: the job fails for
/// good (dead-lettered, naming the topic) and nothing reaches the topic, where a record would
/// be read as a command or an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_to_conveyors_own_topics_are_refused() {
    for transactional in [false, true] {
        let e = env("jobs", 1).await;
        e.backend
            .create_topic(&TopicSpec::new("conveyor.control", 1))
            .await
            .unwrap();
        e.client
            .enqueue("jobs", NewJob::json("j", &1).unwrap())
            .await
            .unwrap();
        let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
            .transactional(transactional)
            .job("j", |_: serde_json::Value, job: Job| async move {
                job.emit(
                    "conveyor.control",
                    NewJob::raw("forged", b"{}".to_vec(), None),
                );
                Ok(())
            })
            .build();
        let stats = worker.stats();
        run_until(worker, || stats.dead_lettered.load(Ordering::SeqCst) == 1).await;
        assert_eq!(
            read_all(&e.backend, "conveyor.control").await.len(),
            0,
            "transactional: {transactional}"
        );
        let dead = read_all(&e.backend, "jobs.dlq").await;
        let error = dead[0].headers.get_str(dlq::ERROR).unwrap_or("");
        assert!(error.contains("conveyor.control"), "{error}");
    }
}
