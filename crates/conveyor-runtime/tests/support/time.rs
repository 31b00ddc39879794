//! The time scenarios, shared by `conveyor-runtime/tests/time.rs` (embedded) and
//! `conveyor-kafka/tests/time_live.rs` (Apache Kafka): delayed jobs through the delay tiers,
//! cancellation, retries through the tiers that hold only their key, deadlines and timeouts,
//! pause and resume, and second copies of a move. Each takes a backend and a unique prefix for
//! its topic and group names, and runs real workers in real time.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conveyor_core::headers::{self, dlq};
use conveyor_core::{Backend, ConsumedRecord, Outcome, Record, RetryPolicy, TopicSpec};
use conveyor_runtime::time::control::{Control, ControlEntry};
use conveyor_runtime::time::tiers::DelayTiers;
use conveyor_runtime::{handler_fn, Client, Job, NewJob, Worker, WorkerBuilder, WorkerStats};
use tokio::sync::oneshot;

/// Short tiers so the scenarios take seconds: 1 s and 3 s.
pub(crate) fn test_tiers() -> DelayTiers {
    DelayTiers::new(vec![Duration::from_secs(1), Duration::from_secs(3)]).unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A running worker, stopped by [`Running::stop`].
pub(crate) struct Running {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<conveyor_core::Result<()>>,
    pub(crate) stats: Arc<WorkerStats>,
}

impl Running {
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}

pub(crate) fn start(worker: Worker) -> Running {
    let stats = worker.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Running {
        stop,
        handle,
        stats,
    }
}

pub(crate) async fn wait_for(what: &str, secs: u64, done: impl Fn() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not reached in {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn topic(backend: &Arc<dyn Backend>, name: &str, partitions: i32) {
    backend
        .create_topic(&TopicSpec::new(name, partitions))
        .await
        .unwrap();
}

pub(crate) async fn read_all(backend: &Arc<dyn Backend>, topic: &str) -> Vec<ConsumedRecord> {
    let info = backend
        .describe_topic(topic)
        .await
        .unwrap()
        .expect("topic exists");
    let mut out = Vec::new();
    for p in info.partitions {
        let mut at = p.low;
        while at < p.high {
            let got = backend.fetch(topic, p.partition, at, 1000).await.unwrap();
            let Some(last) = got.last() else { break };
            at = last.offset + 1;
            out.extend(got);
        }
    }
    out
}

fn builder(backend: &Arc<dyn Backend>, group: &str, topic: &str) -> WorkerBuilder {
    Worker::builder(Arc::clone(backend), group, [topic])
        .tiers(test_tiers())
        .retry_in_place_max(Duration::from_millis(500))
        .concurrency(64)
        .max_buffered(4096)
        .shutdown_timeout(Duration::from_secs(5))
}

/// Milliseconds late of each run (negative: early), by message id.
type Runs = Arc<Mutex<HashMap<String, Vec<i64>>>>;

fn recording(runs: &Runs) -> impl conveyor_runtime::Handler {
    let runs = Arc::clone(runs);
    handler_fn(move |job: Job| {
        let runs = Arc::clone(&runs);
        async move {
            // a job that was not delayed counts as on time
            let due = job
                .record
                .headers
                .get_str(headers::DUE_AT)
                .and_then(headers::parse_time)
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64);
            let late = due.map_or(0, |due| now_ms() - due);
            runs.lock()
                .unwrap()
                .entry(job.id().unwrap_or("no id").to_owned())
                .or_default()
                .push(late);
            Outcome::Done
        }
    })
}

/// Waits until the worker runs a job (on Kafka, joining the group takes seconds; lateness and
/// deadlines measured before that would measure the join).
async fn warm_up(backend: &Arc<dyn Backend>, topic: &str, runs: &Runs) {
    let job = Client::new(Arc::clone(backend))
        .enqueue(topic, NewJob::json("warm-up", &0).unwrap())
        .await
        .unwrap();
    wait_for("the worker ran its first job", 60, || {
        runs.lock().unwrap().contains_key(&job.id)
    })
    .await;
    runs.lock().unwrap().clear();
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `n` jobs with delays spread over `0..max_delay` (some through both tiers, some in memory
/// only): every job runs exactly once and none before its due time. Prints the lateness.
pub(crate) async fn delayed_jobs_never_run_early(
    backend: Arc<dyn Backend>,
    prefix: &str,
    n: usize,
    max_delay: Duration,
) {
    let t = format!("{prefix}.delayed");
    topic(&backend, &t, 3).await;
    let runs: Runs = Arc::default();
    let w = start(
        builder(&backend, &format!("{prefix}.g"), &t)
            .fallback(recording(&runs))
            .build(),
    );
    warm_up(&backend, &t, &runs).await;
    let client = Client::new(Arc::clone(&backend));
    let mut ids = Vec::new();
    for chunk in 0..n.div_ceil(100) {
        let jobs: Vec<NewJob> = (chunk * 100..((chunk + 1) * 100).min(n))
            .map(|i| {
                let delay = max_delay.mul_f64((i as f64 * 0.618_033_988_75) % 1.0);
                let key = format!("k{}", i % 7);
                NewJob::json("delayed", &i)
                    .unwrap()
                    .with_key(key)
                    .process_in(delay)
            })
            .collect();
        ids.extend(
            client
                .enqueue_batch(&t, jobs)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id),
        );
    }
    let secs = max_delay.as_secs() + 30;
    wait_for("every delayed job ran", secs, || {
        runs.lock().unwrap().len() == n
    })
    .await;
    // a second copy would run a little later
    tokio::time::sleep(Duration::from_millis(500)).await;
    let runs = runs.lock().unwrap().clone();
    let mut late: Vec<i64> = Vec::new();
    for id in &ids {
        let r = runs.get(id).unwrap_or_else(|| panic!("job {id} never ran"));
        assert_eq!(r.len(), 1, "job {id} ran {} times", r.len());
        assert!(r[0] >= 0, "job {id} ran {} ms early", -r[0]);
        late.push(r[0]);
    }
    late.sort_unstable();
    println!(
        "{n} delayed jobs (0..{max_delay:?}) on {}: none early; lateness p50 {} ms, p99 {} ms, max {} ms; {} moved to a tier",
        backend.name(),
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late[late.len() - 1],
        w.stats.delayed.load(std::sync::atomic::Ordering::Relaxed),
    );
    w.stop().await;
}

/// A job delayed 4 s and cancelled at once never runs; its neighbour runs.
pub(crate) async fn cancelled_job_never_runs(backend: Arc<dyn Backend>, prefix: &str) {
    let t = format!("{prefix}.cancel");
    topic(&backend, &t, 2).await;
    let control = Control::open(Arc::clone(&backend)).await.unwrap();
    let runs: Runs = Arc::default();
    let w = start(
        builder(&backend, &format!("{prefix}.g"), &t)
            .control(control.clone())
            .fallback(recording(&runs))
            .build(),
    );
    let client = Client::new(Arc::clone(&backend));
    let delay = Duration::from_secs(4);
    let doomed = client
        .enqueue(&t, NewJob::json("x", &1).unwrap().process_in(delay))
        .await
        .unwrap();
    let kept = client
        .enqueue(&t, NewJob::json("x", &2).unwrap().process_in(delay))
        .await
        .unwrap();
    // a job delayed less than the shortest tier waits in a worker's memory: cancelled too
    let near = client
        .enqueue(
            &t,
            NewJob::json("x", &3)
                .unwrap()
                .process_in(Duration::from_millis(900)),
        )
        .await
        .unwrap();
    for id in [&doomed.id, &near.id] {
        control
            .append(&ControlEntry::Cancel { id: id.clone() })
            .await
            .unwrap();
    }
    wait_for("the kept job ran", 30, || {
        runs.lock().unwrap().contains_key(&kept.id)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = runs.lock().unwrap().clone();
    assert!(!runs.contains_key(&doomed.id), "the cancelled job ran");
    assert!(!runs.contains_key(&near.id), "the cancelled near job ran");
    w.stop().await;
}

/// Key `a`'s first job fails three times with backoffs 2 s, 4 s and 8 s (each through the delay
/// tiers). Meanwhile the other keys of its partition finish, the partition's committed offset
/// moves past the failing job, and the later job of key `a` waits for it.
pub(crate) async fn failing_key_holds_only_its_later_jobs(backend: Arc<dyn Backend>, prefix: &str) {
    let t = format!("{prefix}.retry");
    let group = format!("{prefix}.g");
    topic(&backend, &t, 1).await;
    let log: Arc<Mutex<Vec<(String, u32, i64)>>> = Arc::default();
    let l = Arc::clone(&log);
    let w = start(
        builder(&backend, &group, &t)
            .retry(RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::default()
            })
            .fallback(handler_fn(move |job: Job| {
                let l = Arc::clone(&l);
                async move {
                    let name: String = job.json().unwrap_or_default();
                    l.lock()
                        .unwrap()
                        .push((name.clone(), job.attempt, now_ms()));
                    if name == "a1" && job.attempt <= 3 {
                        let backoff = Duration::from_secs(1 << job.attempt);
                        return Outcome::RetryAfter {
                            delay: backoff,
                            error: format!("a1 failed on attempt {}", job.attempt),
                        };
                    }
                    Outcome::Done
                }
            }))
            .build(),
    );
    let client = Client::new(Arc::clone(&backend));
    let a1 = client
        .enqueue(&t, NewJob::json("j", "a1").unwrap().with_key("a"))
        .await
        .unwrap();
    client
        .enqueue(&t, NewJob::json("j", "a2").unwrap().with_key("a"))
        .await
        .unwrap();
    for i in 0..20 {
        client
            .enqueue(
                &t,
                NewJob::json("j", &format!("b{i}"))
                    .unwrap()
                    .with_key(format!("b{i}")),
            )
            .await
            .unwrap();
    }
    let started = now_ms();
    // the other keys finish and the commit passes a1 while a1 is still failing
    wait_for("the other keys finished", 10, || {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(n, _, _)| n.starts_with('b'))
            .count()
            == 20
    })
    .await;
    let mut passed = false;
    for _ in 0..100 {
        let c = backend.committed_offsets(&group, &t).await.unwrap();
        if c[0].1.is_some_and(|o| o > a1.offset) {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        passed,
        "the committed offset did not move past the failing job"
    );
    {
        let log = log.lock().unwrap();
        assert!(
            !log.iter().any(|(n, _, _)| n == "a2"),
            "a2 ran while a1 was still failing: {log:?}"
        );
        assert!(
            !log.iter().any(|(n, a, _)| n == "a1" && *a == 4),
            "a1 already finished before the others: the scenario proves nothing"
        );
    }
    wait_for("a2 ran", 40, || {
        log.lock().unwrap().iter().any(|(n, _, _)| n == "a2")
    })
    .await;
    let log = log.lock().unwrap().clone();
    let a1_runs: Vec<_> = log.iter().filter(|(n, _, _)| n == "a1").collect();
    assert_eq!(
        a1_runs.iter().map(|(_, a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "a1's attempts: {log:?}"
    );
    for (w, backoff) in a1_runs.windows(2).zip([2000, 4000, 8000]) {
        let gap = w[1].2 - w[0].2;
        assert!(
            gap >= backoff,
            "a retry ran early: {gap} ms after the attempt before, backoff {backoff} ms"
        );
    }
    let a1_done = a1_runs[3].2;
    let a2_at = log.iter().find(|(n, _, _)| n == "a2").unwrap().2;
    assert!(a2_at >= a1_done, "a2 ran before a1 finished");
    println!(
        "a1 failed 3 times (2 s, 4 s, 8 s backoffs through the tiers), finished {} ms after the start; the 20 other keys of its partition finished first; a2 ran after a1",
        a1_done - started
    );
    w.stop().await;
}

/// A job past its deadline is dead-lettered with reason `deadline`; a handler still running at
/// the job's deadline is cancelled and dead-lettered so; a job's `timeout_ms` cancels a slow
/// attempt, which is retried.
pub(crate) async fn deadlines_and_timeouts(backend: Arc<dyn Backend>, prefix: &str) {
    let t = format!("{prefix}.deadline");
    topic(&backend, &t, 1).await;
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let a = Arc::clone(&attempts);
    let w = start(
        builder(&backend, &format!("{prefix}.g"), &t)
            .retry(RetryPolicy::fast(3))
            .fallback(handler_fn(move |job: Job| {
                let a = Arc::clone(&a);
                async move {
                    let name: String = job.json().unwrap_or_default();
                    *a.lock().unwrap().entry(name.clone()).or_default() += 1;
                    if name == "slow" || (name == "timeout" && job.attempt == 1) {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    Outcome::Done
                }
            }))
            .build(),
    );
    let client = Client::new(Arc::clone(&backend));
    client
        .enqueue(&t, NewJob::json("j", "warm-up").unwrap())
        .await
        .unwrap();
    wait_for("the worker ran its first job", 60, || {
        attempts.lock().unwrap().contains_key("warm-up")
    })
    .await;
    let past = SystemTime::now() - Duration::from_secs(1);
    client
        .enqueue(&t, NewJob::json("j", "expired").unwrap().deadline(past))
        .await
        .unwrap();
    client
        .enqueue(
            &t,
            NewJob::json("j", "slow")
                .unwrap()
                .deadline(SystemTime::now() + Duration::from_millis(800)),
        )
        .await
        .unwrap();
    client
        .enqueue(
            &t,
            NewJob::json("j", "timeout")
                .unwrap()
                .timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let dlq = format!("{t}.dlq");
    wait_for("two dead letters and the retried job", 20, || {
        attempts.lock().unwrap().get("timeout") == Some(&2)
            && w.stats
                .dead_lettered
                .load(std::sync::atomic::Ordering::Relaxed)
                == 2
    })
    .await;
    let dead = read_all(&backend, &dlq).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                serde_json::from_slice::<String>(&r.value).unwrap(),
                r.headers.get_str(dlq::REASON).unwrap().to_owned(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("expired".to_owned(), "deadline".to_owned()),
            ("slow".to_owned(), "deadline".to_owned())
        ]
    );
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts.get("expired"), None, "a job past its deadline ran");
    assert_eq!(attempts.get("slow"), Some(&1));
    w.stop().await;
}

/// A topic paused for a group runs none of its jobs, also in a worker started after the pause
/// (the pause is in the control log); resumed, they all run.
pub(crate) async fn pause_holds_and_resume_releases(backend: Arc<dyn Backend>, prefix: &str) {
    let t = format!("{prefix}.pause");
    let group = format!("{prefix}.g");
    topic(&backend, &t, 2).await;
    let control = Control::open(Arc::clone(&backend)).await.unwrap();
    let runs: Arc<Mutex<Vec<i64>>> = Arc::default();
    let worker = |runs: Arc<Mutex<Vec<i64>>>| {
        builder(&backend, &group, &t)
            .fallback(handler_fn(move |job: Job| {
                let runs = Arc::clone(&runs);
                async move {
                    runs.lock().unwrap().push(job.record.offset);
                    Outcome::Done
                }
            }))
            .build()
    };
    let client = Client::new(Arc::clone(&backend));
    client
        .enqueue(&t, NewJob::json("j", &0).unwrap())
        .await
        .unwrap();
    let w = start(worker(Arc::clone(&runs)));
    wait_for("the first job ran", 20, || runs.lock().unwrap().len() == 1).await;
    control
        .append(&ControlEntry::Pause {
            group: group.clone(),
            topic: t.clone(),
        })
        .await
        .unwrap();
    // the running worker sees the pause within a refresh
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 1..=10 {
        client
            .enqueue(&t, NewJob::json("j", &i).unwrap())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        runs.lock().unwrap().len(),
        1,
        "a job of the paused topic ran"
    );
    w.stop().await;
    // a new process of the group: still paused
    let w = start(worker(Arc::clone(&runs)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        runs.lock().unwrap().len(),
        1,
        "a restarted worker ran a job of the paused topic"
    );
    control
        .append(&ControlEntry::Resume {
            group: group.clone(),
            topic: t.clone(),
        })
        .await
        .unwrap();
    wait_for("every job ran after the resume", 20, || {
        runs.lock().unwrap().len() == 11
    })
    .await;
    w.stop().await;
}

/// Two copies of one move (the same `dedup_key`, as a crash between publishing and committing
/// writes) run once; a job moved twice for two retries is not taken for a copy.
pub(crate) async fn second_copies_are_dropped(backend: Arc<dyn Backend>, prefix: &str) {
    let t = format!("{prefix}.copies");
    let group = format!("{prefix}.g");
    topic(&backend, &t, 1).await;
    let runs: Runs = Arc::default();
    let w = start(
        builder(&backend, &group, &t)
            .fallback(recording(&runs))
            .build(),
    );
    let mut record = Client::new(Arc::clone(&backend))
        .to_record(
            NewJob::json("j", &1)
                .unwrap()
                .process_in(Duration::from_millis(100)),
        )
        .1;
    record
        .headers
        .insert(headers::DEDUP_KEY, format!("{t}/0/0"));
    record.headers.insert(headers::RETRY_GROUP, group.clone());
    let id = record
        .headers
        .get_str(headers::MESSAGE_ID)
        .unwrap()
        .to_owned();
    backend
        .publish(
            &t,
            vec![record.clone(), record.clone(), Record::new("\"other\"")],
        )
        .await
        .unwrap();
    wait_for("a copy was dropped", 20, || {
        w.stats
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs.lock().unwrap().get(&id).map(Vec::len), Some(1));
    w.stop().await;
}

/// Two groups on one topic each run a delayed job once (each moves its own copy).
pub(crate) async fn each_group_runs_a_delayed_job_once(backend: Arc<dyn Backend>, prefix: &str) {
    let t = format!("{prefix}.groups");
    topic(&backend, &t, 2).await;
    let runs_a: Runs = Arc::default();
    let runs_b: Runs = Arc::default();
    let a = start(
        builder(&backend, &format!("{prefix}.a"), &t)
            .fallback(recording(&runs_a))
            .build(),
    );
    let b = start(
        builder(&backend, &format!("{prefix}.b"), &t)
            .fallback(recording(&runs_b))
            .build(),
    );
    let job = Client::new(Arc::clone(&backend))
        .enqueue(
            &t,
            NewJob::json("j", &1)
                .unwrap()
                .process_in(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    wait_for("both groups ran it", 30, || {
        runs_a.lock().unwrap().contains_key(&job.id) && runs_b.lock().unwrap().contains_key(&job.id)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for runs in [&runs_a, &runs_b] {
        let r = runs.lock().unwrap();
        assert_eq!(r.get(&job.id).map(Vec::len), Some(1), "runs: {r:?}");
        assert!(r[&job.id][0] >= 0, "ran early");
    }
    a.stop().await;
    b.stop().await;
}

/// A retry back from its tier keeps its attempt number when the worker stops during its next
/// backoff and another starts: attempt 3 comes after attempt 2, not attempt 5.
pub(crate) async fn a_returned_retry_keeps_its_attempt_number_across_a_restart(
    backend: Arc<dyn Backend>,
    prefix: &str,
) {
    let t = format!("{prefix}.attempts");
    let group = format!("{prefix}.g");
    topic(&backend, &t, 1).await;
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let worker = |seen: Arc<Mutex<Vec<u32>>>| {
        builder(&backend, &group, &t)
            .retry(RetryPolicy {
                max_attempts: 6,
                ..RetryPolicy::default()
            })
            .fallback(handler_fn(move |job: Job| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push(job.attempt);
                    match job.attempt {
                        // through the 1 s tier
                        1 => Outcome::RetryAfter {
                            delay: Duration::from_millis(1500),
                            error: "first".into(),
                        },
                        // in memory: the worker is stopped meanwhile
                        2 => Outcome::RetryAfter {
                            delay: Duration::from_millis(400),
                            error: "second".into(),
                        },
                        _ => Outcome::Done,
                    }
                }
            }))
            .build()
    };
    let w = start(worker(Arc::clone(&seen)));
    Client::new(Arc::clone(&backend))
        .enqueue(&t, NewJob::json("j", &1).unwrap())
        .await
        .unwrap();
    wait_for("attempt 2", 30, || seen.lock().unwrap().contains(&2)).await;
    w.stop().await;
    let w = start(worker(Arc::clone(&seen)));
    wait_for("the next attempt", 30, || seen.lock().unwrap().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3], "attempt numbers");
    w.stop().await;
}

/// Half the buffer waiting behind a key whose job retries in a tier: the key is let go rather
/// than the partition paused (which would keep the retry itself from being fetched), so the other
/// keys of the partition keep running and every job runs.
pub(crate) async fn a_parked_key_at_the_bound_lets_go(backend: Arc<dyn Backend>, prefix: &str) {
    let t = format!("{prefix}.bound");
    topic(&backend, &t, 1).await;
    let log: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let l = Arc::clone(&log);
    let w = start(
        builder(&backend, &format!("{prefix}.g"), &t)
            .max_buffered(16)
            .fallback(handler_fn(move |job: Job| {
                let l = Arc::clone(&l);
                async move {
                    let name: String = job.json().unwrap_or_default();
                    l.lock().unwrap().push((name.clone(), now_ms()));
                    if name == "a0" && job.attempt == 1 {
                        return Outcome::RetryAfter {
                            delay: Duration::from_secs(3),
                            error: "later".into(),
                        };
                    }
                    Outcome::Done
                }
            }))
            .build(),
    );
    let client = Client::new(Arc::clone(&backend));
    for i in 0..12 {
        client
            .enqueue(
                &t,
                NewJob::json("j", &format!("a{i}")).unwrap().with_key("a"),
            )
            .await
            .unwrap();
    }
    let started = now_ms();
    client
        .enqueue(&t, NewJob::json("j", "b").unwrap().with_key("b"))
        .await
        .unwrap();
    wait_for("b ran", 20, || {
        log.lock().unwrap().iter().any(|(n, _)| n == "b")
    })
    .await;
    let b_at = log
        .lock()
        .unwrap()
        .iter()
        .find(|(n, _)| n == "b")
        .unwrap()
        .1;
    assert!(
        b_at - started < 2500,
        "b waited {} ms behind the held key",
        b_at - started
    );
    wait_for("every job ran", 30, || {
        let l = log.lock().unwrap();
        (0..12).all(|i| l.iter().any(|(n, _)| *n == format!("a{i}")))
            && l.iter().filter(|(n, _)| n == "a0").count() == 2
    })
    .await;
    w.stop().await;
}

/// Pairs that started in the wrong order: `started` lists, in start order, each job's position
/// in the order the jobs must start.
fn inversions(started: &[usize]) -> usize {
    let mut n = 0;
    for (i, a) in started.iter().enumerate() {
        n += started[i + 1..].iter().filter(|b| *b < a).count();
    }
    n
}

/// Per key, jobs start in the order they are due, and jobs due at the same time in the order
/// they were enqueued (the per-key order for delayed jobs of docs/delays.md). Four keys of 50 jobs, each
/// key's jobs enqueued in one batch, all at once:
/// - `same`: one delay, below the shortest tier (they wait in the worker's memory);
/// - `apart`: due 1 ms apart, in enqueue order;
/// - `reversed`: due 1 ms apart, the later enqueued first: they start in due order;
/// - `tier`: one delay long enough to pass through the shortest tier first.
///
/// The handler records each job's start; every key's starts must show zero inversions, and no
/// job may start early.
pub(crate) async fn delayed_jobs_of_one_key_start_in_due_order(
    backend: Arc<dyn Backend>,
    prefix: &str,
) {
    const N: usize = 50;
    let t = format!("{prefix}.keyorder");
    topic(&backend, &t, 3).await;
    // per key: (job index, ms late) in start order
    type Starts = Arc<Mutex<HashMap<String, Vec<(usize, i64)>>>>;
    let starts: Starts = Arc::default();
    let s = Arc::clone(&starts);
    let w = start(
        builder(&backend, &format!("{prefix}.g"), &t)
            .fallback(handler_fn(move |job: Job| {
                let s = Arc::clone(&s);
                async move {
                    let due = job
                        .record
                        .headers
                        .get_str(headers::DUE_AT)
                        .and_then(headers::parse_time)
                        .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64);
                    let late = due.map_or(0, |due| now_ms() - due);
                    let key = String::from_utf8_lossy(job.record.key.as_deref().unwrap_or(b""))
                        .into_owned();
                    let i: usize = job.json().unwrap_or(usize::MAX);
                    s.lock().unwrap().entry(key).or_default().push((i, late));
                    Outcome::Done
                }
            }))
            .build(),
    );
    // the worker runs a job first (on Kafka, joining the group takes seconds)
    let client = Client::new(Arc::clone(&backend));
    client
        .enqueue(&t, NewJob::json("j", &0usize).unwrap().with_key("warm-up"))
        .await
        .unwrap();
    wait_for("the worker ran its first job", 60, || {
        starts.lock().unwrap().contains_key("warm-up")
    })
    .await;
    let base = SystemTime::now() + Duration::from_millis(900);
    // per key: the job indices in the order they must start
    let mut expected: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut batches = Vec::new();
    for key in ["same", "apart", "reversed", "tier"] {
        let jobs: Vec<NewJob> = (0..N)
            .map(|i| {
                let job = NewJob::json("j", &i).unwrap().with_key(key);
                let ms = |ms: usize| Duration::from_millis(ms as u64);
                match key {
                    "same" => job.process_in(Duration::from_millis(800)),
                    "apart" => job.process_at(base + ms(i)),
                    "reversed" => job.process_at(base + ms(N - 1 - i)),
                    // the test tiers are 1 s and 3 s: a second in the 1 s tier, then memory
                    _ => job.process_in(Duration::from_millis(1800)),
                }
            })
            .collect();
        let order: Vec<usize> = match key {
            "reversed" => (0..N).rev().collect(),
            _ => (0..N).collect(),
        };
        expected.insert(key, order);
        batches.push(jobs);
    }
    for (jobs, key) in batches
        .into_iter()
        .zip(["same", "apart", "reversed", "tier"])
    {
        let e = client.enqueue_batch(&t, jobs).await.unwrap();
        assert_eq!(e.len(), N, "{key}");
    }
    wait_for("every job of the four keys ran", 60, || {
        let s = starts.lock().unwrap();
        expected
            .keys()
            .all(|k| s.get(*k).is_some_and(|v| v.len() >= N))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let starts = starts.lock().unwrap().clone();
    let mut report = Vec::new();
    let mut bad = Vec::new();
    for (key, order) in &expected {
        let got = &starts[*key];
        assert_eq!(got.len(), N, "key {key} ran {} jobs: {got:?}", got.len());
        for (i, late) in got {
            assert!(*late >= 0, "key {key}: job {i} ran {} ms early", -late);
        }
        // each job named by its position in the expected order
        let position: HashMap<usize, usize> =
            order.iter().enumerate().map(|(p, i)| (*i, p)).collect();
        let seq: Vec<usize> = got.iter().map(|(i, _)| position[i]).collect();
        let n = inversions(&seq);
        report.push(format!("{key}: {n} inversions"));
        if n > 0 {
            bad.push(format!(
                "key {key}: {n} inversions; started {:?}",
                got.iter().map(|(i, _)| *i).collect::<Vec<_>>()
            ));
        }
    }
    report.sort();
    println!(
        "{} jobs of 4 keys on {}: {}; {} moved to a tier",
        4 * N,
        backend.name(),
        report.join(", "),
        w.stats.delayed.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        bad.is_empty(),
        "delayed jobs of one key started out of due order:\n{}",
        bad.join("\n")
    );
    w.stop().await;
}

/// A burst of delayed jobs waiting in the worker's memory does not stop it fetching: 200 jobs
/// due in 4 s (below the shortest tier, 5 s here), then one job without a delay behind them in
/// the same partition, to a worker with `max_buffered` 16. The job without a delay starts
/// before any of the delayed ones (they are due 4 s later). The delayed jobs keep their own
/// bound: with `max_delayed_bytes` at 8 KiB (about a dozen of them) the worker stops fetching
/// at it, and the job without a delay starts only once delayed jobs ahead of it have.
pub(crate) async fn delayed_jobs_in_memory_do_not_stop_fetching(
    backend: Arc<dyn Backend>,
    prefix: &str,
) {
    const DELAYED: usize = 200;
    let five = DelayTiers::new(vec![Duration::from_secs(5)]).unwrap();
    // (bound, how many delayed jobs started before the job without a delay)
    let mut outcomes = Vec::new();
    for (round, bound) in [(0, None), (1, Some(8 * 1024))] {
        let t = format!("{prefix}.burst{round}");
        topic(&backend, &t, 1).await;
        let log: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
        let l = Arc::clone(&log);
        let mut b = Worker::builder(Arc::clone(&backend), format!("{prefix}.g{round}"), [&t])
            .tiers(five.clone())
            .concurrency(4)
            .max_buffered(16)
            .shutdown_timeout(Duration::from_secs(5))
            .fallback(handler_fn(move |job: Job| {
                let l = Arc::clone(&l);
                async move {
                    let due = job
                        .record
                        .headers
                        .get_str(headers::DUE_AT)
                        .and_then(headers::parse_time)
                        .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64);
                    let late = due.map_or(0, |due| now_ms() - due);
                    let name: String = job.json().unwrap_or_default();
                    l.lock().unwrap().push((name, late));
                    Outcome::Done
                }
            }));
        if let Some(bytes) = bound {
            b = b.max_delayed_bytes(bytes);
        }
        let w = start(b.build());
        let client = Client::new(Arc::clone(&backend));
        client
            .enqueue(&t, NewJob::json("j", "warm-up").unwrap())
            .await
            .unwrap();
        wait_for("the worker ran its first job", 60, || {
            !log.lock().unwrap().is_empty()
        })
        .await;
        log.lock().unwrap().clear();
        let jobs: Vec<NewJob> = (0..DELAYED)
            .map(|i| {
                NewJob::json("j", &format!("d{i}"))
                    .unwrap()
                    .with_key(format!("k{i}"))
                    .process_in(Duration::from_secs(4))
            })
            .collect();
        client.enqueue_batch(&t, jobs).await.unwrap();
        client
            .enqueue(&t, NewJob::json("j", "now").unwrap())
            .await
            .unwrap();
        wait_for("every job ran", 60, || log.lock().unwrap().len() > DELAYED).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), DELAYED + 1, "each job once: {log:?}");
        for (name, late) in &log {
            assert!(*late >= 0, "{name} ran {} ms early", -late);
        }
        let before = log.iter().position(|(n, _)| n == "now").unwrap();
        outcomes.push((bound, before));
        w.stop().await;
    }
    println!(
        "{DELAYED} jobs due in 4 s, then one without a delay, max_buffered 16, on {}: delayed jobs that started before it: {} (max_delayed_bytes default), {} (8 KiB)",
        backend.name(),
        outcomes[0].1,
        outcomes[1].1
    );
    assert_eq!(
        outcomes[0].1, 0,
        "the job without a delay waited behind {} delayed jobs: the delayed jobs waiting in memory filled the buffer and stopped the fetching",
        outcomes[0].1
    );
    assert!(
        outcomes[1].1 > 0,
        "with max_delayed_bytes at 8 KiB the job without a delay still ran first: the bound did not stop the fetching"
    );
}
