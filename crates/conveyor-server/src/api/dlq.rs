//! `POST /v1/topics/{topic}/dlq:replay`: dead letters back to their original topic
//! ([`conveyor_runtime::operations::replay`]). `{topic}` is the dead-letter topic (`emails.dlq`).
//!
//! Body (every field optional): `{"type", "partition", "from_offset", "to_offset", "limit",
//! "dry_run"}`. The offsets bound the range in each partition scanned, both included; `limit`
//! caps the dead letters scanned per partition in this call, and each partition's
//! `next_offset` in the answer says where to go on (the CLI replays in such steps to show
//! progress). Answers `200` with the [`ReplayReport`]; `404 unknown_topic` when the dead-letter
//! topic does not exist; `422 invalid_field` for a negative or empty offset range, a partition
//! the topic does not have or a `limit` out of range. A dead letter whose original topic is one
//! of conveyor's own (`conveyor.*`) is not replayed: it is listed in `skipped` with the reason.

use axum::extract::{Path, State};
use axum::Json;
use conveyor_runtime::operations::replay::{self, ReplayReport, ReplayRequest};
use serde::Deserialize;
use serde_json::Value;

use super::{AppState, JsonBody};
use crate::error::ApiError;

/// The largest `limit`.
const MAX_LIMIT: usize = 1_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayBody {
    #[serde(default, rename = "type")]
    job_type: Option<String>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    from_offset: Option<i64>,
    #[serde(default)]
    to_offset: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    dry_run: bool,
}

impl ReplayBody {
    fn into_request(self, dlq_topic: String) -> Result<ReplayRequest, ApiError> {
        for (field, value) in [
            ("from_offset", self.from_offset),
            ("to_offset", self.to_offset),
        ] {
            if value.is_some_and(|v| v < 0) {
                return Err(ApiError::invalid(field, format!("`{field}` is at least 0")));
            }
        }
        if self.partition.is_some_and(|p| p < 0) {
            return Err(ApiError::invalid("partition", "`partition` is at least 0"));
        }
        if self.limit.is_some_and(|l| !(1..=MAX_LIMIT).contains(&l)) {
            return Err(ApiError::invalid(
                "limit",
                format!("`limit` is between 1 and {MAX_LIMIT}"),
            ));
        }
        let offsets = match (self.from_offset, self.to_offset) {
            (None, None) => None,
            (Some(a), Some(b)) if a > b => {
                return Err(ApiError::invalid(
                    "from_offset",
                    format!("`from_offset` {a} is after `to_offset` {b}: the range is empty"),
                ))
            }
            (a, b) => Some((a.unwrap_or(0), b.unwrap_or(i64::MAX))),
        };
        Ok(ReplayRequest {
            dlq_topic,
            job_type: self.job_type,
            partition: self.partition,
            offsets,
            limit: self.limit,
            dry_run: self.dry_run,
        })
    }
}

/// Replays, or with `dry_run` reports what would be replayed.
pub(super) async fn replay_dead_letters(
    State(s): State<std::sync::Arc<AppState>>,
    Path(topic): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<ReplayReport>, ApiError> {
    // an object only: serde would also read the fields from an array, `[null, true]`
    if !body.is_object() {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    }
    let body: ReplayBody = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(super::field_of(&e), e.to_string()))?;
    let req = body.into_request(topic.clone())?;
    let result = replay::replay(&s.backend, &req, |p| {
        tracing::debug!(
            dlq = %topic,
            partition = p.partition,
            next_offset = p.next_offset,
            to_offset = p.to_offset,
            replayed = p.replayed,
            "replay progress"
        );
    })
    .await;
    match result {
        Ok(report) => {
            if !report.dry_run && report.replayed > 0 {
                tracing::info!(
                    dlq = %topic,
                    replayed = report.replayed,
                    already_replayed = report.already_replayed,
                    skipped = report.skipped_unroutable,
                    "dead letters replayed"
                );
            }
            Ok(Json(report))
        }
        Err(conveyor_core::Error::UnknownTopic(_)) => Err(ApiError::UnknownTopic(format!(
            "dead-letter topic `{topic}` does not exist (name the dead-letter topic, e.g. `emails.dlq`, not the topic its jobs came from)"
        ))),
        Err(e @ conveyor_core::Error::UnknownPartition { .. }) => {
            Err(ApiError::invalid("partition", e.to_string()))
        }
        // refused before anything moved (a name too long for its ledger topic)
        Err(conveyor_core::Error::InvalidArgument(m)) => Err(ApiError::invalid("topic", m)),
        Err(e) => {
            let message = format!(
                "the replay stopped: {e}; what was replayed before the failure is in the ledger `{}` and is skipped when the replay runs again",
                replay::ledger::ledger_topic(&topic)
            );
            Err(ApiError::from(e).with_message(message))
        }
    }
}
