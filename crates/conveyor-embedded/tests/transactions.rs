//! A member dropped while its transactional write is queued (a worker cancelled in the middle
//! of a commit) leaves its group only once the write landed: the next owner of the partition
//! starts from the offset that write committed, so it never runs the jobs whose outputs the
//! write published a second time.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use conveyor_core::{
    Backend, CommitOffset, Poll, Record, SubscribeOptions, Subscription, TopicPartition, TopicSpec,
};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

const ROUNDS: i64 = 200;

/// Polls until the member owns `tp` (at most 10 s).
async fn until_assigned(sub: &mut dyn Subscription, tp: &TopicPartition) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "{tp:?} never assigned");
        if let Poll::Rebalance { assigned, .. } =
            sub.poll(0, Duration::from_millis(50)).await.expect("poll")
        {
            if assigned.contains(tp) {
                return;
            }
        }
    }
}

/// Starts a transactional commit of one output (`round`) with `offsets` and cancels it after
/// its first poll, which queues the write.
fn queue_then_cancel(sub: &mut dyn Subscription, round: i64, offsets: &[CommitOffset]) {
    let tx = sub.transactional().expect("transactional");
    let mut commit = pin!(tx.publish_and_commit(
        vec![("out".to_owned(), Record::new(format!("{round}")))],
        offsets,
    ));
    let first = commit
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    assert!(first.is_pending() || matches!(first, std::task::Poll::Ready(Ok(()))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_dropped_mid_transaction_hands_over_after_its_write() {
    let dir = tempfile::tempdir().unwrap();
    let b = EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap();
    b.create_topic(&TopicSpec::new("in", 1)).await.unwrap();
    b.create_topic(&TopicSpec::new("out", 1)).await.unwrap();
    let tp = TopicPartition::new("in", 0);
    let mut stale = Vec::new();
    for round in 1..=ROUNDS {
        let mut a = b
            .subscribe(SubscribeOptions::new("g", ["in".to_owned()]))
            .await
            .unwrap();
        until_assigned(&mut *a, &tp).await;
        queue_then_cancel(&mut *a, round, &[CommitOffset::new(tp.clone(), round)]);
        drop(a);
        let mut next = b
            .subscribe(SubscribeOptions::new("g", ["in".to_owned()]))
            .await
            .unwrap();
        until_assigned(&mut *next, &tp).await;
        // what the next owner starts from
        let committed = b.committed_offsets("g", "in").await.unwrap();
        if committed != vec![(0, Some(round))] {
            stale.push((round, committed));
        }
        drop(next);
        // the write lands in any case: the next round starts from it
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.committed_offsets("g", "in").await.unwrap() != vec![(0, Some(round))] {
            assert!(
                Instant::now() < deadline,
                "round {round}: the write never landed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(
        stale.is_empty(),
        "{} of {ROUNDS} next owners started before the cancelled transaction's write landed \
         (they would run its jobs again and publish their outputs twice), e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(3)]
    );
    let outputs = b.fetch("out", 0, 0, 1000).await.unwrap();
    assert_eq!(outputs.len(), ROUNDS as usize);
}

/// The same with the member alive: its commit cancelled while it goes on polling, a second
/// member joins and takes one of its partitions; the partition is released only once the
/// cancelled write landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_commit_of_a_live_member_lands_before_its_partition_moves() {
    let dir = tempfile::tempdir().unwrap();
    let b = EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap();
    b.create_topic(&TopicSpec::new("in", 2)).await.unwrap();
    b.create_topic(&TopicSpec::new("out", 1)).await.unwrap();
    let mut stale = Vec::new();
    for round in 1..=ROUNDS {
        let group = format!("g{round}");
        let mut a = b
            .subscribe(SubscribeOptions::new(group.clone(), ["in".to_owned()]))
            .await
            .unwrap();
        until_assigned(&mut *a, &TopicPartition::new("in", 1)).await;
        queue_then_cancel(
            &mut *a,
            round,
            &[
                CommitOffset::new(TopicPartition::new("in", 0), round),
                CommitOffset::new(TopicPartition::new("in", 1), round),
            ],
        );
        let mut next = b
            .subscribe(SubscribeOptions::new(group.clone(), ["in".to_owned()]))
            .await
            .unwrap();
        // the first member is told of the revocation, then releases on its next poll
        let moved = TopicPartition::new("in", 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let next_owner = async {
            until_assigned(&mut *next, &moved).await;
            b.committed_offsets(&group, "in").await.unwrap()
        };
        let first_polls = async {
            while Instant::now() < deadline {
                let _ = a.poll(10, Duration::from_millis(20)).await.unwrap();
            }
        };
        let committed = tokio::select! {
            c = next_owner => c,
            () = first_polls => panic!("round {round}: the partition never moved"),
        };
        if committed.iter().find(|(p, _)| *p == 1).map(|(_, o)| *o) != Some(Some(round)) {
            stale.push((round, committed));
        }
    }
    assert!(
        stale.is_empty(),
        "{} of {ROUNDS} next owners started before the cancelled commit landed, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(3)]
    );
}
