//! Topic creation. Real clusters use Kafka's CreateTopics through librdkafka's admin client;
//! the librdkafka mock cluster, which lacks CreateTopics, plugs in its own [`TopicCreator`].

use std::fmt;

use async_trait::async_trait;
use conveyor_core::{Error, Result, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// Creates topics. `Ok` when the topic exists afterwards (created now or before).
#[async_trait]
pub trait TopicCreator: Send + Sync + fmt::Debug {
    /// Creates the topic of `spec`.
    async fn create(&self, spec: &TopicSpec) -> Result<()>;
}

/// Creates topics with Kafka's admin API.
pub struct AdminCreator {
    admin: AdminClient<DefaultClientContext>,
    replication: i32,
    timeout: std::time::Duration,
}

impl fmt::Debug for AdminCreator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminCreator")
            .field("replication", &self.replication)
            .finish_non_exhaustive()
    }
}

impl AdminCreator {
    /// An admin client for the configured cluster.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Ok(AdminCreator {
            admin: config.admin().create().map_err(crate::broker)?,
            replication: config.replication_factor.unwrap_or(-1),
            timeout: config.request_timeout,
        })
    }
}

#[async_trait]
impl TopicCreator for AdminCreator {
    async fn create(&self, spec: &TopicSpec) -> Result<()> {
        let retention = spec.retention_ms.unwrap_or(-1).to_string();
        let bytes = spec.retention_bytes.map_or(-1, |b| b as i64).to_string();
        let topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(self.replication),
        )
        .set("retention.ms", &retention)
        .set("retention.bytes", &bytes);
        let opts = AdminOptions::new()
            .operation_timeout(Some(self.timeout))
            .request_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics([&topic], &opts)
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
}
