//! Kafka batches are not atomic: a batch whose third record is too large for the producer has
//! its first two stored. The error says so (`PartlyStored`, 2 of 3, caused by the size) instead
//! of "not stored", so a caller does not take the batch for lost (issue 7 item 10).

use std::sync::Arc;

use conveyor_core::{Backend, Error, Record, TopicSpec};
use conveyor_kafka::mock::MockBroker;
use conveyor_kafka::{KafkaBackend, KafkaConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_written_batch_says_how_much_was_stored() {
    let mock = Arc::new(MockBroker::start(1).expect("mock cluster"));
    let backend =
        KafkaBackend::with_admin(KafkaConfig::new(mock.bootstrap_servers()), mock.clone()).unwrap();
    backend
        .create_topic(&TopicSpec::new("jobs", 1))
        .await
        .unwrap();
    let batch = vec![
        Record::new("first"),
        Record::new("second"),
        Record::new(vec![b'x'; 2_000_000]),
    ];
    match backend.publish("jobs", batch).await {
        Err(Error::PartlyStored {
            stored,
            total,
            cause,
        }) => {
            assert_eq!((stored, total), (2, 3));
            assert!(matches!(*cause, Error::RecordTooLarge { .. }), "{cause}");
        }
        other => panic!("expected PartlyStored, got {other:?}"),
    }
    let stored = backend.fetch("jobs", 0, 0, 10).await.unwrap();
    assert_eq!(
        stored.len(),
        2,
        "the first two records are stored, as the error says"
    );

    // an atomic refusal stays a plain error
    match backend
        .publish("jobs", vec![Record::new(vec![b'x'; 2_000_000])])
        .await
    {
        Err(Error::RecordTooLarge { .. }) => {}
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
}
