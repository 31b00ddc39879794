//! A record another producer wrote with a header name that is not UTF-8 (rust-rdkafka's
//! `BorrowedHeaders::try_get` unwraps names as UTF-8, which used to kill the worker's poll loop
//! for good, at every restart): it is delivered like any record, and so are the records after it
//! (issue 7 item 6). The record is produced through librdkafka's C API (`conveyor-rawkafka`),
//! which takes header names as bytes; the Rust and Java clients cannot write such a name.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_core::{Backend, TopicSpec};
use conveyor_kafka::mock::MockBroker;
use conveyor_kafka::{KafkaBackend, KafkaConfig, TopicAdmin};
use conveyor_runtime::{handler_fn, Client, Job, NewJob, Worker};

/// The offset of a delivered record and its header names.
type Delivery = (i64, Vec<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_does_not_stop_delivery() {
    let mock = Arc::new(MockBroker::start(1).expect("mock cluster"));
    let admin: Arc<dyn TopicAdmin> = mock.clone();
    let backend: Arc<dyn Backend> = Arc::new(
        KafkaBackend::with_admin(KafkaConfig::new(mock.bootstrap_servers()), admin).unwrap(),
    );
    backend.create_topic(&TopicSpec::new("t", 1)).await.unwrap();
    conveyor_rawkafka::produce_with_header_name(
        mock.bootstrap_servers(),
        "t",
        0,
        b"\xff\xfe-not-utf8",
        b"{\"n\": 0}",
    )
    .unwrap();
    let client = Client::new(Arc::clone(&backend));
    client
        .enqueue(
            "t",
            NewJob::json("after", &serde_json::json!({"n": 1})).unwrap(),
        )
        .await
        .unwrap();

    // (offset, header names) of each delivery
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let worker = Worker::builder(Arc::clone(&backend), "g", ["t"])
        .fallback(handler_fn({
            let seen = Arc::clone(&seen);
            move |job: Job| {
                let seen = Arc::clone(&seen);
                async move {
                    let names = job
                        .record
                        .headers
                        .iter()
                        .map(|(k, _)| k.to_owned())
                        .collect();
                    seen.lock().unwrap().push((job.record.offset, names));
                }
            }
        }))
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered only {:?}",
            seen.lock().unwrap()
        );
        assert!(!run.is_finished(), "the worker stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        [0, 1],
        "both delivered (keyless: in any order)"
    );
    assert!(
        seen[0].1.iter().all(|n| !n.contains("not-utf8")),
        "the name that is not UTF-8 is skipped: {:?}",
        seen[0].1
    );
}
