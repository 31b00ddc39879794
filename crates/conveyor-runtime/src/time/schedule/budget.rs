//! What schedules cost the processes that keep and fire them, and the budget they must fit.
//!
//! Every process keeps every schedule in memory (the configuration's, and the API's read from
//! the control log), and the elected scheduler looks at each of them at every pass (4 a second)
//! and writes a record per tick. So schedules are bounded three ways ([`ScheduleLimits`]):
//!
//! | bound | default | what it bounds |
//! |---|---|---|
//! | `scheduler.max_schedules` | 1,000 | the work of every pass (one next-tick search per schedule) |
//! | `scheduler.max_schedule_bytes` | 16 MiB | the memory of every process: the schedules' JSON (payload, key, expression, names) |
//! | `scheduler.max_ticks_per_minute` | 6,000 | the scheduler's firing: the most ticks all schedules together can fire in one minute |
//!
//! A schedule's ticks per minute ([`Cost::ticks_per_minute`]) is its peak: the number of
//! seconds its expression names (`*/10 * * * * *`: 6; a five-field expression: 1), the ticks it
//! fires in any minute it fires at all. The records the ticks write are bounded too: at most
//! `max_ticks_per_minute` records a minute, of at most the bytes of their schedules.
//!
//! The configuration is checked at start; `PUT /v1/schedules/{name}` refuses a schedule that
//! would exceed a bound (`507 limit_reached` naming it); and the scheduler itself fires only
//! the schedules that fit, in order (the configuration's, then the API's by name), so two
//! processes taking a `PUT` each at the same moment cannot push it past them.

use super::Compiled;

/// How many schedules, of how many bytes and ticks, the processes keep and fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleLimits {
    /// Most schedules (`scheduler.max_schedules`). Default: 1,000.
    pub max_schedules: u64,
    /// Most bytes of all schedules' JSON together (`scheduler.max_schedule_bytes`). Default:
    /// 16 MiB.
    pub max_bytes: u64,
    /// Most ticks all schedules together may fire in one minute
    /// (`scheduler.max_ticks_per_minute`). Default: 6,000 (100 a second).
    pub max_ticks_per_minute: u64,
}

impl Default for ScheduleLimits {
    fn default() -> Self {
        ScheduleLimits {
            max_schedules: 1_000,
            max_bytes: 16 * 1024 * 1024,
            max_ticks_per_minute: 6_000,
        }
    }
}

/// What one schedule costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// The bytes of its JSON (as the control log stores it).
    pub bytes: u64,
    /// The most ticks it fires in one minute: how many seconds its expression names.
    pub ticks_per_minute: u64,
}

impl Compiled {
    /// What this schedule costs.
    pub fn cost(&self) -> Cost {
        Cost {
            bytes: serde_json::to_vec(&self.schedule).map_or(0, |v| v.len() as u64),
            ticks_per_minute: self.cron.pattern.seconds.values().len().max(1) as u64,
        }
    }
}

/// The cost of a set of schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// How many.
    pub schedules: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their ticks per minute.
    pub ticks_per_minute: u64,
}

impl Usage {
    /// This usage and one schedule more.
    pub fn with(self, cost: Cost) -> Usage {
        Usage {
            schedules: self.schedules.saturating_add(1),
            bytes: self.bytes.saturating_add(cost.bytes),
            ticks_per_minute: self.ticks_per_minute.saturating_add(cost.ticks_per_minute),
        }
    }
}

/// A bound a set of schedules exceeds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OverLimit {
    /// The configuration key of the bound: `scheduler.max_schedules`,
    /// `scheduler.max_schedule_bytes` or `scheduler.max_ticks_per_minute`.
    pub key: &'static str,
    /// What exceeds it, and what to do.
    pub message: String,
}

impl ScheduleLimits {
    /// Whether `usage` fits; otherwise the first bound it exceeds.
    pub fn check(&self, usage: Usage) -> Result<(), OverLimit> {
        let over = |key: &'static str, what: &str, used: u64, max: u64| {
            OverLimit {
            key,
            message: format!(
                "the schedules would take {used} {what}, beyond `{key}` ({max}): delete schedules you no longer need, or raise `{key}`"
            ),
        }
        };
        if usage.schedules > self.max_schedules {
            return Err(over(
                "scheduler.max_schedules",
                "schedules",
                usage.schedules,
                self.max_schedules,
            ));
        }
        if usage.bytes > self.max_bytes {
            return Err(over(
                "scheduler.max_schedule_bytes",
                "bytes",
                usage.bytes,
                self.max_bytes,
            ));
        }
        if usage.ticks_per_minute > self.max_ticks_per_minute {
            return Err(over(
                "scheduler.max_ticks_per_minute",
                "ticks a minute at their peak",
                usage.ticks_per_minute,
                self.max_ticks_per_minute,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::schedule::{Missed, Schedule};

    fn schedule(cron: &str, payload: serde_json::Value) -> Schedule {
        Schedule {
            name: "s".into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            topic: "t".into(),
            job_type: "tick".into(),
            payload,
            key: None,
            missed: Missed::Skip,
        }
    }

    fn cost(cron: &str, payload: serde_json::Value) -> Cost {
        schedule(cron, payload).compile().unwrap().cost()
    }

    #[test]
    fn a_schedules_peak_ticks_per_minute_are_the_seconds_it_names() {
        let j = serde_json::json!({});
        assert_eq!(cost("* * * * * *", j.clone()).ticks_per_minute, 60);
        assert_eq!(cost("*/10 * * * * *", j.clone()).ticks_per_minute, 6);
        assert_eq!(cost("0,30 * * * * *", j.clone()).ticks_per_minute, 2);
        assert_eq!(cost("* * * * *", j.clone()).ticks_per_minute, 1);
        assert_eq!(cost("@daily", j.clone()).ticks_per_minute, 1);
        // the peak, not the average: every second of 03:00-03:59 only
        assert_eq!(cost("* * 3 * * *", j).ticks_per_minute, 60);
        let big = cost("@hourly", serde_json::json!("x".repeat(10_000)));
        assert!(big.bytes > 10_000 && big.bytes < 10_200, "{big:?}");
    }

    #[test]
    fn the_first_bound_exceeded_is_named() {
        let limits = ScheduleLimits {
            max_schedules: 2,
            max_bytes: 1000,
            max_ticks_per_minute: 100,
        };
        let every_second = Cost {
            bytes: 100,
            ticks_per_minute: 60,
        };
        let one = Usage::default().with(every_second);
        assert!(limits.check(one).is_ok());
        let e = limits.check(one.with(every_second)).unwrap_err();
        assert_eq!(e.key, "scheduler.max_ticks_per_minute");
        assert!(
            e.message.contains("120") && e.message.contains("(100)"),
            "{e}"
        );
        let e = limits
            .check(one.with(Cost {
                bytes: 901,
                ticks_per_minute: 1,
            }))
            .unwrap_err();
        assert_eq!(e.key, "scheduler.max_schedule_bytes");
        let small = Cost {
            bytes: 1,
            ticks_per_minute: 1,
        };
        let e = limits
            .check(Usage::default().with(small).with(small).with(small))
            .unwrap_err();
        assert_eq!(e.key, "scheduler.max_schedules");
    }
}
