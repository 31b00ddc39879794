//! The shared conformance suite against a separate broker process: tansu (started by
//! `scripts/live-kafka.sh`) or any Kafka/Redpanda given as `CONVEYOR_TEST_BROKERS=host:port`.
//! Built only with `--features live`.

#![cfg(feature = "live")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conveyor_conformance::{conformance_tests, Features, Harness};
use conveyor_core::{Backend, Result};
use conveyor_kafka::{KafkaBackend, KafkaConfig};

struct Live;

#[async_trait]
impl Harness for Live {
    async fn open(&self) -> Result<Arc<dyn Backend>> {
        let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
            .expect("set CONVEYOR_TEST_BROKERS=host:port, or run scripts/live-kafka.sh");
        let mut config = KafkaConfig::new(brokers);
        config.session_timeout = Duration::from_secs(6);
        Ok(Arc::new(KafkaBackend::connect(config)?))
    }
}

/// tansu 0.6 lacks AlterConfigs and CreatePartitions (see DEVELOPERS.md); `scripts/live-kafka.sh` sets
/// `CONVEYOR_TEST_BROKER_KIND=tansu` when it runs it. Any other broker runs every case.
fn features() -> Features {
    let tansu = std::env::var("CONVEYOR_TEST_BROKER_KIND").is_ok_and(|k| k == "tansu");
    Features {
        timeout: Duration::from_secs(60),
        alter_topic_config: !tansu,
        add_partitions: !tansu,
        ..Features::default()
    }
}

conformance_tests!(features(), Live);
