//! Commits: resuming from the committed offset, redelivery of what was not acknowledged, commit
//! metadata for the next owner, fencing of revoked partitions, committed offsets reported, stored
//! progress across a revocation.

use super::*;

/// A new member of a group resumes at the committed offset.
pub async fn resume_from_committed_offset(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "resume", 1).await;
    let g = unique("g");
    b.publish(&t, numbered(100)).await.expect("publish");
    {
        let mut sub = b
            .subscribe(SubscribeOptions::new(g.clone(), [t.clone()]))
            .await
            .expect("subscribe");
        let got = collect(&mut *sub, 100, f.timeout).await;
        assert_eq!(got[0].offset, 0);
        sub.commit(&[CommitOffset::new(TopicPartition::new(&t, 0), 60)])
            .await
            .expect("commit");
    }
    let mut sub = b
        .subscribe(SubscribeOptions::new(g, [t]))
        .await
        .expect("subscribe");
    let got = collect(&mut *sub, 40, f.timeout).await;
    assert_eq!(got.first().map(|r| r.offset), Some(60));
    assert_eq!(got.last().map(|r| r.offset), Some(99));
    assert!(drain(&mut *sub, Duration::from_millis(300))
        .await
        .is_empty());
}

/// After a restart, what was delivered but not committed is delivered again; what was committed
/// is not.
pub async fn unacknowledged_records_are_redelivered_after_restart(h: &dyn Harness, f: &Features) {
    if !f.persistent {
        return;
    }
    let b = open(h).await;
    let t = topic(&*b, "redeliver", 1).await;
    let g = unique("g");
    b.publish(&t, numbered(20)).await.expect("publish");
    let mut sub = b
        .subscribe(SubscribeOptions::new(g.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    collect(&mut *sub, 20, f.timeout).await;
    sub.commit(&[CommitOffset::new(TopicPartition::new(&t, 0), 10)])
        .await
        .expect("commit");
    drop(sub);
    b.close().await.expect("close");
    drop(b);

    let b = open(h).await;
    let mut sub = b
        .subscribe(SubscribeOptions::new(g, [t]))
        .await
        .expect("subscribe");
    let got = collect(&mut *sub, 10, f.timeout).await;
    let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (10..20).collect::<Vec<i64>>());
    assert_eq!(values(&got)[0], "m10");
}

/// Commit metadata is kept with the offset: read back by the member, and by the partition's
/// next owner after stored (not yet committed) progress was handed over; too long metadata is
/// refused and commits nothing.
pub async fn commit_metadata_reaches_the_next_owner(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "metadata", 1).await;
    let tp = TopicPartition::new(&t, 0);
    let g = unique("g");
    b.publish(&t, numbered(10)).await.expect("publish");
    let mut sub = b
        .subscribe(SubscribeOptions::new(g.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    collect(&mut *sub, 10, f.timeout).await;
    sub.commit(&[CommitOffset::new(tp.clone(), 3).with_metadata("first owner: 3")])
        .await
        .expect("commit");
    let too_long = "x".repeat(conveyor_core::MAX_COMMIT_METADATA + 1);
    let refused = sub
        .commit(&[CommitOffset::new(tp.clone(), 9).with_metadata(too_long)])
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    let c = sub
        .committed(std::slice::from_ref(&tp))
        .await
        .expect("committed");
    assert_eq!(
        (c[0].next_offset, c[0].metadata.as_str()),
        (Some(3), "first owner: 3"),
        "the refused commit changed nothing"
    );
    sub.store(&[CommitOffset::new(tp.clone(), 5).with_metadata("stored: 5 ü")])
        .expect("store");
    drop(sub);

    let mut next = b
        .subscribe(SubscribeOptions::new(g.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    wait_assigned(&mut *next, f.timeout).await;
    let c = next
        .committed(std::slice::from_ref(&tp))
        .await
        .expect("committed");
    assert_eq!(
        (c[0].next_offset, c[0].metadata.as_str()),
        (Some(5), "stored: 5 ü"),
        "the next owner reads the stored progress and its metadata"
    );
    let fresh = TopicPartition::new(topic(&*b, "metadata-fresh", 1).await, 0);
    let c = next
        .committed(std::slice::from_ref(&fresh))
        .await
        .expect("committed");
    assert_eq!((c[0].next_offset, c[0].metadata.as_str()), (None, ""));
}

/// Once a partition moved to another member, the old owner's commit is refused.
pub async fn commits_to_revoked_partitions_are_fenced(h: &dyn Harness, f: &Features) {
    if !f.fenced_commits || !f.consumer_groups {
        return;
    }
    let b = open(h).await;
    let t = topic(&*b, "fenced", 2).await;
    let g = unique("g");
    let mut s1 = b
        .subscribe(SubscribeOptions::new(g.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    wait_assigned(&mut *s1, f.timeout).await;
    assert_eq!(s1.assignment().len(), 2);
    let mut s2 = b
        .subscribe(SubscribeOptions::new(g.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    settle(&mut [&mut *s1, &mut *s2], 2, f.timeout).await;
    let moved = s2.assignment()[0].clone();
    let err = s1
        .commit(&[CommitOffset::new(moved.clone(), 1)])
        .await
        .expect_err("commit by the old owner must fail");
    assert!(matches!(err, Error::NotAssigned { .. }), "{err:?}");
    let committed: BTreeMap<i32, Option<i64>> = b
        .committed_offsets(&g, &t)
        .await
        .expect("offsets")
        .into_iter()
        .collect();
    assert_eq!(committed[&moved.partition], None);
}

/// `committed_offsets` reports what was committed, per partition.
pub async fn committed_offsets_are_reported(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "committed", 2).await;
    b.publish(
        &t,
        vec![
            Record::new("a").with_partition(1),
            Record::new("b").with_partition(1),
        ],
    )
    .await
    .expect("publish");
    let g = unique("g");
    let mut sub = b
        .subscribe(SubscribeOptions::new(g.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    collect(&mut *sub, 2, f.timeout).await;
    sub.commit(&[CommitOffset::new(TopicPartition::new(&t, 1), 2)])
        .await
        .expect("commit");
    let committed = b.committed_offsets(&g, &t).await.expect("offsets");
    assert_eq!(committed, vec![(0, None), (1, Some(2))]);
    let listed = b.list_topics().await.expect("list");
    assert!(listed.iter().any(|i| i.name == t && i.retained() == 2));
}

/// Progress passed to `store` (finished, not yet committed) is not repeated by the member that
/// takes the partitions over in a rebalance.
pub async fn stored_progress_survives_a_revocation(h: &dyn Harness, f: &Features) {
    if !f.consumer_groups {
        return;
    }
    let b = open(h).await;
    let t = topic(&*b, "stored", f.partitions).await;
    let per = 10;
    let records = (0..f.partitions * per)
        .map(|i| Record::new(format!("m{i}")).with_partition(i % f.partitions))
        .collect();
    b.publish(&t, records).await.expect("publish");
    let group = unique("g");
    let mut first = b
        .subscribe(SubscribeOptions::new(group.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    let got = collect(&mut *first, (f.partitions * per) as usize, f.timeout).await;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &got {
        let e = next.entry(r.partition).or_default();
        *e = (*e).max(r.offset + 1);
    }
    let stored: Vec<CommitOffset> = next
        .iter()
        .map(|(p, o)| CommitOffset::new(TopicPartition::new(t.clone(), *p), *o))
        .collect();
    first.store(&stored).expect("store");

    let mut second = b
        .subscribe(SubscribeOptions::new(group.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + f.timeout;
    let mut again = Vec::new();
    while first.assignment().len() == f.partitions as usize || second.assignment().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second member got no partitions within {:?}",
            f.timeout
        );
        for s in [&mut first, &mut second] {
            if let Poll::Records(r) = s.poll(16, Duration::from_millis(50)).await.expect("poll") {
                again.extend(r);
            }
        }
    }
    again.extend(drain(&mut *second, Duration::from_millis(500)).await);
    assert!(
        again.is_empty(),
        "finished (stored) records were delivered again after the rebalance: {:?}",
        values(&again)
    );
    let committed = b.committed_offsets(&group, &t).await.expect("committed");
    for tp in second.assignment() {
        let c = committed
            .iter()
            .find(|(p, _)| *p == tp.partition)
            .and_then(|(_, c)| *c);
        assert_eq!(
            c,
            Some(per as i64),
            "partition {} moved without its progress",
            tp.partition
        );
    }
}
