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
