//! `StartFrom::Latest` on a real broker: a record published right after the member was told
//! its partition is delivered. librdkafka resolves `auto.offset.reset = latest` only once it
//! starts fetching, after the assignment was reported, so without conveyor pinning the start
//! at the assignment the record lands before the end it finds and is skipped (measured once
//! with a 30-round version of this test: skipped in 30 of 30). Built only with `--features live`.

#![cfg(feature = "live")]

mod live;

use std::time::{Duration, Instant};

use conveyor_core::{Backend, Poll, Record, StartFrom, SubscribeOptions, TopicSpec};
use conveyor_kafka::{KafkaBackend, KafkaConfig};
use live::{brokers, unique};

const ROUNDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_published_right_after_a_latest_assignment_is_delivered() {
    let b = KafkaBackend::connect(KafkaConfig::new(brokers())).unwrap();
    let mut missed = Vec::new();
    for round in 0..ROUNDS {
        let t = unique("latest");
        b.create_topic(&TopicSpec::new(t.clone(), 1)).await.unwrap();
        b.publish(&t, vec![Record::new("old")]).await.unwrap();
        let mut options = SubscribeOptions::new(unique("latest.g"), [t.clone()]);
        options.start = StartFrom::Latest;
        let mut sub = b.subscribe(options).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "round {round}: never assigned");
            if let Poll::Rebalance { assigned, .. } =
                sub.poll(10, Duration::from_millis(100)).await.unwrap()
            {
                if !assigned.is_empty() {
                    break;
                }
            }
        }
        b.publish(&t, vec![Record::new("new")]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.is_empty() && Instant::now() < deadline {
            if let Poll::Records(r) = sub.poll(10, Duration::from_millis(200)).await.unwrap() {
                got.extend(
                    r.into_iter()
                        .map(|r| String::from_utf8_lossy(&r.value).into_owned()),
                );
            }
        }
        match got.as_slice() {
            [v] if v == "new" => {}
            [] => missed.push(round),
            other => panic!("round {round}: got {other:?}, expected only the new record"),
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {ROUNDS} rounds skipped the record published right after the assignment: {missed:?}",
        missed.len()
    );
    eprintln!("latest: {ROUNDS} of {ROUNDS} rounds delivered the record published right after the assignment");
}
