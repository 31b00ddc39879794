//! Commands through the control log ([`conveyor_runtime::time::control`]): cancel a job, pause and
//! resume a topic for a group.
//!
//! | route | answer |
//! |---|---|
//! | `DELETE /v1/jobs/{id}` | `202`: the cancellation is stored; a job with that message id that has not started yet will not run (`cancelled` counts it), in every process, within about a refresh interval (250 ms) |
//! | `POST /v1/groups/{group}/topics/{topic}:pause` | `200`: the group starts no more jobs of the topic, across its processes and restarts, until resumed (running jobs finish) |
//! | `POST /v1/groups/{group}/topics/{topic}:resume` | `200`: it starts them again |
//! | `GET /v1/groups/{group}/paused` | `200`: the topics the group is paused on (`404 unknown_group` as for a pause) |
//!
//! The log cannot say whether a job exists or already ran (on Kafka that would take reading
//! every topic), so a cancellation is accepted for any UUID (the form of every message id
//! conveyor writes); an id of another form (a producer's own, `NewJob::with_id`) must name a
//! job that job lookup knows (else `404 not_found`) unless `?force=true`. Cancelling twice is
//! the same as once. A pause names a group this process runs (a route's) or
//! one with committed offsets; any other is `404 unknown_group` (a misspelled group would
//! otherwise be paused for nobody, silently).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use conveyor_runtime::time::control::ControlEntry;
use serde_json::{json, Value};

use super::AppState;
use crate::error::ApiError;

fn check_name(field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.chars().count() > 255 {
        return Err(ApiError::invalid(
            field,
            format!("`{field}` must be 1 to 255 characters"),
        ));
    }
    Ok(())
}

/// `?force=true`: cancel an id job lookup does not know.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/jobs/{id}[?force=true]`.
pub(super) async fn cancel_job(
    State(s): State<std::sync::Arc<AppState>>,
    Path(id): Path<String>,
    query: Result<Query<CancelQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    check_name("id", &id)?;
    // conveyor's ids are UUIDs, taken as they are (a job may not be stored yet as far as job
    // lookup knows); any other id must name a job lookup knows, unless forced
    // only the form conveyor writes (lowercase, hyphenated): `is_cancelled` matches exactly,
    // so an uppercase or braced UUID would be "cancelled" and still run
    let conveyors = conveyor_runtime::observation::job_states::is_job_id(&id)
        && !id.bytes().any(|b| b.is_ascii_uppercase());
    if !conveyors && !q.force {
        let index = s.jobs().await?;
        index
            .refresh_within(std::time::Duration::from_millis(50))
            .await?;
        if index.get(&id).is_none() {
            return Err(ApiError::UnknownJob(format!(
                "no job `{id}` is known (conveyor's ids are UUIDs, as the enqueue answered in `id`); a job with an id of its own that job lookup does not know (enqueued outside the API, or where `job_states = false`) is cancelled with ?force=true (`conveyor cancel --force`)"
            )));
        }
    }
    let at = s
        .control()
        .await?
        .append(&ControlEntry::Cancel { id: id.clone() })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "cancelled": true, "control_offset": at.offset })),
    ))
}

/// `POST /v1/groups/{group}/topics/{topic}:pause` and `:resume`.
pub(super) async fn pause_or_resume(
    State(s): State<std::sync::Arc<AppState>>,
    Path((group, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (topic, verb) = action
        .rsplit_once(':')
        .ok_or_else(|| ApiError::NotFound(format!("POST /v1/groups/{group}/topics/{action}")))?;
    let pause = match verb {
        "pause" => true,
        "resume" => false,
        _ => {
            return Err(ApiError::NotFound(format!(
                "POST /v1/groups/{group}/topics/{action} (the verbs are :pause and :resume)"
            )))
        }
    };
    check_name("group", &group)?;
    conveyor_core::topic::validate_name(topic)?;
    if s.backend.describe_topic(topic).await?.is_none() {
        return Err(conveyor_core::Error::UnknownTopic(topic.to_owned()).into());
    }
    // a resume is always taken: a group paused long ago may have lost its offsets (Kafka's
    // offset retention) and must still be resumable
    if pause {
        known_group(&s, &group, Some(topic)).await?;
    }
    let (group, topic) = (group.clone(), topic.to_owned());
    let entry = match pause {
        true => ControlEntry::Pause {
            group: group.clone(),
            topic: topic.clone(),
        },
        false => ControlEntry::Resume {
            group: group.clone(),
            topic: topic.clone(),
        },
    };
    s.control().await?.append(&entry).await?;
    Ok(Json(
        json!({ "group": group, "topic": topic, "paused": pause }),
    ))
}

/// `GET /v1/groups/{group}/paused`.
pub(super) async fn paused_topics(
    State(s): State<std::sync::Arc<AppState>>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name("group", &group)?;
    let control = s.control().await?;
    control.refresh().await?;
    if control.paused_topics(&group).is_empty() {
        known_group(&s, &group, None).await?;
    }
    Ok(Json(
        json!({ "group": group, "paused": control.paused_topics(&group) }),
    ))
}

/// `Ok` when `group` is a group this process runs (a configured route's) or has committed
/// offsets on `topic` (on any topic when `None`); else `404 unknown_group`.
pub(super) async fn known_group(
    s: &AppState,
    group: &str,
    topic: Option<&str>,
) -> Result<(), ApiError> {
    if s.known_groups.iter().any(|g| g == group) {
        return Ok(());
    }
    let topics = match topic {
        Some(t) => vec![t.to_owned()],
        None => s
            .backend
            .list_topics()
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect(),
    };
    for t in topics {
        let committed = s.backend.committed_offsets(group, &t).await?;
        if committed.iter().any(|(_, c)| c.is_some()) {
            return Ok(());
        }
    }
    Err(ApiError::UnknownGroup(match topic {
        Some(t) => format!("no group `{group}` runs here or has committed offsets on `{t}`; check the name (`conveyor lag GROUP` lists a group's topics)"),
        None => format!("no group `{group}` runs here or has committed offsets on any topic; check the name (a route's group is `webhook.<topic>` unless it sets `group`)"),
    }))
}
