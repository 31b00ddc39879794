//! The bare-client baseline of `conveyor bench --backend kafka --raw`: the same record count,
//! payload size and producer concurrency as the conveyor enqueue phase, through rdkafka alone
//! (same producer settings: idempotent, `acks=all`), then one plain group consumer reading them
//! all back without per-record work, then a bare worker: one group member that hands each record
//! to one of `concurrency` tasks (by key, so a key's records stay in order), which runs the
//! handler (a sleep of `handler_ms`, or nothing) and stores the record's offset; librdkafka
//! commits the stored offsets every second. That is the least any Kafka worker does; conveyor's
//! overhead is the ratio of its figures to these.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use conveyor_core::{Error, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{broker, KafkaConfig};

/// Raw figures, in records per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawReport {
    /// Records produced per second (each send awaited, `concurrency` at a time).
    pub produce_s: f64,
    /// Records consumed per second by one group member.
    pub consume_s: f64,
    /// Records processed per second by the bare worker.
    pub worker_s: f64,
}

/// What the raw runs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOptions {
    /// Records produced, consumed and processed.
    pub records: usize,
    /// Concurrent senders; the bare worker's tasks.
    pub concurrency: usize,
    /// Bytes of each record's value.
    pub payload_bytes: usize,
    /// Distinct keys.
    pub keys: usize,
    /// How long the bare worker's handler sleeps per record (0: nothing).
    pub handler_ms: u64,
}

/// Produces the records to `topic` (which must exist), consumes them all, then processes them
/// all with the bare worker.
pub async fn run(
    config: &KafkaConfig,
    topic: &str,
    opts: RawOptions,
    progress: impl Fn(String),
) -> Result<RawReport> {
    let RawOptions {
        records,
        concurrency,
        payload_bytes,
        keys,
        handler_ms,
    } = opts;
    let producer: FutureProducer = config.producer().create().map_err(broker)?;
    let payload = Arc::new(vec![b'x'; payload_bytes]);
    let next = Arc::new(AtomicUsize::new(0));
    progress(format!(
        "raw produce: {records} records of {payload_bytes} B by {concurrency} concurrent senders"
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (producer, payload, next, topic) = (
            producer.clone(),
            Arc::clone(&payload),
            Arc::clone(&next),
            topic.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= records {
                    return Ok::<(), Error>(());
                }
                let key = format!("user-{}", i % keys.max(1));
                let rec = FutureRecord::to(&topic).key(&key).payload(&payload[..]);
                producer
                    .send(rec, std::time::Duration::from_secs(60))
                    .await
                    .map_err(|(e, _)| broker(e))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Error::Broker(e.to_string()))??;
    }
    let produce_s = records as f64 / started.elapsed().as_secs_f64();
    progress(format!("raw produce: {produce_s:.0} records/s"));

    let consumer: StreamConsumer = config
        .consumer(
            &format!("conveyor.raw.{}", uuid::Uuid::now_v7().simple()),
            "earliest",
        )
        .create()
        .map_err(broker)?;
    consumer.subscribe(&[topic]).map_err(broker)?;
    // the clock starts at the first record, so the group join is not counted
    let first = consumer.recv().await.map_err(broker)?;
    drop(first);
    let started = Instant::now();
    for _ in 1..records {
        consumer.recv().await.map_err(broker)?;
    }
    let consume_s = (records - 1) as f64 / started.elapsed().as_secs_f64();
    progress(format!("raw consume: {consume_s:.0} records/s"));
    drop(consumer);
    let worker_s = bare_worker(config, topic, records, concurrency, handler_ms).await?;
    progress(format!(
        "raw worker: {worker_s:.0} records/s ({concurrency} tasks, handler {handler_ms} ms, offsets stored when done, committed every second)"
    ));
    Ok(RawReport {
        produce_s,
        consume_s,
        worker_s,
    })
}

/// The bare worker's rate: records per second from its first record to its last one done.
async fn bare_worker(
    config: &KafkaConfig,
    topic: &str,
    records: usize,
    concurrency: usize,
    handler_ms: u64,
) -> Result<f64> {
    use std::hash::{Hash, Hasher};
    let consumer: Arc<StreamConsumer> = Arc::new(
        config
            .consumer(
                &format!("conveyor.raw.worker.{}", uuid::Uuid::now_v7().simple()),
                "earliest",
            )
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .create()
            .map_err(broker)?,
    );
    consumer.subscribe(&[topic]).map_err(broker)?;
    let done = Arc::new(AtomicUsize::new(0));
    let (all_done, mut finished) = tokio::sync::watch::channel(false);
    let mut lanes = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<rdkafka::message::OwnedMessage>(64);
        let (consumer, done, all_done) =
            (Arc::clone(&consumer), Arc::clone(&done), all_done.clone());
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if handler_ms > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(handler_ms)).await;
                }
                let _ = consumer.store_offset(m.topic(), m.partition(), m.offset() + 1);
                if done.fetch_add(1, Ordering::Relaxed) + 1 == records {
                    let _ = all_done.send(true);
                }
            }
        });
        lanes.push(tx);
    }
    let mut started = None;
    let mut sent = 0;
    loop {
        tokio::select! {
            _ = finished.changed() => break,
            () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
                return Err(Error::Broker(format!(
                    "the bare worker saw nothing for 60 s ({sent} of {records} records received, {} done)",
                    done.load(Ordering::Relaxed)
                )));
            }
            m = consumer.recv(), if sent < records => {
                let m = m.map_err(broker)?.detach();
                started.get_or_insert_with(Instant::now);
                let mut h = std::collections::hash_map::DefaultHasher::new();
                m.key().hash(&mut h);
                let lane = (h.finish() % lanes.len() as u64) as usize;
                sent += 1;
                if lanes[lane].send(m).await.is_err() {
                    return Err(Error::Broker("a bare worker task stopped".into()));
                }
            }
        }
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    Ok(records as f64 / secs.max(f64::MIN_POSITIVE))
}
