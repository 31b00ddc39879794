//! Publishing: what a publish promises (delivered once, contiguous positions, per-key order and
//! partition, headers and binary payloads, concurrent publishers, durable once acknowledged).

use super::*;

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
