//! Helpers shared by the conformance cases.

use std::time::Duration;

use conveyor_core::{Backend, ConsumedRecord, Poll, Subscription, TopicSpec};
use tokio::time::Instant;

/// A topic or group name unique to this run and case.
pub fn unique(prefix: &str) -> String {
    format!("conf.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

/// Creates a uniquely named topic with `partitions` partitions and returns its name.
pub async fn topic(backend: &dyn Backend, prefix: &str, partitions: i32) -> String {
    let name = unique(prefix);
    backend
        .create_topic(&TopicSpec::new(name.clone(), partitions))
        .await
        .expect("create topic");
    name
}

/// Polls until `n` records arrived or `timeout` passed; panics with what it got on timeout.
pub async fn collect(
    sub: &mut dyn Subscription,
    n: usize,
    timeout: Duration,
) -> Vec<ConsumedRecord> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "expected {n} records, got {} before the timeout",
            out.len()
        );
        match sub
            .poll(n - out.len(), left.min(Duration::from_millis(500)))
            .await
            .expect("poll")
        {
            Poll::Records(r) => out.extend(r),
            Poll::Rebalance { .. } | Poll::Idle => {}
        }
    }
    out
}

/// Polls for `quiet` and returns any records that arrived (expected: none).
pub async fn drain(sub: &mut dyn Subscription, quiet: Duration) -> Vec<ConsumedRecord> {
    let deadline = Instant::now() + quiet;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        if let Poll::Records(r) = sub.poll(1000, left).await.expect("poll") {
            out.extend(r);
        }
    }
}

/// Polls until the subscription owns at least one partition.
pub async fn wait_assigned(sub: &mut dyn Subscription, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while sub.assignment().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no partitions assigned within {timeout:?}"
        );
        if let Poll::Records(r) = sub.poll(1, Duration::from_millis(200)).await.expect("poll") {
            panic!("records arrived before assignment: {r:?}");
        }
    }
}

/// The value of each record as UTF-8 text.
pub fn values(records: &[ConsumedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

/// Polls every member in turn (a rebalance needs all members to take part, as in Kafka) until each
/// owns at least one partition and together they own `partitions` distinct partitions.
pub async fn settle(subs: &mut [&mut dyn Subscription], partitions: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = std::collections::BTreeSet::new();
        let mut total = 0;
        for s in subs.iter() {
            let a = s.assignment();
            total += a.len();
            all.extend(a);
        }
        let settled = subs.iter().all(|s| !s.assignment().is_empty())
            && all.len() == partitions
            && total == partitions;
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle within {timeout:?}"
        );
        for s in subs.iter_mut() {
            if let Poll::Records(r) = s.poll(1, Duration::from_millis(50)).await.expect("poll") {
                panic!("records arrived while settling: {r:?}");
            }
        }
    }
}
