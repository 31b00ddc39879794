//! Dead-letter replay on the embedded backend: a worker dead-letters jobs, `replay` moves the
//! selected ones back as fresh jobs, once each, and a worker whose handler now succeeds finishes
//! them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_core::headers::{self, dlq};
use conveyor_core::{Backend, ConsumedRecord, Record, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_runtime::operations::replay::{replay, ReplayRequest};
use conveyor_runtime::worker::dead_letter::trimmed_dead_letter_record;
use conveyor_runtime::{handler_fn, Client, Job, JobError, NewJob, Worker};
use tokio::sync::oneshot;

struct Env {
    _dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    client: Client,
}

async fn env(topic: &str, partitions: i32) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new(topic, partitions))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&backend));
    Env {
        _dir: dir,
        backend,
        client,
    }
}

/// Runs the worker until `done()` holds (or 20 s pass), then shuts it down.
async fn run_until(worker: Worker, done: impl Fn() -> bool) {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

/// Records of `topic` from `from` on, every partition.
async fn read_from(backend: &Arc<dyn Backend>, topic: &str, from: i64) -> Vec<ConsumedRecord> {
    let info = backend
        .describe_topic(topic)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{topic} exists"));
    let mut out = Vec::new();
    for p in info.partitions {
        out.extend(
            backend
                .fetch(topic, p.partition, from.max(p.low), 100_000)
                .await
                .unwrap(),
        );
    }
    out
}

/// A worker of group `g` on `jobs` whose `charge` and `email` handlers always fail.
fn failing_worker(backend: &Arc<dyn Backend>) -> Worker {
    let fail = || handler_fn(|_job: Job| async { Err::<(), _>(JobError::fail("broken")) });
    Worker::builder(Arc::clone(backend), "g", ["jobs"])
        .handler("charge", fail())
        .handler("email", fail())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_once_as_fresh_jobs_and_then_succeed() {
    let e = env("jobs", 1).await;
    // 6 `charge` and 4 `email` jobs, interleaved
    let types = [
        "charge", "email", "charge", "email", "charge", "email", "charge", "email", "charge",
        "charge",
    ];
    let mut ids = HashMap::new();
    for (i, t) in types.iter().enumerate() {
        let at = e
            .client
            .enqueue(
                "jobs",
                NewJob::json(*t, &serde_json::json!({ "i": i }))
                    .unwrap()
                    .with_key(format!("k{i}"))
                    .with_header("tenant", "acme"),
            )
            .await
            .unwrap();
        ids.insert(at.id, *t);
    }
    let worker = failing_worker(&e.backend);
    let stats = worker.stats();
    run_until(worker, || stats.dead_lettered.load(Ordering::SeqCst) == 10).await;
    let dead = read_from(&e.backend, "jobs.dlq", 0).await;
    assert_eq!(dead.len(), 10);
    let dead_at: HashMap<i64, &ConsumedRecord> = dead.iter().map(|r| (r.offset, r)).collect();
    let charges: Vec<i64> = dead
        .iter()
        .filter(|r| r.headers.get_str(headers::JOB_TYPE) == Some("charge"))
        .map(|r| r.offset)
        .collect();
    assert_eq!(charges.len(), 6);
    // charges at the inner four dead-letter offsets: the first and last charge are outside the
    // range, the emails inside it are of another type
    let range = (charges[1], charges[4]);
    let selected: HashSet<i64> = charges[1..=4].iter().copied().collect();
    let req = ReplayRequest {
        job_type: Some("charge".into()),
        offsets: Some(range),
        ..ReplayRequest::new("jobs.dlq")
    };

    // a dry run reports what would move and writes nothing
    let dry = replay(
        &e.backend,
        &ReplayRequest {
            dry_run: true,
            ..req.clone()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert!(dry.dry_run);
    assert_eq!(
        (dry.scanned, dry.matched, dry.replayed, dry.already_replayed),
        ((range.1 - range.0 + 1) as u64, 4, 4, 0),
        "{dry:?}"
    );
    assert!(dry.moved.iter().all(|m| m.offset.is_none()), "{dry:?}");
    assert_eq!(read_from(&e.backend, "jobs", 0).await.len(), 10);
    assert!(
        e.backend
            .describe_topic("jobs.dlq.replayed")
            .await
            .unwrap()
            .is_none(),
        "a dry run creates no ledger"
    );

    // the replay: the four selected charges, back in `jobs` as fresh jobs
    let mut progress = Vec::new();
    let report = replay(&e.backend, &req, |p| progress.push(p.clone()))
        .await
        .unwrap();
    assert_eq!(
        (report.matched, report.replayed, report.already_replayed),
        (4, 4, 0),
        "{report:?}"
    );
    assert_eq!(report.skipped_unroutable, 0);
    let last = progress.last().expect("progress reported");
    assert_eq!(last.next_offset, range.1 + 1);
    assert!(last.done);
    let replayed = read_from(&e.backend, "jobs", 10).await;
    assert_eq!(replayed.len(), 4);
    let mut from_offsets = HashSet::new();
    for r in &replayed {
        let from = r.headers.get_str(headers::REPLAYED_FROM).unwrap();
        let offset: i64 = from.strip_prefix("jobs.dlq/0/").unwrap().parse().unwrap();
        from_offsets.insert(offset);
        let d = dead_at[&offset];
        assert_eq!(r.headers.get_str(headers::ATTEMPT), Some("1"));
        assert_eq!(r.headers.get_str(headers::JOB_TYPE), Some("charge"));
        assert_eq!(
            r.headers.get_str(headers::MESSAGE_ID),
            d.headers.get_str(headers::MESSAGE_ID)
        );
        assert!(ids.contains_key(r.headers.get_str(headers::MESSAGE_ID).unwrap()));
        assert_eq!(r.headers.get_str("tenant"), Some("acme"));
        assert_eq!(r.value, d.value);
        assert_eq!(r.key, d.key);
        let dlq_headers: Vec<&str> = r
            .headers
            .iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with("dlq_"))
            .collect();
        assert!(dlq_headers.is_empty(), "{dlq_headers:?}");
    }
    assert_eq!(from_offsets, selected);
    let ledger = read_from(&e.backend, "jobs.dlq.replayed", 0).await;
    assert_eq!(ledger.len(), 4);

    // the same replay again moves nothing
    let again = replay(&e.backend, &req, |_| {}).await.unwrap();
    assert_eq!(
        (again.matched, again.replayed, again.already_replayed),
        (4, 0, 4),
        "{again:?}"
    );
    assert_eq!(read_from(&e.backend, "jobs", 10).await.len(), 4);

    // everything: the six others move, the four are skipped; then nothing is left
    let all = replay(&e.backend, &ReplayRequest::new("jobs.dlq"), |_| {})
        .await
        .unwrap();
    assert_eq!(
        (all.scanned, all.replayed, all.already_replayed),
        (10, 6, 4),
        "{all:?}"
    );
    let all = replay(&e.backend, &ReplayRequest::new("jobs.dlq"), |_| {})
        .await
        .unwrap();
    assert_eq!((all.replayed, all.already_replayed), (0, 10), "{all:?}");
    assert_eq!(read_from(&e.backend, "jobs", 10).await.len(), 10);

    // fixed handlers: every replayed job runs once, as attempt 1, and finishes
    let ran: Arc<Mutex<Vec<(String, u32, String)>>> = Arc::default();
    let ok = |ran: Arc<Mutex<Vec<(String, u32, String)>>>| {
        handler_fn(move |job: Job| {
            let from = job
                .record
                .headers
                .get_str(headers::REPLAYED_FROM)
                .unwrap_or("")
                .to_owned();
            ran.lock()
                .unwrap()
                .push((job.id().unwrap().to_owned(), job.attempt, from));
            async { Ok::<(), JobError>(()) }
        })
    };
    let worker = Worker::builder(Arc::clone(&e.backend), "g", ["jobs"])
        .handler("charge", ok(Arc::clone(&ran)))
        .handler("email", ok(Arc::clone(&ran)))
        .build();
    let stats = worker.stats();
    run_until(worker, || stats.done.load(Ordering::SeqCst) == 10).await;
    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.len(), 10);
    let ran_ids: HashSet<&str> = ran.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ran_ids.len(), 10, "each job ran once");
    assert!(ran_ids.iter().all(|id| ids.contains_key(*id)));
    assert!(ran
        .iter()
        .all(|(_, attempt, from)| *attempt == 1 && from.starts_with("jobs.dlq/0/")));
    assert_eq!(stats.dead_lettered.load(Ordering::SeqCst), 0);
    assert_eq!(read_from(&e.backend, "jobs.dlq", 0).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_dead_letters_are_skipped_with_a_reason_and_trimmed_ones_use_the_original() {
    let e = env("jobs", 2).await;
    for i in 0..4 {
        e.client
            .enqueue(
                "jobs",
                NewJob::json("charge", &i)
                    .unwrap()
                    .with_key(format!("k{i}")),
            )
            .await
            .unwrap();
    }
    let worker = failing_worker(&e.backend);
    let stats = worker.stats();
    run_until(worker, || stats.dead_lettered.load(Ordering::SeqCst) == 4).await;
    let dead = read_from(&e.backend, "jobs.dlq", 0).await;
    // beside them: a record that is no dead letter, one whose topic is gone, and a trimmed
    // dead letter (its value dropped) of a job still in `jobs`
    let mut gone = Record::new("{}").with_partition(0);
    gone.headers.insert(dlq::ORIGINAL_TOPIC, "deleted-long-ago");
    let trimmed = trimmed_dead_letter_record(&dead[0].to_record(), "too large");
    assert!(trimmed.value.is_empty());
    e.backend
        .publish(
            "jobs.dlq",
            vec![
                Record::new("not a dead letter").with_partition(0),
                gone,
                trimmed.with_partition(1),
            ],
        )
        .await
        .unwrap();

    // a limit stops each partition early and says where to go on
    let first = replay(
        &e.backend,
        &ReplayRequest {
            partition: Some(0),
            limit: Some(1),
            dry_run: true,
            ..ReplayRequest::new("jobs.dlq")
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(first.partitions.len(), 1);
    let p = &first.partitions[0];
    assert_eq!(
        (p.scanned, p.next_offset, p.done),
        (1, p.from_offset + 1, false)
    );

    let report = replay(&e.backend, &ReplayRequest::new("jobs.dlq"), |_| {})
        .await
        .unwrap();
    assert_eq!(
        (report.scanned, report.replayed, report.skipped_unroutable),
        (7, 5, 2),
        "{report:?}"
    );
    let reasons: Vec<&str> = report.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert!(
        reasons[0].contains("no `dlq_original_topic` header"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("`deleted-long-ago` does not exist"),
        "{reasons:?}"
    );
    // the trimmed dead letter came back with the original's value
    let back = read_from(&e.backend, "jobs", 0).await;
    let copies: Vec<&ConsumedRecord> = back
        .iter()
        .filter(|r| r.headers.get(headers::MESSAGE_ID) == dead[0].headers.get(headers::MESSAGE_ID))
        .collect();
    assert_eq!(copies.len(), 3, "the original and two replays");
    assert!(copies.iter().all(|r| r.value == dead[0].value));

    // the unroutable ones are not in the ledger: they are reported again, nothing moves
    let again = replay(&e.backend, &ReplayRequest::new("jobs.dlq"), |_| {})
        .await
        .unwrap();
    assert_eq!(
        (
            again.replayed,
            again.already_replayed,
            again.skipped_unroutable
        ),
        (0, 5, 2)
    );

    // what does not exist is an error, not an empty report
    let missing = replay(&e.backend, &ReplayRequest::new("nothing.dlq"), |_| {}).await;
    assert!(
        matches!(missing, Err(conveyor_core::Error::UnknownTopic(_))),
        "{missing:?}"
    );
    let beyond = replay(
        &e.backend,
        &ReplayRequest {
            partition: Some(2),
            ..ReplayRequest::new("jobs.dlq")
        },
        |_| {},
    )
    .await;
    assert!(
        matches!(beyond, Err(conveyor_core::Error::UnknownPartition { .. })),
        "{beyond:?}"
    );
}
