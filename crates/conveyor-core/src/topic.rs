//! Topics: name validation, the spec used to create one, and what a backend reports about one.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Kafka's maximum topic-name length.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks a topic name against Kafka's rules: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
///
/// ```
/// assert!(conveyor_core::topic::validate_name("emails.welcome").is_ok());
/// assert!(conveyor_core::topic::validate_name("no spaces").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_TOPIC_NAME_LEN {
        Some("it is longer than 249 characters")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are reserved")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        Some("only ASCII letters, digits, `.`, `_` and `-` are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidTopicName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// What to create: a topic's name, partition count and retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    /// The topic name (see [`validate_name`]).
    pub name: String,
    /// Number of partitions. Default: 4.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Delete records older than this many milliseconds. `None` keeps them forever.
    /// Default: 7 days, as for job topics in most Kafka deployments.
    #[serde(default = "default_retention_ms")]
    pub retention_ms: Option<i64>,
    /// Delete the oldest records of a partition once it holds more than this many bytes.
    /// `None` (the default) sets no size limit.
    #[serde(default)]
    pub retention_bytes: Option<u64>,
}

fn default_partitions() -> i32 {
    TopicSpec::DEFAULT_PARTITIONS
}

fn default_retention_ms() -> Option<i64> {
    Some(TopicSpec::DEFAULT_RETENTION_MS)
}

impl TopicSpec {
    /// Default partition count: 4.
    pub const DEFAULT_PARTITIONS: i32 = 4;
    /// Default retention: 7 days.
    pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

    /// A spec with the given name and partitions and the default retention.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            retention_ms: Some(Self::DEFAULT_RETENTION_MS),
            retention_bytes: None,
        }
    }

    /// Validates the name and the partition count.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        if !(1..=10_000).contains(&self.partitions) {
            return Err(Error::InvalidArgument(format!(
                "topic `{}`: partitions must be between 1 and 10000, got {}",
                self.name, self.partitions
            )));
        }
        Ok(())
    }
}

/// What a backend reports about a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The topic name.
    pub name: String,
    /// Per partition: the earliest retained offset and the next offset to be written.
    pub partitions: Vec<PartitionInfo>,
}

/// One partition's watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: i32,
    /// The earliest offset still retained.
    pub low: i64,
    /// The offset the next record will get (Kafka's high watermark).
    pub high: i64,
}

impl TopicInfo {
    /// Number of partitions.
    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    /// Records currently retained across all partitions.
    pub fn retained(&self) -> i64 {
        self.partitions.iter().map(|p| p.high - p.low).sum()
    }
}
