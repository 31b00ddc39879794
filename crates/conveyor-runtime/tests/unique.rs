//! Unique jobs on the embedded backend (the scenario is in `support/unique.rs`).

use std::sync::Arc;

use conveyor_core::Backend;
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

#[path = "support/unique.rs"]
mod unique;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_a_thousand_concurrent_unique_jobs_runs() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    unique::one_of_a_thousand_concurrent_unique_jobs_runs(b, "u", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_written_past_the_client_are_dropped_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    unique::duplicates_written_past_the_client_are_dropped_before_running(b, "u").await;
}
