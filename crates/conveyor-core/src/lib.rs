//! conveyor-core: the contracts every other conveyor crate shares.
//!
//! conveyor moves jobs and events as plain Kafka-style records: the payload is the record value, the
//! job's metadata travels in headers, and the key chooses the partition (and so the order). This
//! crate holds the pieces that must not change when a backend changes.
//!
//! # Layout
//! - [`record`]: [`Record`] (what is published), [`ConsumedRecord`] (what is delivered), [`Headers`].
//! - [`headers`]: the header naming scheme (`message_id`, `job_type`, `attempt`, ...) and [`JobMeta`].
//! - [`partitioner`]: Kafka's murmur2 key-to-partition hashing, identical to the Java client.
//! - [`backend`]: the [`Backend`] and [`Subscription`] contract and the optional capabilities.
//! - [`retry`]: [`RetryPolicy`], exponential backoff with jitter and a maximum number of attempts.
//! - [`outcome`]: [`Outcome`], what a handler decided: done, retry, retry after, fail.
//! - [`topic`]: topic names, [`TopicSpec`] and [`TopicInfo`].
//! - [`redact`]: what of a URL, an error text or a secret may be printed or stored.
//! - [`error`]: the crate's [`Error`] and [`Result`].

pub mod backend;
pub mod error;
pub mod headers;
pub mod outcome;
pub mod partitioner;
pub mod record;
pub mod redact;
pub mod retry;
pub mod topic;

pub use backend::{
    Backend, CommitOffset, Committed, Poll, RevokeBarrier, StartFrom, SubscribeOptions,
    Subscription, TopicPartition, TransactionalCommit, UniqueClaims, MAX_COMMIT_METADATA,
};
pub use error::{Error, Result};
pub use headers::JobMeta;
pub use outcome::Outcome;
pub use record::{ConsumedRecord, Headers, Position, Record};
pub use retry::RetryPolicy;
pub use topic::{CleanupPolicy, PlanAction, TopicInfo, TopicPlan, TopicSpec};

/// Milliseconds since the Unix epoch, the timestamp unit of every record (as in Kafka).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
