//! The conformance cases. Each takes the harness and the backend's features and panics on a
//! violation of the contract in `conveyor_core::backend`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conveyor_core::partitioner::partition_for_key;
use conveyor_core::topic::{plan, CleanupPolicy, PlanAction};
use conveyor_core::{
    Backend, CommitOffset, Error, Headers, Poll, Record, StartFrom, SubscribeOptions,
    TopicPartition, TopicSpec,
};

use crate::util::{collect, drain, settle, topic, unique, values, wait_assigned};
use crate::{Features, Harness};

async fn open(h: &dyn Harness) -> Arc<dyn Backend> {
    h.open().await.expect("open backend")
}

fn numbered(n: usize) -> Vec<Record> {
    (0..n).map(|i| Record::new(format!("m{i}"))).collect()
}

/// Records published are delivered once, with their values.
pub async fn publish_consume_round_trip(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "roundtrip", f.partitions).await;
    b.publish(&t, numbered(100)).await.expect("publish");
    let mut sub = b
        .subscribe(SubscribeOptions::new(unique("g"), [t.clone()]))
        .await
        .expect("subscribe");
    let got = collect(&mut *sub, 100, f.timeout).await;
    let got: BTreeSet<String> = values(&got).into_iter().collect();
    let want: BTreeSet<String> = (0..100).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    assert!(
        drain(&mut *sub, Duration::from_millis(300))
            .await
            .is_empty(),
        "extra records delivered"
    );
}

/// A batch's positions are contiguous offsets per partition, in input order.
pub async fn publish_returns_contiguous_positions(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "positions", 1).await;
    let first = b.publish(&t, numbered(10)).await.expect("publish");
    let second = b.publish(&t, numbered(5)).await.expect("publish");
    let offsets: Vec<i64> = first.iter().chain(&second).map(|p| p.offset).collect();
    assert_eq!(offsets, (0..15).collect::<Vec<i64>>());
    let info = b
        .describe_topic(&t)
        .await
        .expect("describe")
        .expect("topic exists");
    assert_eq!(info.partitions[0].high, 15);
    let _ = f;
}

/// Same key, same partition (Kafka's murmur2), and per-key order is publish order.
pub async fn same_key_same_partition_in_order(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "order", f.partitions).await;
    let keys = 10;
    let per_key = 50;
    for i in 0..per_key {
        let batch: Vec<Record> = (0..keys)
            .map(|k| Record::new(format!("{k}:{i}")).with_key(format!("key-{k}")))
            .collect();
        let at = b.publish(&t, batch).await.expect("publish");
        for (k, pos) in at.iter().enumerate() {
            assert_eq!(
                pos.partition,
                partition_for_key(format!("key-{k}").as_bytes(), f.partitions)
            );
        }
    }
    let mut sub = b
        .subscribe(SubscribeOptions::new(unique("g"), [t]))
        .await
        .expect("subscribe");
    let got = collect(&mut *sub, keys * per_key, f.timeout).await;
    let mut last: HashMap<String, i64> = HashMap::new();
    for r in &got {
        let key = String::from_utf8(r.key.clone().expect("key").to_vec()).expect("utf8");
        assert_eq!(r.partition, partition_for_key(key.as_bytes(), f.partitions));
        let v = String::from_utf8(r.value.to_vec()).expect("utf8");
        let seq: i64 = v.split(':').nth(1).expect("seq").parse().expect("number");
        let prev = last.insert(key.clone(), seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "key {key}: got {seq} after {prev}");
    }
}

/// An explicit partition wins over the key; a partition out of range is an error.
pub async fn explicit_partition_is_honoured(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "explicit", f.partitions).await;
    let last = f.partitions - 1;
    let at = b
        .publish(
            &t,
            vec![Record::new("x").with_key("k").with_partition(last)],
        )
        .await
        .expect("publish");
    assert_eq!(at[0].partition, last);
    let fetched = b.fetch(&t, last, at[0].offset, 10).await.expect("fetch");
    assert_eq!(fetched.len(), 1);
    let err = b
        .publish(&t, vec![Record::new("x").with_partition(f.partitions + 5)])
        .await
        .expect_err("partition out of range");
    assert!(matches!(err, Error::UnknownPartition { .. }), "{err:?}");
}

/// Keys, values and headers come back byte for byte: binary, empty, repeated header names.
pub async fn headers_and_binary_payloads_survive(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "bytes", 1).await;
    let all_bytes: Bytes = (0..=255u8).collect::<Vec<u8>>().into();
    let mut headers = Headers::new();
    headers.append("bin", all_bytes.clone());
    headers.append("dup", "first");
    headers.append("dup", "second");
    headers.append("empty", Bytes::new());
    let sent = vec![
        Record {
            key: Some(all_bytes.clone()),
            value: all_bytes.clone(),
            headers: headers.clone(),
            ..Record::default()
        },
        Record {
            key: Some(Bytes::new()),
            value: Bytes::new(),
            ..Record::default()
        },
        Record {
            key: None,
            value: Bytes::from(vec![0u8; 100_000]),
            ..Record::default()
        },
    ];
    b.publish(&t, sent.clone()).await.expect("publish");
    let mut sub = b
        .subscribe(SubscribeOptions::new(unique("g"), [t]))
        .await
        .expect("subscribe");
    let got = collect(&mut *sub, 3, f.timeout).await;
    for (s, g) in sent.iter().zip(&got) {
        assert_eq!(g.key, s.key);
        assert_eq!(g.value, s.value);
        assert_eq!(g.headers, s.headers);
    }
    assert_eq!(got[0].headers.get_str("dup"), Some("second"));
    assert!(got[0].timestamp > 0);
}

/// Eight publishers at once: every record stored once, at a distinct position.
pub async fn concurrent_publishers_lose_nothing(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let t = topic(&*b, "concurrent", f.partitions).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (b, t) = (Arc::clone(&b), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut at = Vec::new();
            for i in 0..100 {
                let r = Record::new(format!("{w}-{i}")).with_key(format!("w{w}"));
                at.extend(b.publish(&t, vec![r]).await.expect("publish"));
            }
            at
        }));
    }
    let mut positions = BTreeSet::new();
    for task in tasks {
        for p in task.await.expect("publisher") {
            assert!(
                positions.insert((p.partition, p.offset)),
                "position {p:?} given twice"
            );
        }
    }
    let mut sub = b
        .subscribe(SubscribeOptions::new(unique("g"), [t]))
        .await
        .expect("subscribe");
    let got = collect(&mut *sub, 800, f.timeout).await;
    let unique_values: BTreeSet<String> = values(&got).into_iter().collect();
    assert_eq!(unique_values.len(), 800);
}

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

/// Every publish acknowledged before `close` returned is there after a restart.
pub async fn close_flushes_acknowledged_publishes(h: &dyn Harness, f: &Features) {
    if !f.persistent {
        return;
    }
    let b = open(h).await;
    let t = topic(&*b, "close", f.partitions).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (b, t) = (Arc::clone(&b), t.clone());
        tasks.push(tokio::spawn(async move {
            b.publish(&t, vec![Record::new(format!("c{i}"))]).await
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.push(task.await.expect("task").expect("publish")[0]);
    }
    b.close().await.expect("close");
    assert!(
        matches!(b.publish(&t, numbered(1)).await, Err(Error::Closed)),
        "publish after close must fail"
    );
    drop(b);
    let b = open(h).await;
    for pos in acked {
        let r = b
            .fetch(&t, pos.partition, pos.offset, 1)
            .await
            .expect("fetch");
        assert_eq!(
            r.len(),
            1,
            "acknowledged record at {pos:?} missing after restart"
        );
        assert_eq!(r[0].offset, pos.offset);
    }
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

/// Publishing to, subscribing to or fetching from a missing topic is `UnknownTopic`.
pub async fn unknown_topics_are_errors(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let missing = unique("missing");
    assert!(matches!(
        b.publish(&missing, numbered(1)).await,
        Err(Error::UnknownTopic(_))
    ));
    assert!(matches!(
        b.subscribe(SubscribeOptions::new(unique("g"), [missing.clone()]))
            .await,
        Err(Error::UnknownTopic(_))
    ));
    assert!(matches!(
        b.fetch(&missing, 0, 0, 1).await,
        Err(Error::UnknownTopic(_))
    ));
    assert!(b
        .describe_topic(&missing)
        .await
        .expect("describe")
        .is_none());
    let _ = f;
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

/// A topic's settings read back as created, change with `update_topic`, and a plan against the
/// changed topic is empty. Shrinking and unknown topics are errors.
pub async fn topic_settings_are_read_and_changed(h: &dyn Harness, f: &Features) {
    if !f.read_topic_config {
        return;
    }
    let b = open(h).await;
    let name = unique("settings");
    let mut spec = TopicSpec::new(&name, 2);
    spec.retention_ms = Some(24 * 3600 * 1000);
    b.create_topic(&spec).await.expect("create");
    let current = b
        .topic_spec(&name)
        .await
        .expect("topic_spec")
        .expect("exists");
    assert_eq!(current.partitions, 2);
    assert_eq!(current.retention_ms, Some(24 * 3600 * 1000));
    assert_eq!(current.cleanup_policy, CleanupPolicy::Delete);
    assert_eq!(plan(&spec, Some(&current)).action, PlanAction::Unchanged);
    assert!(b
        .topic_spec(&unique("missing"))
        .await
        .expect("topic_spec")
        .is_none());
    if !f.alter_topic_config {
        return;
    }

    let mut changed = spec.clone();
    changed.retention_ms = Some(2 * 24 * 3600 * 1000);
    changed.retention_bytes = Some(64 * 1024 * 1024);
    assert_eq!(plan(&changed, Some(&current)).action, PlanAction::Update);
    b.update_topic(&changed).await.expect("update");
    let after = b
        .topic_spec(&name)
        .await
        .expect("topic_spec")
        .expect("exists");
    assert_eq!(after.retention_ms, changed.retention_ms);
    assert_eq!(after.retention_bytes, changed.retention_bytes);
    assert_eq!(plan(&changed, Some(&after)).action, PlanAction::Unchanged);

    let mut fewer = changed.clone();
    fewer.partitions = 1;
    assert!(matches!(
        b.update_topic(&fewer).await,
        Err(Error::TopicConflict { .. })
    ));
    assert!(b
        .topic_spec(&unique("missing"))
        .await
        .expect("topic_spec")
        .is_none());
    assert!(matches!(
        b.update_topic(&TopicSpec::new(unique("missing"), 2)).await,
        Err(Error::UnknownTopic(_))
    ));
}

/// Added partitions exist, keep the old records, receive keys by the new count and are assigned
/// to a group.
pub async fn added_partitions_are_used(h: &dyn Harness, f: &Features) {
    if !f.add_partitions {
        return;
    }
    let b = open(h).await;
    let name = unique("grow");
    let spec = TopicSpec::new(&name, 2);
    b.create_topic(&spec).await.expect("create");
    b.publish(&name, numbered(10)).await.expect("publish");
    let grown = TopicSpec {
        partitions: 4,
        ..spec
    };
    let info = b.update_topic(&grown).await.expect("add partitions");
    assert_eq!(info.partition_count(), 4);
    assert_eq!(info.retained(), 10, "old records are kept");
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let records = keys
        .iter()
        .map(|k| Record::new("v").with_key(k.clone()))
        .collect();
    let at = b.publish(&name, records).await.expect("publish");
    for (k, p) in keys.iter().zip(&at) {
        assert_eq!(p.partition, partition_for_key(k.as_bytes(), 4), "key {k}");
    }
    let mut sub = b
        .subscribe(SubscribeOptions::new(unique("g"), [name.clone()]))
        .await
        .expect("subscribe");
    let got = collect(&mut *sub, 50, f.timeout).await;
    assert_eq!(got.len(), 50);
    let parts: BTreeSet<i32> = got.iter().map(|r| r.partition).collect();
    assert_eq!(parts.len(), 4, "records from every partition");
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
