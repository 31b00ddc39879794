//! Request/reply (`conveyor-runtime/tests/support/request.rs`) on Apache Kafka: 1,000
//! concurrent requests each get their own reply, a request nobody serves times out with
//! `RequestTimeout`, a dead-lettered request fails with its error, replies for callers that
//! went are dropped and counted, and clients sharing a reply topic take only their own replies.
//! Needs a live broker; built only with `--features live`.

#![cfg(feature = "live")]

mod live;

use std::sync::Arc;

use conveyor_core::Backend;
use conveyor_kafka::{KafkaBackend, KafkaConfig};

#[path = "../../conveyor-runtime/tests/support/request.rs"]
mod request;

fn backend() -> Arc<dyn Backend> {
    Arc::new(KafkaBackend::connect(KafkaConfig::new(live::brokers())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_each_get_their_own_reply_on_kafka() {
    request::thousand_concurrent_requests(backend(), &live::unique("req.quotes")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_serves_times_out_on_kafka() {
    request::unserved_request_times_out(backend(), &live::unique("req.unserved")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_request_fails_with_its_error_on_kafka() {
    request::dead_lettered_request_fails(backend(), &live::unique("req.refused")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_for_callers_that_went_are_dropped_and_counted_on_kafka() {
    request::replies_for_gone_callers_are_dropped_and_counted(
        backend(),
        &live::unique("req.gated"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sharing_a_reply_topic_take_only_their_own_replies_on_kafka() {
    request::clients_sharing_a_reply_topic_take_their_own(
        backend(),
        &live::unique("req.agents"),
        &live::unique("req.responses"),
    )
    .await;
}
