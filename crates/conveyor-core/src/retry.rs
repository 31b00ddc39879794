//! Retry policy: exponential backoff with full jitter, capped, and a maximum number of attempts.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How often and how long to wait before trying a failed job again.
///
/// The delay before attempt `n + 1` is drawn uniformly from `[d/2, d]` where
/// `d = min(max_delay, initial_delay * multiplier^(n-1))` ("equal jitter": never zero, never
/// synchronised across jobs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. Default: 5. `1` means never retry.
    pub max_attempts: u32,
    /// Delay before the second attempt, in milliseconds. Default: 1000.
    pub initial_delay_ms: u64,
    /// Growth factor per attempt. Default: 2.0.
    pub multiplier: f64,
    /// Upper bound of any delay, in milliseconds. Default: 300000 (5 minutes).
    pub max_delay_ms: u64,
    /// Upper bound of a delay the job asked for itself (`RetryAfter`, a webhook's
    /// `Retry-After`), in milliseconds; it may exceed `max_delay_ms`. Default: 3600000 (1 hour).
    pub max_retry_after_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay_ms: 1000,
            multiplier: 2.0,
            max_delay_ms: 300_000,
            max_retry_after_ms: 3_600_000,
        }
    }
}

impl RetryPolicy {
    /// A policy that retries quickly: for tests and examples.
    pub fn fast(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            initial_delay_ms: 10,
            multiplier: 2.0,
            max_delay_ms: 100,
            max_retry_after_ms: 3_600_000,
        }
    }

    /// Checks the values make sense; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err("multiplier must be a finite number >= 1.0".into());
        }
        if self.max_delay_ms < self.initial_delay_ms {
            return Err("max_delay_ms must be >= initial_delay_ms".into());
        }
        Ok(())
    }

    /// True when a job that just failed its `attempt`-th attempt may run again.
    pub fn should_retry(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The capped delay before the attempt after `attempt`, without jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(63) as i32;
        let ms = (self.initial_delay_ms as f64) * self.multiplier.powi(exp);
        Duration::from_millis(ms.min(self.max_delay_ms as f64) as u64)
    }

    /// The jittered delay before the attempt after `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.base_delay(attempt).as_millis() as u64;
        let half = d / 2;
        Duration::from_millis(half + rand::rng().random_range(0..=d - half))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_delay_ms: 100,
            multiplier: 2.0,
            max_delay_ms: 1000,
            max_retry_after_ms: 3_600_000,
        };
        assert_eq!(p.base_delay(1), Duration::from_millis(100));
        assert_eq!(p.base_delay(2), Duration::from_millis(200));
        assert_eq!(p.base_delay(4), Duration::from_millis(800));
        assert_eq!(p.base_delay(5), Duration::from_millis(1000));
        assert_eq!(p.base_delay(60), Duration::from_millis(1000));
        for attempt in 1..10 {
            let d = p.delay(attempt);
            let base = p.base_delay(attempt);
            assert!(d <= base && d >= base / 2, "{d:?} vs {base:?}");
        }
    }

    #[test]
    fn attempts_are_counted_from_one() {
        let p = RetryPolicy::fast(3);
        assert!(p.should_retry(1));
        assert!(p.should_retry(2));
        assert!(!p.should_retry(3));
        assert!(RetryPolicy {
            max_attempts: 0,
            ..p
        }
        .validate()
        .is_err());
    }
}
