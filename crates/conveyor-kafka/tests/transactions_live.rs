//! Kafka transactions on a real broker, through rdkafka as conveyor's exactly-once work will use
//! them: a transactional producer, `read_committed` and `read_uncommitted` readers, and consumer
//! offsets sent to a transaction (`send_offsets_to_transaction`, EOS v2). librdkafka's mock
//! cluster accepts these calls without honouring them (DEVELOPERS.md), so this runs only on a
//! live broker: `scripts/kafka.sh` (the test command starts it) or `CONVEYOR_TEST_BROKERS`.
//! Built only with `--features live`.

#![cfg(feature = "live")]

mod live;

use live::{brokers, unique};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(30);

fn create_topics(names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(-1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .unwrap()
    {
        r.expect("create topic");
    }
}

fn transactional_producer() -> ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    let p: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", unique("conveyor.test.tx"))
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    p.init_transactions(T).expect("init_transactions");
    p
}

fn send(
    p: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    values: &[String],
) {
    for v in values {
        p.send(BaseRecord::<(), str>::to(topic).payload(v.as_str()))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    p.flush(T).unwrap();
}

/// Every value in `topic` (one partition) as a reader with `isolation` sees it, reading until
/// nothing new arrives for 2 s after the end of the log.
fn read_all(topic: &str, isolation: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("conveyor.test.reader"))
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    // quiet for 2 s after the first record (a first fetch can be slow), at most T in all
    let mut quiet_since: Option<Instant> = None;
    let deadline = Instant::now() + T;
    while quiet_since.is_none_or(|q| q.elapsed() < Duration::from_secs(2))
        && Instant::now() < deadline
    {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
                quiet_since = Some(Instant::now());
            }
            Some(Err(e)) => panic!("read {topic}: {e}"),
            None => {}
        }
    }
    out
}

fn batch(name: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{name}-{i}")).collect()
}

#[test]
fn read_committed_sees_committed_transactions_once_and_aborted_ones_never() {
    let topic = unique("tx.out");
    create_topics(&[&topic]);
    let p = transactional_producer();
    for (name, commit) in [
        ("committed-a", true),
        ("aborted", false),
        ("committed-b", true),
    ] {
        p.begin_transaction().unwrap();
        send(&p, &topic, &batch(name, 10));
        match commit {
            true => p.commit_transaction(T).unwrap(),
            false => p.abort_transaction(T).unwrap(),
        }
    }
    // left open: a read_committed reader must not see it either
    p.begin_transaction().unwrap();
    send(&p, &topic, &batch("open", 5));

    let committed = read_all(&topic, "read_committed");
    let mut expected = batch("committed-a", 10);
    expected.extend(batch("committed-b", 10));
    assert_eq!(
        committed, expected,
        "read_committed: both committed transactions, once each and in order; nothing aborted or open"
    );

    // the negative control: the same log through read_uncommitted holds the aborted and the open
    // records, so the check above can fail
    let all = read_all(&topic, "read_uncommitted");
    assert_eq!(all.len(), 35, "read_uncommitted sees every record: {all:?}");
    assert_eq!(all.iter().filter(|v| v.starts_with("aborted")).count(), 10);
    assert_eq!(all.iter().filter(|v| v.starts_with("open")).count(), 5);
    p.abort_transaction(T).unwrap();
    eprintln!(
        "transactions: read_committed saw {} records (20 committed), read_uncommitted {} (10 aborted, 5 open)",
        committed.len(),
        all.len()
    );
}

#[test]
fn offsets_sent_to_a_transaction_are_committed_only_with_it() {
    let (input, output) = (unique("tx.in"), unique("tx.out"));
    create_topics(&[&input, &output]);
    let plain: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    send(&plain, &input, &batch("job", 6));

    let group = unique("conveyor.test.eos");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[&input]).unwrap();
    let mut consumed = Vec::new();
    let deadline = Instant::now() + T;
    while consumed.len() < 6 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            consumed.push(m.unwrap().offset());
        }
    }
    assert_eq!(consumed, (0..6).collect::<Vec<i64>>());
    // the group's committed offset as a fresh reader of the group sees it; a read_committed one
    // asks for stable offsets only (KIP-447) and waits while a transaction holds some pending
    let committed = |isolation: &str, timeout: Duration| -> Result<Option<i64>, String> {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", &group)
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&input, 0);
        let found = reader
            .committed_offsets(tpl, timeout)
            .map_err(|e| e.to_string())?;
        Ok(match found.find_partition(&input, 0).unwrap().offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
    };
    let offsets = |next: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&input, 0, Offset::Offset(next))
            .unwrap();
        tpl
    };
    let metadata = consumer.group_metadata().expect("group metadata");
    let p = transactional_producer();

    // the first three jobs' outputs and offsets, aborted: neither is visible
    p.begin_transaction().unwrap();
    send(&p, &output, &batch("result-aborted", 3));
    p.send_offsets_to_transaction(&offsets(3), &metadata, T)
        .unwrap();
    p.abort_transaction(T).unwrap();
    assert_eq!(
        committed("read_committed", T),
        Ok(None),
        "an aborted transaction commits no offset"
    );

    // the same, committed: the offset moves with the outputs
    p.begin_transaction().unwrap();
    send(&p, &output, &batch("result", 3));
    p.send_offsets_to_transaction(&offsets(3), &metadata, T)
        .unwrap();
    assert_eq!(
        committed("read_uncommitted", T),
        Ok(None),
        "offsets sent to an open transaction are not committed yet"
    );
    assert!(
        committed("read_committed", Duration::from_secs(3)).is_err(),
        "a read_committed reader waits for the open transaction (unstable offset)"
    );
    p.commit_transaction(T).unwrap();
    for isolation in ["read_committed", "read_uncommitted"] {
        assert_eq!(
            committed(isolation, T),
            Ok(Some(3)),
            "the committed transaction commits the offset ({isolation})"
        );
    }
    assert_eq!(read_all(&output, "read_committed"), batch("result", 3));
    let mut counts: HashMap<bool, usize> = HashMap::new();
    for v in read_all(&output, "read_uncommitted") {
        *counts.entry(v.starts_with("result-aborted")).or_default() += 1;
    }
    assert_eq!(
        counts.get(&true),
        Some(&3),
        "the negative control: the aborted outputs are in the log"
    );
    eprintln!(
        "transactions: offsets committed only with their transaction (aborted: none, committed: 3)"
    );
}
