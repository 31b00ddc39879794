//! Job lookup ([`conveyor_runtime::observation::job_states`]): one job's state, and jobs listed by state
//! for the console.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/jobs/{id}` | `200`: the job's last state (where it is, state, attempts, last error, times); `404 not_found` when no state of it is known; `422 invalid_field` (`id`) when `id` is empty or longer than 255 characters |
//! | `GET /v1/jobs?state=&topic=&limit=&after=` | `200`: up to `limit` (1-1000, default 100) jobs in `state`, by id, after the id `after`; `next` is the `after` of the next page (`null` on the last) |
//!
//! A lookup reads what was written since first (unless a read that started less than 50 ms
//! before reached the end: lookups arriving together share one read).

use axum::extract::{Path, Query, State};
use axum::Json;
use conveyor_runtime::observation::job_states::StateKind;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::error::ApiError;

/// A lookup reads the states written since, unless a read that reached the end started less
/// than this ago (lookups arriving together share one read).
const FRESH: std::time::Duration = std::time::Duration::from_millis(50);

/// The most jobs one listing page holds.
const MAX_LIMIT: usize = 1000;

/// `GET /v1/jobs/{id}`.
pub(super) async fn show_job(
    State(s): State<std::sync::Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // conveyor's ids are UUIDs; a producer may set its own (`NewJob::with_id`): any 1 to 255
    // characters (one that names no job is a 404 like any other)
    if id.is_empty() || id.chars().count() > 255 {
        return Err(ApiError::invalid(
            "id",
            "a job id is 1 to 255 characters, such as `0192f0c4-5a1e-7b3c-9d2e-4f6a8b0c1d2e` (the `id` of the enqueue's answer)",
        ));
    }
    let index = s.jobs().await?;
    index.refresh_within(FRESH).await?;
    match index.get(&id) {
        Some(state) => Ok(Json(state.to_json())),
        None => Err(ApiError::UnknownJob(format!(
            "no job `{id}` is known: it was never enqueued, its topic has `job_states = false`, its last state is older than the 7-day retention, or it was enqueued outside the API and no worker has taken it yet"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    topic: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/jobs?state=&topic=&limit=&after=`.
pub(super) async fn list_jobs(
    State(s): State<std::sync::Arc<AppState>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let names = || {
        StateKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let state = match q.state.as_deref() {
        None => {
            return Err(ApiError::invalid(
                "state",
                format!("`state` is required: one of {}", names()),
            ))
        }
        Some(v) => StateKind::parse(v).ok_or_else(|| {
            ApiError::invalid(
                "state",
                format!("unknown state `{v}`: use one of {}", names()),
            )
        })?,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("`limit` must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let index = s.jobs().await?;
    index.refresh_within(FRESH).await?;
    let page = index.list(state, q.topic.as_deref(), limit, q.after.as_deref());
    Ok(Json(json!({
        "state": state.as_str(),
        "jobs": page.jobs.iter().map(|j| j.to_json()).collect::<Vec<_>>(),
        "next": page.next,
    })))
}
