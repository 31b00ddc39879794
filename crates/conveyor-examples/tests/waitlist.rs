//! The waitlist example: after a few hundred signups the projection rebuilt by replaying the
//! event topics from offset 0 equals the live one (and holds what the plan implies); after a
//! restart on the same data the live projection goes on from where it stopped and a rebuild
//! still equals it; the binary runs as its "Run with" line says. Embedded backend; with
//! `--features live` and `CONVEYOR_TEST_BROKERS`, the same on Kafka in a namespace of its own.

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::Backend;
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_examples::waitlist::{self, expected_events, Names};

const WAIT: Duration = Duration::from_secs(120);

async fn two_runs(
    open: impl Fn() -> Arc<dyn Backend>,
    close: bool,
    names: Names,
    dir: &std::path::Path,
) {
    let backend = open();
    let first = waitlist::run(Arc::clone(&backend), names.clone(), dir, 300, WAIT)
        .await
        .unwrap();
    if close {
        backend.close().await.unwrap();
    }
    assert_eq!(first.live.events.len(), expected_events(300));
    let (signups, verified, referrals, rewards) = first.live.summary();
    assert_eq!((signups, verified), (300, 270));
    assert!(
        referrals > 100 && referrals == rewards,
        "{referrals} {rewards}"
    );
    assert!(
        first.rebuilt == first.live,
        "rebuilt after the first run: (signups, verified, referrals, rewards) {:?}, {} events; live {:?}, {} events",
        first.rebuilt.summary(),
        first.rebuilt.events.len(),
        first.live.summary(),
        first.live.events.len()
    );
    assert!(!first.live.positions("campaign-0").is_empty());

    // a restart on the same data: the live projection goes on, 150 more signups
    let backend = open();
    let second = waitlist::run(Arc::clone(&backend), names.clone(), dir, 150, WAIT)
        .await
        .unwrap();
    if close {
        backend.close().await.unwrap();
    }
    assert_eq!(second.live.signups(), 450);
    assert_eq!(second.live.events.len(), expected_events(450));
    assert!(
        second.rebuilt == second.live,
        "rebuilt after the restart: (signups, verified, referrals, rewards) {:?}, {} events; live {:?}, {} events",
        second.rebuilt.summary(),
        second.rebuilt.events.len(),
        second.live.summary(),
        second.live.events.len()
    );
    // and rebuilding again (nothing running) gives the same
    let backend = open();
    let again = waitlist::projection::rebuild(backend.as_ref(), &names)
        .await
        .unwrap();
    assert!(
        again == second.live,
        "a second rebuild: {:?}",
        again.summary()
    );
    if close {
        backend.close().await.unwrap();
    }
    eprintln!(
        "waitlist: {} events; rebuilt from offset 0 equals the live projection after 300 signups and after a restart and 150 more",
        second.live.events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuilt_projection_equals_the_live_one_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    // the application restarts (workers, live projection from its file) on one open log; the
    // binary's test below restarts the whole process, log included
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(&log)).unwrap());
    let open = move || Arc::clone(&backend);
    two_runs(open, false, Names::default(), &dir.path().join("waitlist")).await;
}

#[test]
fn the_binary_runs_as_its_run_with_line_says() {
    let dir = tempfile::tempdir().unwrap();
    for run in 1..=2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_waitlist"))
            .args(["--signups", "60", "--data"])
            .arg(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("rebuilt from offset 0: matches the live projection"),
            "{stdout}"
        );
        // the second process goes on from the first one's projection
        let signups = format!("live projection: {} signups", 60 * run);
        assert!(stdout.contains(&signups), "{stdout}");
    }
}

#[cfg(feature = "live")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_kafka_rebuilt_projection_equals_the_live_one() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect("CONVEYOR_TEST_BROKERS=host:port");
    let dir = tempfile::tempdir().unwrap();
    let names = Names {
        namespace: format!(
            "t{}.",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ),
    };
    let open = move || -> Arc<dyn Backend> {
        Arc::new(
            conveyor_kafka::KafkaBackend::connect(conveyor_kafka::KafkaConfig::new(
                brokers.clone(),
            ))
            .unwrap(),
        )
    };
    two_runs(open, true, names, dir.path()).await;
}
