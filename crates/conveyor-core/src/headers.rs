//! The header naming scheme: how job metadata travels with a plain record.
//!
//! Names are lower-case `snake_case` ASCII, values UTF-8 text, so any Kafka tool shows them and any
//! producer in any language can write them. Only `message_id` and `job_type` matter to a worker;
//! the rest are filled in by conveyor's producers and read when present.
//!
//! | header | value | set by |
//! |---|---|---|
//! | `message_id` | UUIDv7, text | producer |
//! | `job_type` | the handler to run, e.g. `email.send` | producer |
//! | `attempt` | 1-based attempt number of this delivery | worker (DLQ) |
//! | `produced_at` | RFC 3339 UTC time with milliseconds | producer |
//! | `producer` | free text naming the producing service | producer |
//! | `content_type` | MIME type of the value; absent means `application/json` | producer |
//! | `traceparent`, `tracestate` | W3C trace context | producer |
//! | `due_at` | RFC 3339 time before which the job must not run (delayed jobs, retries) | producer, worker |
//! | `deadline` | RFC 3339 time after which the job is dead-lettered (`deadline`) instead of run | producer |
//! | `timeout_ms` | longest one attempt may run, in milliseconds | producer |
//! | `delay_partition` | on a delay-tier record: the partition of the job's topic it returns to | worker |
//! | `retry_group` | set on a job that a group moved to a delay tier: only that group runs it | worker |
//! | `dedup_key` | copies of one job carry the same value; a worker runs the first it sees | worker, scheduler |
//! | `first_error`, `last_error` | on a retried job: its first and latest error | worker |
//! | `reply_to`, `correlation_id` | on a request: where its reply goes, and the id pairing them | client |
//! | `reply_error` | on a reply: the request failed for good (its error) | worker |
//! | `schedule`, `scheduled_at` | on a job a cron schedule fired: the schedule's name and the tick's RFC 3339 time | scheduler |
//! | `replayed_from` | `<dlq topic>/<partition>/<offset>`: the dead letter a replayed job came from | `conveyor dlq replay` |
//! | `dlq_*` | see [`dlq`] | worker, on dead-letter records only |

use std::time::SystemTime;

use uuid::Uuid;

use crate::Headers;

/// UUIDv7 message id.
pub const MESSAGE_ID: &str = "message_id";
/// Job type: selects the handler.
pub const JOB_TYPE: &str = "job_type";
/// 1-based attempt number.
pub const ATTEMPT: &str = "attempt";
/// When the producer created the job (RFC 3339, UTC, milliseconds).
pub const PRODUCED_AT: &str = "produced_at";
/// Name of the producing service.
pub const PRODUCER: &str = "producer";
/// MIME type of the value; absent means JSON.
pub const CONTENT_TYPE: &str = "content_type";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";
/// The time before which the job must not run (RFC 3339, UTC, milliseconds).
pub const DUE_AT: &str = "due_at";
/// On a job replayed from a dead-letter topic: the dead letter it came from,
/// `<dlq topic>/<partition>/<offset>` (written by `conveyor_runtime::operations::replay`).
pub const REPLAYED_FROM: &str = "replayed_from";
/// The time after which the job is dead-lettered with reason `deadline` instead of run.
pub const DEADLINE: &str = "deadline";
/// Longest one attempt may run, in milliseconds (overrides the worker's per-type timeout and,
/// on a webhook route, the route's request timeout); read with [`timeout`].
pub const TIMEOUT_MS: &str = "timeout_ms";
/// The longest a job's own `timeout_ms` counts for: one day (the HTTP API refuses more).
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// On a record in a delay tier: the partition of the job's topic it goes back to.
pub const DELAY_PARTITION: &str = "delay_partition";
/// On a job a consumer group moved to a delay tier (a retry or a delayed job): the group that
/// runs it when it comes back; other groups of the topic skip it (they had their own copy).
pub const RETRY_GROUP: &str = "retry_group";
/// Identifies one move of a job through the delay tiers (`<topic>/<partition>/<offset>` of the
/// record that was moved), or one tick of a cron schedule (`schedule/<name>/<tick unix ms>`): a
/// crash can write a move or a tick twice, and a worker runs only the first copy it sees.
pub const DEDUP_KEY: &str = "dedup_key";
/// On a job fired by a cron schedule: the schedule's name.
pub const SCHEDULE: &str = "schedule";
/// On a job fired by a cron schedule: the tick it was fired for (RFC 3339, UTC, milliseconds).
pub const SCHEDULED_AT: &str = "scheduled_at";
/// A unique job's key: within its hold (until `unique_until`) at most one job of the topic
/// with this key runs.
pub const UNIQUE_KEY: &str = "unique_key";
/// When a unique job's hold on its key ends (RFC 3339).
pub const UNIQUE_UNTIL: &str = "unique_until";
/// On a retried job: the error of its first failed attempt.
pub const FIRST_ERROR: &str = "first_error";
/// On a retried job: the error of its latest failed attempt.
pub const LAST_ERROR: &str = "last_error";

/// On a request (`Client::request`): the topic the worker publishes the handler's reply to, the
/// requesting client's reply topic.
pub const REPLY_TO: &str = "reply_to";
/// On a request and its reply: the id that pairs them (the request's message id).
pub const CORRELATION_ID: &str = "correlation_id";
/// On a reply: present when the request failed for good (dead-lettered); the error, as text.
/// A reply without it is the handler's answer, in the value.
pub const REPLY_ERROR: &str = "reply_error";

/// The job metadata conveyor writes itself: reserved, a producer's own headers may not use them.
pub const METADATA: &[&str] = &[
    MESSAGE_ID,
    JOB_TYPE,
    ATTEMPT,
    PRODUCED_AT,
    PRODUCER,
    CONTENT_TYPE,
    REPLAYED_FROM,
    DUE_AT,
    DEADLINE,
    TIMEOUT_MS,
    DELAY_PARTITION,
    RETRY_GROUP,
    DEDUP_KEY,
    UNIQUE_KEY,
    UNIQUE_UNTIL,
    FIRST_ERROR,
    LAST_ERROR,
    REPLY_TO,
    CORRELATION_ID,
    REPLY_ERROR,
];

/// The first header of `headers` that marks a record as a job's (written by a way in that writes
/// jobs: an enqueue, a schedule's tick, a replayed dead letter, a reply, a delay tier, a dead
/// letter): one of [`METADATA`], `schedule`, `scheduled_at` or a `dlq_*` one. The records of
/// conveyor's own logs (control commands, idempotency answers, unique-key claims) carry none, so
/// their readers skip a record that does: it is a job someone wrote to the log, not an entry.
///
/// ```
/// use conveyor_core::{headers, Headers};
/// let mut h = Headers::new();
/// assert_eq!(headers::job_header(&h), None);
/// h.insert("tenant", "acme");
/// assert_eq!(headers::job_header(&h), None);
/// h.insert("replayed_from", "emails.dlq/0/7");
/// assert_eq!(headers::job_header(&h), Some("replayed_from"));
/// ```
pub fn job_header(headers: &Headers) -> Option<&str> {
    headers.iter().map(|(name, _)| name).find(|name| {
        METADATA.contains(name)
            || *name == SCHEDULE
            || *name == SCHEDULED_AT
            || name.starts_with("dlq_")
    })
}

/// The default content type of a job payload.
pub const JSON: &str = "application/json";

/// Headers added to a record sent to a dead-letter topic. The original headers are kept.
pub mod dlq {
    /// The last error, as text.
    pub const ERROR: &str = "dlq_error";
    /// Why it was dead-lettered: `exhausted` (max attempts reached) or `failed` (permanent failure).
    pub const REASON: &str = "dlq_reason";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "dlq_attempts";
    /// When it was dead-lettered (RFC 3339, UTC, milliseconds).
    pub const FAILED_AT: &str = "dlq_failed_at";
    /// The topic the record was consumed from.
    pub const ORIGINAL_TOPIC: &str = "dlq_original_topic";
    /// The partition it was consumed from.
    pub const ORIGINAL_PARTITION: &str = "dlq_original_partition";
    /// Its offset there.
    pub const ORIGINAL_OFFSET: &str = "dlq_original_offset";
    /// The consumer group that gave up on it.
    pub const GROUP: &str = "dlq_group";
    /// Set when the dead letter had to be trimmed to fit the record limit: what was dropped.
    pub const TRIMMED: &str = "dlq_trimmed";

    /// Every header a dead letter adds but [`TRIMMED`].
    pub const ALL: &[&str] = &[
        ERROR,
        REASON,
        ATTEMPTS,
        FAILED_AT,
        ORIGINAL_TOPIC,
        ORIGINAL_PARTITION,
        ORIGINAL_OFFSET,
        GROUP,
    ];
}

/// Formats a time as RFC 3339 UTC with milliseconds, the format of every time header. A time
/// past 9999-12-31T23:59:59.999Z (a delay computed from a huge value) is written as that time,
/// the last RFC 3339 can write, instead of failing.
pub fn format_time(t: SystemTime) -> String {
    let last = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(MAX_TIME_MS as u64);
    humantime::format_rfc3339_millis(t.min(last)).to_string()
}

/// Parses an RFC 3339 time, as the API and the CLI take them: `T`, `t` or a space between
/// date and time, any number of fractional digits, and `Z`, `z` or any `+hh:mm`/`-hh:mm` offset,
/// which is applied (`2026-12-07T10:00:16.000+05:30` is 04:30:16 UTC). A time without an offset
/// names no instant and is refused. Times before 1970 are taken as 1970-01-01, after 9999 as
/// 9999-12-31, the range [`format_time`] writes.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
    Some(from_millis(t.timestamp_millis()))
}

/// Parses a time header written by [`format_time`], or by another producer: any RFC 3339 time
/// ([`parse_rfc3339`]), and, as conveyor always read them, a date and time without an offset
/// as UTC (`datetime.utcnow().isoformat()` writes those); anything else is no time.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    if let Some(t) = parse_rfc3339(s) {
        return Some(t);
    }
    let s = s.trim();
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dt%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
    ]
    .iter()
    .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
    .map(|t| from_millis(t.and_utc().timestamp_millis()))
}

fn from_millis(ms: i64) -> SystemTime {
    let ms = ms.clamp(0, MAX_TIME_MS);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
}

/// 9999-12-31T23:59:59.999Z, the last time RFC 3339 can write.
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// A job's metadata, read from or written to [`Headers`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobMeta {
    /// The message id (UUIDv7 when conveyor produced it; any text otherwise).
    pub message_id: Option<String>,
    /// The job type.
    pub job_type: Option<String>,
    /// The attempt number, 1 when absent.
    pub attempt: u32,
    /// When it was produced.
    pub produced_at: Option<SystemTime>,
    /// The producer's name.
    pub producer: Option<String>,
    /// The content type; `None` means JSON.
    pub content_type: Option<String>,
}

impl JobMeta {
    /// Metadata for a new job of this type: a fresh UUIDv7 id, attempt 1, produced now.
    pub fn new(job_type: impl Into<String>) -> Self {
        JobMeta {
            message_id: Some(new_message_id()),
            job_type: Some(job_type.into()),
            attempt: 1,
            produced_at: Some(SystemTime::now()),
            producer: None,
            content_type: None,
        }
    }

    /// Reads metadata from headers. Missing or unparsable fields are `None` (attempt: 1).
    pub fn from_headers(h: &Headers) -> Self {
        JobMeta {
            message_id: h.get_str(MESSAGE_ID).map(str::to_owned),
            job_type: h.get_str(JOB_TYPE).map(str::to_owned),
            attempt: h
                .get_str(ATTEMPT)
                .and_then(|a| a.parse().ok())
                .filter(|a| *a >= 1)
                .unwrap_or(1),
            produced_at: h.get_str(PRODUCED_AT).and_then(parse_time),
            producer: h.get_str(PRODUCER).map(str::to_owned),
            content_type: h.get_str(CONTENT_TYPE).map(str::to_owned),
        }
    }

    /// Writes the metadata into headers, replacing the same names.
    pub fn write_to(&self, h: &mut Headers) {
        if let Some(id) = &self.message_id {
            h.insert(MESSAGE_ID, id.clone());
        }
        if let Some(t) = &self.job_type {
            h.insert(JOB_TYPE, t.clone());
        }
        h.insert(ATTEMPT, self.attempt.to_string());
        if let Some(at) = self.produced_at {
            h.insert(PRODUCED_AT, format_time(at));
        }
        if let Some(p) = &self.producer {
            h.insert(PRODUCER, p.clone());
        }
        if let Some(c) = &self.content_type {
            h.insert(CONTENT_TYPE, c.clone());
        }
    }

    /// True when the payload is JSON (no content type, or a JSON one).
    pub fn is_json(&self) -> bool {
        self.content_type
            .as_deref()
            .is_none_or(|c| c.starts_with(JSON) || c.ends_with("+json"))
    }
}

/// A new UUIDv7 message id as text.
pub fn new_message_id() -> String {
    // a context per thread: `Uuid::now_v7` shares one behind a lock, which producers on every
    // thread contended for (a futex call per id under load); ids stay time-ordered
    thread_local! {
        static CONTEXT: uuid::ContextV7 = const { uuid::ContextV7::new() };
    }
    CONTEXT.with(|c| Uuid::new_v7(uuid::Timestamp::now(c)).to_string())
}

/// A job's own timeout: its `timeout_ms` header, a positive whole number of milliseconds, at
/// most [`MAX_TIMEOUT_MS`] (a larger one, which only another producer can write, counts as that
/// bound). `None` when the header is absent, zero or not a number.
pub fn timeout(h: &Headers) -> Option<std::time::Duration> {
    h.get_str(TIMEOUT_MS)
        .and_then(|t| t.trim().parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(|t| std::time::Duration::from_millis(t.min(MAX_TIMEOUT_MS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_through_headers() {
        let mut meta = JobMeta::new("email.send");
        meta.producer = Some("api".into());
        meta.attempt = 3;
        let mut h = Headers::new();
        meta.write_to(&mut h);
        let back = JobMeta::from_headers(&h);
        assert_eq!(back.message_id, meta.message_id);
        assert_eq!(back.job_type.as_deref(), Some("email.send"));
        assert_eq!(back.attempt, 3);
        assert_eq!(back.producer.as_deref(), Some("api"));
        // millisecond precision survives
        let a = meta
            .produced_at
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let b = back
            .produced_at
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(a.as_millis(), b.as_millis());
        assert!(back.is_json());
    }

    #[test]
    fn broken_headers_fall_back_instead_of_failing() {
        let h: Headers = [(ATTEMPT, "zero"), (PRODUCED_AT, "yesterday")]
            .into_iter()
            .collect();
        let meta = JobMeta::from_headers(&h);
        assert_eq!(meta.attempt, 1);
        assert_eq!(meta.produced_at, None);
        assert_eq!(meta.message_id, None);
    }

    #[test]
    fn times_with_offsets_and_out_of_range_years_parse() {
        let t = parse_time("2026-12-01T10:00:00+01:00").unwrap();
        assert_eq!(format_time(t), "2026-12-01T09:00:00.000Z");
        assert_eq!(
            format_time(parse_time("0001-01-01T00:00:00Z").unwrap()),
            "1970-01-01T00:00:00.000Z"
        );
        assert!(parse_time("tomorrow").is_none());
    }

    /// Every RFC 3339 form means the instant it names: offsets after fractional seconds (what
    /// Python's and Java's formatters write) were once read as UTC.
    #[test]
    fn every_rfc3339_form_means_what_it_says() {
        let utc = "2026-12-07T04:30:16.000Z";
        for form in [
            "2026-12-07T10:00:16.000+05:30",
            "2026-12-07T10:00:16+05:30",
            "2026-12-07T10:00:16.000000+05:30",
            "2026-12-07t10:00:16.000+05:30",
            "2026-12-07 10:00:16.000+05:30",
            "2026-12-06T23:30:16.000-05:00",
            "2026-12-06T23:30:16-05:00",
            "2026-12-07T04:30:16Z",
            "2026-12-07T04:30:16.000z",
            "2026-12-07T04:30:16.000000000Z",
            "2026-12-07T04:30:16+00:00",
            "2026-12-07T04:30:16-00:00",
            " 2026-12-07T04:30:16Z ",
        ] {
            let t = parse_rfc3339(form).unwrap_or_else(|| panic!("`{form}` refused"));
            assert_eq!(format_time(t), utc, "`{form}`");
            assert_eq!(parse_time(form), Some(t), "`{form}` as a header");
        }
        assert_eq!(
            format_time(parse_time("2026-12-07T04:30:16.1239+00:00").unwrap()),
            "2026-12-07T04:30:16.123Z"
        );
        // no offset: no instant, refused where a client sends it; a header another producer
        // wrote that way is read as UTC, as conveyor always read it
        for no_offset in [
            "2026-12-07T04:30:16",
            "2026-12-07T04:30:16.000",
            "2026-12-07 04:30:16",
        ] {
            assert!(parse_rfc3339(no_offset).is_none(), "`{no_offset}` accepted");
            assert_eq!(
                parse_time(no_offset).map(format_time).as_deref(),
                Some(utc),
                "`{no_offset}` as a header"
            );
        }
        for refused in [
            "2026-12-07",
            "2026-12-07T10:00:16.000+0530",
            "2026-12-07T10:00:16 IST",
        ] {
            assert!(parse_time(refused).is_none(), "`{refused}` accepted");
        }
    }

    #[test]
    fn a_jobs_own_timeout_is_positive_and_at_most_a_day() {
        let of = |v: &str| {
            let mut h = Headers::new();
            h.insert(TIMEOUT_MS, v.to_owned());
            timeout(&h)
        };
        assert_eq!(of("5000"), Some(std::time::Duration::from_secs(5)));
        assert_eq!(of("0"), None);
        assert_eq!(of("-1"), None);
        assert_eq!(of("soon"), None);
        assert_eq!(
            of("18446744073709551615"),
            Some(std::time::Duration::from_millis(MAX_TIMEOUT_MS))
        );
        assert_eq!(timeout(&Headers::new()), None);
    }

    #[test]
    fn message_ids_are_uuid_v7() {
        let id = new_message_id();
        let u = Uuid::parse_str(&id).unwrap();
        assert_eq!(u.get_version_num(), 7);
    }
}
