//! Embedded-only topic changes: a running group member is rebalanced onto added partitions, the
//! change survives a restart, and compaction is refused with a clear error.

use std::time::Duration;

use conveyor_core::topic::CleanupPolicy;
use conveyor_core::{Backend, Error, Poll, Record, SubscribeOptions, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

#[tokio::test]
async fn a_running_member_gets_the_added_partitions_and_the_change_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap();
    b.create_topic(&TopicSpec::new("jobs", 2)).await.unwrap();
    let mut sub = b
        .subscribe(SubscribeOptions::new("g", ["jobs"]))
        .await
        .unwrap();
    let first = sub.poll(10, Duration::from_secs(1)).await.unwrap();
    assert!(matches!(first, Poll::Rebalance { ref assigned, .. } if assigned.len() == 2));

    b.update_topic(&TopicSpec::new("jobs", 5)).await.unwrap();
    let mut assigned_now = Vec::new();
    for _ in 0..10 {
        if let Poll::Rebalance { assigned, .. } =
            sub.poll(10, Duration::from_millis(200)).await.unwrap()
        {
            assigned_now = assigned;
            break;
        }
    }
    assert_eq!(
        assigned_now.len(),
        3,
        "the three new partitions are assigned: {assigned_now:?}"
    );
    assert_eq!(sub.assignment().len(), 5);
    b.publish("jobs", vec![Record::new("x").with_partition(4)])
        .await
        .unwrap();
    drop(sub);
    b.close().await.unwrap();
    drop(b);

    let b = EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap();
    let spec = b.topic_spec("jobs").await.unwrap().unwrap();
    assert_eq!(spec.partitions, 5);
    let info = b.describe_topic("jobs").await.unwrap().unwrap();
    assert_eq!(
        info.partitions[4].high, 1,
        "the record on a new partition survived"
    );
}

#[tokio::test]
async fn compaction_is_refused_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let b = EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap();
    let mut spec = TopicSpec::new("state", 1);
    spec.cleanup_policy = CleanupPolicy::Compact;
    let err = b.create_topic(&spec).await.unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }));
    assert!(
        err.to_string()
            .contains("use `delete` here, or the kafka backend"),
        "{err}"
    );
    assert!(b.describe_topic("state").await.unwrap().is_none());
}

/// Retention runs on schedule under a steady stream of writes too (the writer ran it only when
/// its queue stayed empty until the interval was due; this load did not starve it before the
/// fix either, so this is a behaviour check, not a reproduction).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_runs_while_writes_never_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.retention_interval = Duration::from_millis(100);
    let b = EmbeddedBackend::open(config).unwrap();
    let mut spec = TopicSpec::new("busy", 1);
    spec.retention_ms = Some(200);
    b.create_topic(&spec).await.unwrap();
    // writers that keep the writer's queue full
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b = std::sync::Arc::new(b);
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (b, stop) = (std::sync::Arc::clone(&b), std::sync::Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    b.publish("busy", vec![Record::new("x")]).await.unwrap();
                }
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut low = 0;
    while started.elapsed() < Duration::from_secs(3) && low == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        low = b.describe_topic("busy").await.unwrap().unwrap().partitions[0].low;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        low > 0,
        "nothing was removed in 3 s of steady writes with a 200 ms retention"
    );
}

/// Two members subscribing before either polled: the first never started on the partition that
/// moved to the second, so it must not hold it back (a handover waits only for work started).
#[tokio::test]
async fn members_joining_before_their_first_poll_share_the_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let b = EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap();
    b.create_topic(&TopicSpec::new("pair", 2)).await.unwrap();
    let mut first = b
        .subscribe(SubscribeOptions::new("g", ["pair"]))
        .await
        .unwrap();
    let mut second = b
        .subscribe(SubscribeOptions::new("g", ["pair"]))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while first.assignment().len() != 1 || second.assignment().len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "first {:?}, second {:?}",
            first.assignment(),
            second.assignment()
        );
        for s in [&mut first, &mut second] {
            let _ = s.poll(10, Duration::from_millis(50)).await.unwrap();
        }
    }
}
