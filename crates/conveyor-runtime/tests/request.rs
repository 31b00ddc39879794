//! Request/reply on the embedded backend (the scenarios are in `support/request.rs`).

use std::sync::Arc;

use conveyor_core::Backend;
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

#[path = "support/request.rs"]
mod request;

fn open(dir: &tempfile::TempDir) -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_each_get_their_own_reply() {
    let dir = tempfile::tempdir().unwrap();
    request::thousand_concurrent_requests(open(&dir), "quotes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_serves_times_out() {
    let dir = tempfile::tempdir().unwrap();
    request::unserved_request_times_out(open(&dir), "unserved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_request_fails_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    request::dead_lettered_request_fails(open(&dir), "refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_for_callers_that_went_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    request::replies_for_gone_callers_are_dropped_and_counted(open(&dir), "gated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sharing_a_reply_topic_take_only_their_own_replies() {
    let dir = tempfile::tempdir().unwrap();
    request::clients_sharing_a_reply_topic_take_their_own(open(&dir), "agents", "responses").await;
}
