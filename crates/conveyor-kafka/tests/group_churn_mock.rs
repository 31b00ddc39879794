//! The churn scenario of `group_churn_live.rs` on librdkafka's mock cluster (classic protocol,
//! cooperative-sticky): three members join and leave under load with a backlog; every offset is
//! delivered before it is committed (issue 7 item 2; the live broker runs it with KIP-848 too).

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::Backend;
use conveyor_kafka::mock::MockBroker;
use conveyor_kafka::{KafkaBackend, KafkaConfig};

#[path = "support/churn.rs"]
mod churn;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_join_and_leave_under_load_on_the_mock_cluster() {
    let mock = Arc::new(MockBroker::start(3).expect("mock cluster"));
    let make = {
        let mock = Arc::clone(&mock);
        move || -> Arc<dyn Backend> {
            let mut config = KafkaConfig::new(mock.bootstrap_servers());
            config.session_timeout = Duration::from_secs(6);
            let admin: Arc<dyn conveyor_kafka::TopicAdmin> = mock.clone();
            Arc::new(KafkaBackend::with_admin(config, admin).unwrap())
        }
    };
    churn::churn(Arc::new(make), "mock cluster", 2_000).await;
}
