//! The backend contract: what conveyor needs from a log, and nothing more.
//!
//! A backend is a partitioned, durable log with consumer groups: Kafka's model. conveyor's runtime,
//! API and CLI only use these traits, so every backend (`embedded`, `kafka`) behaves the same and
//! passes the same conformance suite (`conveyor-conformance`).
//!
//! # The contract
//! - **Thread safety.** A [`Backend`] is `Send + Sync` and shared behind an `Arc`; every method may be
//!   called concurrently. A [`Subscription`] is owned by one task.
//! - **Durability.** [`Backend::publish`] returns only once every record is durably stored as the
//!   backend defines it (embedded: written to its log so that a crash of the process keeps it;
//!   Kafka: acknowledged by all in-sync replicas). A batch is atomic on the embedded backend.
//! - **Order.** Records with the same key go to the same partition ([`crate::partitioner`]); within a
//!   partition, offsets grow by one in publish order and consumers see them in that order.
//! - **Consumer groups.** Subscriptions sharing a group split the topics' partitions; each partition
//!   has one owner at a time. Membership changes are reported by [`Poll::Rebalance`] before records of
//!   newly assigned partitions are delivered.
//! - **Acknowledgement.** A consumer acknowledges by committing, per partition, the offset of the next
//!   record it wants ([`CommitOffset`], Kafka's convention). Nothing is acknowledged implicitly.
//!   A new group starts at [`StartFrom`]; later subscriptions resume at the committed offset, so
//!   every record that was not committed is delivered again after a restart (at-least-once).
//! - **Close.** [`Backend::close`] waits for publishes under way and flushes storage; after it,
//!   calls fail with [`Error::Closed`](crate::Error::Closed). Dropping a subscription leaves the group.
//!
//! Optional capabilities are separate traits ([`AtomicPublishCommit`]), never methods that fail
//! with "unsupported".

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{ConsumedRecord, Position, Record, Result, TopicInfo, TopicSpec};

/// A topic and one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl TopicPartition {
    /// A topic-partition pair.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// An acknowledgement: the group will resume this partition at `next_offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOffset {
    /// The partition.
    pub tp: TopicPartition,
    /// The offset of the first record not yet finished (last finished + 1).
    pub next_offset: i64,
    /// Kept with the offset and read back by the partition's next owner
    /// ([`Subscription::committed`]); each commit replaces it, an empty string clears it. At
    /// most [`MAX_COMMIT_METADATA`] bytes (Kafka's commit metadata; the worker keeps attempt
    /// counts there).
    #[serde(default)]
    pub metadata: String,
}

/// The largest [`CommitOffset::metadata`] every backend keeps: Kafka brokers refuse more than
/// `offset.metadata.max.bytes` (4096 by default).
pub const MAX_COMMIT_METADATA: usize = 4000;

impl CommitOffset {
    /// Resume `tp` at `next_offset`, with no metadata.
    pub fn new(tp: TopicPartition, next_offset: i64) -> Self {
        CommitOffset {
            tp,
            next_offset,
            metadata: String::new(),
        }
    }

    /// The same commit carrying `metadata`.
    pub fn with_metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = metadata.into();
        self
    }
}

/// Refuses a commit whose metadata is longer than [`MAX_COMMIT_METADATA`] (each backend calls it
/// before committing anything).
pub fn check_commit_metadata(offsets: &[CommitOffset]) -> Result<()> {
    match offsets
        .iter()
        .find(|c| c.metadata.len() > MAX_COMMIT_METADATA)
    {
        Some(c) => Err(crate::Error::InvalidArgument(format!(
            "the commit metadata of {} is {} bytes; at most {MAX_COMMIT_METADATA} are kept",
            c.tp,
            c.metadata.len()
        ))),
        None => Ok(()),
    }
}

/// What a group committed for one partition: see [`Subscription::committed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The partition.
    pub tp: TopicPartition,
    /// The committed offset, `None` when the group never committed this partition.
    pub next_offset: Option<i64>,
    /// The metadata of the last commit (empty when none).
    pub metadata: String,
}

/// Where a group with no committed offset starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest retained record (Kafka `auto.offset.reset=earliest`). The default: a job queue
    /// must not skip jobs enqueued before its first worker started.
    #[default]
    Earliest,
    /// Only records published after the subscription started.
    Latest,
}

/// Called by a backend when partitions are about to be taken from this member, before any other
/// member may start on them; it returns once the member's work on them has stopped (a worker:
/// its running handlers of those partitions finished, within a bound). It may block the calling
/// thread: backends call it where a rebalance waits (Kafka: the rebalance callback; embedded:
/// a blocking task before the partitions are released to their next owner).
#[derive(Clone)]
pub struct RevokeBarrier(pub std::sync::Arc<RevokeWait>);

/// What a [`RevokeBarrier`] runs: blocks until the work on the given partitions stopped.
pub type RevokeWait = dyn Fn(&[TopicPartition]) + Send + Sync;

impl RevokeBarrier {
    /// Waits for the member's work on `partitions` to stop.
    pub fn wait(&self, partitions: &[TopicPartition]) {
        (self.0)(partitions)
    }
}

impl std::fmt::Debug for RevokeBarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RevokeBarrier")
    }
}

impl PartialEq for RevokeBarrier {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RevokeBarrier {}

/// What to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The consumer group.
    pub group: String,
    /// The topics; each must exist.
    pub topics: Vec<String>,
    /// Where a group without a committed offset starts.
    pub start: StartFrom,
    /// Waited on before revoked partitions go to another member, so two members never work on
    /// one partition at once. `None`: revocation does not wait.
    pub on_revoke: Option<RevokeBarrier>,
}

impl SubscribeOptions {
    /// Subscribe `group` to `topics`, starting from the earliest record.
    pub fn new(
        group: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        SubscribeOptions {
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            start: StartFrom::Earliest,
            on_revoke: None,
        }
    }
}

/// What one [`Subscription::poll`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Records, in offset order per partition.
    Records(Vec<ConsumedRecord>),
    /// The group's assignment changed. Work on `revoked` partitions should stop; their commits
    /// will fail with [`Error::NotAssigned`](crate::Error::NotAssigned) once another member owns them.
    Rebalance {
        /// Partitions this member no longer owns.
        revoked: Vec<TopicPartition>,
        /// Partitions this member now owns.
        assigned: Vec<TopicPartition>,
    },
    /// Nothing arrived before the timeout.
    Idle,
}

/// A log backend. See the [module docs](self) for the contract.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name: `embedded`, `kafka`.
    fn name(&self) -> &'static str;

    /// Creates a topic, or returns the existing one when its partition count matches the spec.
    async fn create_topic(&self, spec: &TopicSpec) -> Result<TopicInfo>;

    /// Describes a topic with its watermarks, or `None` when it does not exist.
    async fn describe_topic(&self, topic: &str) -> Result<Option<TopicInfo>>;

    /// Lists all topics, sorted by name.
    async fn list_topics(&self) -> Result<Vec<TopicInfo>>;

    /// The topic's current shape (partitions, retention, cleanup policy and, where it applies,
    /// replication), or `None` when it does not exist. Compare it with a desired spec with
    /// [`crate::topic::plan`].
    async fn topic_spec(&self, topic: &str) -> Result<Option<TopicSpec>>;

    /// Changes an existing topic to match `spec`: adds partitions and sets retention, cleanup
    /// policy and min in-sync replicas. Never removes partitions nor changes the replication
    /// factor ([`crate::topic::plan`] refuses those). Fails with `UnknownTopic` when it is missing.
    async fn update_topic(&self, spec: &TopicSpec) -> Result<TopicInfo>;

    /// Appends records to a topic and returns where each landed, in input order. Returns only when
    /// all are durable (see the contract). Fails with `UnknownTopic` for a missing topic.
    async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>>;

    /// Joins a consumer group.
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>>;

    /// Reads up to `max` records of one partition from `offset`, outside any group (for tailing,
    /// browsing and replay). Returns fewer, or none, at the end of the log.
    async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>>;

    /// The group's committed offsets for a topic: one entry per partition, `None` when never
    /// committed.
    async fn committed_offsets(&self, group: &str, topic: &str) -> Result<Vec<(i32, Option<i64>)>>;

    /// Flushes and closes. Later calls fail with `Closed`.
    async fn close(&self) -> Result<()>;

    /// `Err` naming what this backend cannot keep of `spec`'s settings (the embedded log does not
    /// compact), so a plan (`topics apply --dry-run`) refuses it before anything is applied, as
    /// the apply itself would. Default: `Ok`.
    fn check_spec(&self, spec: &TopicSpec) -> Result<()> {
        let _ = spec;
        Ok(())
    }

    /// `Err`, saying what to do, once the backend can take no more writes until the process
    /// starts again: the embedded log after a failed write (a full disk, an I/O error). Reads
    /// may go on. A broker that is only unreachable is not reported here: its client retries.
    /// Default: `Ok`.
    fn health(&self) -> Result<()> {
        Ok(())
    }

    /// The enqueue-time unique-key index, when the backend has one ([`UniqueClaims`]): the
    /// embedded backend, which owns its log, does; Kafka has no conditional write, so it does
    /// not (its workers drop duplicates before they run instead).
    fn unique_claims(&self) -> Option<&dyn UniqueClaims> {
        None
    }

    /// How often a worker should commit when it has progress to commit: cheap local commits can be
    /// frequent (fewer redeliveries after a crash), a broker round trip should not be. Default:
    /// 10 ms.
    fn commit_interval_hint(&self) -> Duration {
        Duration::from_millis(10)
    }
}

/// A member of a consumer group.
#[async_trait]
pub trait Subscription: Send + fmt::Debug {
    /// Waits up to `timeout` for up to `max` records or an assignment change.
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Poll>;

    /// Commits offsets (each with its metadata). Fails with `NotAssigned` for a partition this
    /// member no longer owns; the other offsets in the call are still committed. Metadata longer
    /// than [`MAX_COMMIT_METADATA`] fails the call with `InvalidArgument` before anything is
    /// committed.
    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()>;

    /// The group's committed offsets and their metadata for `partitions`, read from the
    /// backend (not from this member's memory), so a new owner sees what the previous one
    /// committed, including offsets committed through [`Subscription::store`].
    async fn committed(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Committed>>;

    /// Stops delivering records of these owned partitions until [`Subscription::resume`], while
    /// polling goes on (a member that stops polling is removed from a Kafka group). Records are
    /// neither lost nor skipped: delivery resumes where it stopped. A rebalance that revokes a
    /// partition also forgets its pause; newly assigned partitions start unpaused.
    fn pause(&mut self, partitions: &[TopicPartition]) -> Result<()>;

    /// Delivers records of paused partitions again.
    fn resume(&mut self, partitions: &[TopicPartition]) -> Result<()>;

    /// Records finished progress (with its metadata) without acknowledging it yet. A backend
    /// whose partitions can be taken away between two commits (Kafka) commits the stored offsets
    /// of a partition just before it is revoked, so work that finished is not repeated by the next owner. Local and
    /// cheap; call it as work finishes and [`Subscription::commit`] on an interval. Partitions not
    /// owned are ignored. The default does nothing (commits are cheap enough to be frequent).
    fn store(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        let _ = offsets;
        Ok(())
    }

    /// The partitions currently owned.
    fn assignment(&self) -> Vec<TopicPartition>;

    /// Leaves the group in order, before the member is dropped, waiting up to `timeout` for the
    /// partitions to be given up; records polled meanwhile are not delivered (the next owner
    /// reads them from the committed offset). A member dropped without it leaves as it closes.
    /// Kafka: it unsubscribes and serves the revocation until nothing is assigned, so closing the
    /// consumer has no assignment left to undo (librdkafka can abort the process when one is
    /// still in progress as the consumer closes: librdkafka#4792). The default does nothing.
    async fn leave(&mut self, timeout: Duration) {
        let _ = timeout;
    }

    /// Publishing and committing in one atomic step fenced to this member, when the backend can
    /// ([`TransactionalCommit`]): both conveyor backends can. The default: `None`.
    fn transactional(&mut self) -> Option<&mut dyn TransactionalCommit> {
        None
    }

    /// The consumer group.
    fn group(&self) -> &str;
}

/// Optional capability: claim a unique key atomically when a job is enqueued
/// ([`Backend::unique_claims`]).
#[async_trait]
pub trait UniqueClaims: Send + Sync {
    /// Claims `key` within `scope` (the topic) for job `id` until `until_ms` (ms since the
    /// epoch), unless another job holds it past `now_ms`: then returns that job's id and hold.
    /// The claim is durable before this returns.
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        id: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<(String, i64)>>;

    /// Releases the claim of `id` on `key` (its job was not stored after all).
    async fn release(&self, scope: &str, key: &str, id: &str) -> Result<()>;
}

/// Optional capability of a [`Subscription`] ([`Subscription::transactional`]): publish records
/// and commit offsets as one atomic step scoped to this member, the basis of exactly-once
/// consume-and-emit.
///
/// All or nothing: either every record becomes visible to readers and every offset is committed,
/// or no record is visible and no offset moved (Kafka: one transaction, its records seen only by
/// `read_committed` readers once it commits, which is how conveyor's Kafka consumers and readers
/// read; embedded: one atomic write). Fenced: a member that no longer owns one of the partitions
/// gets [`Error::NotAssigned`](crate::Error::NotAssigned) and nothing is published or committed
/// (Kafka: the offsets carry the consumer's group metadata, so the group coordinator refuses a
/// member of an older generation, a zombie, even one that has not noticed its revocation yet).
#[async_trait]
pub trait TransactionalCommit: Send {
    /// Publishes `records` (each to its topic, in order) and commits `offsets` for this member's
    /// group, atomically. Metadata longer than [`MAX_COMMIT_METADATA`] fails with
    /// `InvalidArgument` before anything happens.
    async fn publish_and_commit(
        &mut self,
        records: Vec<(String, Record)>,
        offsets: &[CommitOffset],
    ) -> Result<()>;
}
