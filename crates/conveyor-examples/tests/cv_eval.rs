//! Transactional consume-and-emit under random crashes: the CV evaluator (`src/bin/cv_eval.rs`)
//! is killed with `kill -9` at random moments while it works through its evaluations, and
//! restarted; after every kill and at the end a committed-only reader (every conveyor reader:
//! the embedded log shows only whole writes, Kafka readers are `read_committed`) must see each
//! evaluation's result event and notification job at most once, and at the end exactly once.
//!
//! Embedded here; the same on the live broker with `--features live` (`scripts/live.sh`).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_cv_eval");

/// A tiny generator for the kill moments, seeded from the clock (the seed is printed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn run(backend: &[String], args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(backend)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cv_eval");
    assert!(
        out.status.success(),
        "cv_eval {args:?} failed: {:?}",
        out.status
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `(results, notifications)`: per CV, how many of each a committed-only reader sees.
fn counts(backend: &[String]) -> (BTreeMap<u64, u64>, BTreeMap<u64, u64>) {
    let (mut results, mut notify) = (BTreeMap::new(), BTreeMap::new());
    for line in run(backend, &["results"]).lines() {
        let mut it = line.split(' ');
        let (topic, cv, n) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let map = match topic.ends_with("evaluation-results") {
            true => &mut results,
            false => &mut notify,
        };
        map.insert(cv.parse().unwrap(), n.parse().unwrap());
    }
    (results, notify)
}

fn assert_at_most_once(stage: &str, results: &BTreeMap<u64, u64>, notify: &BTreeMap<u64, u64>) {
    for (what, m) in [("result", results), ("notification", notify)] {
        let twice: Vec<_> = m.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{stage}: {} CVs have more than one {what} (first: {:?})",
            twice.len(),
            &twice[..twice.len().min(5)]
        );
    }
}

/// Enqueues `n`, kills the worker `kills` times after a random 0.3-1.5 s (plus `settle` for a
/// restarted member's group join, at most 2 s for the first), then lets a last worker finish;
/// checks the counts after each step.
fn exactly_once_under_kills(backend: Vec<String>, n: u64, kills: usize, settle: Duration) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("cv_eval chaos: seed {seed}, {n} evaluations, {kills} kills");
    let mut rng = Lcg(seed);
    run(&backend, &["enqueue", "--count", &n.to_string()]);
    let started = Instant::now();
    let mut progress = Vec::new();
    for k in 0..kills {
        let mut child = Command::new(BIN)
            .arg("worker")
            .args(&backend)
            .stderr(Stdio::null())
            .spawn()
            .expect("start worker");
        // the first worker joins a fresh group at once; a restarted one waits for the killed
        // member's session first (`settle`)
        let join = match k {
            0 => settle.min(Duration::from_secs(2)),
            _ => settle,
        };
        std::thread::sleep(join + Duration::from_millis(300 + rng.next(1200)));
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let (results, notify) = counts(&backend);
        assert_at_most_once(&format!("after kill {}", k + 1), &results, &notify);
        progress.push(results.len());
    }
    let status = Command::new(BIN)
        .args(["worker", "--exit-when-idle"])
        .args(&backend)
        .stderr(Stdio::inherit())
        .status()
        .expect("last worker");
    assert!(status.success(), "the last worker failed: {status:?}");
    // Kafka makes a committed transaction readable once its commit markers are written, a
    // moment after the commit: read again for a while until everything shows
    let deadline = Instant::now() + Duration::from_secs(30);
    let (results, notify) = loop {
        let (results, notify) = counts(&backend);
        let complete = results.len() as u64 == n && notify.len() as u64 == n;
        if complete || Instant::now() >= deadline {
            break (results, notify);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_at_most_once("at the end", &results, &notify);
    let missing: Vec<u64> = (0..n).filter(|cv| !results.contains_key(cv)).collect();
    assert!(
        missing.is_empty(),
        "{} results missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let missing: Vec<u64> = (0..n).filter(|cv| !notify.contains_key(cv)).collect();
    assert!(
        missing.is_empty(),
        "{} notifications missing",
        missing.len()
    );
    assert!(
        progress.iter().any(|p| *p > 0 && (*p as u64) < n),
        "no kill landed mid-work (results seen after each kill: {progress:?}); the test proved nothing"
    );
    println!(
        "cv_eval chaos: {kills} kills (results seen after each: {progress:?}); at the end {} results and {} notifications for {n} evaluations, each exactly once ({:.1} s)",
        results.values().sum::<u64>(),
        notify.values().sum::<u64>(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn embedded_results_are_written_exactly_once_under_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let backend = vec![
        "--backend".to_owned(),
        "embedded".to_owned(),
        "--data".to_owned(),
        dir.path().display().to_string(),
    ];
    exactly_once_under_kills(backend, 20_000, 8, Duration::ZERO);
}

#[cfg(feature = "live")]
#[test]
fn live_kafka_results_are_written_exactly_once_under_kill_9() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect(
        "CONVEYOR_TEST_BROKERS is not set: run through scripts/live.sh (it starts Apache Kafka)",
    );
    let prefix = format!(
        "cv{}.",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let backend = vec![
        "--backend".to_owned(),
        "kafka".to_owned(),
        "--brokers".to_owned(),
        brokers,
        "--prefix".to_owned(),
        prefix,
    ];
    // a restarted member waits for the killed one's session (10 s) before it gets partitions
    exactly_once_under_kills(backend, 20_000, 3, Duration::from_secs(11));
}
