//! Cron schedules on the live broker: two `conveyor dev` processes with the same two schedules
//! firing every second (`missed = "skip"` and `missed = "once"`) and one webhook route. For 60 s
//! every tick is delivered exactly once (one process is elected and fires, the other waits);
//! then both stop (SIGTERM) for 10 s, longer than `scheduler.grace_ms` (3 s), and restart:
//! `skip` fires none of the missed ticks, `once` exactly one, the latest. A third process
//! without schedules delivers what was still in the topic. Tick lateness (tick time to webhook)
//! is printed. Needs `CONVEYOR_TEST_BROKERS` (scripts/live.sh); built only with `--features live`.

#![cfg(feature = "live")]

#[path = "util/ticks.rs"]
mod ticks;
mod util;

use std::process::Command;
use std::time::Duration;

use ticks::{assert_every_second, now_ms, percentile, tick_receiver};
use util::{start_dev_on_a_free_port, wait_for, Dev};

/// Stops `conveyor dev` with SIGTERM and waits for it to exit 0.
async fn stop(mut dev: Dev) {
    let ok = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = dev.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "conveyor dev did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_fire_each_tick_once_and_downtime_follows_the_policy() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS, or run through scripts/live.sh");
    let dir = tempfile::tempdir().unwrap();
    let suffix = util::unique_suffix();
    let topic = format!("ticks-{suffix}");
    let (skip, once) = (format!("skip-{suffix}"), format!("once-{suffix}"));
    let (hook, ticks) = tick_receiver().await;
    let config = |name: &str, port: u16, schedules: bool| {
        let path = dir.path().join(format!("{name}-{port}.toml"));
        let mut toml = format!(
            r#"data_dir = "{data}"
backend = "kafka"
[kafka]
brokers = "{brokers}"
replication_factor = 1
[api]
listen = "127.0.0.1:{port}"
[scheduler]
grace_ms = 3000
[[topics]]
name = "{topic}"
partitions = 2
[[routes]]
topic = "{topic}"
url = "http://{hook}/hook"
"#,
            data = dir.path().join(name).display()
        );
        if schedules {
            for (name, missed) in [(&skip, "skip"), (&once, "once")] {
                toml.push_str(&format!(
                    "[[schedules]]\nname = \"{name}\"\ncron = \"* * * * * *\"\ntopic = \"{topic}\"\ntype = \"tick\"\nmissed = \"{missed}\"\n"
                ));
            }
        }
        std::fs::write(&path, toml).unwrap();
        path
    };

    let (a, _) = start_dev_on_a_free_port(|p| config("a", p, true)).await;
    let (b, _) = start_dev_on_a_free_port(|p| config("b", p, true)).await;
    // a member killed by an earlier test may still own the election until its session times
    // out: wait for the first tick, then watch a minute of them
    wait_for(Duration::from_secs(60), "the first tick", || {
        !ticks.of(&skip).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    tokio::join!(stop(a), stop(b));
    let stopped_at = now_ms();
    eprintln!("schedules_live: both processes stopped; down for 10 s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarted_at = now_ms();
    let (a, _) = start_dev_on_a_free_port(|p| config("a", p, true)).await;
    let (b, _) = start_dev_on_a_free_port(|p| config("b", p, true)).await;
    wait_for(Duration::from_secs(60), "ticks after the restart", || {
        ticks
            .of(&skip)
            .iter()
            .filter(|t| t.tick > restarted_at)
            .count()
            >= 5
    })
    .await;
    tokio::join!(stop(a), stop(b));
    // what was fired but not delivered before the stop is delivered by a process without
    // schedules (it joins the election too, and fires nothing)
    let (drain, drain_base) = start_dev_on_a_free_port(|p| config("c", p, false)).await;
    let http = reqwest::Client::new();
    let lag_url = format!("{drain_base}/v1/groups/webhook.{topic}/lag?topic={topic}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lag: serde_json::Value = util::get_json(&http, &lag_url).await;
        if lag["lag"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the route never caught up: {lag}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(drain).await;

    assert!(
        ticks.repeated().is_empty(),
        "ticks delivered twice: {:?}",
        ticks.repeated()
    );
    let (s, o) = (ticks.of(&skip), ticks.of(&once));
    let before = |v: &[ticks::Tick]| -> Vec<i64> {
        v.iter()
            .map(|t| t.tick)
            .filter(|t| *t <= stopped_at)
            .collect()
    };
    let after = |v: &[ticks::Tick]| -> Vec<i64> {
        v.iter()
            .map(|t| t.tick)
            .filter(|t| *t > stopped_at)
            .collect()
    };
    let (skip_before, once_before) = (before(&s), before(&o));
    assert_every_second("skip, two processes", &skip_before);
    assert_every_second("once, two processes", &once_before);
    assert!(
        skip_before.len() >= 60,
        "{} ticks in 60 s",
        skip_before.len()
    );
    let (skip_after, once_after) = (after(&s), after(&o));
    assert_every_second("skip, after the restart", &skip_after);
    assert_every_second("once, after the restart", &once_after);
    let last = *skip_before.last().unwrap();
    let (skip_first, once_first) = (skip_after[0], once_after[0]);
    eprintln!(
        "schedules_live: last tick before the stop {last}, stopped {stopped_at}, restarted {restarted_at}; first after: skip {skip_first}, once {once_first}"
    );
    // skip: none of the downtime's ticks; the first tick after the restart is a new one
    assert!(
        skip_first > restarted_at,
        "skip fired a missed tick: {skip_first} (restarted at {restarted_at})"
    );
    // once: exactly one missed tick, the latest when the scheduler came back (the second
    // before skip's first new tick), then on schedule
    assert_eq!(
        once_first,
        skip_first - 1000,
        "once fired {:?} of the downtime's ticks",
        once_after
            .iter()
            .filter(|t| **t < skip_first)
            .collect::<Vec<_>>()
    );
    let n = (once_after.len() - 1).min(skip_after.len());
    assert_eq!(once_after[1..=n], skip_after[..n]);

    // lateness, tick to webhook: all ticks before the stop, and those after the first 5 s (the
    // second process joining moves route partitions, which holds deliveries a moment)
    let lateness = |from: i64| {
        let mut late: Vec<i64> = s
            .iter()
            .chain(o.iter())
            .filter(|t| t.tick >= from && t.tick <= last)
            .map(|t| t.received - t.tick)
            .collect();
        late.sort();
        late
    };
    let (all, steady) = (lateness(0), lateness(skip_before[0] + 5000));
    eprintln!(
        "schedules_live: {} ticks delivered once each ({} before the stop); tick to webhook on Kafka, two processes: p50 {} ms, p99 {} ms, max {} ms; after the first 5 s: p50 {} ms, p99 {} ms, max {} ms",
        ticks.len(),
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().unwrap(),
        percentile(&steady, 0.5),
        percentile(&steady, 0.99),
        steady.last().unwrap()
    );
    assert!(all[0] >= 0, "a tick was delivered before its time");
}

/// What the scheduler relies on: committing the same offset again (its topic stays empty)
/// replaces the metadata a new owner reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_at_the_same_offset_replaces_the_metadata() {
    use conveyor_core::{Backend, CommitOffset, Poll, SubscribeOptions, TopicPartition, TopicSpec};
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS, or run through scripts/live.sh");
    let mut config = conveyor_kafka::KafkaConfig::new(brokers);
    config.replication_factor = Some(1);
    let backend = conveyor_kafka::KafkaBackend::connect(config).unwrap();
    let topic = format!("metadata-{}", util::unique_suffix());
    backend
        .create_topic(&TopicSpec::new(&topic, 1))
        .await
        .unwrap();
    let tp = TopicPartition::new(&topic, 0);
    let mut sub = backend
        .subscribe(SubscribeOptions::new(format!("g-{topic}"), [topic.clone()]))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sub.assignment().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never assigned");
        let _: Poll = sub.poll(10, Duration::from_millis(200)).await.unwrap();
    }
    for m in ["first", "second", "third"] {
        sub.commit(&[CommitOffset::new(tp.clone(), 0).with_metadata(m)])
            .await
            .unwrap();
        let c = sub.committed(std::slice::from_ref(&tp)).await.unwrap();
        assert_eq!((c[0].next_offset, c[0].metadata.as_str()), (Some(0), m));
    }
    drop(sub);
    backend.close().await.unwrap();
}
