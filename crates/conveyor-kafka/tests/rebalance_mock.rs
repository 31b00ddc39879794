//! The rebalance scenario of `conveyor-runtime/tests/rebalance.rs` on the Kafka backend, on
//! librdkafka's mock cluster: a second worker joins while the first runs slow jobs; the
//! revocation waits in the rebalance callback for the running jobs of the revoked partitions,
//! so no key runs on two members at once.

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::Backend;
use conveyor_kafka::mock::MockBroker;
use conveyor_kafka::{KafkaBackend, KafkaConfig};

#[path = "../../conveyor-runtime/tests/support/rebalance.rs"]
mod scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_joining_mid_job_waits_for_the_running_job_of_its_key() {
    let mock = Arc::new(MockBroker::start(1).expect("mock cluster"));
    let mut config = KafkaConfig::new(mock.bootstrap_servers());
    config.session_timeout = Duration::from_secs(6);
    scenario::no_key_runs_twice_at_once(
        move || -> Arc<dyn Backend> {
            Arc::new(KafkaBackend::with_admin(config.clone(), mock.clone()).unwrap())
        },
        50,
    )
    .await;
}
