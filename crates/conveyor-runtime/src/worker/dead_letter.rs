//! Dead-letter records: a failed job, byte for byte, plus headers saying why and where it came from.

use std::time::SystemTime;

use conveyor_core::headers::{self, dlq, format_time};
use conveyor_core::{ConsumedRecord, Record};

/// The most bytes of the error text a dead letter carries in `dlq_error`; a longer one (a
/// webhook's whole answer, say) is cut at a character boundary and says so.
pub const MAX_ERROR_BYTES: usize = 4096;

/// What a dead letter adds to the failed record at most: `dlq_error` plus the other `dlq_*`
/// headers (with room for long topic and group names). An accepted job must leave this much
/// below the record limit, or its dead letter cannot be written; the HTTP API keeps that
/// headroom between its body limit and the record limit.
pub const DEAD_LETTER_HEADROOM: usize = 8 * 1024;

/// Cuts `error` to [`MAX_ERROR_BYTES`].
fn bounded(error: &str) -> String {
    cut(error, MAX_ERROR_BYTES)
}

/// Cuts `error` to at most `max` bytes (at least 128), saying so.
/// `error` cut to at most about `max` bytes at a character boundary, saying it was cut.
pub(crate) fn cut_to(error: &str, max: usize) -> String {
    cut(error, max)
}

fn cut(error: &str, max: usize) -> String {
    if error.len() <= max {
        return error.to_owned();
    }
    let mut end = max.max(128) - 64;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut: {} bytes in all)", &error[..end], error.len())
}

/// Why a job was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Every attempt the retry policy allows failed.
    Exhausted,
    /// The handler said the job can never succeed (or there is no handler for its type).
    Failed,
    /// Its `deadline` passed before it could finish.
    Deadline,
}

impl DeadLetterReason {
    /// The `dlq_reason` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Exhausted => "exhausted",
            DeadLetterReason::Failed => "failed",
            DeadLetterReason::Deadline => "deadline",
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
    r.headers.insert(dlq::ERROR, bounded(error));
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

/// The most bytes of the error text a trimmed dead letter keeps.
const TRIMMED_ERROR_BYTES: usize = 512;

/// A dead letter that fits however large the original was: no value and only conveyor's own
/// headers of the original, plus the `dlq_*` headers and `dlq_trimmed` saying what was dropped.
/// Written when the full dead letter is refused as too large; the job itself stays readable at
/// `dlq_original_topic` / `_partition` / `_offset` while the topic retains it.
pub fn trimmed_dead_letter_record(full: &Record, why: &str) -> Record {
    let mut r = Record::new(bytes::Bytes::new());
    // the key keeps the dead letter on its key's partition, unless it is itself what is large
    r.key = full.key.clone().filter(|k| k.len() <= 1024);
    r.timestamp = full.timestamp;
    for (name, value) in full.headers.iter() {
        let own = dlq::ALL.contains(&name)
            || headers::METADATA.contains(&name)
            || name == headers::TRACEPARENT;
        if name == dlq::ERROR {
            let error = String::from_utf8_lossy(value);
            r.headers.insert(name, cut(&error, TRIMMED_ERROR_BYTES));
        } else if own {
            r.headers.insert(name, value.clone());
        }
    }
    r.headers.insert(
        dlq::TRIMMED,
        format!(
            "the dead letter ({} bytes) was refused ({why}): its value ({} bytes) and other headers were dropped; the job is still at its original offset",
            full.byte_len(),
            full.value.len()
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary() {
        let long = "é".repeat(10_000);
        let b = bounded(&long);
        assert!(b.len() <= MAX_ERROR_BYTES, "{}", b.len());
        assert!(b.ends_with("(cut: 20000 bytes in all)"), "{b}");
        assert_eq!(bounded("short"), "short");
    }
}
