//! The bounds of every configuration value that feeds clock or size arithmetic, checked first
//! at load (before anything adds to them), so that no thread can panic on an overflow later: a
//! delay of `i64::MAX` milliseconds is past the year 9999, the last time a header can carry; an
//! `Instant` plus `u64::MAX` seconds panics; `max_body_bytes + 8 KiB` overflows at `usize::MAX`.
//!
//! Each bound is far beyond any useful value; an error names the key, the value, the bound and
//! why. The schedules of the configuration must also fit `[scheduler]`'s limits
//! ([`conveyor_runtime::time::schedule::budget`]).

use super::{Config, ConfigError, RetryPolicy};

/// 366 days in milliseconds: the longest delay a job may ask for, and the bound of every delay.
pub(super) const MAX_DELAY_MS: u128 = 366 * 24 * 3600 * 1000;
/// One day in milliseconds.
const DAY_MS: u128 = 24 * 3600 * 1000;
/// One hour in milliseconds.
const HOUR_MS: u128 = 3600 * 1000;
/// 256 MiB: the bound of body and record sizes.
const MAX_BYTES: u128 = 256 * 1024 * 1024;

/// One value and its accepted range.
struct Range {
    key: String,
    value: u128,
    min: u128,
    max: u128,
    /// Why the bound, or what the value is.
    why: &'static str,
}

fn range(
    key: impl Into<String>,
    value: impl TryInto<u128>,
    min: u128,
    max: u128,
    why: &'static str,
) -> Range {
    Range {
        key: key.into(),
        // a negative value cannot reach here (the fields are unsigned): count it as 0
        value: value.try_into().unwrap_or(0),
        min,
        max,
        why,
    }
}

fn retry(prefix: &str, p: &RetryPolicy) -> [Range; 3] {
    let why = "a delay past 366 days is never useful, and a huge one reaches past the year 9999, the last time a header can carry";
    [
        range(
            format!("{prefix}.initial_delay_ms"),
            p.initial_delay_ms,
            0,
            MAX_DELAY_MS,
            why,
        ),
        range(
            format!("{prefix}.max_delay_ms"),
            p.max_delay_ms,
            0,
            MAX_DELAY_MS,
            why,
        ),
        range(
            format!("{prefix}.max_retry_after_ms"),
            p.max_retry_after_ms,
            0,
            MAX_DELAY_MS,
            why,
        ),
    ]
}

/// Every bounded value of `c`. Lower bounds with their own messages stay in
/// [`Config::validate`]; those given here are the new keys' and the ones arithmetic needs.
fn ranges(c: &Config) -> Vec<Range> {
    let api = &c.api;
    let mut v = vec![
        range("api.max_body_bytes", api.max_body_bytes, 0, MAX_BYTES, "a request body is held in memory whole"),
        range("api.max_batch", api.max_batch, 0, 10_000, "a batch and its answer are held in memory whole"),
        range("api.idempotency_max_keys", api.idempotency_max_keys, 0, 10_000_000, "answers kept in memory"),
        range(
            "api.idempotency_max_bytes",
            api.idempotency_max_bytes,
            1024 * 1024,
            16 * 1024 * 1024 * 1024,
            "bytes of answers kept in memory (at least 1 MiB, one batch's answer)",
        ),
        range("api.max_waiting_requests", api.max_waiting_requests, 1, 1_000_000, "requests waiting for their reply at once"),
        range("api.header_read_timeout_ms", api.header_read_timeout_ms, 100, 600_000, "a client that sends no headers holds a connection this long"),
        range("api.max_connections", api.max_connections, 1, 1_000_000, "each connection takes a file descriptor"),
        range("api.max_requests_in_flight", api.max_requests_in_flight, 1, 1_000_000, "requests handled at once"),
        range("embedded.max_record_bytes", c.embedded.max_record_bytes, 0, MAX_BYTES, "a record is held in memory whole"),
        range(
            "embedded.retention_interval_secs",
            c.embedded.retention_interval_secs,
            0,
            24 * 3600,
            "an interval past a day is never useful and a huge one overflows the clock",
        ),
        range("delay.retry_in_place_max_ms", c.delay.retry_in_place_max_ms, 0, MAX_DELAY_MS, "a delay"),
        range("scheduler.grace_ms", c.scheduler.grace_ms, 0, DAY_MS, "a gap the scheduler catches up tick by tick"),
        range("scheduler.max_schedules", c.scheduler.max_schedules, 1, 100_000, "every schedule is looked at 4 times a second"),
        range(
            "scheduler.max_schedule_bytes",
            c.scheduler.max_schedule_bytes,
            1024 * 1024,
            1024 * 1024 * 1024,
            "every process keeps every schedule in memory (at least 1 MiB: one schedule of the largest payload)",
        ),
        range(
            "scheduler.max_ticks_per_minute",
            c.scheduler.max_ticks_per_minute,
            60,
            600_000,
            "ticks fired a minute (at least 60: one schedule firing every second)",
        ),
    ];
    v.extend(retry("retry", &c.retry));
    if c.backend == "kafka" {
        let k = &c.kafka;
        let why = "a timeout past an hour is never useful";
        v.extend([
            range(
                "kafka.session_timeout_ms",
                k.session_timeout_ms,
                0,
                HOUR_MS,
                why,
            ),
            range(
                "kafka.request_timeout_ms",
                k.request_timeout_ms,
                0,
                HOUR_MS,
                why,
            ),
            range(
                "kafka.delivery_timeout_ms",
                k.delivery_timeout_ms,
                0,
                HOUR_MS,
                why,
            ),
        ]);
    }
    for (i, r) in c.routes.iter().enumerate() {
        v.extend([
            range(
                format!("routes[{i}].timeout_ms"),
                r.timeout_ms,
                0,
                DAY_MS,
                "as a job's own `timeout_ms`, at most a day",
            ),
            range(
                format!("routes[{i}].concurrency"),
                r.concurrency,
                0,
                10_000,
                "deliveries running at once",
            ),
            range(
                format!("routes[{i}].max_buffered"),
                r.max_buffered,
                0,
                1_000_000,
                "records held in memory",
            ),
        ]);
        if let Some(p) = &r.retry {
            v.extend(retry(&format!("routes[{i}].retry"), p));
        }
    }
    v
}

/// Checks every bound (see the module docs).
pub(super) fn check(c: &Config) -> Result<(), ConfigError> {
    for r in ranges(c) {
        if !(r.min..=r.max).contains(&r.value) {
            return Err(ConfigError::Invalid {
                message: format!(
                    "{} is out of bounds: use {} to {} ({})",
                    r.value, r.min, r.max, r.why
                ),
                key: r.key,
            });
        }
    }
    // the tiers feed the same arithmetic as delays (a malformed one is reported later)
    if let Ok(tiers) = conveyor_runtime::time::tiers::DelayTiers::parse(&c.delay.tiers) {
        if let Some(t) = tiers.all().iter().find(|t| t.as_millis() > MAX_DELAY_MS) {
            return Err(ConfigError::Invalid {
                key: "delay.tiers".into(),
                message: format!(
                    "the tier of {} s is longer than 366 days, the longest delay: use shorter tiers such as [\"5s\", \"1m\", \"10m\", \"1h\"]",
                    t.as_secs()
                ),
            });
        }
    }
    schedules(c)
}

/// The configuration's schedules fit `[scheduler]`'s limits (those that do not compile are
/// reported by [`Config::validate`]).
fn schedules(c: &Config) -> Result<(), ConfigError> {
    let limits = c.scheduler.limits();
    let mut usage = conveyor_runtime::time::schedule::Usage::default();
    for (i, s) in c.schedules.iter().enumerate() {
        let Ok(compiled) = s.compile() else { continue };
        usage = usage.with(compiled.cost());
        if let Err(e) = limits.check(usage) {
            return Err(ConfigError::Invalid {
                key: e.key.into(),
                message: format!("with schedules[{i}] ({}): {e}", s.name),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(Some(&path), &env).map_err(|e| e.to_string())
    }

    /// Every value that feeds clock or size arithmetic, at the largest TOML integer and at
    /// `u64::MAX` (which only an environment variable can give): each is refused at load,
    /// naming its key and its bound. Before these bounds, `embedded.retention_interval_secs`
    /// and `retry.max_delay_ms` were accepted and panicked a thread of `conveyor dev` (the
    /// log's writer; a delivery that moved a retry to a delay tier).
    #[test]
    fn extreme_values_are_refused_naming_the_key_and_the_bound() {
        let route = "[[routes]]\ntopic = \"t\"\nurl = \"http://h/x\"\n";
        // (section, key, the error's key)
        let keys: &[(&str, &str, &str)] = &[
            ("[api]", "max_body_bytes", "api.max_body_bytes"),
            ("[api]", "max_batch", "api.max_batch"),
            ("[api]", "max_reply_timeout_ms", "api.max_reply_timeout_ms"),
            (
                "[api]",
                "idempotency_window_ms",
                "api.idempotency_window_ms",
            ),
            ("[api]", "idempotency_max_keys", "api.idempotency_max_keys"),
            (
                "[api]",
                "idempotency_max_bytes",
                "api.idempotency_max_bytes",
            ),
            ("[api]", "max_waiting_requests", "api.max_waiting_requests"),
            (
                "[api]",
                "header_read_timeout_ms",
                "api.header_read_timeout_ms",
            ),
            ("[api]", "max_connections", "api.max_connections"),
            (
                "[api]",
                "max_requests_in_flight",
                "api.max_requests_in_flight",
            ),
            (
                "[embedded]",
                "max_record_bytes",
                "embedded.max_record_bytes",
            ),
            (
                "[embedded]",
                "retention_interval_secs",
                "embedded.retention_interval_secs",
            ),
            ("[retry]", "initial_delay_ms", "retry.initial_delay_ms"),
            ("[retry]", "max_delay_ms", "retry.max_delay_ms"),
            ("[retry]", "max_retry_after_ms", "retry.max_retry_after_ms"),
            (
                "[delay]",
                "retry_in_place_max_ms",
                "delay.retry_in_place_max_ms",
            ),
            ("[scheduler]", "grace_ms", "scheduler.grace_ms"),
            ("[scheduler]", "max_schedules", "scheduler.max_schedules"),
            (
                "[scheduler]",
                "max_schedule_bytes",
                "scheduler.max_schedule_bytes",
            ),
            (
                "[scheduler]",
                "max_ticks_per_minute",
                "scheduler.max_ticks_per_minute",
            ),
            (
                "backend = \"kafka\"\n[kafka]",
                "session_timeout_ms",
                "kafka.session_timeout_ms",
            ),
            (
                "backend = \"kafka\"\n[kafka]",
                "request_timeout_ms",
                "kafka.request_timeout_ms",
            ),
            (
                "backend = \"kafka\"\n[kafka]",
                "delivery_timeout_ms",
                "kafka.delivery_timeout_ms",
            ),
            (route, "timeout_ms", "routes[0].timeout_ms"),
            (route, "concurrency", "routes[0].concurrency"),
            (route, "max_buffered", "routes[0].max_buffered"),
            (
                "[[routes]]\ntopic = \"t\"\nurl = \"http://h/x\"\n[routes.retry]",
                "max_delay_ms",
                "routes[0].retry.max_delay_ms",
            ),
        ];
        let mut wrong = Vec::new();
        for (section, key, named) in keys {
            let mut tries = vec![(
                "toml",
                load(&format!("{section}\n{key} = {}\n", i64::MAX), &[]),
            )];
            // the same through the environment, at u64::MAX (a route's keys cannot be set so)
            if !named.starts_with("routes") {
                let var = format!("CONVEYOR_{}", named.replace('.', "__").to_ascii_uppercase());
                let base = section.strip_suffix("[kafka]").unwrap_or("");
                tries.push(("env", load(base, &[(var.as_str(), "18446744073709551615")])));
            }
            for (how, r) in tries {
                match r {
                    Ok(_) => wrong.push(format!("{named} at its largest ({how}): accepted")),
                    Err(e) if !e.contains(&format!("`{named}`")) => {
                        wrong.push(format!("{named} ({how}): the error does not name it: {e}"))
                    }
                    Err(e)
                        if how == "toml"
                            && !(e.contains("out of bounds") || e.contains("must be")) =>
                    {
                        wrong.push(format!("{named} ({how}): the error gives no bound: {e}"))
                    }
                    Err(_) => {}
                }
            }
        }
        eprintln!("{} keys at i64::MAX and u64::MAX", keys.len());
        assert!(wrong.is_empty(), "{wrong:#?}");
        let e = load("[delay]\ntiers = [\"5s\", \"400d\"]\n", &[]).unwrap_err();
        assert!(e.contains("`delay.tiers`") && e.contains("366 days"), "{e}");
    }

    /// Each bound itself is accepted: they are the largest values, not one past them.
    #[test]
    fn the_bounds_themselves_are_accepted() {
        let c = load(
            &format!(
                "[api]\nmax_body_bytes = {body}\nmax_batch = 10000\nidempotency_max_keys = 10000000\nidempotency_max_bytes = 17179869184\nmax_waiting_requests = 1000000\n[embedded]\nmax_record_bytes = {b}\nretention_interval_secs = 86400\n[retry]\ninitial_delay_ms = {d}\nmax_delay_ms = {d}\nmax_retry_after_ms = {d}\n[delay]\nretry_in_place_max_ms = {d}\ntiers = [\"366d\"]\n[scheduler]\ngrace_ms = 86400000\nmax_schedules = 100000\nmax_schedule_bytes = 1073741824\nmax_ticks_per_minute = 600000\n",
                b = MAX_BYTES,
                // a dead letter's 8 KiB below the record limit
                body = MAX_BYTES - 8192,
                d = MAX_DELAY_MS
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.retry.max_delay_ms, MAX_DELAY_MS as u64);
    }

    #[test]
    fn configured_schedules_must_fit_the_limits() {
        let every_second = |name: &str| {
            format!("[[schedules]]\nname = \"{name}\"\ncron = \"* * * * * *\"\ntopic = \"t\"\ntype = \"tick\"\n")
        };
        let two = format!("{}{}", every_second("a"), every_second("b"));
        let c = load(
            &format!("[scheduler]\nmax_ticks_per_minute = 120\n{two}"),
            &[],
        )
        .unwrap();
        assert_eq!(c.schedules.len(), 2);
        let e = load(
            &format!("[scheduler]\nmax_ticks_per_minute = 119\n{two}"),
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains("`scheduler.max_ticks_per_minute`")
                && e.contains("schedules[1] (b)")
                && e.contains("120"),
            "{e}"
        );
        let e = load(&format!("[scheduler]\nmax_schedules = 1\n{two}"), &[]).unwrap_err();
        assert!(e.contains("`scheduler.max_schedules`"), "{e}");
    }
}
