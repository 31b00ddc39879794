//! Dead-letter replay: moves dead letters back to the topic they failed on, as fresh jobs.
//!
//! [`replay`] scans a dead-letter topic (`orders.dlq`, written by the worker, see
//! [`crate::worker::dead_letter`]) partition by partition, from the low to the high watermark it finds
//! when it starts (dead letters written meanwhile, such as replayed jobs failing again, wait for
//! the next run), selects by job type, partition and offset range, and publishes each selected
//! dead letter to its `dlq_original_topic` as a new job:
//! - the same key (so the same partition while the topic keeps its partition count), value,
//!   `message_id`, job type and the producer's own headers;
//! - without the `dlq_*` headers and the state of its last delivery (`due_at`,
//!   `delay_partition`, `retry_group`, `dedup_key`, `first_error`, `last_error`);
//! - with `attempt` 1, so the retry policy starts over, and `replayed_from` =
//!   `<dlq topic>/<partition>/<offset>` naming the dead letter.
//!
//! A trimmed dead letter (`dlq_trimmed`: its value was dropped to fit the log) is replayed from
//! the original record, read at `dlq_original_topic/_partition/_offset` while that topic still
//! retains it. A dead letter that cannot be routed (no or a broken `dlq_original_topic`, one of
//! conveyor's own topics `conveyor.*`, a topic that no longer exists, a trimmed one whose
//! original is gone) is counted in `skipped_unroutable` and listed with the reason; it never
//! stops the replay.
//!
//! Every group consuming the original topic gets the replayed job, as with any new job.
//!
//! # Running it twice
//! Each replayed dead letter gets an entry in the ledger topic `<dlq topic>.replayed`
//! ([`ledger`]), kept forever. A replay reads the whole ledger first and skips what it lists
//! (`already_replayed`), so running the same replay again moves nothing. Writes go chunk by chunk
//! ([`CHUNK`] dead letters): first the replayed jobs, then their ledger entries. A crash, or a
//! failed write, between the two leaves jobs replayed without their entries, and the next run
//! replays them again: the at-least-once window, at most one chunk per original topic, whose
//! copies carry the same `message_id` and `replayed_from`. Replays of one dead-letter topic
//! through one backend in one process run one at a time; two processes replaying the same
//! dead-letter topic at the same moment can both replay a dead letter. A dead-letter topic
//! deleted and created again reuses offsets its old ledger lists: delete the ledger with it.
//!
//! A dry run writes nothing, not even the ledger topic, and reports what would move.

pub mod ledger;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use conveyor_core::headers::{self, dlq};
use conveyor_core::topic::validate_name;
use conveyor_core::topic::PartitionInfo;
use conveyor_core::{Backend, ConsumedRecord, Error, Record, Result};
use serde::{Deserialize, Serialize};

use ledger::Entry;

/// Dead letters read, and written back, per step.
pub const CHUNK: usize = 500;

/// The most dead letters a [`ReplayReport`] lists in `moved` and in `skipped` (its counts
/// cover all).
pub const MAX_LISTED: usize = 100;

/// Headers describing a dead letter's last delivery, dropped with the `dlq_*` ones: the replayed
/// job starts over.
const LAST_DELIVERY: &[&str] = &[
    headers::DUE_AT,
    headers::DELAY_PARTITION,
    headers::RETRY_GROUP,
    headers::DEDUP_KEY,
    headers::FIRST_ERROR,
    headers::LAST_ERROR,
];

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayRequest {
    /// The dead-letter topic, e.g. `orders.dlq`.
    pub dlq_topic: String,
    /// Only dead letters of this job type.
    pub job_type: Option<String>,
    /// Only this partition of the dead-letter topic.
    pub partition: Option<i32>,
    /// Only dead letters at these offsets, both included, in each partition scanned.
    pub offsets: Option<(i64, i64)>,
    /// Scan at most this many dead letters per partition; the report's `next_offset` says
    /// where to go on. `None`: up to the high watermark.
    pub limit: Option<usize>,
    /// Report what would move, write nothing.
    pub dry_run: bool,
}

impl ReplayRequest {
    /// Replay every dead letter of `dlq_topic`.
    pub fn new(dlq_topic: impl Into<String>) -> Self {
        ReplayRequest {
            dlq_topic: dlq_topic.into(),
            ..ReplayRequest::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::InvalidArgument(m));
        if let Some((a, b)) = self.offsets {
            if a < 0 || b < 0 {
                return invalid(format!("offsets are at least 0, got {a}..{b}"));
            }
            if a > b {
                return invalid(format!("the offset range {a}..{b} is empty ({a} > {b})"));
            }
        }
        if self.partition.is_some_and(|p| p < 0) {
            return invalid("the partition is at least 0".into());
        }
        if self.limit == Some(0) {
            return invalid("the limit is at least 1".into());
        }
        Ok(())
    }
}

/// What a replay did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// Its ledger ([`ledger::ledger_topic`]).
    pub ledger_topic: String,
    /// Nothing was written.
    pub dry_run: bool,
    /// Dead letters read.
    pub scanned: u64,
    /// Read and selected (type and offsets):
    /// `replayed + already_replayed + skipped_unroutable`.
    pub matched: u64,
    /// Published to their original topic (in a dry run: would be).
    pub replayed: u64,
    /// Selected but listed in the ledger: replayed by an earlier run, not again.
    pub already_replayed: u64,
    /// Selected but with nowhere to go (see `skipped`).
    pub skipped_unroutable: u64,
    /// Per partition scanned.
    pub partitions: Vec<PartitionReplay>,
    /// The first [`MAX_LISTED`] replayed dead letters.
    pub moved: Vec<Moved>,
    /// The first [`MAX_LISTED`] unroutable dead letters, with the reason.
    pub skipped: Vec<Skipped>,
}

/// One partition of the dead-letter topic: what was scanned and what came of it. Also what
/// [`replay`]'s progress callback gets after each chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PartitionReplay {
    /// The partition.
    pub partition: i32,
    /// The first offset of the range scanned (the requested start, or the low watermark).
    pub from_offset: i64,
    /// The last offset of the range (the requested end, or the high watermark at the start
    /// less one); below `from_offset` when there is nothing to scan.
    pub to_offset: i64,
    /// The first offset not scanned yet: past `to_offset` once the range is done.
    pub next_offset: i64,
    /// The whole range was scanned (`next_offset > to_offset`); false when `limit` stopped it.
    pub done: bool,
    /// Dead letters read.
    pub scanned: u64,
    /// Selected.
    pub matched: u64,
    /// Replayed.
    pub replayed: u64,
    /// Already in the ledger.
    pub already_replayed: u64,
    /// Unroutable.
    pub skipped_unroutable: u64,
}

/// A replayed dead letter and where its job went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// `<dlq topic>/<partition>/<offset>`, also the job's `replayed_from` header.
    pub replayed_from: String,
    /// The job's message id.
    pub message_id: Option<String>,
    /// The job type.
    pub job_type: Option<String>,
    /// The topic it went to.
    pub topic: String,
    /// Where it landed; `None` in a dry run.
    pub partition: Option<i32>,
    /// Its offset there; `None` in a dry run.
    pub offset: Option<i64>,
}

/// A dead letter with nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// `<dlq topic>/<partition>/<offset>`.
    pub dead_letter: String,
    /// Why it was not replayed.
    pub reason: String,
}

/// Replays the dead letters `req` selects (see the [module docs](self)); calls `progress` after
/// each chunk and once per partition with nothing to scan. Fails with `UnknownTopic` when the
/// dead-letter topic does not exist, `UnknownPartition` for a partition it does not have and
/// `InvalidArgument` for an empty offset range; an error part-way leaves the chunks before it
/// replayed and in the ledger.
pub async fn replay(
    backend: &Arc<dyn Backend>,
    req: &ReplayRequest,
    mut progress: impl FnMut(&PartitionReplay),
) -> Result<ReplayReport> {
    req.validate()?;
    let lock = one_at_a_time(backend, &req.dlq_topic);
    let _running = lock.lock().await;
    let info = backend
        .describe_topic(&req.dlq_topic)
        .await?
        .ok_or_else(|| Error::UnknownTopic(req.dlq_topic.clone()))?;
    let partitions: Vec<PartitionInfo> = match req.partition {
        None => info.partitions.clone(),
        Some(p) => {
            vec![*info
                .partitions
                .get(p as usize)
                .ok_or_else(|| Error::UnknownPartition {
                    topic: req.dlq_topic.clone(),
                    partition: p,
                })?]
        }
    };
    let ledger_topic = ledger::ledger_topic(&req.dlq_topic);
    // checked before anything moves: a ledger that cannot be written would replay every time
    validate_name(&ledger_topic).map_err(|e| {
        Error::InvalidArgument(format!(
            "`{}` cannot have a replay ledger: {e}",
            req.dlq_topic
        ))
    })?;
    let mut run = Run {
        backend,
        req,
        done: ledger::read(backend, &ledger_topic).await?,
        ledger_ready: false,
        topics: HashMap::new(),
        report: ReplayReport {
            dlq_topic: req.dlq_topic.clone(),
            ledger_topic,
            dry_run: req.dry_run,
            ..ReplayReport::default()
        },
    };
    for p in partitions {
        let part = run.partition(p, &mut progress).await?;
        let r = &mut run.report;
        r.scanned += part.scanned;
        r.matched += part.matched;
        r.replayed += part.replayed;
        r.already_replayed += part.already_replayed;
        r.skipped_unroutable += part.skipped_unroutable;
        r.partitions.push(part);
    }
    Ok(run.report)
}

/// The lock that makes replays of one dead-letter topic on one backend run one at a time in
/// this process.
fn one_at_a_time(backend: &Arc<dyn Backend>, dlq_topic: &str) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = Mutex<HashMap<(usize, String), Arc<tokio::sync::Mutex<()>>>>;
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    let id = Arc::as_ptr(backend) as *const () as usize;
    let mut locks = LOCKS
        .get_or_init(Locks::default)
        .lock()
        .expect("replay locks");
    Arc::clone(locks.entry((id, dlq_topic.to_owned())).or_default())
}

/// One replay under way.
struct Run<'a> {
    backend: &'a Arc<dyn Backend>,
    req: &'a ReplayRequest,
    /// Dead letters (partition, offset) in the ledger, and those replayed by this run.
    done: HashSet<(i32, i64)>,
    /// The ledger topic exists.
    ledger_ready: bool,
    /// Original topics looked up: whether each exists.
    topics: HashMap<String, bool>,
    report: ReplayReport,
}

/// A selected dead letter with somewhere to go: the job to publish there.
struct Routed {
    dlq_partition: i32,
    dlq_offset: i64,
    replayed_from: String,
    record: Record,
}

impl Run<'_> {
    async fn partition(
        &mut self,
        p: PartitionInfo,
        progress: &mut impl FnMut(&PartitionReplay),
    ) -> Result<PartitionReplay> {
        let (from, to) = self.req.offsets.unwrap_or((0, i64::MAX));
        let mut part = PartitionReplay {
            partition: p.partition,
            from_offset: from.max(p.low),
            to_offset: to.min(p.high - 1),
            next_offset: from.max(p.low),
            ..PartitionReplay::default()
        };
        let budget = self.req.limit.unwrap_or(usize::MAX);
        let mut read = 0usize;
        let mut chunks = 0;
        while part.next_offset <= part.to_offset && read < budget {
            let left = (part.to_offset - part.next_offset + 1).min(CHUNK as i64) as usize;
            let records = self
                .backend
                .fetch(
                    &self.req.dlq_topic,
                    p.partition,
                    part.next_offset,
                    left.min(budget - read),
                )
                .await?;
            let records: Vec<ConsumedRecord> = records
                .into_iter()
                .filter(|r| (part.next_offset..=part.to_offset).contains(&r.offset))
                .collect();
            let Some(last) = records.last() else {
                // nothing left below the bound (retention removed it)
                part.next_offset = part.to_offset + 1;
                break;
            };
            part.next_offset = last.offset + 1;
            part.done = part.next_offset > part.to_offset;
            read += records.len();
            self.chunk(&mut part, records).await?;
            chunks += 1;
            progress(&part);
        }
        part.done = part.next_offset > part.to_offset;
        if chunks == 0 {
            progress(&part);
        }
        Ok(part)
    }

    /// Selects, routes and (unless a dry run) replays one chunk of a partition.
    async fn chunk(
        &mut self,
        part: &mut PartitionReplay,
        records: Vec<ConsumedRecord>,
    ) -> Result<()> {
        // per original topic, in offset order
        let mut by_topic: Vec<(String, Vec<Routed>)> = Vec::new();
        for r in records {
            part.scanned += 1;
            let job_type = r.headers.get_str(headers::JOB_TYPE);
            if self
                .req
                .job_type
                .as_deref()
                .is_some_and(|t| job_type != Some(t))
            {
                continue;
            }
            part.matched += 1;
            if self.done.contains(&(r.partition, r.offset)) {
                part.already_replayed += 1;
                continue;
            }
            match self.route(&r).await? {
                Err(reason) => {
                    part.skipped_unroutable += 1;
                    tracing::warn!(dead_letter = %coordinates(&r), reason, "dead letter not replayed");
                    if self.report.skipped.len() < MAX_LISTED {
                        self.report.skipped.push(Skipped {
                            dead_letter: coordinates(&r),
                            reason,
                        });
                    }
                }
                Ok((topic, routed)) => match by_topic.iter_mut().find(|(t, _)| *t == topic) {
                    Some((_, v)) => v.push(routed),
                    None => by_topic.push((topic, vec![routed])),
                },
            }
        }
        for (topic, routed) in by_topic {
            let positions = if self.req.dry_run {
                vec![None; routed.len()]
            } else {
                let records = routed.iter().map(|r| r.record.clone()).collect();
                let at = self.backend.publish(&topic, records).await?;
                at.into_iter().map(Some).collect()
            };
            let mut entries = Vec::new();
            for (r, at) in routed.into_iter().zip(positions) {
                let message_id = r
                    .record
                    .headers
                    .get_str(headers::MESSAGE_ID)
                    .map(str::to_owned);
                if self.report.moved.len() < MAX_LISTED {
                    self.report.moved.push(Moved {
                        replayed_from: r.replayed_from.clone(),
                        message_id: message_id.clone(),
                        job_type: r
                            .record
                            .headers
                            .get_str(headers::JOB_TYPE)
                            .map(str::to_owned),
                        topic: topic.clone(),
                        partition: at.map(|a| a.partition),
                        offset: at.map(|a| a.offset),
                    });
                }
                part.replayed += 1;
                if let Some(at) = at {
                    entries.push(Entry {
                        dlq_partition: r.dlq_partition,
                        dlq_offset: r.dlq_offset,
                        replayed_from: r.replayed_from,
                        topic: topic.clone(),
                        at,
                        message_id,
                    });
                }
            }
            if !entries.is_empty() {
                if !self.ledger_ready {
                    ledger::ensure(self.backend, &self.report.ledger_topic).await?;
                    self.ledger_ready = true;
                }
                ledger::append(self.backend, &self.report.ledger_topic, &entries).await?;
                self.done
                    .extend(entries.iter().map(|e| (e.dlq_partition, e.dlq_offset)));
            }
        }
        Ok(())
    }

    /// Where a dead letter goes and the job to publish there, or why it cannot be replayed.
    async fn route(&mut self, dead: &ConsumedRecord) -> Result<Result<(String, Routed), String>> {
        let Some(topic) = dead.headers.get_str(dlq::ORIGINAL_TOPIC) else {
            return Ok(Err(format!(
                "no `{}` header: not a dead letter conveyor wrote",
                dlq::ORIGINAL_TOPIC
            )));
        };
        // a replayed record in the control log or the idempotency answers would be read as a
        // command or an answer conveyor wrote
        if let Err(e) = conveyor_core::topic::validate_job_topic(topic) {
            return Ok(Err(format!("`{}`: {e}", dlq::ORIGINAL_TOPIC)));
        }
        if !self.exists(topic).await? {
            return Ok(Err(format!("the original topic `{topic}` does not exist")));
        }
        let source = match dead.headers.get(dlq::TRIMMED) {
            None => dead.clone(),
            Some(_) => match self.original(topic, dead).await? {
                Ok(original) => original,
                Err(why) => return Ok(Err(why)),
            },
        };
        let replayed_from = coordinates(dead);
        Ok(Ok((
            topic.to_owned(),
            Routed {
                dlq_partition: dead.partition,
                dlq_offset: dead.offset,
                record: replayed_record(&source, &replayed_from),
                replayed_from,
            },
        )))
    }

    async fn exists(&mut self, topic: &str) -> Result<bool> {
        if let Some(known) = self.topics.get(topic) {
            return Ok(*known);
        }
        let exists = self.backend.describe_topic(topic).await?.is_some();
        self.topics.insert(topic.to_owned(), exists);
        Ok(exists)
    }

    /// The original record of a trimmed dead letter, read where it was consumed.
    async fn original(
        &self,
        topic: &str,
        dead: &ConsumedRecord,
    ) -> Result<Result<ConsumedRecord, String>> {
        let h = &dead.headers;
        let at = h
            .get_str(dlq::ORIGINAL_PARTITION)
            .and_then(|p| p.parse::<i32>().ok())
            .zip(
                h.get_str(dlq::ORIGINAL_OFFSET)
                    .and_then(|o| o.parse::<i64>().ok()),
            );
        let Some((partition, offset)) = at else {
            return Ok(Err(
                "a trimmed dead letter (its value was dropped) without a readable original partition and offset".into(),
            ));
        };
        let gone = || {
            Err(format!(
                "a trimmed dead letter (its value was dropped) whose original, {topic}/{partition}/{offset}, is no longer retained"
            ))
        };
        let found = match self.backend.fetch(topic, partition, offset, 1).await {
            Ok(found) => found,
            Err(Error::UnknownPartition { .. }) => return Ok(gone()),
            Err(e) => return Err(e),
        };
        match found.into_iter().next() {
            Some(r)
                if r.offset == offset
                    && r.headers.get(headers::MESSAGE_ID) == h.get(headers::MESSAGE_ID) =>
            {
                Ok(Ok(r))
            }
            _ => Ok(gone()),
        }
    }
}

/// `<topic>/<partition>/<offset>` of a record.
fn coordinates(r: &ConsumedRecord) -> String {
    format!("{}/{}/{}", r.topic, r.partition, r.offset)
}

/// The job a dead letter becomes: its key, value and headers without the `dlq_*` ones and the
/// last delivery's state, `attempt` 1, `replayed_from` naming the dead letter.
fn replayed_record(source: &ConsumedRecord, replayed_from: &str) -> Record {
    let mut r = source.to_record();
    r.headers = source
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with("dlq_") && !LAST_DELIVERY.contains(name))
        .map(|(name, value)| (name.to_owned(), value.clone()))
        .collect();
    r.headers.insert(headers::ATTEMPT, "1");
    r.headers
        .insert(headers::REPLAYED_FROM, replayed_from.to_owned());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::dead_letter::{dead_letter_record, DeadLetterReason};

    #[test]
    fn a_replayed_job_is_the_original_job_with_a_fresh_attempt_and_its_origin() {
        let original = ConsumedRecord {
            topic: "orders".into(),
            partition: 1,
            offset: 7,
            timestamp: 0,
            key: Some("k".into()),
            value: "{}".into(),
            headers: [
                ("message_id", "m1"),
                ("job_type", "charge"),
                ("attempt", "3"),
                ("tenant", "acme"),
                ("dedup_key", "orders/1/6"),
            ]
            .into_iter()
            .collect(),
        };
        let dead = dead_letter_record(&original, "g", 5, DeadLetterReason::Exhausted, "boom");
        let dead = ConsumedRecord {
            topic: "orders.dlq".into(),
            partition: 0,
            offset: 2,
            timestamp: 0,
            key: dead.key,
            value: dead.value,
            headers: dead.headers,
        };
        let r = replayed_record(&dead, "orders.dlq/0/2");
        assert_eq!(r.key.as_deref(), Some(b"k".as_slice()));
        assert_eq!(&r.value[..], b"{}");
        assert_eq!(r.partition, None);
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "message_id",
                "job_type",
                "tenant",
                "attempt",
                "replayed_from"
            ]
        );
        assert_eq!(r.headers.get_str("attempt"), Some("1"));
        assert_eq!(r.headers.get_str("replayed_from"), Some("orders.dlq/0/2"));
    }

    #[test]
    fn requests_with_an_empty_or_negative_range_are_refused() {
        let mut req = ReplayRequest::new("orders.dlq");
        assert!(req.validate().is_ok());
        for offsets in [(5, 4), (-1, 3), (0, -1)] {
            req.offsets = Some(offsets);
            assert!(
                matches!(req.validate(), Err(Error::InvalidArgument(_))),
                "{offsets:?}"
            );
        }
        req.offsets = Some((3, 3));
        assert!(req.validate().is_ok());
        req.limit = Some(0);
        assert!(req.validate().is_err());
    }
}
