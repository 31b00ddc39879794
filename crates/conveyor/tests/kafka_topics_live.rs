//! `conveyor topics apply` against `conveyor dev` on a real Kafka broker: creating a topic,
//! then changing its retention and adding partitions, each read back from the broker itself
//! (DescribeConfigs and metadata through a separate client). Needs a live broker:
//! `scripts/kafka.sh` (the test command starts it) or `CONVEYOR_TEST_BROKERS`. Built only with
//! `--features live`.

#![cfg(feature = "live")]

mod util;

use std::time::Duration;

use conveyor_core::Backend;
use conveyor_kafka::{KafkaBackend, KafkaConfig};
use util::{conveyor, free_port, start_dev, wait_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_apply_changes_retention_and_adds_partitions_on_the_broker() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS=host:port, or run the tests through scripts/kafka.sh");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!("backend = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let _dev = start_dev(&config);
    wait_ok(&base, "/readyz", Duration::from_secs(60)).await;
    let broker = KafkaBackend::connect(KafkaConfig::new(brokers)).unwrap();

    let topic = format!("apply.{}", util::unique_suffix());
    let file = dir.path().join("topics.toml");
    let f = file.to_str().unwrap();
    let url = ["--url", base.as_str()];
    let apply = |body: String| {
        std::fs::write(&file, body).unwrap();
        conveyor(&[&["topics", "apply", "-f", f, "--yes"][..], &url].concat())
    };

    let (ok, out, err) = apply(format!(
        "[[topics]]\nname = \"{topic}\"\npartitions = 3\nretention = \"1d\"\n"
    ));
    assert!(ok, "{out}{err}");
    assert!(out.contains("applied: 1 created, 0 updated"), "{out}");
    let spec = broker
        .topic_spec(&topic)
        .await
        .unwrap()
        .expect("created on the broker");
    assert_eq!((spec.partitions, spec.retention_ms), (3, Some(86_400_000)));

    let (ok, out, err) = apply(format!(
        "[[topics]]\nname = \"{topic}\"\npartitions = 5\nretention = \"3d\"\nretention_bytes = 1073741824\n"
    ));
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("~ {topic} (update)")), "{out}");
    assert!(out.contains("adding partitions (3 -> 5)"), "{out}");
    assert!(out.contains("applied: 0 created, 1 updated"), "{out}");
    let spec = broker.topic_spec(&topic).await.unwrap().unwrap();
    assert_eq!(
        (spec.partitions, spec.retention_ms, spec.retention_bytes),
        (5, Some(259_200_000), Some(1_073_741_824)),
        "read back from the broker"
    );
    let info = broker.describe_topic(&topic).await.unwrap().unwrap();
    assert_eq!(
        info.partition_count(),
        5,
        "metadata lists the new partitions"
    );

    let (ok, out, _) = conveyor(&[&["topics", "apply", "-f", f, "--yes"][..], &url].concat());
    assert!(ok);
    assert!(out.contains("nothing to do"), "{out}");

    // a shrink is refused and changes nothing on the broker
    let (ok, out, err) = apply(format!("[[topics]]\nname = \"{topic}\"\npartitions = 2\n"));
    assert!(!ok);
    assert!(
        out.contains("refused: partitions cannot shrink (5 -> 2)"),
        "{out}"
    );
    assert!(err.contains("nothing was applied"), "{err}");
    assert_eq!(
        broker.topic_spec(&topic).await.unwrap().unwrap().partitions,
        5
    );
    eprintln!("topics apply on Kafka: created with 3 partitions and 1 d, updated to 5 partitions, 3 d and 1 GiB, read back from the broker");
}
