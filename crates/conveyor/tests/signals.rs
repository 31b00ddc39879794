//! SIGTERM (what systemd, Docker and Kubernetes send) drains `conveyor dev` exactly like Ctrl-C
//! (SIGINT): the process exits on its own with status 0, the deliveries running at the signal
//! finish and are committed, and after a restart no job is delivered twice. On the embedded
//! backend, and with `--features live` on the Kafka broker of `scripts/kafka.sh`.

mod util;

use std::process::Command;
use std::time::Duration;

use util::{free_port, post_jobs, receiver, start_dev, wait_for, wait_ok};

/// `backend`: the configuration lines choosing the backend (empty: embedded).
async fn drains_on(signal: &str, backend: &str, topic: &str) {
    // each delivery takes 2 s; 8 run at once
    let (hook, received) = receiver(Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n{backend}\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"{topic}\"\npartitions = 4\n[[routes]]\ntopic = \"{topic}\"\nurl = \"http://{hook}/hook\"\nconcurrency = 8\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_dev(&config);
    wait_ok(&base, "/readyz", Duration::from_secs(60)).await;
    let acked = post_jobs(&base, topic, "slow", 16, 4).await;
    assert_eq!(acked.len(), 16);
    wait_for(Duration::from_secs(60), "8 deliveries running", || {
        received.total() >= 8
    })
    .await;
    let ok = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "conveyor dev did not stop after {signal}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{signal}: exited by signal or with an error: {status:?}"
    );
    let before_restart = received.ids();

    let _child = start_dev(&config);
    wait_ok(&base, "/readyz", Duration::from_secs(60)).await;
    wait_for(
        Duration::from_secs(60),
        "every job delivered after the restart",
        || {
            let ids = received.ids();
            acked.iter().all(|id| ids.contains_key(id))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a repeat would arrive now
    let ids = received.ids();
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{signal}: delivered twice after the restart: {twice:?} ({} had been delivered before it)",
        before_restart.len()
    );
    eprintln!(
        "{signal}: drained in {:.1} s, exit 0; {} of 16 delivered before the restart, none twice",
        started.elapsed().as_secs_f64(),
        before_restart.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_like_ctrl_c() {
    drains_on("-TERM", "", "jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains() {
    drains_on("-INT", "", "jobs").await;
}

/// The same on the Kafka backend.
#[cfg(feature = "live")]
mod kafka {
    use super::drains_on;

    fn backend() -> String {
        let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect(
            "set CONVEYOR_TEST_BROKERS=host:port, or run the tests through scripts/kafka.sh",
        );
        format!("backend = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\nsession_timeout_ms = 6000")
    }

    fn topic(signal: &str) -> String {
        format!("signals{signal}.{}", std::process::id())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_drains_like_ctrl_c_on_kafka() {
        drains_on("-TERM", &backend(), &topic("term")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigint_drains_on_kafka() {
        drains_on("-INT", &backend(), &topic("int")).await;
    }
}
