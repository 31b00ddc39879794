//! Cron schedules: what a schedule is, which ticks it has, and what happens to ticks missed while
//! no scheduler ran. Pure functions of the time they are given, so tests use any clock; the
//! elected loop that fires the ticks is [`crate::time::scheduler`].
//!
//! A [`Schedule`] names a cron expression (five fields, or six with seconds first; `@daily` and
//! the other nicknames), an IANA time zone (`UTC` by default) and the job each tick enqueues:
//! topic, type, JSON payload and optional key. [`Schedule::compile`] validates it, naming the
//! field at fault, into a [`Compiled`] schedule that computes ticks as Unix milliseconds.
//!
//! Every tick of a schedule becomes the same record whoever fires it ([`Compiled::record`]): the
//! message id is derived from the name and the tick ([`tick_id`], a UUIDv7 whose time is the
//! tick), `dedup_key` is `schedule/<name>/<tick ms>`, and the partition is fixed (the key's
//! partition, else the name's). So two copies of a tick, written by a crash between a publish and
//! its commit, land in one partition and the worker runs only the first.
//!
//! **Time zones and daylight saving** follow croner's rules (OCPS): a wall-clock time that does
//! not exist (the hour skipped in spring) fires at the first instant after the gap; a time that
//! happens twice (the hour repeated in autumn) fires once, at its first occurrence, while
//! patterns with a wildcard or step in the hour field (`*/15 * * * *`) fire in both halves.
//!
//! **Missed ticks** ([`Compiled::due`]): ticks are fired from a cursor (everything up to it was
//! fired or given up) to now. A gap of at most `grace` between cursor and now (a handover between
//! processes, a slow publish) is caught up tick by tick; a longer gap is downtime, and its ticks
//! follow the schedule's [`Missed`] policy: `skip` fires none of them, `once` fires the latest.
//!
//! ```
//! use conveyor_runtime::time::schedule::{Missed, Schedule};
//!
//! let s = Schedule {
//!     name: "every-10s".into(),
//!     cron: "*/10 * * * * *".into(),
//!     timezone: "UTC".into(),
//!     topic: "jobs".into(),
//!     job_type: "tick".into(),
//!     payload: serde_json::json!({}),
//!     key: None,
//!     missed: Missed::Once,
//! }
//! .compile()
//! .unwrap();
//! let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
//! assert_eq!(s.next_after(t0), Some(t0 + 10_000));
//! // a 25 s handover (within a 60 s grace) fires the two ticks it passed over
//! assert_eq!(s.due(t0, t0 + 25_000, 60_000).fire, vec![t0 + 10_000, t0 + 20_000]);
//! // 10 minutes down: `once` fires only the latest of the 60 missed ticks
//! let d = s.due(t0, t0 + 600_000, 60_000);
//! assert_eq!((d.fire, d.missed), (vec![t0 + 600_000], 59));
//! ```

use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use conveyor_core::headers::{self, JobMeta};
use conveyor_core::{Headers, Record};
use serde::{Deserialize, Serialize};

pub mod budget;

pub use budget::{Cost, OverLimit, ScheduleLimits, Usage};

/// The longest schedule name.
pub const NAME_MAX: usize = 128;
/// The longest cron expression.
pub const CRON_MAX: usize = 255;
/// The longest time zone name.
pub const TIMEZONE_MAX: usize = 64;
/// At most this many ticks are fired for one gap (a gap is at most `grace` long, so this only
/// binds for a long grace and a schedule firing every second).
pub const MAX_CATCH_UP: usize = 3600;
/// Missed ticks are counted up to this many per gap (counting a long downtime of a schedule
/// firing every second tick by tick would take long).
pub const MAX_COUNTED: usize = 10_000;

/// The producer name on every job a schedule fires.
pub const PRODUCER: &str = "conveyor-scheduler";

/// What happens to the ticks of a downtime (a gap longer than the scheduler's grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// None of them fire; the schedule goes on with its next tick. The default: a job never runs
    /// at a time its schedule does not name.
    #[default]
    Skip,
    /// The latest of them fires once, as soon as a scheduler runs again.
    Once,
}

impl Missed {
    /// `skip` or `once`.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::Once => "once",
        }
    }
}

impl FromStr for Missed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Missed::Skip),
            "once" => Ok(Missed::Once),
            other => Err(format!("`{other}`: use `skip` or `once`")),
        }
    }
}

/// A cron schedule and the job each of its ticks enqueues (`[[schedules]]` in the configuration,
/// `PUT /v1/schedules/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The name: 1 to 128 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit. Part of
    /// every tick's id.
    pub name: String,
    /// The cron expression: `min hour day-of-month month day-of-week`, or with seconds first
    /// (`*/10 * * * * *`), or a nickname (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`).
    pub cron: String,
    /// The IANA time zone the expression is read in. Default: `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// The topic each tick's job goes to.
    pub topic: String,
    /// The job type.
    #[serde(rename = "type")]
    pub job_type: String,
    /// The job's JSON payload. Default: `{}`.
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
    /// The job's key. Default: none.
    #[serde(default)]
    pub key: Option<String>,
    /// What happens to ticks missed during downtime. Default: `skip`.
    #[serde(default)]
    pub missed: Missed,
}

fn utc() -> String {
    "UTC".into()
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A schedule that does not validate: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct InvalidSchedule {
    /// The field at fault: `name`, `cron`, `timezone`, `topic`, `type` or `key`.
    pub field: &'static str,
    /// What is wrong and what to write instead.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidSchedule {
    InvalidSchedule {
        field,
        message: message.into(),
    }
}

/// Whether `s` can travel in an HTTP header (webhooks send the type and key as headers).
fn header_safe(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\t')
}

/// Checks a schedule name: 1 to [`NAME_MAX`] of `A-Z a-z 0-9 . _ -`, starting with a letter
/// or digit.
pub fn validate_name(name: &str) -> Result<(), InvalidSchedule> {
    let ok = (1..=NAME_MAX).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(invalid(
            "name",
            format!(
                "`{name}` must be 1 to {NAME_MAX} characters of A-Z, a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit"
            ),
        )),
    }
}

/// Parses a cron expression: five fields, or six with seconds first, or a nickname.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, InvalidSchedule> {
    if expr.trim().is_empty() || expr.len() > CRON_MAX {
        return Err(invalid(
            "cron",
            format!("must be 1 to {CRON_MAX} characters, e.g. \"*/5 * * * *\""),
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| {
            invalid(
                "cron",
                format!("`{expr}` is not a cron expression ({e}): write `min hour day month weekday`, optionally with seconds first, e.g. \"0 9 * * MON-FRI\" or \"*/10 * * * * *\""),
            )
        })
}

/// Parses an IANA time zone name (`UTC`, `Europe/Berlin`, `America/New_York`).
pub fn parse_timezone(name: &str) -> Result<Tz, InvalidSchedule> {
    if name.is_empty() || name.len() > TIMEZONE_MAX {
        return Err(invalid(
            "timezone",
            format!(
                "must be 1 to {TIMEZONE_MAX} characters, an IANA name such as \"Europe/Berlin\""
            ),
        ));
    }
    name.parse::<Tz>().map_err(|_| {
        invalid(
            "timezone",
            format!("`{name}` is not an IANA time zone: use a name such as \"UTC\", \"Europe/Berlin\" or \"America/New_York\""),
        )
    })
}

impl Schedule {
    /// Validates every field (the topic's name, not whether it exists; one of conveyor's own
    /// topics, `conveyor.*`, is refused, so the scheduler never fires a tick into them, even
    /// for a schedule stored before this check) and compiles the expression.
    pub fn compile(&self) -> Result<Compiled, InvalidSchedule> {
        validate_name(&self.name)?;
        let cron = parse_cron(&self.cron)?;
        let tz = parse_timezone(&self.timezone)?;
        conveyor_core::topic::validate_job_topic(&self.topic)
            .map_err(|e| invalid("topic", e.to_string()))?;
        if self.job_type.trim().is_empty() || self.job_type.chars().count() > 255 {
            return Err(invalid("type", "must be 1 to 255 characters"));
        }
        if !header_safe(&self.job_type) {
            return Err(invalid("type", "contains a control character; it is sent as an HTTP header to webhooks, which cannot carry one"));
        }
        if self.key.as_deref().is_some_and(|k| !header_safe(k)) {
            return Err(invalid("key", "contains a control character; it is sent as an HTTP header to webhooks, which cannot carry one"));
        }
        let size = serde_json::to_vec(&self.payload).map_or(0, |v| v.len())
            + self.key.as_ref().map_or(0, String::len);
        if size > MAX_TICK_BYTES {
            return Err(invalid(
                "payload",
                format!("payload and key take {size} bytes; a tick holds at most {MAX_TICK_BYTES}"),
            ));
        }
        let compiled = Compiled {
            schedule: self.clone(),
            cron,
            tz,
        };
        // an expression that never matches (the 30th of February) would be searched to the
        // year 5000 at every pass
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if compiled
            .next_after(now)
            .is_none_or(|t| t - now > MAX_TICK_GAP_MS)
        {
            return Err(invalid(
                "cron",
                "the expression has no tick in the next 5 years (a date that does not exist?)",
            ));
        }
        Ok(compiled)
    }
}

/// The largest payload and key of a schedule's ticks together: 512 KiB (a tick must fit any
/// topic's record limit with its headers).
pub const MAX_TICK_BYTES: usize = 512 * 1024;

/// A schedule must tick at least once in this many milliseconds (5 years).
const MAX_TICK_GAP_MS: i64 = 5 * 366 * 24 * 3600 * 1000;

/// A validated schedule, ready to compute ticks.
#[derive(Debug, Clone)]
pub struct Compiled {
    schedule: Schedule,
    cron: croner::Cron,
    tz: Tz,
}

/// The ticks to fire for one gap, and how many were missed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Due {
    /// The ticks to fire, oldest first (Unix milliseconds).
    pub fire: Vec<i64>,
    /// Ticks of a downtime that do not fire (counted up to [`MAX_COUNTED`]).
    pub missed: usize,
    /// Whether the gap was longer than the grace (downtime).
    pub downtime: bool,
}

impl Compiled {
    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    fn at(&self, ms: i64) -> Option<DateTime<Tz>> {
        self.tz.timestamp_millis_opt(ms).single()
    }

    /// The first tick strictly after `after_ms`, or `None` when there is none (an expression
    /// that never matches again, such as the 31st of February).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let t = self.at(after_ms)?;
        let next = self.cron.find_next_occurrence(&t, false).ok()?;
        // croner compares whole seconds: a tick is never at or before `after_ms`
        let ms = next.timestamp_millis();
        match ms > after_ms {
            true => Some(ms),
            false => self.next_after(after_ms.div_euclid(1000) * 1000 + 999),
        }
    }

    /// The latest tick in `(after_ms, until_ms]`, if any.
    pub fn latest_in(&self, after_ms: i64, until_ms: i64) -> Option<i64> {
        let t = self.at(until_ms.div_euclid(1000) * 1000)?;
        let prev = self.cron.find_previous_occurrence(&t, true).ok()?;
        let ms = prev.timestamp_millis();
        (ms > after_ms && ms <= until_ms).then_some(ms)
    }

    /// The ticks in `(after_ms, until_ms]`, oldest first, at most `max`.
    pub fn ticks(&self, after_ms: i64, until_ms: i64, max: usize) -> Vec<i64> {
        let mut out = Vec::new();
        let mut at = after_ms;
        while out.len() < max {
            match self.next_after(at) {
                Some(t) if t <= until_ms => {
                    out.push(t);
                    at = t;
                }
                _ => break,
            }
        }
        out
    }

    /// What to fire at `now_ms` when every tick up to `cursor_ms` was fired: the gap's ticks
    /// when it is at most `grace_ms` long (a handover, a slow publish: late, not missed), else
    /// (downtime) none (`skip`) or the latest (`once`).
    pub fn due(&self, cursor_ms: i64, now_ms: i64, grace_ms: i64) -> Due {
        if now_ms <= cursor_ms {
            return Due::default();
        }
        if now_ms - cursor_ms <= grace_ms {
            return Due {
                fire: self.ticks(cursor_ms, now_ms, MAX_CATCH_UP),
                missed: 0,
                downtime: false,
            };
        }
        let counted = self.ticks(cursor_ms, now_ms, MAX_COUNTED).len();
        let fire: Vec<i64> = match self.schedule.missed {
            Missed::Skip => Vec::new(),
            Missed::Once => self.latest_in(cursor_ms, now_ms).into_iter().collect(),
        };
        Due {
            missed: counted.saturating_sub(fire.len()),
            fire,
            downtime: true,
        }
    }

    /// The partition of `partitions` every copy of every tick goes to: the key's (as any job
    /// with that key), else the name's.
    pub fn partition(&self, partitions: i32) -> i32 {
        let by = self.schedule.key.as_deref().unwrap_or(&self.schedule.name);
        conveyor_core::partitioner::partition_for_key(by.as_bytes(), partitions.max(1))
    }

    /// The job for the tick at `tick_ms`: the same record whoever fires it, apart from
    /// `produced_at`.
    pub fn record(&self, tick_ms: i64, partitions: i32) -> Record {
        let s = &self.schedule;
        let mut meta = JobMeta::new(s.job_type.clone());
        meta.message_id = Some(tick_id(&s.name, tick_ms));
        meta.producer = Some(PRODUCER.to_owned());
        let mut h = Headers::new();
        meta.write_to(&mut h);
        h.insert(headers::DEDUP_KEY, dedup_key(&s.name, tick_ms));
        h.insert(headers::SCHEDULE, s.name.clone());
        h.insert(
            headers::SCHEDULED_AT,
            headers::format_time(system_time(tick_ms)),
        );
        Record {
            key: s.key.clone().map(Bytes::from),
            value: Bytes::from(serde_json::to_vec(&s.payload).expect("a JSON value serializes")),
            headers: h,
            partition: Some(self.partition(partitions)),
            timestamp: None,
        }
    }
}

/// `ms` since the epoch as a `SystemTime`.
pub fn system_time(ms: i64) -> std::time::SystemTime {
    match u64::try_from(ms) {
        Ok(ms) => std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        Err(_) => std::time::UNIX_EPOCH,
    }
}

/// Milliseconds since the epoch.
pub fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `dedup_key` of a tick: `schedule/<name>/<tick unix ms>`.
pub fn dedup_key(name: &str, tick_ms: i64) -> String {
    format!("schedule/{name}/{tick_ms}")
}

/// The message id of a tick: a UUIDv7 whose timestamp is the tick and whose other bits come from
/// a SHA-1 of `<name>/<tick ms>` (UUIDv5's hash), so every process derives the same id, ids sort
/// by tick, and the tick can be read back from the id.
pub fn tick_id(name: &str, tick_ms: i64) -> String {
    let hash = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        dedup_key(name, tick_ms).as_bytes(),
    );
    let mut rest = [0u8; 10];
    rest.copy_from_slice(&hash.as_bytes()[..10]);
    uuid::Builder::from_unix_timestamp_millis(tick_ms.max(0) as u64, &rest)
        .into_uuid()
        .to_string()
}

/// The schedules in force: the configuration's, then those managed through the API whose names
/// the configuration does not use (a configured schedule cannot be replaced through the API).
pub fn effective(configured: &[Schedule], api: &[Schedule]) -> Vec<Schedule> {
    let mut out = configured.to_vec();
    out.extend(
        api.iter()
            .filter(|s| !configured.iter().any(|c| c.name == s.name))
            .cloned(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str, missed: Missed) -> Compiled {
        Schedule {
            name: "report".into(),
            cron: cron.into(),
            timezone: tz.into(),
            topic: "jobs".into(),
            job_type: "report".into(),
            payload: serde_json::json!({"n": 1}),
            key: None,
            missed,
        }
        .compile()
        .unwrap()
    }

    /// Unix ms of a UTC wall-clock time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        chrono::Utc
            .with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            .timestamp_millis()
    }

    fn fmt(ms: i64, tz: Tz) -> String {
        tz.timestamp_millis_opt(ms)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    }

    #[test]
    fn five_fields_tick_each_minute_and_six_fields_have_seconds() {
        let c = schedule("*/15 * * * *", "UTC", Missed::Skip);
        let t0 = utc(2026, 1, 5, 10, 7, 30);
        assert_eq!(c.next_after(t0), Some(utc(2026, 1, 5, 10, 15, 0)));
        let c = schedule("*/10 * * * * *", "UTC", Missed::Skip);
        assert_eq!(
            c.ticks(t0, t0 + 30_000, 10),
            vec![t0 + 10_000, t0 + 20_000, t0 + 30_000],
            "every 10 s; the end is included, the start is not"
        );
        // sub-second starts: the next whole tick, never the same one again
        assert_eq!(c.next_after(t0 + 10_000), Some(t0 + 20_000));
        assert_eq!(c.next_after(t0 + 9_999), Some(t0 + 10_000));
        assert_eq!(c.next_after(t0 + 10_001), Some(t0 + 20_000));
        let c = schedule("@daily", "UTC", Missed::Skip);
        assert_eq!(c.next_after(t0), Some(utc(2026, 1, 6, 0, 0, 0)));
        let c = schedule("0 9 * * MON-FRI", "UTC", Missed::Skip);
        // 2026-01-09 is a Friday: the next is Monday the 12th
        assert_eq!(
            c.next_after(utc(2026, 1, 9, 9, 0, 0)),
            Some(utc(2026, 1, 12, 9, 0, 0))
        );
    }

    #[test]
    fn a_time_zone_moves_the_ticks_and_follows_daylight_saving() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer
        let c = schedule("0 9 * * *", "Europe/Berlin", Missed::Skip);
        let winter = c.next_after(utc(2026, 3, 28, 0, 0, 0)).unwrap();
        assert_eq!(winter, utc(2026, 3, 28, 8, 0, 0));
        let summer = c.next_after(winter).unwrap();
        assert_eq!(summer, utc(2026, 3, 29, 7, 0, 0), "{}", fmt(summer, berlin));
        // spring forward, 2026-03-29: 02:00 becomes 03:00, so 02:30 does not exist that day and
        // fires at the first instant after the gap; the next day it is 02:30 again
        let c = schedule("30 2 * * *", "Europe/Berlin", Missed::Skip);
        let gap = c.next_after(utc(2026, 3, 28, 12, 0, 0)).unwrap();
        assert_eq!(fmt(gap, berlin), "2026-03-29 03:00:00 CEST");
        let after = c.next_after(gap).unwrap();
        assert_eq!(fmt(after, berlin), "2026-03-30 02:30:00 CEST");
        // fall back, 2026-10-25: 03:00 becomes 02:00, so 02:30 happens twice; it fires once
        let first = c.next_after(utc(2026, 10, 24, 12, 0, 0)).unwrap();
        assert_eq!(first, utc(2026, 10, 25, 0, 30, 0), "{}", fmt(first, berlin));
        let next = c.next_after(first).unwrap();
        assert_eq!(fmt(next, berlin), "2026-10-26 02:30:00 CET");
        // an hourly wildcard runs in both halves of the repeated hour: 02:00 CEST, 02:00 CET
        let c = schedule("0 * * * *", "Europe/Berlin", Missed::Skip);
        let ticks = c.ticks(
            utc(2026, 10, 24, 23, 30, 0),
            utc(2026, 10, 25, 2, 30, 0),
            10,
        );
        assert_eq!(
            ticks,
            vec![
                utc(2026, 10, 25, 0, 0, 0),
                utc(2026, 10, 25, 1, 0, 0),
                utc(2026, 10, 25, 2, 0, 0)
            ],
            "{:?}",
            ticks.iter().map(|t| fmt(*t, berlin)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_short_gap_catches_up_and_downtime_follows_the_policy() {
        let t0 = utc(2026, 1, 5, 10, 0, 0);
        let grace = 5_000;
        for missed in [Missed::Skip, Missed::Once] {
            let c = schedule("* * * * * *", "UTC", missed);
            // the loop woke just after a tick: that one tick
            assert_eq!(c.due(t0 - 250, t0 + 3, grace).fire, vec![t0]);
            // a handover 3.5 s long: every tick of the gap, late
            let d = c.due(t0, t0 + 3_500, grace);
            assert_eq!(d.fire, vec![t0 + 1000, t0 + 2000, t0 + 3000]);
            assert!(!d.downtime);
            // nothing new
            assert_eq!(c.due(t0, t0, grace), Due::default());
            assert_eq!(c.due(t0, t0 + 999, grace).fire, Vec::<i64>::new());
        }
        // ten seconds down: skip fires none of the ten ticks, once the latest
        let skip = schedule("* * * * * *", "UTC", Missed::Skip).due(t0, t0 + 10_400, grace);
        assert_eq!(
            skip,
            Due {
                fire: vec![],
                missed: 10,
                downtime: true
            }
        );
        let once = schedule("* * * * * *", "UTC", Missed::Once).due(t0, t0 + 10_400, grace);
        assert_eq!(
            once,
            Due {
                fire: vec![t0 + 10_000],
                missed: 9,
                downtime: true
            }
        );
        // a daily report down over its time: once fires yesterday's 09:00 when back at 10:00
        let daily = schedule("0 9 * * *", "UTC", Missed::Once);
        let d = daily.due(utc(2026, 1, 5, 8, 0, 0), utc(2026, 1, 5, 10, 0, 0), 60_000);
        assert_eq!(d.fire, vec![utc(2026, 1, 5, 9, 0, 0)]);
        // a downtime with no tick in it misses nothing, whatever the policy
        let d = daily.due(utc(2026, 1, 5, 10, 0, 0), utc(2026, 1, 5, 12, 0, 0), 60_000);
        assert_eq!((d.fire.len(), d.missed), (0, 0));
        // a year down is counted up to the bound, not tick by tick
        let d = schedule("* * * * * *", "UTC", Missed::Skip).due(t0, t0 + 365 * 86_400_000, grace);
        assert_eq!(d.missed, MAX_COUNTED);
    }

    #[test]
    fn every_copy_of_a_tick_is_the_same_record() {
        let c = schedule("* * * * * *", "UTC", Missed::Skip);
        let t = utc(2026, 1, 5, 10, 0, 1);
        let (a, b) = (c.record(t, 8), c.record(t, 8));
        for name in [
            headers::MESSAGE_ID,
            headers::DEDUP_KEY,
            headers::SCHEDULED_AT,
        ] {
            assert_eq!(a.headers.get(name), b.headers.get(name), "{name}");
        }
        assert_eq!(a.partition, b.partition);
        assert_eq!(a.value, b.value);
        assert_eq!(
            a.headers.get_str(headers::DEDUP_KEY),
            Some(format!("schedule/report/{t}").as_str())
        );
        assert_eq!(
            a.headers.get_str(headers::SCHEDULED_AT),
            Some("2026-01-05T10:00:01.000Z")
        );
        let id = uuid::Uuid::parse_str(a.headers.get_str(headers::MESSAGE_ID).unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(secs as i64 * 1000 + i64::from(nanos / 1_000_000), t);
        assert_ne!(tick_id("report", t), tick_id("report", t + 1000));
        assert_ne!(tick_id("report", t), tick_id("other", t));
        // the partition: the key's when there is one (as for any job with that key)
        let mut keyed = c.schedule().clone();
        keyed.key = Some("user-42".into());
        let keyed = keyed.compile().unwrap();
        assert_eq!(
            keyed.record(t, 8).partition,
            Some(conveyor_core::partitioner::partition_for_key(b"user-42", 8))
        );
        assert_eq!(keyed.record(t, 8).key.as_deref(), Some(&b"user-42"[..]));
    }

    #[test]
    fn invalid_fields_are_named() {
        let ok = schedule("* * * * *", "UTC", Missed::Skip)
            .schedule()
            .clone();
        let with = |change: &dyn Fn(&mut Schedule)| {
            let mut s = ok.clone();
            change(&mut s);
            s
        };
        let cases: Vec<(Schedule, &str)> = vec![
            (with(&|s| s.name = "a b".into()), "name"),
            (with(&|s| s.name = "".into()), "name"),
            (with(&|s| s.name = "..".into()), "name"),
            (with(&|s| s.name = "x".repeat(129)), "name"),
            (with(&|s| s.cron = "* * *".into()), "cron"),
            (with(&|s| s.cron = "61 * * * *".into()), "cron"),
            (with(&|s| s.cron = "* * * * * * 2030".into()), "cron"),
            (with(&|s| s.cron = "".into()), "cron"),
            (with(&|s| s.timezone = "Mars/Olympus".into()), "timezone"),
            (with(&|s| s.timezone = "".into()), "timezone"),
            (with(&|s| s.topic = "bad topic".into()), "topic"),
            (with(&|s| s.job_type = " ".into()), "type"),
            (with(&|s| s.job_type = "a\nb".into()), "type"),
            (with(&|s| s.key = Some("a\u{1}".into())), "key"),
        ];
        for (s, field) in cases {
            let e = s.compile().unwrap_err();
            assert_eq!(e.field, field, "{s:?}: {e}");
        }
        assert_eq!("once".parse::<Missed>(), Ok(Missed::Once));
        assert!("always".parse::<Missed>().is_err());
    }

    #[test]
    fn configured_schedules_win_over_api_ones_of_the_same_name() {
        let a = schedule("* * * * *", "UTC", Missed::Skip)
            .schedule()
            .clone();
        let mut b = a.clone();
        b.cron = "0 * * * *".into();
        let mut c = a.clone();
        c.name = "other".into();
        let all = effective(std::slice::from_ref(&a), &[b, c.clone()]);
        assert_eq!(all, vec![a, c]);
    }
}
