//! Topic administration: create topics, read and change their configuration, add partitions.
//! Real clusters use Kafka's admin API through librdkafka's admin client ([`AdminClientTopics`]);
//! the librdkafka mock cluster, which lacks those requests, plugs in its own [`TopicAdmin`].

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use conveyor_core::topic::CleanupPolicy;
use conveyor_core::{Error, Result, TopicSpec};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// The topic-level settings conveyor manages, as Kafka reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfigs {
    /// `retention.ms`; `None` for -1 (forever).
    pub retention_ms: Option<i64>,
    /// `retention.bytes`; `None` for -1 (no limit).
    pub retention_bytes: Option<u64>,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `min.insync.replicas`.
    pub min_insync_replicas: Option<i32>,
}

/// The topic configuration entries a spec sets, in Kafka's names.
pub fn config_entries(spec: &TopicSpec) -> Vec<(&'static str, String)> {
    let mut entries = vec![
        ("retention.ms", spec.retention_ms.unwrap_or(-1).to_string()),
        (
            "retention.bytes",
            spec.retention_bytes.map_or(-1, |b| b as i64).to_string(),
        ),
        ("cleanup.policy", spec.cleanup_policy.as_str().to_owned()),
    ];
    if let Some(isr) = spec.min_insync_replicas {
        entries.push(("min.insync.replicas", isr.to_string()));
    }
    entries
}

/// Topic administration requests.
#[async_trait]
pub trait TopicAdmin: Send + Sync + fmt::Debug {
    /// Creates the topic of `spec`. `Ok` when the topic exists afterwards (created now or before).
    async fn create(&self, spec: &TopicSpec) -> Result<()>;

    /// Reads the topic's configuration.
    async fn configs(&self, topic: &str) -> Result<TopicConfigs>;

    /// Sets topic configuration entries, keeping the other entries set on the topic.
    async fn alter(&self, topic: &str, entries: &[(&'static str, String)]) -> Result<()>;

    /// Grows the topic to `total` partitions.
    async fn add_partitions(&self, topic: &str, total: i32) -> Result<()>;
}

/// Topic administration with Kafka's admin API (CreateTopics, DescribeConfigs, AlterConfigs,
/// CreatePartitions).
pub struct AdminClientTopics {
    admin: AdminClient<DefaultClientContext>,
    replication: Option<i32>,
    timeout: std::time::Duration,
}

impl fmt::Debug for AdminClientTopics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClientTopics")
            .field("replication", &self.replication)
            .finish_non_exhaustive()
    }
}

impl AdminClientTopics {
    /// An admin client for the configured cluster.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Ok(AdminClientTopics {
            admin: config.admin().create().map_err(crate::broker)?,
            replication: config.replication_factor,
            timeout: config.request_timeout,
        })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .operation_timeout(Some(self.timeout))
            .request_timeout(Some(self.timeout))
    }

    /// Every entry of the topic's configuration, with whether it was set on the topic itself.
    async fn entries(&self, topic: &str) -> Result<Vec<(String, Option<String>, bool)>> {
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &self.options())
            .await
            .map_err(|e| admin_error(e, "reading topic configuration (DescribeConfigs)"))?;
        let resource = results
            .into_iter()
            .next()
            .ok_or_else(|| Error::Broker(format!("no configuration returned for `{topic}`")))?
            .map_err(|code| match code {
                RDKafkaErrorCode::UnknownTopicOrPartition => Error::UnknownTopic(topic.to_owned()),
                code => Error::Broker(format!("cannot describe topic `{topic}`: {code}")),
            })?;
        Ok(resource
            .entries
            .into_iter()
            .map(|e| {
                let own = e.source == ConfigSource::DynamicTopic;
                (e.name, e.value, own)
            })
            .collect())
    }
}

/// An admin error, as `Unsupported` when the broker lacks the request.
fn admin_error(e: rdkafka::error::KafkaError, what: &str) -> Error {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion) => {
            Error::Unsupported {
                backend: "this broker".into(),
                what: format!("{what}; make the change with the broker's own tools"),
            }
        }
        _ => crate::broker(e),
    }
}

/// The error code of the first failed resource in an admin call's results.
fn first_failure<T>(results: Vec<Result<T, (T, RDKafkaErrorCode)>>) -> Option<RDKafkaErrorCode> {
    results
        .into_iter()
        .find_map(|r| r.err().map(|(_, code)| code))
}

fn parse_entries(topic: &str, entries: &[(String, Option<String>, bool)]) -> Result<TopicConfigs> {
    let get = |name: &str| {
        entries
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, v, _)| v.as_deref())
    };
    let bad = |name: &str, v: &str| {
        Error::Broker(format!(
            "topic `{topic}` reports {name}={v}, which conveyor cannot read"
        ))
    };
    let int = |name: &str| -> Result<Option<i64>> {
        match get(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| bad(name, v)),
        }
    };
    let cleanup_policy = match get("cleanup.policy") {
        None => CleanupPolicy::Delete,
        Some(v) => CleanupPolicy::parse(v).ok_or_else(|| bad("cleanup.policy", v))?,
    };
    Ok(TopicConfigs {
        retention_ms: int("retention.ms")?.filter(|v| *v >= 0),
        retention_bytes: int("retention.bytes")?
            .filter(|v| *v >= 0)
            .map(|v| v as u64),
        cleanup_policy,
        min_insync_replicas: int("min.insync.replicas")?.map(|v| v as i32),
    })
}

#[async_trait]
impl TopicAdmin for AdminClientTopics {
    async fn create(&self, spec: &TopicSpec) -> Result<()> {
        let entries = config_entries(spec);
        let replication = spec.replication_factor.or(self.replication).unwrap_or(-1);
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(replication),
        );
        for (k, v) in &entries {
            topic = topic.set(k, v);
        }
        let results = self
            .admin
            .create_topics([&topic], &self.options())
            .await
            .map_err(crate::broker)?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::Broker(format!(
                        "cannot create topic `{name}`: {code}"
                    )));
                }
            }
        }
        Ok(())
    }

    async fn configs(&self, topic: &str) -> Result<TopicConfigs> {
        parse_entries(topic, &self.entries(topic).await?)
    }

    async fn alter(&self, topic: &str, entries: &[(&'static str, String)]) -> Result<()> {
        // AlterConfigs replaces the topic's whole configuration: keep what was set on the topic.
        let current = self.entries(topic).await?;
        let mut merged: HashMap<String, String> = current
            .into_iter()
            .filter_map(|(name, value, own)| own.then_some(value.map(|v| (name, v))).flatten())
            .collect();
        for (k, v) in entries {
            merged.insert((*k).to_owned(), v.clone());
        }
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (k, v) in &merged {
            alter = alter.set(k, v);
        }
        let results = self
            .admin
            .alter_configs([&alter], &self.options())
            .await
            .map_err(|e| admin_error(e, "changing topic configuration (AlterConfigs)"))?;
        match first_failure(results) {
            Some(code) => Err(Error::Broker(format!(
                "cannot change the configuration of topic `{topic}`: {code}"
            ))),
            None => Ok(()),
        }
    }

    async fn add_partitions(&self, topic: &str, total: i32) -> Result<()> {
        let new = NewPartitions::new(topic, total as usize);
        let results = self
            .admin
            .create_partitions([&new], &self.options())
            .await
            .map_err(|e| admin_error(e, "adding partitions (CreatePartitions)"))?;
        match first_failure(results) {
            Some(code) => Err(Error::Broker(format!(
                "cannot grow topic `{topic}` to {total} partitions: {code}"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_configs_read_back_into_a_spec() {
        let e = |n: &str, v: &str| (n.to_owned(), Some(v.to_owned()), true);
        let c = parse_entries(
            "t",
            &[
                e("retention.ms", "-1"),
                e("retention.bytes", "1048576"),
                e("cleanup.policy", "compact,delete"),
                e("min.insync.replicas", "2"),
            ],
        )
        .unwrap();
        assert_eq!(c.retention_ms, None);
        assert_eq!(c.retention_bytes, Some(1_048_576));
        assert_eq!(c.cleanup_policy, CleanupPolicy::CompactDelete);
        assert_eq!(c.min_insync_replicas, Some(2));
        assert!(parse_entries("t", &[e("retention.ms", "soon")]).is_err());
    }

    #[test]
    fn a_spec_writes_every_managed_entry() {
        let mut spec = TopicSpec::new("t", 3);
        spec.retention_ms = None;
        let entries = config_entries(&spec);
        assert!(entries.contains(&("retention.ms", "-1".to_owned())));
        assert!(entries.contains(&("cleanup.policy", "delete".to_owned())));
        assert!(!entries.iter().any(|(k, _)| *k == "min.insync.replicas"));
    }
}
