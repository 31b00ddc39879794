//! The time scenarios (`conveyor-runtime/tests/support/time.rs`) on Apache Kafka: delayed jobs
//! through the delay-tier topics, cancellation, retries through the tiers that hold only their
//! key, deadlines and timeouts, pause and resume through the control topic, second copies, and
//! two groups on one topic. Needs a live broker; built only with `--features live`.

#![cfg(feature = "live")]

mod live;

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::Backend;
use conveyor_kafka::{KafkaBackend, KafkaConfig};

#[path = "../../conveyor-runtime/tests/support/time.rs"]
mod time;

fn backend() -> Arc<dyn Backend> {
    Arc::new(KafkaBackend::connect(KafkaConfig::new(live::brokers())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_never_run_early() {
    time::delayed_jobs_never_run_early(
        backend(),
        &live::unique("time"),
        300,
        Duration::from_secs(8),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_job_never_runs() {
    time::cancelled_job_never_runs(backend(), &live::unique("time")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_key_holds_only_its_later_jobs() {
    time::failing_key_holds_only_its_later_jobs(backend(), &live::unique("time")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_timeouts() {
    time::deadlines_and_timeouts(backend(), &live::unique("time")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_and_resume_releases() {
    time::pause_holds_and_resume_releases(backend(), &live::unique("time")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_copies_are_dropped() {
    time::second_copies_are_dropped(backend(), &live::unique("time")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_runs_a_delayed_job_once() {
    time::each_group_runs_a_delayed_job_once(backend(), &live::unique("time")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_retry_keeps_its_attempt_number_across_a_restart() {
    time::a_returned_retry_keeps_its_attempt_number_across_a_restart(
        backend(),
        &live::unique("time"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_key_at_the_bound_lets_go() {
    time::a_parked_key_at_the_bound_lets_go(backend(), &live::unique("time")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_of_one_key_start_in_due_order() {
    time::delayed_jobs_of_one_key_start_in_due_order(backend(), &live::unique("time")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_in_memory_do_not_stop_fetching() {
    time::delayed_jobs_in_memory_do_not_stop_fetching(backend(), &live::unique("time")).await;
}

#[path = "../../conveyor-runtime/tests/support/unique.rs"]
mod unique;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_a_thousand_concurrent_unique_jobs_runs() {
    unique::one_of_a_thousand_concurrent_unique_jobs_runs(backend(), &live::unique("time"), false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_written_past_the_client_are_dropped_before_running() {
    unique::duplicates_written_past_the_client_are_dropped_before_running(
        backend(),
        &live::unique("time"),
    )
    .await;
}
