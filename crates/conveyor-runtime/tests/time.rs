//! Delayed jobs, cancellation, retries through the delay tiers, deadlines, timeouts, pause and
//! second copies, on the embedded backend (the scenarios are in `support/time.rs`; the Kafka
//! backend runs the same ones in `conveyor-kafka/tests/time_live.rs`).

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::Backend;
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

#[path = "support/time.rs"]
mod time;

fn backend() -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    (dir, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_never_run_early() {
    let (_d, b) = backend();
    time::delayed_jobs_never_run_early(b, "t", 1000, Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_job_never_runs() {
    let (_d, b) = backend();
    time::cancelled_job_never_runs(b, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_key_holds_only_its_later_jobs() {
    let (_d, b) = backend();
    time::failing_key_holds_only_its_later_jobs(b, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_timeouts() {
    let (_d, b) = backend();
    time::deadlines_and_timeouts(b, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_and_resume_releases() {
    let (_d, b) = backend();
    time::pause_holds_and_resume_releases(b, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_copies_are_dropped() {
    let (_d, b) = backend();
    time::second_copies_are_dropped(b, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_runs_a_delayed_job_once() {
    let (_d, b) = backend();
    time::each_group_runs_a_delayed_job_once(b, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_retry_keeps_its_attempt_number_across_a_restart() {
    let (_d, b) = backend();
    time::a_returned_retry_keeps_its_attempt_number_across_a_restart(b, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_key_at_the_bound_lets_go() {
    let (_d, b) = backend();
    time::a_parked_key_at_the_bound_lets_go(b, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_of_one_key_start_in_due_order() {
    let (_d, b) = backend();
    time::delayed_jobs_of_one_key_start_in_due_order(b, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_in_memory_do_not_stop_fetching() {
    let (_d, b) = backend();
    time::delayed_jobs_in_memory_do_not_stop_fetching(b, "t").await;
}
