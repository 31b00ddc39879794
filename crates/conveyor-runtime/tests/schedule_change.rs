//! A schedule put just before a tick keeps that tick, on the embedded backend (the scenario is in
//! `support/schedule_change.rs`; the Kafka backend runs it in
//! `conveyor-kafka/tests/schedule_change_live.rs`).

use std::sync::Arc;

use conveyor_core::Backend;
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

#[path = "support/schedule_change.rs"]
mod schedule_change;

fn backend() -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    (dir, b)
}

/// The API and the scheduler in one process (`conveyor dev`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_just_before_a_tick_keeps_the_tick() {
    let (_d, b) = backend();
    schedule_change::a_put_just_before_a_tick_keeps_the_tick(b, "one").await;
}

/// The scheduler reading the control log on its own, as in another process than the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_seen_late_by_the_scheduler_keeps_the_tick() {
    let (_d, b) = backend();
    schedule_change::a_put_just_before_a_tick_keeps_the_tick_across(Arc::clone(&b), b, "two").await;
}
