//! The error type shared by the backend contract and the crates built on it.
//!
//! Every variant names what failed and, where the user can act, says what to do next.

/// A conveyor error. New variants may be added, so match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The topic does not exist on the backend.
    #[error("unknown topic `{0}`: create it first (`conveyor topics create {0}` or a [[topics]] entry in conveyor.toml; in a program, `conveyor::declare_topics` or `Backend::create_topic`)")]
    UnknownTopic(String),
    /// A topic name breaks Kafka's naming rules.
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidTopicName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A job (or a schedule, a replayed dead letter, a route, a reply) would go to one of
    /// conveyor's own topics (`conveyor.*`, see [`crate::topic::RESERVED_PREFIX`]), whose readers
    /// would take it for a command, an answer or a claim conveyor wrote.
    #[error("`{name}` is one of conveyor's own topics (`conveyor.*`: the control log, the idempotency answers, the unique-key ledger, the scheduler and reply topics), which take no jobs: name a topic outside `conveyor.*`")]
    ReservedTopic {
        /// The topic.
        name: String,
    },
    /// A topic already exists with a different partition count.
    #[error("topic `{topic}` already exists with {existing} partitions (asked for {requested}); partitions cannot shrink and are not changed implicitly")]
    TopicConflict {
        /// The topic.
        topic: String,
        /// Its existing partition count.
        existing: i32,
        /// The requested partition count.
        requested: i32,
    },
    /// A partition number outside the topic's range.
    #[error("topic `{topic}` has no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
    },
    /// A record is larger than the backend accepts.
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The encoded size of the record.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A commit named a partition this subscription does not own (it was revoked by a rebalance).
    #[error(
        "partition {topic}/{partition} is not assigned to this consumer (revoked by a rebalance)"
    )]
    NotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// Invalid options passed to a backend call.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend or subscription was closed.
    #[error("the backend is closed")]
    Closed,
    /// A stored record or header could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The storage engine failed (disk full, permissions, I/O).
    #[error("storage failed: {0}")]
    Storage(String),
    /// The broker or client library reported an error.
    #[error("broker error: {0}")]
    Broker(String),
    /// A unique job whose key another job holds (enqueue-time check, where the backend can).
    #[error("a job with unique_key `{unique_key}` is already enqueued (id {existing_id}) and holds the key until {until}; this one was not stored")]
    DuplicateJob {
        /// The unique key.
        unique_key: String,
        /// The message id of the job holding it.
        existing_id: String,
        /// When the hold ends (RFC 3339).
        until: String,
    },
    /// A batch failed after part of it was stored (Kafka batches are not atomic; embedded ones
    /// are). Resending the whole batch stores those records again.
    #[error("{stored} of {total} records of the batch were stored before it failed ({cause}); resending the batch stores those again")]
    PartlyStored {
        /// Records of the batch that were stored.
        stored: usize,
        /// Records in the batch.
        total: usize,
        /// Why the rest was not.
        cause: Box<Error>,
    },
    /// The backend (or the broker behind it) cannot do what was asked.
    #[error("not supported by {backend}: {what}")]
    Unsupported {
        /// The backend or broker, e.g. `embedded` or `the librdkafka mock cluster`.
        backend: String,
        /// What it cannot do, and what to do instead.
        what: String,
    },
    /// No reply to a request (`Client::request`) arrived within its timeout.
    #[error("no reply to request {correlation_id} on `{topic}` within {waited_ms} ms: is a worker serving `{topic}` running, with a handler for the job type that replies? The request stays in the topic and may still run; a reply arriving later is dropped (counted as late)")]
    RequestTimeout {
        /// The topic the request was sent to.
        topic: String,
        /// The request's correlation id (its message id).
        correlation_id: String,
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// The worker gave up on a request (dead-lettered it); its reply carried the error.
    #[error("request {correlation_id} on `{topic}` failed for good: {error}; it is in the topic's dead-letter topic (replay it once the cause is fixed, or send a new request)")]
    RequestFailed {
        /// The topic the request was sent to.
        topic: String,
        /// The request's correlation id (its message id).
        correlation_id: String,
        /// The error the worker gave up with (`reply_error`).
        error: String,
    },
    /// An operating-system I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::NotAssigned`] for `tp`.
    pub fn not_assigned(tp: &crate::TopicPartition) -> Error {
        Error::NotAssigned {
            topic: tp.topic.clone(),
            partition: tp.partition,
        }
    }
}
