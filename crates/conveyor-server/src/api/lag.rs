//! Consumer lag over HTTP (`GET /v1/groups/{group}/lag[?topic=]`): committed offsets and lag
//! per partition, read with [`conveyor_runtime::operations::lag`].

use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct LagQuery {
    #[serde(default)]
    topic: Option<String>,
}

/// Lag of a group on one topic (`?topic=`), or on every topic where it has committed offsets.
pub(super) async fn group_lag(
    State(s): State<Arc<AppState>>,
    Path(group): Path<String>,
    query: Result<Query<LagQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    if let Some(topic) = &q.topic {
        // an unknown topic says so before the group is looked for on it
        if s.backend.describe_topic(topic).await?.is_none() {
            return Err(conveyor_core::Error::UnknownTopic(topic.clone()).into());
        }
    }
    control::known_group(&s, &group, q.topic.as_deref()).await?;
    let lags = match &q.topic {
        Some(topic) => vec![conveyor_runtime::group_lag(s.backend.as_ref(), &group, topic).await?],
        None => {
            conveyor_runtime::operations::lag::group_lag_all(s.backend.as_ref(), &group).await?
        }
    };
    let total: i64 = lags.iter().map(|l| l.lag).sum();
    Ok(Json(
        json!({ "group": group, "lag": total, "topics": lags }),
    ))
}
