//! A poison job: its handler aborts the whole process. Attempt counts live in the commit
//! metadata, so after `max_attempts` such crashes the job is dead-lettered with reason
//! `exhausted` and the partition moves on (issue 7 item 12). The worker runs in a child process
//! (this test binary again, running the ignored `poison_child_process`) that the parent restarts
//! after each crash.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use conveyor_core::headers::dlq;
use conveyor_core::{Backend, Outcome, RetryPolicy, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::{handler_fn, Client, Job, NewJob, Worker};

const DIR_ENV: &str = "CONVEYOR_POISON_DIR";
const MAX_ATTEMPTS: u32 = 3;
const JOBS: i64 = 6;

fn open(dir: &Path) -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir)).unwrap())
}

/// The child: a worker whose `poison` handler aborts the process. It stops (exit 0) once the
/// group committed every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by poison_job_is_dead_lettered_after_max_attempts_crashes in a child process"]
async fn poison_child_process() {
    let dir = std::env::var(DIR_ENV).expect("run by the parent test");
    let backend = open(Path::new(&dir));
    let done_file = Path::new(&dir).join("done.txt");
    let worker = Worker::builder(Arc::clone(&backend), "g", ["jobs"])
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = backend.committed_offsets("g", "jobs").await.unwrap();
        if c == vec![(0, Some(JOBS))] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_job_is_dead_lettered_after_max_attempts_crashes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = open(dir.path());
        backend
            .create_topic(&TopicSpec::new("jobs", 1))
            .await
            .unwrap();
        let client = Client::new(Arc::clone(&backend));
        for i in 0..JOBS {
            let t = if i == 2 { "poison" } else { "ok" };
            client
                .enqueue("jobs", NewJob::json(t, &i).unwrap())
                .await
                .unwrap();
        }
        backend.close().await.unwrap();
    }
    let mut crashes = 0;
    let mut clean = false;
    for _run in 0..2 * MAX_ATTEMPTS + 2 {
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "poison_child_process",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(DIR_ENV, dir.path())
            .status()
            .unwrap();
        if status.success() {
            clean = true;
            break;
        }
        assert!(
            status.code().is_none(),
            "the child failed rather than crashed: {status}"
        );
        crashes += 1;
    }
    assert!(
        clean,
        "still crashing after {crashes} runs: the poison job's attempts are not counted across crashes"
    );
    assert_eq!(
        crashes, MAX_ATTEMPTS,
        "the poison job ran {crashes} times; max_attempts is {MAX_ATTEMPTS}"
    );

    let backend = open(dir.path());
    let dead = backend.fetch("jobs.dlq", 0, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "one dead letter");
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
    let done = std::fs::read_to_string(dir.path().join("done.txt")).unwrap();
    let mut done: Vec<i64> = done.lines().map(|l| l.parse().unwrap()).collect();
    done.sort_unstable();
    done.dedup();
    assert_eq!(done, vec![0, 1, 3, 4, 5], "every other job ran");
    assert_eq!(
        backend.committed_offsets("g", "jobs").await.unwrap(),
        vec![(0, Some(JOBS))],
        "the partition moved on"
    );
}
