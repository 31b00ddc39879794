//! A poison job on the embedded backend: its handler aborts the process; after `max_attempts`
//! crashes it is dead-lettered (`exhausted`) and the partition moves on (issue 7 item 12). The
//! scenario is `support/poison.rs`; `conveyor-kafka/tests/poison_live.rs` runs it on Kafka.

use std::path::Path;
use std::sync::Arc;

use conveyor_core::Backend;
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

#[path = "support/poison.rs"]
mod poison;

const DIR_ENV: &str = "CONVEYOR_POISON_DIR";

fn open(dir: &Path) -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.join("data"))).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by poison_job_is_dead_lettered_after_max_attempts_crashes in a child process"]
async fn poison_child_process() {
    let dir = std::env::var(DIR_ENV).expect("run by the parent test");
    let dir = Path::new(&dir);
    poison::child(open(dir), "jobs", "g", dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_job_is_dead_lettered_after_max_attempts_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    poison::prepare(Arc::clone(&backend), "jobs").await;
    backend.close().await.unwrap();
    drop(backend);
    let crashes = poison::parent(
        "poison_child_process",
        &[(DIR_ENV, dir.path().display().to_string())],
    );
    // embedded: the count of a first attempt is committed before it runs
    assert_eq!(
        crashes,
        poison::MAX_ATTEMPTS,
        "the poison job ran {crashes} times; max_attempts is {}",
        poison::MAX_ATTEMPTS
    );
    poison::check(open(dir.path()), "jobs", "g", dir.path()).await;
}
