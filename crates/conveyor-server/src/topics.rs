//! Topics files for `conveyor topics apply -f topics.toml`: a `[defaults]` table and one
//! `[[topics]]` entry per topic, turned into [`TopicSpec`]s.
//!
//! ```toml
//! [defaults]
//! replication_factor = 3
//! min_insync_replicas = 2
//! retention = "7d"
//!
//! [[topics]]
//! name = "waitlist.email.welcome"
//! partitions = 10
//!
//! [[topics]]
//! name = "waitlist.events.user.signup"
//! partitions = 10
//! retention = "1y"
//! ```
//!
//! Every key of an entry may also stand in `[defaults]` (except `name`). Retention is
//! `retention = "7d"` (units `ms`, `s`, `m`, `h`, `d`, `w`, `y` = 365 days, or `"forever"`) or
//! `retention_ms`.

use std::path::Path;

use conveyor_core::topic::CleanupPolicy;
use conveyor_core::TopicSpec;
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::config::load::format_figment;
use crate::config::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    #[serde(default)]
    defaults: Entry,
    #[serde(default)]
    topics: Vec<Entry>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: Option<String>,
    partitions: Option<i32>,
    retention: Option<String>,
    retention_ms: Option<i64>,
    retention_bytes: Option<u64>,
    cleanup_policy: Option<CleanupPolicy>,
    replication_factor: Option<i32>,
    min_insync_replicas: Option<i32>,
}

/// Parses a retention: `"7d"`, `"12h"`, `"1y"`, `"500ms"`, ... or `"forever"` (`None`).
///
/// ```
/// use conveyor_server::topics::parse_retention;
/// assert_eq!(parse_retention("7d"), Ok(Some(7 * 24 * 3600 * 1000)));
/// assert_eq!(parse_retention("forever"), Ok(None));
/// assert!(parse_retention("7 parsecs").is_err());
/// ```
pub fn parse_retention(s: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    if matches!(s, "forever" | "infinite" | "-1") {
        return Ok(None);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like \"7d\", \"12h\" or \"forever\""))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        "y" => 365 * 86_400_000,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`: use ms, s, m, h, d, w or y"
            ))
        }
    };
    n.checked_mul(ms)
        .filter(|v| *v > 0)
        .map(Some)
        .ok_or_else(|| format!("`{s}` is out of range"))
}

/// Reads a topics file.
pub fn load_topics_file(path: &Path) -> Result<Vec<TopicSpec>, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Invalid {
            key: "-f".into(),
            message: format!("{} does not exist", path.display()),
        });
    }
    specs(Figment::from(Toml::file(path)))
}

/// Parses a topics file's text.
pub fn parse_topics(toml: &str) -> Result<Vec<TopicSpec>, ConfigError> {
    specs(Figment::from(Toml::string(toml)))
}

fn specs(fig: Figment) -> Result<Vec<TopicSpec>, ConfigError> {
    let file: TopicsFile = fig
        .extract()
        .map_err(|e| ConfigError::Parse(format_figment(e)))?;
    let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
    if file.defaults.name.is_some() {
        return Err(invalid(
            "defaults.name".into(),
            "a name belongs in a [[topics]] entry".into(),
        ));
    }
    if file.topics.is_empty() {
        return Err(invalid(
            "topics".into(),
            "the file lists no [[topics]]".into(),
        ));
    }
    let d = &file.defaults;
    let mut out: Vec<TopicSpec> = Vec::new();
    for (i, e) in file.topics.iter().enumerate() {
        let key = |k: &str| format!("topics[{i}].{k}");
        let name = e
            .name
            .clone()
            .ok_or_else(|| invalid(key("name"), "every topic needs a name".into()))?;
        if out.iter().any(|t| t.name == name) {
            return Err(invalid(key("name"), format!("`{name}` is listed twice")));
        }
        let retention_ms = match (&e.retention, e.retention_ms) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("retention"),
                    "set `retention` or `retention_ms`, not both".into(),
                ))
            }
            (Some(r), None) => parse_retention(r).map_err(|m| invalid(key("retention"), m))?,
            (None, Some(ms)) => Some(ms),
            (None, None) => match (&d.retention, d.retention_ms) {
                (Some(r), _) => {
                    parse_retention(r).map_err(|m| invalid("defaults.retention".into(), m))?
                }
                (None, Some(ms)) => Some(ms),
                (None, None) => Some(TopicSpec::DEFAULT_RETENTION_MS),
            },
        };
        let spec = TopicSpec {
            name,
            partitions: e
                .partitions
                .or(d.partitions)
                .unwrap_or(TopicSpec::DEFAULT_PARTITIONS),
            retention_ms,
            retention_bytes: e.retention_bytes.or(d.retention_bytes),
            cleanup_policy: e.cleanup_policy.or(d.cleanup_policy).unwrap_or_default(),
            replication_factor: e.replication_factor.or(d.replication_factor),
            min_insync_replicas: e.min_insync_replicas.or(d.min_insync_replicas),
        };
        spec.validate()
            .map_err(|err| invalid(format!("topics[{i}]"), err.to_string()))?;
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_entries_and_durations_parse() {
        let specs = parse_topics(
            r#"
[defaults]
replication_factor = 3
min_insync_replicas = 2
retention = "7d"
partitions = 10

[[topics]]
name = "jobs"

[[topics]]
name = "events"
retention = "1y"
partitions = 5

[[topics]]
name = "state"
retention = "forever"
cleanup_policy = "compact"
"#,
        )
        .unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].partitions, 10);
        assert_eq!(specs[0].retention_ms, Some(7 * 86_400_000));
        assert_eq!(specs[0].replication_factor, Some(3));
        assert_eq!(specs[1].retention_ms, Some(365 * 86_400_000));
        assert_eq!(specs[1].partitions, 5);
        assert_eq!(specs[2].retention_ms, None);
        assert_eq!(specs[2].cleanup_policy, CleanupPolicy::Compact);
    }

    #[test]
    fn errors_name_the_entry() {
        let e = |toml: &str| parse_topics(toml).unwrap_err().to_string();
        assert!(e("[[topics]]\npartitions = 3").contains("topics[0].name"));
        assert!(e("[[topics]]\nname = \"a\"\n[[topics]]\nname = \"a\"").contains("twice"));
        assert!(e("[[topics]]\nname = \"a\"\nretention = \"3 fortnights\"")
            .contains("topics[0].retention"));
        assert!(e("[[topics]]\nname = \"a\"\nreplicas = 3").contains("replicas"));
        assert!(
            e("[[topics]]\nname = \"a\"\ncleanup_policy = \"shred\"").contains("cleanup_policy")
        );
        assert!(
            e("[[topics]]\nname = \"a\"\nreplication_factor = 1\nmin_insync_replicas = 2")
                .contains("min_insync_replicas")
        );
        assert!(e("").contains("no [[topics]]"));
    }
}
