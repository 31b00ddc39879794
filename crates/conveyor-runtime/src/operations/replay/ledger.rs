//! The replay ledger: which dead letters of a dead-letter topic were already replayed.
//!
//! The ledger of `orders.dlq` is the topic `orders.dlq.replayed` ([`ledger_topic`]): one
//! partition, kept forever (a dead letter replayed long ago must still be known, however long
//! the dead-letter topic keeps it), created by the first replay that moves something. It holds
//! one record per replayed dead letter, keyed `<partition>/<offset>` of the dead letter, whose
//! value says where the job went:
//! `{"replayed_from":"orders.dlq/0/7","topic":"orders","partition":2,"offset":41,"message_id":…,"replayed_at":…}`.
//! Only the key is read back, so any Kafka tool can inspect the ledger, and a record written by
//! hand (`<partition>/<offset>`) marks a dead letter as replayed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use conveyor_core::headers::format_time;
use conveyor_core::{Backend, Error, Position, Record, Result, TopicSpec};

/// The ledger topic of `dlq_topic`: `<dlq_topic>.replayed`.
///
/// ```
/// assert_eq!(conveyor_runtime::operations::replay::ledger::ledger_topic("orders.dlq"), "orders.dlq.replayed");
/// ```
pub fn ledger_topic(dlq_topic: &str) -> String {
    format!("{dlq_topic}.replayed")
}

/// How many ledger records one read asks for.
const READ_CHUNK: usize = 1000;

/// The key of a dead letter's entry: `<partition>/<offset>`.
pub fn entry_key(partition: i32, offset: i64) -> String {
    format!("{partition}/{offset}")
}

/// Parses an entry key written by [`entry_key`]; `None` for anything else.
///
/// ```
/// use conveyor_runtime::operations::replay::ledger::parse_key;
/// assert_eq!(parse_key(b"2/41"), Some((2, 41)));
/// assert_eq!(parse_key(b"2/-1"), None);
/// assert_eq!(parse_key(b"orders"), None);
/// ```
pub fn parse_key(key: &[u8]) -> Option<(i32, i64)> {
    let (p, o) = std::str::from_utf8(key).ok()?.split_once('/')?;
    let (p, o): (i32, i64) = (p.parse().ok()?, o.parse().ok()?);
    (p >= 0 && o >= 0).then_some((p, o))
}

/// Every dead letter (partition, offset) recorded in the ledger; empty when it does not exist.
pub(crate) async fn read(backend: &Arc<dyn Backend>, topic: &str) -> Result<HashSet<(i32, i64)>> {
    let mut done = HashSet::new();
    let Some(info) = backend.describe_topic(topic).await? else {
        return Ok(done);
    };
    for p in &info.partitions {
        let mut next = p.low;
        while next < p.high {
            let records = backend.fetch(topic, p.partition, next, READ_CHUNK).await?;
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for r in &records {
                match r.key.as_deref().and_then(parse_key) {
                    Some(k) => {
                        done.insert(k);
                    }
                    None => tracing::warn!(
                        ledger = topic,
                        partition = r.partition,
                        offset = r.offset,
                        "a ledger record without a `<partition>/<offset>` key is ignored"
                    ),
                }
            }
        }
    }
    Ok(done)
}

/// Creates the ledger topic when it is missing: one partition, no retention limit. One created
/// elsewhere with more partitions is used as it is (every partition is read).
pub(crate) async fn ensure(backend: &Arc<dyn Backend>, topic: &str) -> Result<()> {
    let mut spec = TopicSpec::new(topic, 1);
    spec.retention_ms = None;
    match backend.create_topic(&spec).await {
        Ok(_) | Err(Error::TopicConflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One replayed dead letter, as its ledger entry will record it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) dlq_partition: i32,
    pub(crate) dlq_offset: i64,
    pub(crate) replayed_from: String,
    pub(crate) topic: String,
    pub(crate) at: Position,
    pub(crate) message_id: Option<String>,
}

impl Entry {
    fn to_record(&self, now: SystemTime) -> Record {
        let value = serde_json::json!({
            "replayed_from": self.replayed_from,
            "topic": self.topic,
            "partition": self.at.partition,
            "offset": self.at.offset,
            "message_id": self.message_id,
            "replayed_at": format_time(now),
        });
        Record::new(value.to_string()).with_key(entry_key(self.dlq_partition, self.dlq_offset))
    }
}

/// Appends the entries (one publish).
pub(crate) async fn append(
    backend: &Arc<dyn Backend>,
    topic: &str,
    entries: &[Entry],
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let now = SystemTime::now();
    let records = entries.iter().map(|e| e.to_record(now)).collect();
    backend.publish(topic, records).await.map(|_| ())
}
