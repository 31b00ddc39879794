//! [`Job`]: what a handler receives, and [`JobError`]: what it returns when an attempt fails.

use std::time::Duration;

use bytes::Bytes;
use conveyor_core::{ConsumedRecord, JobMeta, Outcome};
use serde::de::DeserializeOwned;

/// One delivery of a job to a handler.
#[derive(Debug, Clone)]
pub struct Job {
    /// The record as stored: topic, partition, offset, key, value, headers.
    pub record: ConsumedRecord,
    /// Metadata read from the headers.
    pub meta: JobMeta,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

impl Job {
    pub(crate) fn new(record: ConsumedRecord, attempt: u32) -> Self {
        let meta = JobMeta::from_headers(&record.headers);
        Job {
            record,
            meta,
            attempt,
        }
    }

    /// The job type, or `""` when the record has none.
    pub fn job_type(&self) -> &str {
        self.meta.job_type.as_deref().unwrap_or("")
    }

    /// The message id, when the producer set one.
    pub fn id(&self) -> Option<&str> {
        self.meta.message_id.as_deref()
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

/// Turns a handler's return value into an [`Outcome`].
pub trait IntoOutcome {
    /// The outcome.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl IntoOutcome for Result<(), JobError> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Done,
            Err(e) => e.into(),
        }
    }
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Done
    }
}
