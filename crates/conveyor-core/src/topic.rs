//! Topics: name validation (and which names are conveyor's own), the spec used to create one,
//! and what a backend reports about one.

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

/// The prefix of conveyor's own topics: every topic named `conveyor.*` is reserved for the
/// records conveyor writes itself (the control log `conveyor.control`, the idempotency answers
/// `conveyor.idempotency`, the unique-key ledger `conveyor.unique`, the scheduler's
/// `conveyor.scheduler` and the reply topics `conveyor.replies.*`), which its readers take as
/// commands, answers and claims. A job written to one would be read as such a record.
pub const RESERVED_PREFIX: &str = "conveyor.";

/// The prefix of the reply topics conveyor names itself (`conveyor.replies.<random>`): reserved
/// like every `conveyor.*` topic, but workers write the replies to requests there.
pub const REPLY_TOPIC_PREFIX: &str = "conveyor.replies.";

/// Whether `name` is one of conveyor's own topics (see [`RESERVED_PREFIX`]).
///
/// ```
/// use conveyor_core::topic::is_reserved;
/// assert!(is_reserved("conveyor.idempotency") && is_reserved("conveyor.replies.1a2b"));
/// assert!(!is_reserved("emails") && !is_reserved("conveyor") && !is_reserved("my.conveyor.jobs"));
/// ```
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// Checks a topic jobs go to, by any way in (an enqueue, a batch, a request, a schedule, a
/// replayed dead letter, a route): a valid name ([`validate_name`]) that is not one of
/// conveyor's own ([`Error::ReservedTopic`]).
///
/// ```
/// use conveyor_core::topic::validate_job_topic;
/// assert!(validate_job_topic("emails").is_ok());
/// assert!(validate_job_topic("conveyor.control").is_err());
/// assert!(validate_job_topic("no spaces").is_err());
/// ```
pub fn validate_job_topic(name: &str) -> Result<()> {
    validate_name(name)?;
    refuse_reserved(name)
}

/// [`Error::ReservedTopic`] when `name` is one of conveyor's own topics ([`is_reserved`]).
pub fn refuse_reserved(name: &str) -> Result<()> {
    match is_reserved(name) {
        true => Err(Error::ReservedTopic {
            name: name.to_owned(),
        }),
        false => Ok(()),
    }
}

/// Checks a topic replies go to (a request's `reply_to`, a client's reply topic): a valid name
/// outside `conveyor.*`, or a reply topic `conveyor.replies.*` ([`REPLY_TOPIC_PREFIX`]).
///
/// ```
/// use conveyor_core::topic::validate_reply_topic;
/// assert!(validate_reply_topic("laddr.responses").is_ok());
/// assert!(validate_reply_topic("conveyor.replies.1a2b").is_ok());
/// assert!(validate_reply_topic("conveyor.idempotency").is_err());
/// ```
pub fn validate_reply_topic(name: &str) -> Result<()> {
    match name.starts_with(REPLY_TOPIC_PREFIX) {
        true => validate_name(name),
        false => validate_job_topic(name),
    }
}

/// What Kafka does with old records (`cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum CleanupPolicy {
    /// Delete records past the retention limits (job and event topics).
    #[default]
    #[serde(rename = "delete")]
    Delete,
    /// Keep the latest record per key (state and changelog topics).
    #[serde(rename = "compact")]
    Compact,
    /// Compact, and also delete records past the retention limits.
    #[serde(rename = "compact,delete", alias = "delete,compact")]
    CompactDelete,
}

impl CleanupPolicy {
    /// Kafka's spelling: `delete`, `compact` or `compact,delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    /// Parses Kafka's spelling (either order for the pair).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts: Vec<&str> = s.split(',').map(str::trim).collect();
        parts.sort_unstable();
        match parts.as_slice() {
            ["delete"] => Some(CleanupPolicy::Delete),
            ["compact"] => Some(CleanupPolicy::Compact),
            ["compact", "delete"] => Some(CleanupPolicy::CompactDelete),
            _ => None,
        }
    }
}

impl std::fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic's desired (or, as reported by [`Backend::topic_spec`](crate::Backend::topic_spec),
/// current) shape: name, partitions, retention, cleanup policy and replication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// What happens to old records. Default: delete.
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,
    /// Copies of each partition (Kafka). `None`: the broker's default when creating; in a reported
    /// spec, "not applicable" (the embedded backend keeps one copy on one machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Replicas that must acknowledge a write with `acks=all` (Kafka `min.insync.replicas`).
    /// `None`: the broker's default; in a reported spec, "not applicable".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_insync_replicas: Option<i32>,
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
            cleanup_policy: CleanupPolicy::Delete,
            replication_factor: None,
            min_insync_replicas: None,
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
        if self.retention_ms.is_some_and(|r| r <= 0) {
            return Err(Error::InvalidArgument(format!(
                "topic `{}`: retention_ms must be positive (leave it out for the default of 7 days; null, or `--retention-ms forever` on the CLI, keeps records forever)",
                self.name
            )));
        }
        if let (Some(rf), Some(isr)) = (self.replication_factor, self.min_insync_replicas) {
            if isr > rf {
                return Err(Error::InvalidArgument(format!(
                    "topic `{}`: min_insync_replicas {isr} is more than replication_factor {rf}: every acks=all write would fail",
                    self.name
                )));
            }
        }
        // Kafka keeps both as 16-bit numbers
        let replicas = 1..=i32::from(i16::MAX);
        if self
            .replication_factor
            .is_some_and(|r| !replicas.contains(&r))
            || self
                .min_insync_replicas
                .is_some_and(|r| !replicas.contains(&r))
        {
            return Err(Error::InvalidArgument(format!(
                "topic `{}`: replication_factor and min_insync_replicas must be between 1 and 32767",
                self.name
            )));
        }
        if self.retention_bytes.is_some_and(|b| b > i64::MAX as u64) {
            return Err(Error::InvalidArgument(format!(
                "topic `{}`: retention_bytes must be at most {} (Kafka's limit)",
                self.name,
                i64::MAX
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

/// What `topics apply` will do to one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    /// The topic does not exist: create it.
    Create,
    /// The topic exists and some settings differ: change them.
    Update,
    /// The topic already matches.
    Unchanged,
    /// The change cannot be made in place (see [`TopicPlan::refused`]); nothing is applied.
    Refused,
}

/// One setting that differs: `from` is the current value (`-` when the topic is new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingChange {
    /// The setting, named as in a topics file: `partitions`, `retention_ms`, ...
    pub setting: String,
    /// The current value.
    pub from: String,
    /// The desired value.
    pub to: String,
}

/// The plan for one topic: the differences between a desired spec and the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPlan {
    /// The topic.
    pub name: String,
    /// What will be done.
    pub action: PlanAction,
    /// The settings that change.
    pub changes: Vec<SettingChange>,
    /// Why the plan is refused, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Things to know before applying (e.g. keys moving to other partitions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn show<T: std::fmt::Display>(v: Option<T>, none: &str) -> String {
    v.map_or_else(|| none.to_owned(), |v| v.to_string())
}

/// Compares a desired spec with the current one (`None`: the topic does not exist).
///
/// Settings the current spec reports as `None` for replication (the embedded backend) are not
/// compared. Partitions never shrink and the replication factor never changes in place: such
/// plans are [`PlanAction::Refused`].
///
/// ```
/// use conveyor_core::topic::{plan, PlanAction, TopicSpec};
/// let current = TopicSpec::new("jobs", 4);
/// let mut desired = TopicSpec::new("jobs", 8);
/// desired.retention_ms = Some(30 * 24 * 3600 * 1000);
/// let p = plan(&desired, Some(&current));
/// assert_eq!(p.action, PlanAction::Update);
/// assert_eq!(p.changes.len(), 2);
/// assert_eq!(plan(&TopicSpec::new("jobs", 2), Some(&current)).action, PlanAction::Refused);
/// ```
pub fn plan(desired: &TopicSpec, current: Option<&TopicSpec>) -> TopicPlan {
    let mut p = TopicPlan {
        name: desired.name.clone(),
        action: PlanAction::Unchanged,
        changes: Vec::new(),
        refused: None,
        warnings: Vec::new(),
    };
    if let Err(e) = desired.validate() {
        p.action = PlanAction::Refused;
        p.refused = Some(e.to_string());
        return p;
    }
    let mut change = |setting: &str, from: String, to: String| {
        if from != to {
            p.changes.push(SettingChange {
                setting: setting.to_owned(),
                from,
                to,
            });
        }
    };
    let Some(cur) = current else {
        let none = "-".to_owned();
        change("partitions", none.clone(), desired.partitions.to_string());
        change(
            "retention_ms",
            none.clone(),
            show(desired.retention_ms, "forever"),
        );
        change(
            "retention_bytes",
            none.clone(),
            show(desired.retention_bytes, "unlimited"),
        );
        change(
            "cleanup_policy",
            none.clone(),
            desired.cleanup_policy.to_string(),
        );
        if let Some(rf) = desired.replication_factor {
            change("replication_factor", none.clone(), rf.to_string());
        }
        if let Some(isr) = desired.min_insync_replicas {
            change("min_insync_replicas", none, isr.to_string());
        }
        p.action = PlanAction::Create;
        return p;
    };
    change(
        "partitions",
        cur.partitions.to_string(),
        desired.partitions.to_string(),
    );
    change(
        "retention_ms",
        show(cur.retention_ms, "forever"),
        show(desired.retention_ms, "forever"),
    );
    change(
        "retention_bytes",
        show(cur.retention_bytes, "unlimited"),
        show(desired.retention_bytes, "unlimited"),
    );
    change(
        "cleanup_policy",
        cur.cleanup_policy.to_string(),
        desired.cleanup_policy.to_string(),
    );
    let mut replication_refused = false;
    if let (Some(c), Some(d)) = (cur.replication_factor, desired.replication_factor) {
        change("replication_factor", c.to_string(), d.to_string());
        replication_refused = c != d;
    }
    if let (Some(c), Some(d)) = (cur.min_insync_replicas, desired.min_insync_replicas) {
        change("min_insync_replicas", c.to_string(), d.to_string());
    }
    if cur.replication_factor.is_none()
        && (desired.replication_factor.is_some() || desired.min_insync_replicas.is_some())
    {
        p.warnings.push(
            "replication_factor and min_insync_replicas do not apply to this backend (one copy on one machine); they are ignored".to_owned(),
        );
    }
    if desired.partitions < cur.partitions {
        p.action = PlanAction::Refused;
        p.refused = Some(format!(
            "partitions cannot shrink ({} -> {}): Kafka cannot remove partitions; create a new topic and move the consumers to it",
            cur.partitions, desired.partitions
        ));
    } else if replication_refused {
        p.action = PlanAction::Refused;
        p.refused = Some(
            "the replication factor cannot change in place: reassign the partitions with Kafka's tools (kafka-reassign-partitions), then update the file".to_owned(),
        );
    } else if !p.changes.is_empty() {
        p.action = PlanAction::Update;
        if desired.partitions > cur.partitions {
            p.warnings.push(format!(
                "adding partitions ({} -> {}) moves keys to other partitions: records of one key written before and after the change may be processed out of order while the old ones drain",
                cur.partitions, desired.partitions
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matching_topic_is_unchanged_and_replication_is_skipped_where_not_applicable() {
        let current = TopicSpec::new("t", 4);
        let mut desired = TopicSpec::new("t", 4);
        assert_eq!(plan(&desired, Some(&current)).action, PlanAction::Unchanged);
        desired.replication_factor = Some(3);
        desired.min_insync_replicas = Some(2);
        let p = plan(&desired, Some(&current));
        assert_eq!(p.action, PlanAction::Unchanged);
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn replication_changes_and_shrinking_are_refused() {
        let mut current = TopicSpec::new("t", 4);
        current.replication_factor = Some(1);
        current.min_insync_replicas = Some(1);
        let mut desired = current.clone();
        desired.replication_factor = Some(3);
        assert_eq!(plan(&desired, Some(&current)).action, PlanAction::Refused);
        desired.replication_factor = Some(1);
        desired.min_insync_replicas = Some(2);
        // min ISR 2 > RF 1 is invalid
        assert_eq!(plan(&desired, Some(&current)).action, PlanAction::Refused);
        desired.min_insync_replicas = Some(1);
        desired.cleanup_policy = CleanupPolicy::Compact;
        let p = plan(&desired, Some(&current));
        assert_eq!(p.action, PlanAction::Update);
        assert_eq!(p.changes[0].setting, "cleanup_policy");
    }

    #[test]
    fn a_new_topic_lists_every_setting() {
        let p = plan(&TopicSpec::new("t", 3), None);
        assert_eq!(p.action, PlanAction::Create);
        assert_eq!(p.changes[0].to, "3");
        assert!(p
            .changes
            .iter()
            .any(|c| c.setting == "retention_ms" && c.to == "604800000"));
    }

    #[test]
    fn cleanup_policy_parses_both_orders() {
        assert_eq!(
            CleanupPolicy::parse("delete,compact"),
            Some(CleanupPolicy::CompactDelete)
        );
        assert_eq!(
            CleanupPolicy::parse("compact"),
            Some(CleanupPolicy::Compact)
        );
        assert_eq!(CleanupPolicy::parse("nope"), None);
        let t: TopicSpec =
            serde_json::from_str(r#"{"name":"x","cleanup_policy":"compact,delete"}"#).unwrap();
        assert_eq!(t.cleanup_policy, CleanupPolicy::CompactDelete);
    }
}
