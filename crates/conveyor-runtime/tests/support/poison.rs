//! The poison-job scenario, shared by `conveyor-runtime/tests/poison.rs` (embedded) and
//! `conveyor-kafka/tests/poison_live.rs` (Apache Kafka): a handler aborts the whole process on
//! one job. Attempt counts live in the commit metadata, so after `max_attempts` such crashes (on
//! Kafka one more at most) the job is dead-lettered with reason `exhausted` and the partition
//! moves on. The worker runs in a child process (the test binary again, running an ignored test
//! that calls [`child`]) that [`parent`] restarts after each crash.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use conveyor_core::headers::dlq;
use conveyor_core::{Backend, Outcome, RetryPolicy, TopicSpec};
use conveyor_runtime::{handler_fn, Client, Job, NewJob, Worker};

pub(crate) const MAX_ATTEMPTS: u32 = 3;
const JOBS: i64 = 6;

/// The child: a worker whose `poison` handler aborts the process. It stops (exit 0) once the
/// group committed every job.
pub(crate) async fn child(backend: Arc<dyn Backend>, topic: &str, group: &str, dir: &Path) {
    let done_file = dir.join("done.txt");
    let worker = Worker::builder(Arc::clone(&backend), group, [topic])
        .retry(RetryPolicy {
            max_attempts: MAX_ATTEMPTS,
            initial_delay_ms: 10,
            ..RetryPolicy::default()
        })
        .concurrency(4)
        .handler(
            "ok",
            handler_fn(move |job: Job| {
                let done_file = done_file.clone();
                async move {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&done_file)
                        .unwrap();
                    f.write_all(format!("{}\n", job.record.offset).as_bytes())
                        .unwrap();
                    Outcome::Done
                }
            }),
        )
        .handler(
            "poison",
            handler_fn(|_job: Job| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                std::process::abort();
                #[allow(unreachable_code)]
                Outcome::Done
            }),
        )
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // a broker that just started may answer "not coordinator" for a moment
        let c = backend.committed_offsets(group, topic).await.ok();
        if c == Some(vec![(0, Some(JOBS))]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    backend.close().await.unwrap();
}

/// Enqueues the jobs (the third is the poison) on a new one-partition `topic`.
pub(crate) async fn prepare(backend: Arc<dyn Backend>, topic: &str) {
    backend
        .create_topic(&TopicSpec::new(topic, 1))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&backend));
    for i in 0..JOBS {
        let t = if i == 2 { "poison" } else { "ok" };
        client
            .enqueue(topic, NewJob::json(t, &i).unwrap())
            .await
            .unwrap();
    }
}

/// Runs the child test `child_test` (with `env`) until it exits cleanly; returns how many runs
/// crashed.
pub(crate) fn parent(child_test: &str, env: &[(&str, String)]) -> u32 {
    let mut crashes = 0;
    for _run in 0..2 * MAX_ATTEMPTS + 2 {
        let status = Command::new(std::env::current_exe().unwrap())
            .args([child_test, "--exact", "--ignored", "--nocapture"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .status()
            .unwrap();
        if status.success() {
            return crashes;
        }
        assert!(
            status.code().is_none(),
            "the child failed rather than crashed: {status}"
        );
        crashes += 1;
    }
    panic!("still crashing after {crashes} runs: the poison job's attempts are not counted across crashes");
}

/// What must hold afterwards: one dead letter (`exhausted`, `MAX_ATTEMPTS`), every other job
/// done, the partition committed to its end.
pub(crate) async fn check(backend: Arc<dyn Backend>, topic: &str, group: &str, dir: &Path) {
    let dead = backend
        .fetch(&format!("{topic}.dlq"), 0, 0, 10)
        .await
        .unwrap();
    let seen: Vec<_> = dead
        .iter()
        .map(|d| {
            (
                d.headers.get_str(dlq::ORIGINAL_OFFSET).map(str::to_owned),
                d.headers.get_str(dlq::ATTEMPTS).map(str::to_owned),
                d.headers.get_str(dlq::ERROR).map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(dead.len(), 1, "one dead letter: {seen:#?}");
    let h = &dead[0].headers;
    assert_eq!(h.get_str(dlq::REASON), Some("exhausted"));
    assert_eq!(
        h.get_str(dlq::ATTEMPTS),
        Some(MAX_ATTEMPTS.to_string().as_str())
    );
    assert_eq!(h.get_str(dlq::ORIGINAL_OFFSET), Some("2"));
    assert!(
        h.get_str(dlq::ERROR).unwrap().contains("none finished"),
        "{:?}",
        h.get_str(dlq::ERROR)
    );
    let done = std::fs::read_to_string(dir.join("done.txt")).unwrap();
    let mut done: Vec<i64> = done.lines().map(|l| l.parse().unwrap()).collect();
    done.sort_unstable();
    done.dedup();
    assert_eq!(done, vec![0, 1, 3, 4, 5], "every other job ran");
    assert_eq!(
        backend.committed_offsets(group, topic).await.unwrap(),
        vec![(0, Some(JOBS))],
        "the partition moved on"
    );
}
