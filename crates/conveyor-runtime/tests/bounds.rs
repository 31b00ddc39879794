//! What clients can make a process keep or do is bounded (issue 21 item 8), on the embedded
//! backend (each bound is in the process's memory): the scheduler fires only the schedules
//! within its limits, whoever stored more; the unique-key ledger keeps at most its bytes of
//! holds; the log removes unique-key claims whose hold ended.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conveyor_core::{headers, Backend, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::effects::unique::{UniqueLedger, Verdict};
use conveyor_runtime::time::control::{Control, ControlEntry};
use conveyor_runtime::time::schedule::{unix_ms, Missed, Schedule, ScheduleLimits};
use conveyor_runtime::{Client, NewJob, Scheduler, SchedulerOptions};

fn open(dir: &std::path::Path) -> (Arc<EmbeddedBackend>, Arc<dyn Backend>) {
    let embedded = Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir)).unwrap());
    let backend: Arc<dyn Backend> = Arc::clone(&embedded) as Arc<dyn Backend>;
    (embedded, backend)
}

fn every_second(name: &str) -> Schedule {
    Schedule {
        name: name.into(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        topic: "ticks".into(),
        job_type: "tick".into(),
        payload: serde_json::json!({}),
        key: None,
        missed: Missed::Skip,
    }
}

/// Ticks fired so far, per schedule name.
async fn fired(backend: &Arc<dyn Backend>) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in backend.fetch("ticks", 0, 0, 10_000).await.unwrap() {
        let name = r.headers.get_str(headers::SCHEDULE).unwrap().to_owned();
        *out.entry(name).or_default() += 1;
    }
    out
}

/// Two schedules firing every second are in the control log (two API processes each took one
/// `PUT` at the same moment, each within the limits alone), but together they pass the
/// scheduler's 60 ticks a minute: only the first (by name) fires; once it is deleted, the
/// other does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_fires_only_the_schedules_within_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (_, backend) = open(dir.path());
    backend
        .create_topic(&TopicSpec::new("ticks", 1))
        .await
        .unwrap();
    let control = Control::open(Arc::clone(&backend)).await.unwrap();
    for name in ["a", "b"] {
        control
            .append(&ControlEntry::put_schedule(every_second(name)))
            .await
            .unwrap();
    }
    let scheduler = Scheduler::new(Arc::clone(&backend), Vec::new())
        .control(control.clone())
        .options(SchedulerOptions {
            limits: ScheduleLimits {
                max_ticks_per_minute: 60,
                ..ScheduleLimits::default()
            },
            ..SchedulerOptions::default()
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(scheduler.run(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let before = fired(&backend).await;
    eprintln!("fired with both stored: {before:?}");
    assert!(before.get("a").copied().unwrap_or(0) >= 2, "{before:?}");
    assert_eq!(
        before.get("b"),
        None,
        "`b` is beyond the limits: {before:?}"
    );
    control
        .append(&ControlEntry::DeleteSchedule { name: "a".into() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let after = fired(&backend).await;
    eprintln!("fired after `a` was deleted: {after:?}");
    assert!(after.get("b").copied().unwrap_or(0) >= 2, "{after:?}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// The unique-key ledger of a worker keeps at most its bytes of holds: 300 claims of 200-byte
/// keys against a 16 KiB bound keep the bytes within it, forget the holds that end first
/// (counted), and still refuse a duplicate of the holds kept.
#[tokio::test]
async fn unique_holds_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, backend) = open(dir.path());
    let max = 16 * 1024;
    let ledger = UniqueLedger::open_with(Arc::clone(&backend), max)
        .await
        .unwrap();
    let now = unix_ms(SystemTime::now());
    let key = |i: usize| format!("{i:0>200}");
    for i in 0..300 {
        let until = now + 3_600_000 + i as i64;
        let v = ledger
            .admit("g", "t", &key(i), &format!("job-{i}"), now, until)
            .await
            .unwrap();
        assert_eq!(v, Verdict::Run);
        let held = ledger.held_bytes().await;
        assert!(held <= max, "{held} bytes of holds kept, bound {max}");
    }
    let forgotten = ledger.forgotten_early().await;
    eprintln!(
        "holds kept: {} bytes; forgotten early: {forgotten}",
        ledger.held_bytes().await
    );
    assert!(forgotten > 0);
    // the hold ending last is kept: its duplicate is refused
    let v = ledger
        .admit("g", "t", &key(299), "another", now, now + 10)
        .await
        .unwrap();
    assert!(
        matches!(v, Verdict::Duplicate { ref holder, .. } if holder == "job-299"),
        "{v:?}"
    );
}

/// The embedded log keeps the unique-key claims of jobs holding their key, not of every key
/// ever used: retention removes those whose hold ended, and a key whose hold ended can be
/// claimed again.
#[tokio::test]
async fn ended_unique_claims_are_removed_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (embedded, backend) = open(dir.path());
    backend
        .create_topic(&TopicSpec::new("jobs", 2))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&backend));
    for i in 0..50 {
        let job = NewJob::json("t", &i)
            .unwrap()
            .unique(format!("short-{i}"), Duration::from_secs(1));
        client.enqueue("jobs", job).await.unwrap();
    }
    let long = NewJob::json("t", &0)
        .unwrap()
        .unique("long", Duration::from_secs(3600));
    client.enqueue("jobs", long).await.unwrap();
    assert_eq!(embedded.unique_claims_kept().unwrap(), 51);
    // a minute later, as retention sees it: the 50 short holds ended
    let later = unix_ms(SystemTime::now()) + 60_000;
    embedded.run_retention(later).await.unwrap();
    assert_eq!(
        embedded.unique_claims_kept().unwrap(),
        1,
        "only the claim still holding its key is kept"
    );
    // the long one still holds: its duplicate is refused
    let again = NewJob::json("t", &1)
        .unwrap()
        .unique("long", Duration::from_secs(3600));
    assert!(client.enqueue("jobs", again).await.is_err());
}
