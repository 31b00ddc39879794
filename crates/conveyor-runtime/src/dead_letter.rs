//! Dead-letter records: a failed job, byte for byte, plus headers saying why and where it came from.

use std::time::SystemTime;

use conveyor_core::headers::{self, dlq, format_time};
use conveyor_core::{ConsumedRecord, Record};

/// Why a job was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Every attempt the retry policy allows failed.
    Exhausted,
    /// The handler said the job can never succeed (or there is no handler for its type).
    Failed,
}

impl DeadLetterReason {
    /// The `dlq_reason` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Exhausted => "exhausted",
            DeadLetterReason::Failed => "failed",
        }
    }
}

/// The dead-letter topic of `topic`: `<topic><suffix>`, `orders.dlq` by default.
pub fn dead_letter_topic(topic: &str, suffix: &str) -> String {
    format!("{topic}{suffix}")
}

/// Builds the dead-letter record: same key, value and headers, plus the `dlq_*` headers and the
/// final `attempt`.
pub fn dead_letter_record(
    original: &ConsumedRecord,
    group: &str,
    attempts: u32,
    reason: DeadLetterReason,
    error: &str,
) -> Record {
    let mut r = original.to_record();
    r.headers.insert(headers::ATTEMPT, attempts.to_string());
    r.headers.insert(dlq::ERROR, error.to_owned());
    r.headers.insert(dlq::REASON, reason.as_str());
    r.headers.insert(dlq::ATTEMPTS, attempts.to_string());
    r.headers
        .insert(dlq::FAILED_AT, format_time(SystemTime::now()));
    r.headers
        .insert(dlq::ORIGINAL_TOPIC, original.topic.clone());
    r.headers
        .insert(dlq::ORIGINAL_PARTITION, original.partition.to_string());
    r.headers
        .insert(dlq::ORIGINAL_OFFSET, original.offset.to_string());
    r.headers.insert(dlq::GROUP, group.to_owned());
    r
}
