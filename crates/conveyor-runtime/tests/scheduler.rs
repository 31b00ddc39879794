//! Cron schedules in real time on the embedded backend: two schedulers share the election, a
//! worker runs the ticks; the scheduler that fires is killed and the other takes over with no
//! tick run twice and none left out; then every scheduler stops for longer than the grace, and
//! after the restart `skip` fires none of the missed ticks and `once` exactly one. Tick lateness
//! (tick time to handler start) is printed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use conveyor_core::{headers, Backend, Outcome, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::time::schedule::{unix_ms, Missed, Schedule};
use conveyor_runtime::{handler_fn, Job, Scheduler, SchedulerOptions, Worker};

/// One run of a tick's job.
#[derive(Debug, Clone)]
struct Ran {
    schedule: String,
    tick: i64,
    id: String,
    started: i64,
}

fn every_second(name: &str, missed: Missed) -> Schedule {
    Schedule {
        name: name.into(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        topic: "ticks".into(),
        job_type: "tick".into(),
        payload: serde_json::json!({"from": name}),
        key: None,
        missed,
    }
}

fn options() -> SchedulerOptions {
    SchedulerOptions {
        grace: Duration::from_secs(1),
        heartbeat: Duration::from_millis(200),
        ..SchedulerOptions::default()
    }
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<conveyor_core::Result<()>>,
    stats: Arc<conveyor_runtime::SchedulerStats>,
}

fn start(backend: &Arc<dyn Backend>, schedules: &[Schedule]) -> Running {
    let s = Scheduler::new(Arc::clone(backend), schedules.to_vec()).options(options());
    let stats = s.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(s.run(async {
        let _ = stopped.await;
    }));
    Running { stop, task, stats }
}

/// Sleeps until `offset_ms` past the next whole second.
async fn until_second_plus(offset_ms: i64) {
    let now = unix_ms(SystemTime::now());
    let next = (now / 1000 + 1) * 1000 + offset_ms;
    tokio::time::sleep(Duration::from_millis((next - now) as u64)).await;
}

fn runs_of(ran: &[Ran], schedule: &str) -> Vec<Ran> {
    let mut v: Vec<Ran> = ran
        .iter()
        .filter(|r| r.schedule == schedule)
        .cloned()
        .collect();
    v.sort_by_key(|r| r.tick);
    v
}

/// Every tick of `ticks` once, one second apart.
fn assert_contiguous(what: &str, ticks: &[i64]) {
    for w in ticks.windows(2) {
        assert_eq!(w[1] - w[0], 1000, "{what}: a gap or a repeat in {ticks:?}");
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_runs_once_across_a_failover_and_downtime_follows_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new("ticks", 4))
        .await
        .unwrap();
    let ran: Arc<Mutex<Vec<Ran>>> = Arc::default();
    let seen = Arc::clone(&ran);
    let worker = Worker::builder(Arc::clone(&backend), "w", ["ticks"])
        .concurrency(8)
        .handler(
            "tick",
            handler_fn(move |job: Job| {
                let seen = Arc::clone(&seen);
                async move {
                    let h = &job.record.headers;
                    let tick = headers::parse_time(h.get_str(headers::SCHEDULED_AT).unwrap())
                        .map(unix_ms)
                        .unwrap();
                    seen.lock().unwrap().push(Ran {
                        schedule: h.get_str(headers::SCHEDULE).unwrap().to_owned(),
                        tick,
                        id: job.meta.message_id.clone().unwrap(),
                        started: unix_ms(SystemTime::now()),
                    });
                    Outcome::Done
                }
            }),
        )
        .build();
    let worker_stats = worker.stats();
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));
    let schedules = [
        every_second("skip", Missed::Skip),
        every_second("once", Missed::Once),
    ];

    // two schedulers: the first is elected, the second waits
    let a = start(&backend, &schedules);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = start(&backend, &schedules);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        a.stats.owner.load(Ordering::SeqCst),
        "the first scheduler fires"
    );
    assert!(!b.stats.owner.load(Ordering::SeqCst), "the second waits");
    // kill the one that fires just as it publishes a tick (a task aborted mid-publish or
    // between publish and commit: the crash window)
    until_second_plus(1).await;
    a.task.abort();
    let killed_at = unix_ms(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(b.stats.owner.load(Ordering::SeqCst), "the second took over");
    assert!(b.stats.fired.load(Ordering::SeqCst) > 0);

    // every scheduler stops for 3.5 s, longer than the grace (1 s): downtime
    b.stop.send(()).unwrap();
    b.task.await.unwrap().unwrap();
    let stopped_at = unix_ms(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let restarted_at = unix_ms(SystemTime::now());
    let c = start(&backend, &schedules);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    c.stop.send(()).unwrap();
    c.task.await.unwrap().unwrap();
    let fired = c.stats.fired.load(Ordering::SeqCst);
    // the worker runs, or drops as a second copy, every record the schedulers wrote
    let info = backend.describe_topic("ticks").await.unwrap().unwrap();
    let written = info.retained() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = worker_stats.done.load(Ordering::SeqCst)
            + worker_stats.duplicates.load(Ordering::SeqCst);
        if seen >= written {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker saw {seen} of {written}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_worker.send(()).unwrap();
    worker.await.unwrap().unwrap();

    let ran = ran.lock().unwrap().clone();
    // no tick ran twice: one run per message id
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &ran {
        *per_id.entry(r.id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ticks run twice: {twice:?}");
    let published =
        a.stats.fired.load(Ordering::SeqCst) + b.stats.fired.load(Ordering::SeqCst) + fired;
    let copies = worker_stats.duplicates.load(Ordering::SeqCst);
    eprintln!(
        "scheduler: {} runs, {written} records written ({published} publishes counted, {copies} second copies dropped by the worker); killed at {killed_at}, stopped at {stopped_at}, restarted at {restarted_at}",
        ran.len(),
    );
    assert_eq!(ran.len() as u64 + copies, written);
    // one scheduler fires at a time: only the killed one's last pass (one tick of each
    // schedule) can be fired again by its successor
    assert!(
        copies <= schedules.len() as u64,
        "{copies} second copies: more than one scheduler fired"
    );

    for name in ["skip", "once"] {
        let runs = runs_of(&ran, name);
        let ticks: Vec<i64> = runs.iter().map(|r| r.tick).collect();
        // before the downtime: every second once, across the failover
        let before: Vec<i64> = ticks.iter().copied().filter(|t| *t <= stopped_at).collect();
        assert_contiguous(&format!("{name}, before the downtime"), &before);
        assert!(
            // a tick after the kill shows the takeover (the one due 3 s after the kill falls
            // within milliseconds of the stop, so it is not required: a loaded run missed it by
            // 3 ms); the contiguity above shows none was lost
            before.first().unwrap() < &killed_at && before.last().unwrap() > &(killed_at + 1000),
            "{name}: ticks on both sides of the failover: {before:?} (killed at {killed_at})"
        );
        // the downtime's ticks: (last before, restart]
        let last_before = *before.last().unwrap();
        let in_gap: Vec<i64> = ticks
            .iter()
            .copied()
            .filter(|t| *t > last_before && *t <= restarted_at)
            .collect();
        let after: Vec<i64> = ticks
            .iter()
            .copied()
            .filter(|t| *t > restarted_at)
            .collect();
        assert!(
            after.len() >= 2,
            "{name}: ticks after the restart: {ticks:?}"
        );
        assert_contiguous(&format!("{name}, after the restart"), &after);
        match name {
            "skip" => assert!(
                in_gap.is_empty(),
                "skip fired missed ticks {in_gap:?} (stopped {stopped_at}, restarted {restarted_at})"
            ),
            _ => {
                assert_eq!(in_gap.len(), 1, "once fired {in_gap:?} of the missed ticks");
                assert!(
                    in_gap[0] > restarted_at - 1000,
                    "once fires the latest missed tick: {} (restarted {restarted_at})",
                    in_gap[0]
                );
            }
        }
    }

    // lateness of ticks fired on time (not the catch-up of a failover or a downtime)
    let mut late: Vec<i64> = ran
        .iter()
        .filter(|r| !(killed_at - 1000..killed_at + 2000).contains(&r.tick))
        .filter(|r| !(stopped_at..restarted_at + 1000).contains(&r.tick))
        .map(|r| r.started - r.tick)
        .collect();
    late.sort();
    eprintln!(
        "scheduler: tick to handler start over {} on-time ticks: p50 {} ms, p99 {} ms, max {} ms; publish lateness max {} ms",
        late.len(),
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late.last().unwrap(),
        [&a.stats, &b.stats, &c.stats]
            .iter()
            .map(|s| s.max_late_ms.load(Ordering::SeqCst))
            .max()
            .unwrap()
    );
    assert!(late[0] >= 0, "a tick ran before its time");
    assert!(percentile(&late, 0.5) < 200, "ticks are late: {late:?}");
    backend.close().await.unwrap();
}
