//! Settings of the Kafka backend. librdkafka properties pass through as a string map; secrets
//! never appear in `Debug` output or logs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;

/// Producer tuning presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// `linger.ms=0`: each publish goes out at once. The default.
    #[default]
    LowLatency,
    /// `linger.ms=5`, 1 MiB batches, lz4: more records per request.
    Throughput,
}

/// The consumer group protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupProtocol {
    /// The classic protocol (JoinGroup/SyncGroup) with the `cooperative-sticky` assignor and the
    /// client's `session.timeout.ms`. The default: every Kafka-protocol broker has it.
    #[default]
    Classic,
    /// KIP-848 (`group.protocol=consumer`, Kafka 4.0+): the broker assigns partitions
    /// incrementally and owns the session timeout (`group.consumer.session.timeout.ms`, 45 s by
    /// default), so [`KafkaConfig::session_timeout`] does not apply.
    Consumer,
}

/// Property names whose values are secret.
const SECRET_KEYS: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl_key",
];

/// How to reach and use the cluster.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port,host:port`: the bootstrap brokers.
    pub brokers: String,
    /// Producer preset. Default: [`Profile::LowLatency`].
    pub profile: Profile,
    /// Replication factor of topics created by conveyor; `None` (the default) uses the broker's
    /// `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// Consumer session timeout. Default: 10 s (librdkafka's default is 45 s; a crashed worker's
    /// partitions move after this long).
    pub session_timeout: Duration,
    /// Timeout of metadata, watermark and admin calls. Default: 10 s.
    pub request_timeout: Duration,
    /// Longest a publish waits for the cluster to store a record (`message.timeout.ms`, retries
    /// included) before it fails with a broker error. Default: 30 s. A publish that failed this
    /// way may still have been stored: a retrying caller can create a duplicate (same content,
    /// new message id), never a loss.
    pub delivery_timeout: Duration,
    /// Consumer group protocol. Default: [`GroupProtocol::Classic`].
    pub group_protocol: GroupProtocol,
    /// Longest a broker may hold a fetch that has no data (`fetch.wait.max.ms`). Default: 10 ms:
    /// Kafka answers at once when data arrives, but some Kafka-protocol brokers (librdkafka's mock,
    /// tansu) hold every fetch this long, which then bounds job latency.
    pub fetch_wait: Duration,
    /// Extra librdkafka properties (TLS, SASL, tuning), applied last to every client.
    pub properties: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "******" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("profile", &self.profile)
            .field("replication_factor", &self.replication_factor)
            .field("session_timeout", &self.session_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("group_protocol", &self.group_protocol)
            .field("properties", &props)
            .finish()
    }
}

/// Whether a property's value must not be shown.
pub(crate) fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key) || key.contains("password") || key.contains("secret")
}

impl KafkaConfig {
    /// Defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            profile: Profile::default(),
            replication_factor: None,
            session_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            group_protocol: GroupProtocol::default(),
            fetch_wait: Duration::from_millis(10),
            properties: BTreeMap::new(),
        }
    }

    /// Sets a librdkafka property.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "conveyor");
        c
    }

    fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The producer's configuration: idempotent, `acks=all`, murmur2 partitioning.
    pub(crate) fn producer(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().max(1).to_string(),
            )
            // how long a broker may hold a produce request waiting for the in-sync replicas:
            // half the delivery timeout leaves room for one retry inside it
            .set(
                "request.timeout.ms",
                (self.delivery_timeout.as_millis() / 2)
                    .clamp(1_000, 30_000)
                    .to_string(),
            );
        match self.profile {
            Profile::LowLatency => {
                c.set("linger.ms", "0");
            }
            Profile::Throughput => {
                c.set("linger.ms", "5")
                    .set("batch.size", "1048576")
                    .set("compression.type", "lz4");
            }
        }
        self.finish(c)
    }

    /// A group member's configuration: manual commits; on the classic protocol cooperative-sticky
    /// assignment and the session timeout (KIP-848 leaves both to the broker and refuses them).
    pub(crate) fn consumer(&self, group: &str, reset: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", reset);
        match self.group_protocol {
            GroupProtocol::Classic => c
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set(
                    "session.timeout.ms",
                    self.session_timeout.as_millis().to_string(),
                ),
            GroupProtocol::Consumer => c.set("group.protocol", "consumer"),
        };
        c.set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", self.fetch_wait.as_millis().to_string());
        self.finish(c)
    }

    /// A reader outside any group (fetch, committed offsets).
    pub(crate) fn reader(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        self.finish(c)
    }

    /// The admin client's configuration.
    pub(crate) fn admin(&self) -> ClientConfig {
        self.finish(self.base())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden_from_debug() {
        let c = KafkaConfig::new("b:9092")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", "app")
            .set("sasl.password", "hunter2")
            .set("ssl.key.password", "s3cret");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("SCRAM-SHA-512") && shown.contains("app"));
    }

    #[test]
    fn producer_is_idempotent_and_partitions_like_java() {
        let p = KafkaConfig::new("b:9092").producer();
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("partitioner"), Some("murmur2_random"));
        let mut t = KafkaConfig::new("b:9092");
        t.profile = Profile::Throughput;
        assert_eq!(t.producer().get("compression.type"), Some("lz4"));
    }

    #[test]
    fn delivery_timeout_bounds_a_publish() {
        let mut c = KafkaConfig::new("b:9092");
        assert_eq!(c.producer().get("message.timeout.ms"), Some("30000"));
        c.delivery_timeout = Duration::from_secs(5);
        assert_eq!(c.producer().get("message.timeout.ms"), Some("5000"));
    }

    #[test]
    fn the_consumer_protocol_leaves_assignment_and_sessions_to_the_broker() {
        let mut c = KafkaConfig::new("b:9092");
        let classic = c.consumer("g", "earliest");
        assert_eq!(
            classic.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(classic.get("group.protocol"), None);
        c.group_protocol = GroupProtocol::Consumer;
        let next = c.consumer("g", "earliest");
        assert_eq!(next.get("group.protocol"), Some("consumer"));
        assert_eq!(next.get("partition.assignment.strategy"), None);
        assert_eq!(next.get("session.timeout.ms"), None);
    }
}
