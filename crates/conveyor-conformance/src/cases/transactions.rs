//! Transactional commits: records published and offsets committed together, and fenced for a member
//! that lost its partitions.

use super::*;

/// Records published with a transactional commit appear together with its offsets: after the
/// commit, a reader sees every record once and the group resumes past the consumed ones.
pub async fn transactional_commits_publish_and_commit_together(h: &dyn Harness, f: &Features) {
    if !f.transactions {
        eprintln!("transactional_commits_publish_and_commit_together: not run: this peer does not honour transactions");
        return;
    }
    let b = open(h).await;
    let input = topic(&*b, "tx-in", 1).await;
    let out_a = topic(&*b, "tx-out-a", 1).await;
    let out_b = topic(&*b, "tx-out-b", 1).await;
    let g = unique("g");
    b.publish(&input, numbered(3)).await.expect("publish");
    let mut sub = b
        .subscribe(SubscribeOptions::new(g.clone(), [input.clone()]))
        .await
        .expect("subscribe");
    let got = collect(&mut *sub, 3, f.timeout).await;
    assert_eq!(got.len(), 3);
    let tx = sub
        .transactional()
        .expect("the backend offers transactional commits");
    let records = vec![
        (out_a.clone(), Record::new("a0")),
        (out_b.clone(), Record::new("b0")),
        (out_a.clone(), Record::new("a1")),
    ];
    tx.publish_and_commit(
        records,
        &[CommitOffset::new(TopicPartition::new(&input, 0), 2).with_metadata("m")],
    )
    .await
    .expect("transactional commit");
    // a second transaction with offsets only (no records) moves the offset on
    let tx = sub.transactional().expect("transactional");
    tx.publish_and_commit(
        vec![(out_b.clone(), Record::new("b1"))],
        &[CommitOffset::new(TopicPartition::new(&input, 0), 3)],
    )
    .await
    .expect("second transactional commit");
    let committed = b.committed_offsets(&g, &input).await.expect("offsets");
    assert_eq!(committed, vec![(0, Some(3))]);
    assert_eq!(
        committed_values(&*b, &out_a, 2, f.timeout).await,
        vec!["a0", "a1"]
    );
    assert_eq!(
        committed_values(&*b, &out_b, 2, f.timeout).await,
        vec!["b0", "b1"]
    );
    drop(sub);
    // the next member of the group starts after what the transactions committed
    b.publish(&input, vec![Record::new("after")])
        .await
        .expect("publish");
    let mut next = b
        .subscribe(SubscribeOptions::new(g, [input]))
        .await
        .expect("subscribe");
    let got = collect(&mut *next, 1, f.timeout).await;
    assert_eq!(
        got[0].offset, 3,
        "resumed at the transactionally committed offset"
    );
}

/// A transactional commit that names a partition the member does not own fails with
/// `NotAssigned` and publishes nothing: neither its records nor its other offsets.
pub async fn transactional_commits_are_fenced(h: &dyn Harness, f: &Features) {
    if !f.transactions {
        eprintln!(
            "transactional_commits_are_fenced: not run: this peer does not honour transactions"
        );
        return;
    }
    let b = open(h).await;
    let input = topic(&*b, "txf-in", 1).await;
    let other = topic(&*b, "txf-other", 1).await;
    let out = topic(&*b, "txf-out", 1).await;
    let g = unique("g");
    b.publish(&input, numbered(2)).await.expect("publish");
    let mut sub = b
        .subscribe(SubscribeOptions::new(g.clone(), [input.clone()]))
        .await
        .expect("subscribe");
    collect(&mut *sub, 2, f.timeout).await;
    let tx = sub.transactional().expect("transactional");
    let err = tx
        .publish_and_commit(
            vec![(out.clone(), Record::new("must not appear"))],
            &[
                CommitOffset::new(TopicPartition::new(&input, 0), 2),
                CommitOffset::new(TopicPartition::new(&other, 0), 1),
            ],
        )
        .await
        .expect_err("a partition the member does not own");
    assert!(matches!(err, Error::NotAssigned { .. }), "{err:?}");
    assert!(b.fetch(&out, 0, 0, 10).await.expect("fetch").is_empty());
    assert_eq!(
        b.committed_offsets(&g, &input).await.expect("offsets"),
        vec![(0, None)]
    );
    // the member can still commit what it owns
    let tx = sub.transactional().expect("transactional");
    tx.publish_and_commit(
        vec![(out.clone(), Record::new("ok"))],
        &[CommitOffset::new(TopicPartition::new(&input, 0), 2)],
    )
    .await
    .expect("commit of an owned partition");
    assert_eq!(committed_values(&*b, &out, 1, f.timeout).await, vec!["ok"]);
}

/// The values of partition 0 of `topic` once at least `n` are readable (Kafka makes a committed
/// transaction's records readable once its commit markers are written, a moment after the
/// commit returns), then after a short pause, so that more than expected would show.
async fn committed_values(
    b: &dyn Backend,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = values(&b.fetch(topic, 0, 0, 100).await.expect("fetch"));
        if got.len() >= n || tokio::time::Instant::now() >= deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return values(&b.fetch(topic, 0, 0, 100).await.expect("fetch"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
