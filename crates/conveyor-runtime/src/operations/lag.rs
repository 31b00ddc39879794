//! Consumer lag: per partition, how far a group's committed offset is behind the high watermark.
//! Works on any backend, without joining the group (it reads committed offsets and watermarks).

use conveyor_core::{Backend, Error, Result};
use serde::{Deserialize, Serialize};

/// One partition's lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    /// The partition.
    pub partition: i32,
    /// The group's committed offset (the next record it will process); `None` if never committed.
    pub committed: Option<i64>,
    /// The earliest retained offset.
    pub low_watermark: i64,
    /// The offset the next record will get.
    pub high_watermark: i64,
    /// Records not yet processed: high watermark minus the committed offset (or, when nothing
    /// was committed or retention removed the committed position, minus the low watermark).
    pub lag: i64,
}

/// A group's lag on one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLag {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The sum over partitions.
    pub lag: i64,
    /// Per partition.
    pub partitions: Vec<PartitionLag>,
}

impl GroupLag {
    /// Whether the group ever committed an offset on this topic.
    pub fn has_commits(&self) -> bool {
        self.partitions.iter().any(|p| p.committed.is_some())
    }
}

/// The lag of `group` on `topic`. Fails with `UnknownTopic` when the topic does not exist.
pub async fn group_lag(backend: &dyn Backend, group: &str, topic: &str) -> Result<GroupLag> {
    let info = backend
        .describe_topic(topic)
        .await?
        .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
    let committed = backend.committed_offsets(group, topic).await?;
    let partitions: Vec<PartitionLag> = info
        .partitions
        .iter()
        .map(|p| {
            let c = committed
                .iter()
                .find(|(part, _)| *part == p.partition)
                .and_then(|(_, c)| *c);
            let from = c.unwrap_or(p.low).max(p.low);
            PartitionLag {
                partition: p.partition,
                committed: c,
                low_watermark: p.low,
                high_watermark: p.high,
                lag: (p.high - from).max(0),
            }
        })
        .collect();
    Ok(GroupLag {
        group: group.to_owned(),
        topic: topic.to_owned(),
        lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    })
}

/// The lag of `group` on every topic where it has committed offsets, sorted by topic.
pub async fn group_lag_all(backend: &dyn Backend, group: &str) -> Result<Vec<GroupLag>> {
    let mut out = Vec::new();
    for t in backend.list_topics().await? {
        let lag = group_lag(backend, group, &t.name).await?;
        if lag.has_commits() {
            out.push(lag);
        }
    }
    Ok(out)
}
