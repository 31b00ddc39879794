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

fn plain_producer() -> ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap()
}

/// A member of `group` as conveyor's workers are: manual commits, from the earliest offset,
/// `read_committed`.
fn member_config(group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    c
}

/// The group's committed offset of partition 0 of `topic` as a fresh reader of the group with
/// `isolation` sees it; a `read_committed` one asks for stable offsets only (KIP-447) and waits
/// while a transaction holds some pending.
fn group_committed(
    group: &str,
    topic: &str,
    isolation: &str,
    timeout: Duration,
) -> Result<Offset, String> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let found = reader
        .committed_offsets(tpl, timeout)
        .map_err(|e| e.to_string())?;
    Ok(found.find_partition(topic, 0).unwrap().offset())
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

/// conveyor's own reader, `Backend::fetch` (what `GET /v1/topics/{t}/records`, `conveyor tail`
/// and dead-letter replay read with), sees committed transactions only, and returns at once at
/// the end of a partition full of commit markers instead of waiting for records that never come.
#[test]
fn conveyors_reader_sees_committed_records_only() {
    use conveyor_core::Backend;
    let topic = unique("tx.fetch");
    create_topics(&[&topic]);
    let p = transactional_producer();
    for (name, commit) in [("ok-a", true), ("aborted", false), ("ok-b", true)] {
        p.begin_transaction().unwrap();
        send(&p, &topic, &batch(name, 3));
        match commit {
            true => p.commit_transaction(T).unwrap(),
            false => p.abort_transaction(T).unwrap(),
        }
    }
    p.begin_transaction().unwrap();
    send(&p, &topic, &batch("open", 2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend =
        conveyor_kafka::KafkaBackend::connect(conveyor_kafka::KafkaConfig::new(brokers())).unwrap();
    let started = Instant::now();
    let got = rt.block_on(backend.fetch(&topic, 0, 0, 1000)).unwrap();
    let waited = started.elapsed();
    let values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .collect();
    let mut expected = batch("ok-a", 3);
    expected.extend(batch("ok-b", 3));
    assert_eq!(values, expected, "committed records only, in order");
    assert!(
        waited < Duration::from_secs(5),
        "the fetch waited {waited:?} at the end of the committed records"
    );
    p.abort_transaction(T).unwrap();
    eprintln!("transactions: Backend::fetch saw the 6 committed of 14 records in {waited:?}");
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
    let plain = plain_producer();
    send(&plain, &input, &batch("job", 6));

    let group = unique("conveyor.test.eos");
    let consumer: BaseConsumer = member_config(&group).create().unwrap();
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
    let committed =
        |isolation: &str, timeout: Duration| group_committed(&group, &input, isolation, timeout);
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
        Ok(Offset::Invalid),
        "an aborted transaction commits no offset"
    );

    // the same, committed: the offset moves with the outputs
    p.begin_transaction().unwrap();
    send(&p, &output, &batch("result", 3));
    p.send_offsets_to_transaction(&offsets(3), &metadata, T)
        .unwrap();
    assert_eq!(
        committed("read_uncommitted", T),
        Ok(Offset::Invalid),
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
            Ok(Offset::Offset(3)),
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

/// A zombie: a member whose partition moved to another member in a new generation (it was
/// taken for dead) still holds the group metadata of the old one. Kafka
/// fences it (EOS v2): a transaction sending offsets with the old generation does not commit,
/// its outputs never reach a `read_committed` reader and the group's offset does not move,
/// while the same transaction with the current generation's metadata commits. conveyor sends
/// the consumer's current metadata with each transaction, so a member that was rebalanced away
/// cannot commit work its partition's new owner also does.
#[test]
fn a_zombie_with_an_old_generation_cannot_commit_a_transaction() {
    let (input, output) = (unique("tx.in"), unique("tx.out"));
    create_topics(&[&input, &output]);
    let plain = plain_producer();
    send(&plain, &input, &batch("job", 2));
    let group = unique("conveyor.test.zombie");
    let member = || -> BaseConsumer {
        let c: BaseConsumer = member_config(&group)
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        c.subscribe(&[&input]).unwrap();
        c
    };
    let owns = |c: &BaseConsumer| {
        c.assignment()
            .map(|a| a.find_partition(&input, 0).is_some())
            .unwrap_or(false)
    };
    let a = member();
    let deadline = Instant::now() + T;
    while !owns(&a) {
        assert!(
            Instant::now() < deadline,
            "the first member never got the partition"
        );
        a.poll(Duration::from_millis(100));
    }
    let stale = a.group_metadata().expect("group metadata");
    // the first member is taken for dead (it leaves; on a real failure its session expires)
    // and the partition moves to a second one, in a new generation
    drop(a);
    let owner = member();
    let deadline = Instant::now() + T;
    while !owns(&owner) {
        assert!(
            Instant::now() < deadline,
            "the second member never got the partition"
        );
        owner.poll(Duration::from_millis(100));
    }
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&input, 0, Offset::Offset(1))
        .unwrap();

    // the zombie's transaction: the old generation's metadata
    let p = transactional_producer();
    p.begin_transaction().unwrap();
    send(&p, &output, &batch("zombie", 1));
    let fenced = p
        .send_offsets_to_transaction(&offsets, &stale, T)
        .and_then(|()| p.commit_transaction(T));
    let err = fenced.expect_err("a transaction with the old generation's offsets committed");
    eprintln!("transactions: the zombie's transaction was refused: {err}");
    if p.abort_transaction(T).is_err() {
        // a fatal error: the producer is done; the next transaction uses a fresh one
    }
    assert!(
        !read_all(&output, "read_committed")
            .iter()
            .any(|v| v.starts_with("zombie")),
        "a read_committed reader sees the zombie's output"
    );
    let committed = || group_committed(&group, &input, "read_committed", T).unwrap();
    assert_eq!(
        committed(),
        Offset::Invalid,
        "the zombie moved the group's offset"
    );

    // the positive control: the same transaction with the current generation commits
    let current = owner.group_metadata().expect("group metadata");
    let p = transactional_producer();
    p.begin_transaction().unwrap();
    send(&p, &output, &batch("owner", 1));
    p.send_offsets_to_transaction(&offsets, &current, T)
        .expect("the current member's offsets");
    p.commit_transaction(T)
        .expect("the current member's commit");
    assert_eq!(committed(), Offset::Offset(1));
    let seen = read_all(&output, "read_committed");
    assert_eq!(seen, batch("owner", 1), "only the current member's output");
    eprintln!("transactions: a zombie's transaction is fenced, the current member's commits");
}
