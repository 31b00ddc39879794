//! A schedule put just before a tick keeps that tick, on Apache Kafka (the scenario is
//! `conveyor-runtime/tests/support/schedule_change.rs`; embedded runs it in
//! `conveyor-runtime/tests/schedule_change.rs`). Needs a live broker; built only with
//! `--features live`.

#![cfg(feature = "live")]

mod live;

use std::sync::Arc;

use conveyor_core::Backend;
use conveyor_kafka::{KafkaBackend, KafkaConfig};

#[path = "../../conveyor-runtime/tests/support/schedule_change.rs"]
mod schedule_change;

/// One at a time: a scheduler fires every schedule in the broker's control log, so two running at
/// once would each fire the other's ticks too.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn backend() -> Arc<dyn Backend> {
    Arc::new(KafkaBackend::connect(KafkaConfig::new(live::brokers())).unwrap())
}

/// The API and the scheduler in one process (`conveyor dev`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_just_before_a_tick_keeps_the_tick() {
    let _one = ONE_AT_A_TIME.lock().await;
    schedule_change::a_put_just_before_a_tick_keeps_the_tick(backend(), &live::unique("one")).await;
}

/// The API in one process, the elected scheduler in another (each reads the control log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_seen_late_by_the_scheduler_keeps_the_tick() {
    let _one = ONE_AT_A_TIME.lock().await;
    schedule_change::a_put_just_before_a_tick_keeps_the_tick_across(
        backend(),
        backend(),
        &live::unique("two"),
    )
    .await;
}
