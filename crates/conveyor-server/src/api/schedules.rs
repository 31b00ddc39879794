//! Cron schedules over HTTP ([`conveyor_runtime::time::schedule`]). Schedules put here are stored in
//! the control log, so every process sees them and the elected scheduler fires them, across
//! restarts; those of the configuration file (`[[schedules]]`) are listed too but cannot be
//! changed or deleted here (409 `schedule_in_config`: edit the file).
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/schedules` | `200 {"schedules": [...]}`, by name |
//! | `GET /v1/schedules/{name}` | `200` the schedule; `404 unknown_schedule` |
//! | `PUT /v1/schedules/{name}` | body: the schedule without `name`; `201` created, `200` replaced; `422` naming the field (`cron`, `timezone`, `topic` (also one of conveyor's own, `conveyor.*`), `type`, `key`, `missed`); `404 unknown_topic` |
//! | `DELETE /v1/schedules/{name}` | `200`; `404 unknown_schedule` |
//!
//! Every answer shows a schedule with its `source` (`config` or `api`) and its `next` tick
//! (RFC 3339, UTC; `null` when the expression never matches again).
//!
//! A `PUT` that would take the schedules (the file's and the API's, this one replacing its
//! namesake) past `[scheduler]`'s `max_schedules`, `max_schedule_bytes` or
//! `max_ticks_per_minute` is refused with `507 limit_reached` naming the key; nothing is stored
//! ([`conveyor_runtime::time::schedule::budget`]).

use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use conveyor_runtime::time::control::ControlEntry;
use conveyor_runtime::time::schedule::{self, Missed, Schedule};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{AppState, JsonBody};
use crate::error::ApiError;

/// A schedule as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct ScheduleView {
    #[serde(flatten)]
    schedule: Schedule,
    /// `config` or `api`.
    source: &'static str,
    /// The next tick, RFC 3339 UTC.
    next: Option<String>,
}

fn view(schedule: Schedule, source: &'static str) -> ScheduleView {
    let now = schedule::unix_ms(SystemTime::now());
    let next = schedule
        .compile()
        .ok()
        .and_then(|c| c.next_after(now))
        .map(|t| conveyor_core::headers::format_time(schedule::system_time(t)));
    ScheduleView {
        schedule,
        source,
        next,
    }
}

/// The body of a `PUT`: a schedule without its name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    cron: String,
    topic: String,
    #[serde(rename = "type")]
    job_type: String,
    /// Any JSON value, `null` included; missing: `{}`.
    #[serde(default = "empty_object")]
    payload: Value,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    missed: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

fn check_name(name: &str) -> Result<(), ApiError> {
    schedule::validate_name(name).map_err(|e| ApiError::invalid("name", e.message))
}

fn configured<'a>(s: &'a AppState, name: &str) -> Option<&'a Schedule> {
    s.configured_schedules.iter().find(|c| c.name == name)
}

fn in_config(name: &str) -> ApiError {
    ApiError::ScheduleInConfig(format!(
        "schedule `{name}` is defined in the configuration file ([[schedules]]); change or remove it there and restart"
    ))
}

fn unknown(name: &str) -> ApiError {
    ApiError::UnknownSchedule(format!("no schedule named `{name}`"))
}

/// `GET /v1/schedules`.
pub(super) async fn list_schedules(
    State(s): State<std::sync::Arc<AppState>>,
) -> Result<Json<Value>, ApiError> {
    let control = s.control().await?;
    control.refresh().await?;
    let mut all: Vec<ScheduleView> = s
        .configured_schedules
        .iter()
        .map(|c| view(c.clone(), "config"))
        .collect();
    all.extend(
        control
            .schedules()
            .into_iter()
            .filter(|a| configured(&s, &a.name).is_none())
            .map(|a| view(a, "api")),
    );
    all.sort_by(|a, b| a.schedule.name.cmp(&b.schedule.name));
    Ok(Json(json!({ "schedules": all })))
}

/// `GET /v1/schedules/{name}`.
pub(super) async fn get_schedule(
    State(s): State<std::sync::Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    check_name(&name)?;
    if let Some(c) = configured(&s, &name) {
        return Ok(Json(view(c.clone(), "config")));
    }
    let control = s.control().await?;
    control.refresh().await?;
    control
        .schedule(&name)
        .map(|a| Json(view(a, "api")))
        .ok_or_else(|| unknown(&name))
}

/// `PUT /v1/schedules/{name}`: creates (201) or replaces (200) an API schedule.
pub(super) async fn put_schedule(
    State(s): State<std::sync::Arc<AppState>>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    check_name(&name)?;
    // an object only: serde would also read the fields from an array
    if !body.is_object() {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    }
    let body: ScheduleBody = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(super::field_of(&e), e.to_string()))?;
    if configured(&s, &name).is_some() {
        return Err(in_config(&name));
    }
    let missed = match body.missed.as_deref() {
        None => Missed::default(),
        Some(m) => m.parse().map_err(|e| ApiError::invalid("missed", e))?,
    };
    let schedule = Schedule {
        name: name.clone(),
        cron: body.cron,
        timezone: body.timezone.unwrap_or_else(|| "UTC".into()),
        topic: body.topic,
        job_type: body.job_type,
        payload: body.payload,
        key: body.key,
        missed,
    };
    schedule
        .compile()
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    if s.backend.describe_topic(&schedule.topic).await?.is_none() {
        return Err(ApiError::UnknownTopic(format!(
            "topic `{}` does not exist: create it first (POST /v1/topics, or [[topics]] in the configuration)",
            schedule.topic
        )));
    }
    let control = s.control().await?;
    control.refresh().await?;
    let existed = control.schedule(&name).is_some();
    within_limits(&s, control, &schedule)?;
    control
        .append(&ControlEntry::put_schedule(schedule.clone()))
        .await?;
    let status = match existed {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    Ok((status, Json(view(schedule, "api"))))
}

/// `DELETE /v1/schedules/{name}`.
pub(super) async fn delete_schedule(
    State(s): State<std::sync::Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    if configured(&s, &name).is_some() {
        return Err(in_config(&name));
    }
    let control = s.control().await?;
    control.refresh().await?;
    if control.schedule(&name).is_none() {
        return Err(unknown(&name));
    }
    control
        .append(&ControlEntry::DeleteSchedule { name: name.clone() })
        .await?;
    Ok(Json(json!({ "name": name, "deleted": true })))
}

/// `507 limit_reached` when `schedule`, replacing its namesake, would take the schedules in
/// force past the limits.
fn within_limits(
    s: &AppState,
    control: &conveyor_runtime::time::control::Control,
    schedule: &Schedule,
) -> Result<(), ApiError> {
    let others: Vec<Schedule> = control
        .schedules()
        .into_iter()
        .filter(|a| a.name != schedule.name)
        .collect();
    let mut usage = schedule::Usage::default();
    let all = schedule::effective(&s.configured_schedules, &others);
    for c in all
        .iter()
        .chain(std::iter::once(schedule))
        .filter_map(|s| s.compile().ok())
    {
        usage = usage.with(c.cost());
    }
    s.schedule_limits.check(usage).map_err(|e| {
        ApiError::limit(
            e.key,
            format!("schedule `{}` was not stored: {e}", schedule.name),
        )
    })
}
