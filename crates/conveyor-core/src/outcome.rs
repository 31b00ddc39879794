//! What a handler decided about a job.
//!
//! Handlers return an [`Outcome`] (or a `Result` the runtime turns into one). The runtime applies
//! the topic's [`RetryPolicy`](crate::RetryPolicy): a retry beyond the maximum attempts becomes a
//! dead-letter record, exactly like [`Outcome::Fail`].

use std::time::Duration;

/// The result of one attempt at a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job finished; its offset may be committed.
    Done,
    /// The attempt failed; try again after the policy's backoff.
    Retry {
        /// What went wrong, kept for the dead-letter record.
        error: String,
    },
    /// The attempt failed; try again after this delay (e.g. an HTTP `Retry-After`).
    RetryAfter {
        /// How long to wait.
        delay: Duration,
        /// What went wrong.
        error: String,
    },
    /// The job can never succeed: send it to the dead-letter topic now.
    Fail {
        /// Why.
        error: String,
    },
}

impl Outcome {
    /// A retryable failure.
    pub fn retry(error: impl std::fmt::Display) -> Self {
        Outcome::Retry {
            error: error.to_string(),
        }
    }

    /// A retryable failure with an explicit delay.
    pub fn retry_after(delay: Duration, error: impl std::fmt::Display) -> Self {
        Outcome::RetryAfter {
            delay,
            error: error.to_string(),
        }
    }

    /// A permanent failure.
    pub fn fail(error: impl std::fmt::Display) -> Self {
        Outcome::Fail {
            error: error.to_string(),
        }
    }

    /// The error text, if this is a failure.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Done => None,
            Outcome::Retry { error }
            | Outcome::RetryAfter { error, .. }
            | Outcome::Fail { error } => Some(error),
        }
    }
}
