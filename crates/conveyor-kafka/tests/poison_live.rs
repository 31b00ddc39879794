//! The poison job (`conveyor-runtime/tests/support/poison.rs`) on Apache Kafka: a handler that
//! aborts its process is dead-lettered (`exhausted`) after `max_attempts` crashes, at most one
//! more (the first run's count is only stored locally until the next commit), and the partition
//! moves on. The restarted member takes over at once through static membership
//! (`group.instance.id`). Needs a live broker; built only with `--features live`.

#![cfg(feature = "live")]

mod live;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use conveyor_core::Backend;
use conveyor_kafka::{KafkaBackend, KafkaConfig};

#[path = "../../conveyor-runtime/tests/support/poison.rs"]
mod poison;

fn backend() -> Arc<dyn Backend> {
    let mut config = KafkaConfig::new(live::brokers()).set("group.instance.id", "poison-child");
    config.session_timeout = Duration::from_secs(6);
    Arc::new(KafkaBackend::connect(config).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_poison_job_is_dead_lettered_on_kafka in a child process"]
async fn poison_child_process() {
    let var = |k: &str| std::env::var(k).expect("run by the parent test");
    let dir = var("CONVEYOR_POISON_DIR");
    poison::child(
        backend(),
        &var("CONVEYOR_POISON_TOPIC"),
        &var("CONVEYOR_POISON_GROUP"),
        Path::new(&dir),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_dead_lettered_on_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let (topic, group) = (live::unique("poison"), live::unique("poison.g"));
    poison::prepare(backend(), &topic).await;
    let crashes = poison::parent(
        "poison_child_process",
        &[
            ("CONVEYOR_POISON_DIR", dir.path().display().to_string()),
            ("CONVEYOR_POISON_TOPIC", topic.clone()),
            ("CONVEYOR_POISON_GROUP", group.clone()),
        ],
    );
    let max = poison::MAX_ATTEMPTS;
    assert!(
        (max..=max + 1).contains(&crashes),
        "the poison job ran {crashes} times; max_attempts is {max}"
    );
    eprintln!("poison on Kafka: dead-lettered after {crashes} crashes (max_attempts {max})");
    poison::check(backend(), &topic, &group, dir.path()).await;
}
