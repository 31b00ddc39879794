//! Commands through the control log ([`conveyor_runtime::control`]): cancel a job, pause and
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
//! every topic), so a cancellation is accepted for any well-formed id (a UUID, the form of
//! every message id conveyor writes; anything else is `422 invalid_field` naming `id`), and
//! cancelling twice is the same as once. A pause names a group this process runs (a route's) or
//! one with committed offsets; any other is `404 unknown_group` (a misspelled group would
//! otherwise be paused for nobody, silently).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use conveyor_runtime::control::ControlEntry;
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

/// `DELETE /v1/jobs/{id}`.
pub(super) async fn cancel_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name("id", &id)?;
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::invalid(
            "id",
            format!("`{id}` is not a job id: ids are UUIDs such as 0193a3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b, as the enqueue answered in `id`"),
        ));
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
    State(s): State<AppState>,
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
    State(s): State<AppState>,
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
