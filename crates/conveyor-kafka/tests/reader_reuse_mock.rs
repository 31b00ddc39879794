//! `Backend::fetch` keeps its readers between calls (one made per call cost some 200 ms, which
//! queued control-log appends behind each other). A kept reader was assigned another topic,
//! partition and offset last time: every read, in any order and eight at once, must still
//! return exactly the records asked for, with their headers. Negative control: a kept reader
//! left with its previous assignment (not reassigned) returned `[]` for `fetch(a, 0, 1, 2)`.
//! (Records a previous assignment fetched are discarded by librdkafka itself; the read skips
//! any of another partition or below the offset asked as well.)

use std::sync::Arc;

use conveyor_core::{Backend, Record, TopicSpec};
use conveyor_kafka::mock::MockBroker;
use conveyor_kafka::{KafkaBackend, KafkaConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_readers_read_exactly_what_is_asked() {
    let mock = Arc::new(MockBroker::start(1).expect("mock cluster"));
    let backend = Arc::new(
        KafkaBackend::with_admin(KafkaConfig::new(mock.bootstrap_servers()), mock.clone()).unwrap(),
    );
    let topics = [("a", 1), ("b", 3)];
    for (t, n) in topics {
        backend.create_topic(&TopicSpec::new(t, n)).await.unwrap();
        for p in 0..n {
            let records = (0..30)
                .map(|i| {
                    Record::new(format!("{t}/{p}/{i}"))
                        .with_partition(p)
                        .with_header("n", i.to_string())
                })
                .collect();
            backend.publish(t, records).await.unwrap();
        }
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut reads = Vec::new();
    for _ in 0..60 {
        let (t, n) = topics[(next() % 2) as usize];
        let p = (next() % n as u64) as i32;
        let from = (next() % 35) as i64;
        let max = 1 + (next() % 12) as usize;
        reads.push((t, p, from, max));
    }
    // in turn, then eight at a time
    for chunk in reads.chunks(1).take(30).chain(reads[30..].chunks(8)) {
        let mut at_once = tokio::task::JoinSet::new();
        for &(t, p, from, max) in chunk {
            let backend = Arc::clone(&backend);
            at_once.spawn(async move { (t, p, from, max, backend.fetch(t, p, from, max).await) });
        }
        while let Some(done) = at_once.join_next().await {
            let (t, p, from, max, got) = done.unwrap();
            let got = got.unwrap();
            let want: Vec<String> = (from..30.min(from + max as i64))
                .map(|i| format!("{t}/{p}/{i}"))
                .collect();
            let values: Vec<String> = got
                .iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .collect();
            assert_eq!(values, want, "fetch({t}, {p}, {from}, {max})");
            for r in &got {
                assert_eq!((r.topic.as_str(), r.partition), (t, p));
                assert_eq!(
                    r.headers.get_str("n").map(str::to_owned),
                    Some(r.offset.to_string())
                );
            }
        }
    }
}
