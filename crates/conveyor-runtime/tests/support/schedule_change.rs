//! The schedule-change scenario, shared by `conveyor-runtime/tests/schedule_change.rs` (embedded)
//! and `conveyor-kafka/tests/schedule_change_live.rs` (Apache Kafka): a schedule is put (as
//! `PUT /v1/schedules/{name}` does: one `put_schedule` entry in the control log) a few hundred
//! milliseconds or less before a tick, first to create it and then five times to change its
//! expression between `*/2 * * * * *` and `*/4 * * * * *`. Every such tick is shared by the old
//! and the new expression (or is the new schedule's first): it must be written exactly once, and
//! every other tick must follow the expression in force at its time.
//!
//! `shared_control`: the putter and the scheduler share one view of the control log (`conveyor
//! dev`, where the API and the scheduler are one process), else each reads it on its own (the
//! API in one process, the elected scheduler in another: the change reaches the scheduler up to
//! a refresh interval later).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conveyor_core::{headers, Backend, TopicSpec};
use conveyor_runtime::time::control::{Control, ControlEntry};
use conveyor_runtime::time::schedule::{unix_ms, Missed, Schedule};
use conveyor_runtime::{Scheduler, SchedulerOptions};

/// How long before its tick each put lands, in milliseconds: the first creates the schedule, the
/// others change its expression.
const BEFORE_TICK_MS: [i64; 6] = [250, 200, 150, 100, 50, 25];

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

async fn sleep_until(at_ms: i64) {
    let left = at_ms - now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// The first multiple of 4 s at least 1.5 s from now: a tick of both expressions, far enough
/// from the previous round that it is unsettled by it.
fn next_shared_tick() -> i64 {
    (now_ms() + 1500) / 4000 * 4000 + 4000
}

/// Whether the expression fires at `ms` (a whole second).
fn fires(cron: &str, ms: i64) -> bool {
    let secs = ms / 1000;
    match cron {
        "*/2 * * * * *" => secs % 2 == 0,
        "*/4 * * * * *" => secs % 4 == 0,
        other => panic!("not an expression of this scenario: {other}"),
    }
}

/// One put: the tick it precedes, how long before it the put began, and the expression.
#[derive(Debug, Clone)]
struct Put {
    tick: i64,
    before_ms: i64,
    cron: &'static str,
    acked_ms_before_tick: i64,
}

/// The API and the scheduler in one process, sharing a view of the control log (`conveyor
/// dev`); `suffix` makes the topic, group and schedule names unique.
pub(crate) async fn a_put_just_before_a_tick_keeps_the_tick(
    backend: Arc<dyn Backend>,
    suffix: &str,
) {
    let b = Arc::clone(&backend);
    scenario(backend, b, suffix, true).await;
}

/// The API with its client of the backend, the scheduler with another, each reading the control
/// log on its own (two processes; on embedded, one backend and two readers).
pub(crate) async fn a_put_just_before_a_tick_keeps_the_tick_across(
    api: Arc<dyn Backend>,
    scheduler: Arc<dyn Backend>,
    suffix: &str,
) {
    scenario(api, scheduler, suffix, false).await;
}

async fn scenario(
    backend: Arc<dyn Backend>,
    scheduler_backend: Arc<dyn Backend>,
    suffix: &str,
    shared_control: bool,
) {
    let topic = format!("change-{suffix}");
    let name = format!("change-{suffix}");
    backend
        .create_topic(&TopicSpec::new(topic.clone(), 2))
        .await
        .unwrap();
    let putter = Control::open(Arc::clone(&backend)).await.unwrap();
    let mut scheduler = Scheduler::new(scheduler_backend, Vec::new()).options(SchedulerOptions {
        group: format!("scheduler-{suffix}"),
        topic: format!("scheduler-{suffix}"),
        ..SchedulerOptions::default()
    });
    if shared_control {
        scheduler = scheduler.control(putter.clone());
    }
    let stats = scheduler.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(scheduler.run(async {
        let _ = stopped.await;
    }));
    let elected_by = tokio::time::Instant::now() + Duration::from_secs(60);
    while !stats.owner.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < elected_by,
            "the scheduler was not elected within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let schedule = |cron: &str| Schedule {
        name: name.clone(),
        cron: cron.into(),
        timezone: "UTC".into(),
        topic: topic.clone(),
        job_type: "tick".into(),
        payload: serde_json::json!({}),
        key: None,
        missed: Missed::Skip,
    };
    let mut puts: Vec<Put> = Vec::new();
    for (i, before_ms) in BEFORE_TICK_MS.into_iter().enumerate() {
        let cron = match i % 2 {
            0 => "*/2 * * * * *",
            _ => "*/4 * * * * *",
        };
        let tick = next_shared_tick();
        sleep_until(tick - before_ms).await;
        putter
            .append(&ControlEntry::put_schedule(schedule(cron)))
            .await
            .unwrap();
        puts.push(Put {
            tick,
            before_ms,
            cron,
            acked_ms_before_tick: tick - now_ms(),
        });
    }
    let last = puts.last().unwrap().tick;
    // the last tick's pass, then the publish (a Kafka round trip or two)
    sleep_until(last + 1500).await;
    putter
        .append(&ControlEntry::DeleteSchedule { name: name.clone() })
        .await
        .unwrap();
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    // what the scheduler wrote, by tick
    let mut written: BTreeMap<i64, usize> = BTreeMap::new();
    let info = backend.describe_topic(&topic).await.unwrap().unwrap();
    for p in info.partitions {
        let mut at = p.low;
        while at < p.high {
            let got = backend.fetch(&topic, p.partition, at, 1000).await.unwrap();
            let Some(end) = got.last().map(|r| r.offset) else {
                break;
            };
            at = end + 1;
            for r in got {
                let tick = headers::parse_time(r.headers.get_str(headers::SCHEDULED_AT).unwrap())
                    .map(unix_ms)
                    .unwrap();
                *written.entry(tick).or_default() += 1;
            }
        }
    }
    eprintln!(
        "schedule change (shared control: {shared_control}): puts {:?}; ticks written {written:?}; publish lateness max {} ms",
        puts.iter()
            .map(|p| format!(
                "{} ms before {} ({}, acked {} ms before)",
                p.before_ms, p.tick, p.cron, p.acked_ms_before_tick
            ))
            .collect::<Vec<_>>(),
        stats.max_late_ms.load(Ordering::SeqCst),
    );

    let lost: Vec<String> = puts
        .iter()
        .filter(|p| !written.contains_key(&p.tick))
        .map(|p| format!("{} (put {} ms before it)", p.tick, p.before_ms))
        .collect();
    assert!(
        lost.is_empty(),
        "ticks lost after a put just before them: {lost:?} of {} puts; written: {written:?}",
        puts.len()
    );
    let twice: Vec<_> = written.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ticks written twice: {twice:?}");
    // every other tick from the first put to the last tick follows the expression in force
    let first = puts[0].tick;
    let mut expected = Vec::new();
    let mut t = first;
    while t <= last {
        let in_force = puts.iter().rev().find(|p| p.tick <= t).unwrap();
        if fires(in_force.cron, t) {
            expected.push(t);
        }
        t += 1000;
    }
    let seen: Vec<i64> = written
        .keys()
        .copied()
        .filter(|t| (first..=last).contains(t))
        .collect();
    assert_eq!(
        seen, expected,
        "the ticks written are not those of the expression in force at each time"
    );
    assert!(
        written.keys().all(|t| *t >= first),
        "a tick before the schedule was created: {written:?}"
    );
}
