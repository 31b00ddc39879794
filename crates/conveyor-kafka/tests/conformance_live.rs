//! The shared conformance suite against a separate broker process: Apache Kafka started by
//! `scripts/kafka.sh` (the test command does it), or any Kafka-protocol broker given as
//! `CONVEYOR_TEST_BROKERS=host:port` (Redpanda included). It runs twice: with the classic
//! consumer group protocol (cooperative-sticky) and with KIP-848's `group.protocol=consumer`.
//! Built only with `--features live`.

#![cfg(feature = "live")]

mod live;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conveyor_conformance::{conformance_tests, Features, Harness};
use conveyor_core::{Backend, Result};
use conveyor_kafka::{GroupProtocol, KafkaBackend, KafkaConfig};

struct Live(GroupProtocol);

#[async_trait]
impl Harness for Live {
    async fn open(&self) -> Result<Arc<dyn Backend>> {
        let mut config = KafkaConfig::new(live::brokers());
        config.session_timeout = Duration::from_secs(6);
        config.group_protocol = self.0;
        Ok(Arc::new(KafkaBackend::connect(config)?))
    }
}

fn features() -> Features {
    Features {
        timeout: Duration::from_secs(60),
        ..Features::default()
    }
}

/// The classic group protocol: JoinGroup/SyncGroup with the cooperative-sticky assignor.
mod classic {
    use super::*;
    conformance_tests!(features(), Live(GroupProtocol::Classic));
}

/// KIP-848's consumer group protocol (`group.protocol=consumer`): the broker assigns.
mod kip848 {
    use super::*;
    conformance_tests!(features(), Live(GroupProtocol::Consumer));
}
