//! Topics over HTTP: list, create and describe topics, read a partition's records (for
//! `conveyor tail`), and plan or apply topic specs (`POST /v1/topics:apply`).

use super::*;

pub(super) async fn list_topics(State(s): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "topics": s.backend.list_topics().await? })))
}

pub(super) async fn describe_topic(
    State(s): State<Arc<AppState>>,
    Path(topic): Path<String>,
) -> Result<Json<TopicInfo>, ApiError> {
    s.backend
        .describe_topic(&topic)
        .await?
        .map(Json)
        .ok_or_else(|| conveyor_core::Error::UnknownTopic(topic).into())
}

pub(super) async fn create_topic(
    State(s): State<Arc<AppState>>,
    JsonBody(spec): JsonBody<TopicSpec>,
) -> Result<(StatusCode, Json<TopicInfo>), ApiError> {
    spec.validate()?;
    Ok((
        StatusCode::CREATED,
        Json(s.backend.create_topic(&spec).await?),
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct RecordsQuery {
    #[serde(default)]
    partition: i32,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// A record as JSON: `value` when it is JSON, `value_base64` otherwise.
#[derive(Debug, Serialize)]
struct RecordView {
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

pub(super) async fn read_records(
    State(s): State<Arc<AppState>>,
    Path(topic): Path<String>,
    query: Result<Query<RecordsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    if !(1..=1000).contains(&q.limit) {
        return Err(ApiError::invalid(
            "limit",
            "`limit` must be between 1 and 1000",
        ));
    }
    if q.partition < 0 || q.offset.is_some_and(|o| o < 0) {
        return Err(ApiError::invalid(
            if q.partition < 0 {
                "partition"
            } else {
                "offset"
            },
            "`partition` and `offset` are at least 0",
        ));
    }
    let info = s
        .backend
        .describe_topic(&topic)
        .await?
        .ok_or_else(|| ApiError::from(conveyor_core::Error::UnknownTopic(topic.clone())))?;
    let part = info.partitions.get(q.partition as usize).ok_or_else(|| {
        ApiError::UnknownPartition(format!(
            "topic `{topic}` has no partition {} (it has {})",
            q.partition,
            info.partitions.len()
        ))
    })?;
    let offset = q.offset.unwrap_or(part.low);
    let records = s
        .backend
        .fetch(&topic, q.partition, offset, q.limit)
        .await?;
    let next = records
        .last()
        .map_or(offset.max(part.low), |r| r.offset + 1);
    let views: Vec<RecordView> = records
        .into_iter()
        .map(|r| {
            let json: Option<Value> = serde_json::from_slice(&r.value).ok();
            RecordView {
                partition: r.partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r
                    .key
                    .as_ref()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
                    .collect(),
                value_base64: json
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(&r.value)),
                value: json,
            }
        })
        .collect();
    Ok(Json(
        json!({ "records": views, "next_offset": next, "high_watermark": part.high }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApplyRequest {
    topics: Vec<TopicSpec>,
    #[serde(default)]
    dry_run: bool,
}

/// Plans (and unless `dry_run`, applies) topic specs: creates missing topics, updates changed
/// ones. Nothing is applied when any plan is refused.
pub(super) async fn apply_topics(
    State(s): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ApplyRequest>,
) -> Result<Json<Value>, ApiError> {
    // the whole request is checked before anything is planned, so a dry run and the apply
    // always agree and an apply is all or nothing
    let mut seen = std::collections::HashMap::new();
    for (i, spec) in req.topics.iter().enumerate() {
        if let Err(e) = spec.validate() {
            return Err(ApiError::invalid(format!("topics[{i}]"), e.to_string()));
        }
        if let Some(first) = seen.insert(spec.name.as_str(), i) {
            return Err(ApiError::invalid(
                format!("topics[{i}].name"),
                format!(
                    "`{}` is listed twice (topics[{first}] and topics[{i}])",
                    spec.name
                ),
            ));
        }
    }
    let mut plans = Vec::with_capacity(req.topics.len());
    for spec in &req.topics {
        let current = s.backend.topic_spec(&spec.name).await?;
        let mut plan = conveyor_core::topic::plan(spec, current.as_ref());
        // what the backend cannot keep is refused in the plan, as the apply would refuse it
        if matches!(plan.action, PlanAction::Create | PlanAction::Update) {
            if let Err(e) = s.backend.check_spec(spec) {
                plan.action = PlanAction::Refused;
                plan.refused = Some(e.to_string());
            }
        }
        plans.push(plan);
    }
    let refused: Vec<String> = plans
        .iter()
        .filter_map(|p| p.refused.as_ref().map(|r| format!("{}: {r}", p.name)))
        .collect();
    if req.dry_run {
        return Ok(Json(json!({ "plan": plans, "applied": false })));
    }
    if !refused.is_empty() {
        return Err(ApiError::PlanRefused(format!(
            "nothing was applied: {}",
            refused.join("; ")
        )));
    }
    let mut done = Vec::new();
    for (spec, plan) in req.topics.iter().zip(&plans) {
        let result = match plan.action {
            PlanAction::Create => s.backend.create_topic(spec).await.map(|_| ()),
            PlanAction::Update => s.backend.update_topic(spec).await.map(|_| ()),
            PlanAction::Unchanged | PlanAction::Refused => Ok(()),
        };
        if let Err(e) = result {
            let applied = match done.is_empty() {
                true => "nothing was applied".to_owned(),
                false => format!("applied before this failure: {}", done.join(", ")),
            };
            let message = format!("topic `{}`: {e} ({applied})", spec.name);
            return Err(ApiError::from(e).with_message(message));
        }
        if plan.action != PlanAction::Unchanged {
            done.push(spec.name.clone());
        }
    }
    Ok(Json(json!({ "plan": plans, "applied": true })))
}
