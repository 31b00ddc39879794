//! A rebalance never lets two members run jobs of one key at once: a slow key's jobs run on one
//! worker, a second worker joins mid-run and takes partitions; the revocation waits for the
//! running job (the worker's revoke barrier), so run intervals per key never overlap and each
//! key's jobs start in offset order. Embedded backend here; the Kafka backend runs the same
//! scenario in `conveyor-kafka/tests/rebalance_mock.rs`.

use std::sync::Arc;

use conveyor_core::Backend;
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

#[path = "support/rebalance.rs"]
mod scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_joining_mid_job_waits_for_the_running_job_of_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    let b = Arc::clone(&backend);
    scenario::no_key_runs_twice_at_once(move || Arc::clone(&b), 8).await;
}
