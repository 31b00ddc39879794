//! The bare-client baseline of `conveyor bench --backend kafka --raw`: the same record count,
//! payload size and producer concurrency as the conveyor enqueue phase, through rdkafka alone
//! (same producer settings: idempotent, `acks=all`), then one plain group consumer reading them
//! all back without per-record work. conveyor's overhead is the ratio of the two runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use conveyor_core::{Error, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{broker, KafkaConfig};

/// Raw figures, in records per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawReport {
    /// Records produced per second (each send awaited, `concurrency` at a time).
    pub produce_s: f64,
    /// Records consumed per second by one group member.
    pub consume_s: f64,
}

/// Produces `records` records of `payload_bytes` bytes to `topic` (which must exist) with
/// `concurrency` concurrent senders, then consumes them all.
pub async fn run(
    config: &KafkaConfig,
    topic: &str,
    records: usize,
    concurrency: usize,
    payload_bytes: usize,
    progress: impl Fn(String),
) -> Result<RawReport> {
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
                let key = format!("user-{}", i % 1000);
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
    Ok(RawReport {
        produce_s,
        consume_s,
    })
}
