//! Consumer groups: members share partitions, start positions and fetches, pauses across
//! revocations and assignments.

use super::*;

/// Two members of one group split the partitions and together receive every record.
pub async fn group_members_share_partitions(h: &dyn Harness, f: &Features) {
    if !f.consumer_groups {
        return;
    }
    let b = open(h).await;
    let t = topic(&*b, "group", f.partitions).await;
    let g = unique("g");
    let mut s1 = b
        .subscribe(SubscribeOptions::new(g.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    wait_assigned(&mut *s1, f.timeout).await;
    let mut s2 = b
        .subscribe(SubscribeOptions::new(g.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    settle(&mut [&mut *s1, &mut *s2], f.partitions as usize, f.timeout).await;
    let a1: BTreeSet<TopicPartition> = s1.assignment().into_iter().collect();
    let a2: BTreeSet<TopicPartition> = s2.assignment().into_iter().collect();
    assert!(a1.is_disjoint(&a2), "{a1:?} and {a2:?} overlap");
    assert_eq!(a1.len() + a2.len(), f.partitions as usize);
    assert!(!a1.is_empty() && !a2.is_empty());

    let records: Vec<Record> = (0..200)
        .map(|i| Record::new(format!("m{i}")).with_key(format!("k{i}")))
        .collect();
    b.publish(&t, records).await.expect("publish");
    let (r1, r2) = tokio::join!(
        drain(&mut *s1, Duration::from_secs(2)),
        drain(&mut *s2, Duration::from_secs(2))
    );
    let mut r1 = r1;
    let mut r2 = r2;
    if r1.len() + r2.len() < 200 {
        let (more1, more2) = tokio::join!(
            drain(&mut *s1, f.timeout / 2),
            drain(&mut *s2, f.timeout / 2)
        );
        r1.extend(more1);
        r2.extend(more2);
    }
    assert!(r1
        .iter()
        .all(|r| a1.contains(&TopicPartition::new(&t, r.partition))));
    assert!(r2
        .iter()
        .all(|r| a2.contains(&TopicPartition::new(&t, r.partition))));
    let all: BTreeSet<String> = values(&r1).into_iter().chain(values(&r2)).collect();
    assert_eq!(
        all.len(),
        200,
        "the two members together must see every record"
    );
    assert_eq!(
        r1.len() + r2.len(),
        200,
        "no record delivered to both members"
    );
}

/// A new group starting at `Latest` sees only records published after it joined.
pub async fn latest_start_skips_old_records(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "latest", 1).await;
    b.publish(&t, vec![Record::new("old")])
        .await
        .expect("publish");
    let mut opts = SubscribeOptions::new(unique("g"), [t.clone()]);
    opts.start = StartFrom::Latest;
    let mut sub = b.subscribe(opts).await.expect("subscribe");
    wait_assigned(&mut *sub, f.timeout).await;
    b.publish(&t, vec![Record::new("new")])
        .await
        .expect("publish");
    let got = collect(&mut *sub, 1, f.timeout).await;
    assert_eq!(values(&got), vec!["new".to_owned()]);
}

/// `fetch` reads a partition from any offset, outside a group.
pub async fn fetch_reads_from_an_offset(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "fetch", 1).await;
    b.publish(&t, numbered(30)).await.expect("publish");
    let got = b.fetch(&t, 0, 25, 100).await.expect("fetch");
    assert_eq!(values(&got), vec!["m25", "m26", "m27", "m28", "m29"]);
    assert!(b
        .fetch(&t, 0, 30, 100)
        .await
        .expect("fetch at end")
        .is_empty());
    let _ = f;
}

/// A paused partition delivers nothing while others go on, and after `resume` delivers every
/// record from where it stopped: nothing lost, nothing skipped, order kept.
pub async fn paused_partitions_resume_where_they_stopped(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "paused", 2).await;
    let first: Vec<Record> = (0..10)
        .map(|i| Record::new(format!("p{}-{}", i % 2, i / 2)).with_partition(i % 2))
        .collect();
    b.publish(&t, first).await.expect("publish");
    let mut sub = b
        .subscribe(SubscribeOptions::new(unique("g"), [t.clone()]))
        .await
        .expect("subscribe");
    wait_assigned(&mut *sub, f.timeout).await;
    let p0 = TopicPartition::new(t.clone(), 0);
    sub.pause(std::slice::from_ref(&p0)).expect("pause");
    // while p0 is paused, p1 goes on, including records published after the pause
    let later: Vec<Record> = (5..10)
        .flat_map(|i| [0, 1].map(|p| Record::new(format!("p{p}-{i}")).with_partition(p)))
        .collect();
    b.publish(&t, later).await.expect("publish");
    let mut got = collect(&mut *sub, 10, f.timeout).await;
    got.extend(drain(&mut *sub, Duration::from_millis(500)).await);
    let p1: Vec<String> = (0..10).map(|i| format!("p1-{i}")).collect();
    assert_eq!(
        values(&got),
        p1,
        "only partition 1, in order, while 0 is paused"
    );

    sub.resume(std::slice::from_ref(&p0)).expect("resume");
    let mut got = collect(&mut *sub, 10, f.timeout).await;
    got.extend(drain(&mut *sub, Duration::from_millis(500)).await);
    let p0: Vec<String> = (0..10).map(|i| format!("p0-{i}")).collect();
    assert_eq!(values(&got), p0, "partition 0 resumes where it stopped");
}

/// A partition the member had paused, that was revoked and then assigned back to it, starts
/// unpaused: a pause belongs to one ownership (librdkafka keeps an application pause across
/// unassign and assign, so a backend must clear it). A partition paused and never revoked stays
/// paused.
pub async fn partitions_assigned_again_start_unpaused(h: &dyn Harness, f: &Features) {
    if !f.consumer_groups {
        return;
    }
    let b = open(h).await;
    let t = topic(&*b, "repaused", 2).await;
    let group = unique("g");
    let mut first = b
        .subscribe(SubscribeOptions::new(group.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + f.timeout;
    while first.assignment().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the member never owned both partitions"
        );
        if let Poll::Records(r) = first
            .poll(1, Duration::from_millis(100))
            .await
            .expect("poll")
        {
            panic!("records in an empty topic: {r:?}");
        }
    }
    let both = first.assignment();
    first.pause(&both).expect("pause");

    // a second member takes one partition, then leaves: it comes back to the first
    let mut second = b
        .subscribe(SubscribeOptions::new(group.clone(), [t.clone()]))
        .await
        .expect("subscribe");
    settle(&mut [&mut *first, &mut *second], 2, f.timeout).await;
    let moved = second.assignment();
    let kept: Vec<TopicPartition> = both
        .iter()
        .filter(|tp| !moved.contains(tp))
        .cloned()
        .collect();
    drop(second);
    let deadline = tokio::time::Instant::now() + f.timeout;
    while first.assignment().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the partition never came back to the first member"
        );
        if let Poll::Records(r) = first
            .poll(1, Duration::from_millis(100))
            .await
            .expect("poll")
        {
            panic!("records in an empty topic: {r:?}");
        }
    }

    let records = (0..2)
        .map(|p| Record::new(format!("p{p}")).with_partition(p))
        .collect();
    b.publish(&t, records).await.expect("publish");
    let mut got = collect(&mut *first, 1, f.timeout).await;
    got.extend(drain(&mut *first, Duration::from_millis(1_000)).await);
    let back = format!("p{}", moved[0].partition);
    assert_eq!(
        values(&got),
        vec![back],
        "the partition assigned again delivers; the one paused all along ({kept:?}) does not"
    );
}
