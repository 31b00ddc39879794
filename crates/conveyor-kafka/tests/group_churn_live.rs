//! Three workers of one consumer group joining and leaving under load on a real broker: every
//! acknowledged job is delivered, no key runs on two members at once, each key's jobs are first
//! delivered in order, and the group's committed offsets never pass work that has not finished.
//! Runs with the classic protocol (cooperative-sticky) and with KIP-848. Needs a live broker:
//! `scripts/kafka.sh` (the test command starts it) or `CONVEYOR_TEST_BROKERS`. Built only with
//! `--features live`.

#![cfg(feature = "live")]

mod live;

use live::brokers;

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::Backend;
use conveyor_kafka::{GroupProtocol, KafkaBackend, KafkaConfig};

#[path = "support/churn.rs"]
mod churn;

fn backend(protocol: GroupProtocol) -> Arc<dyn Backend> {
    let mut config = KafkaConfig::new(brokers());
    config.session_timeout = Duration::from_secs(6);
    config.group_protocol = protocol;
    Arc::new(KafkaBackend::connect(config).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_join_and_leave_under_load_classic() {
    churn::churn(
        Arc::new(|| backend(GroupProtocol::Classic)),
        "classic",
        3_000,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_join_and_leave_under_load_kip848() {
    churn::churn(
        Arc::new(|| backend(GroupProtocol::Consumer)),
        "KIP-848",
        3_000,
    )
    .await;
}

#[path = "../../conveyor-runtime/tests/support/rebalance.rs"]
mod scenario;

/// The rebalance scenario of `conveyor-runtime/tests/rebalance.rs` on the live broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_joining_mid_job_waits_for_the_running_job_of_its_key() {
    scenario::no_key_runs_twice_at_once(|| backend(GroupProtocol::Classic), 40).await;
}
