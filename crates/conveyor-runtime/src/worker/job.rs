//! [`Job`]: what a handler receives, and [`JobError`]: what it returns when an attempt fails.
//!
//! A handler's effects on the log go through its job: [`Job::emit`] (follow-up jobs, events) and
//! the reply to a request ([`Job::reply`], or returning `Ok(value)`). They are kept with the
//! attempt and published only when it finishes as done (the `outputs` module).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use conveyor_core::{headers, ConsumedRecord, JobMeta, Outcome, Record};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::NewJob;
use crate::effects::outputs::Outputs;

/// The UUIDv5 namespace of emitted jobs' ids ([`Job::emit`]).
const EMIT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a1f3c2e_9b7d_4e21_8f10_c0de00000001);

/// One delivery of a job to a handler.
#[derive(Debug, Clone)]
pub struct Job {
    /// The record as stored: topic, partition, offset, key, value, headers.
    pub record: Arc<ConsumedRecord>,
    /// Metadata read from the headers.
    pub meta: JobMeta,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// What the attempt emits and replies, shared with the worker.
    pub(crate) outputs: Arc<Mutex<Outputs>>,
    /// The trace context this attempt hands on ([`Job::traceparent`]).
    pub(crate) trace: Option<String>,
}

impl Job {
    pub(crate) fn new(record: Arc<ConsumedRecord>, attempt: u32) -> Self {
        let meta = JobMeta::from_headers(&record.headers);
        Job {
            record,
            meta,
            attempt,
            outputs: Arc::default(),
            trace: None,
        }
    }

    /// The W3C `traceparent` this attempt hands on: its own span's when tracing is on
    /// ([`crate::observation::trace`]), else the record's as it came. Jobs the handler emits carry it, a
    /// webhook call sends it; a handler calling other services can send it too.
    pub fn traceparent(&self) -> Option<&str> {
        self.trace
            .as_deref()
            .or_else(|| self.record.headers.get_str(headers::TRACEPARENT))
    }

    /// Enqueues `job` on `topic` as part of this attempt's outcome: published only if the attempt
    /// finishes as done (a failed attempt's emits are discarded, its retry emits again). In a
    /// [transactional](crate::WorkerBuilder::transactional) worker the emitted records and the
    /// job's offset commit atomically (exactly once for `read_committed` readers); otherwise
    /// they are published before the offset is committed (at least once).
    ///
    /// An emitted job without an id of its own ([`NewJob::with_id`]) gets one derived from this
    /// job's message id and its place among the attempt's emits, so the copy a rerun emits
    /// again (at least once) has the same id and an inbox downstream runs it once.
    pub fn emit(&self, topic: impl Into<String>, job: NewJob) {
        let job = match (&job.id, self.id()) {
            (None, Some(id)) => {
                let n = self.outputs.lock().expect("outputs lock").records.len();
                let name = format!("{id}/emit/{n}");
                job.with_id(uuid::Uuid::new_v5(&EMIT_NAMESPACE, name.as_bytes()).to_string())
            }
            _ => job,
        };
        let job = match (job.headers.get(headers::TRACEPARENT), self.traceparent()) {
            (None, Some(tp)) => {
                let tp = tp.to_owned();
                job.with_header(headers::TRACEPARENT, tp)
            }
            _ => job,
        };
        let (_, record) = crate::client::job_record(job, None);
        self.emit_record(topic, record);
    }

    /// Like [`Job::emit`] for any record (an event in a format of its own).
    pub fn emit_record(&self, topic: impl Into<String>, record: Record) {
        self.outputs
            .lock()
            .expect("outputs lock")
            .records
            .push((topic.into(), record));
    }

    /// Sets the reply to this request (a job enqueued with `Client::request`): the value's JSON,
    /// published to the requester with the attempt's other outputs. A handler returning
    /// `Ok(value)` replies with `value` unless it called this. Ignored for jobs that are not
    /// requests.
    pub fn reply<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), JobError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| JobError::Fail(format!("the reply does not serialize to JSON: {e}")))?;
        self.outputs.lock().expect("outputs lock").reply = Some(Bytes::from(bytes));
        Ok(())
    }

    /// This attempt sends no reply, whatever the handler returns: for a job acknowledged
    /// without running (an inbox's duplicate), whose reply went out with its first run, so a
    /// second answer (`null`) would mislead the caller.
    pub fn skip_reply(&self) {
        self.outputs.lock().expect("outputs lock").no_reply = true;
    }

    /// Where the reply goes: the requester's reply topic, when this job is a request.
    pub fn reply_to(&self) -> Option<&str> {
        self.record.headers.get_str(headers::REPLY_TO)
    }

    /// The job type, or `""` when the record has none.
    pub fn job_type(&self) -> &str {
        self.meta.job_type.as_deref().unwrap_or("")
    }

    /// The message id, when the producer set one.
    pub fn id(&self) -> Option<&str> {
        self.meta.message_id.as_deref()
    }

    /// The job's own timeout (`timeout_ms`, at most one day): this attempt is cancelled after
    /// it, whatever the worker's timeouts; `None` when the job has none (the worker's per-type
    /// timeout or `handler_timeout` applies).
    pub fn timeout(&self) -> Option<Duration> {
        headers::timeout(&self.record.headers)
    }

    /// The raw payload.
    pub fn payload(&self) -> &Bytes {
        &self.record.value
    }

    /// The payload decoded from JSON. A payload that does not decode is a permanent failure: no
    /// retry can fix it.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_slice(&self.record.value).map_err(|e| {
            let name = std::any::type_name::<T>();
            let short = name.rsplit("::").next().unwrap_or(name);
            JobError::Fail(format!("payload is not a valid `{short}`: {e}"))
        })
    }
}

/// Why an attempt failed. Any `std::error::Error` converts into [`JobError::Retry`], so `?` retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Try again after the retry policy's backoff.
    Retry(String),
    /// Try again after this delay.
    RetryAfter(Duration, String),
    /// Never try again: dead-letter now.
    Fail(String),
}

impl JobError {
    /// A retryable error.
    pub fn retry(e: impl std::fmt::Display) -> Self {
        JobError::Retry(e.to_string())
    }

    /// A permanent error.
    pub fn fail(e: impl std::fmt::Display) -> Self {
        JobError::Fail(e.to_string())
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(e: E) -> Self {
        JobError::Retry(e.to_string())
    }
}

impl From<JobError> for Outcome {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Retry(error) => Outcome::Retry { error },
            JobError::RetryAfter(delay, error) => Outcome::RetryAfter { delay, error },
            JobError::Fail(error) => Outcome::Fail { error },
        }
    }
}

/// Turns a handler's return value into an [`Outcome`] and, for `Ok(value)`, a reply.
pub trait IntoOutcome {
    /// The outcome, and the reply the value makes (JSON), if any.
    fn into_parts(self) -> (Outcome, Option<Bytes>);

    /// The outcome alone.
    fn into_outcome(self) -> Outcome
    where
        Self: Sized,
    {
        self.into_parts().0
    }
}

impl IntoOutcome for Outcome {
    fn into_parts(self) -> (Outcome, Option<Bytes>) {
        (self, None)
    }
}

/// `Ok(value)`: done, and `value` is the reply when the job is a request (`Ok(())` replies
/// `null`).
impl<T: Serialize> IntoOutcome for Result<T, JobError> {
    fn into_parts(self) -> (Outcome, Option<Bytes>) {
        match self.map(|v| serde_json::to_vec(&v)) {
            Ok(Ok(bytes)) => (Outcome::Done, Some(Bytes::from(bytes))),
            Ok(Err(e)) => (
                Outcome::fail(format!(
                    "the handler's reply does not serialize to JSON: {e}"
                )),
                None,
            ),
            Err(e) => (e.into(), None),
        }
    }
}

impl IntoOutcome for () {
    fn into_parts(self) -> (Outcome, Option<Bytes>) {
        (Outcome::Done, None)
    }
}

/// The outcome of a handler's return value, its reply kept with the job's outputs (unless the
/// handler set one with [`Job::reply`]).
pub(crate) fn settle(outputs: &Mutex<Outputs>, value: impl IntoOutcome) -> Outcome {
    let (outcome, reply) = value.into_parts();
    if let Some(reply) = reply {
        outputs
            .lock()
            .expect("outputs lock")
            .reply
            .get_or_insert(reply);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_core::Headers;

    fn job(id: &str, attempt: u32) -> Job {
        let mut h = Headers::new();
        h.insert(headers::MESSAGE_ID, id.to_owned());
        Job::new(
            Arc::new(ConsumedRecord {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                timestamp: 0,
                key: None,
                value: Bytes::new(),
                headers: h,
            }),
            attempt,
        )
    }

    fn emitted_ids(j: &Job) -> Vec<String> {
        j.outputs
            .lock()
            .unwrap()
            .records
            .iter()
            .map(|(_, r)| r.headers.get_str(headers::MESSAGE_ID).unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_rerun_emits_the_same_ids_and_an_explicit_id_is_kept() {
        let (first, rerun, other) = (job("m1", 1), job("m1", 2), job("m2", 1));
        for j in [&first, &rerun, &other] {
            j.emit("out", NewJob::raw("a", "x", None));
            j.emit("out", NewJob::raw("b", "y", None));
        }
        first.emit("out", NewJob::raw("c", "z", None).with_id("mine"));
        let (a, b, c) = (
            emitted_ids(&first),
            emitted_ids(&rerun),
            emitted_ids(&other),
        );
        assert_eq!(a[..2], b[..], "a rerun of the same job emits the same ids");
        assert_ne!(a[0], a[1], "each emit has its own id");
        assert_ne!(a[0], c[0], "another job's emits have other ids");
        assert_eq!(a[2], "mine");
    }
}
