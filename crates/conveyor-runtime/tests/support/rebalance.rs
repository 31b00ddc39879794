//! The rebalance scenario shared by the backends' tests: slow jobs of a few keys on every
//! partition, a first worker running them, a second joining while they run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_core::{Backend, TopicSpec};
use conveyor_runtime::{handler_fn, Client, Job, NewJob, Worker};
use tokio::sync::oneshot;

/// One run of a job: key, offset, member, start, end.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    key: String,
    offset: i64,
    member: &'static str,
    start: Instant,
    end: Instant,
}

const KEYS: usize = 4;
const SLOW: Duration = Duration::from_millis(150);

/// `backend()` gives each worker its backend (the same one for embedded, a new client for
/// Kafka); `per_key` jobs of each key must outlast the second worker's join. Panics on an
/// overlap of one key's runs or a start out of offset order.
pub(crate) async fn no_key_runs_twice_at_once(
    backend: impl Fn() -> Arc<dyn Backend>,
    per_key: usize,
) {
    let admin = backend();
    let id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let (topic, group) = (format!("rebal.{id}"), format!("rebal.g.{id}"));
    admin
        .create_topic(&TopicSpec::new(&topic, 4))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&admin));
    let mut ids = Vec::new();
    for i in 0..KEYS * per_key {
        let key = format!("slow-{}", i % KEYS);
        let job = NewJob::json("t", &serde_json::json!({"key": key}))
            .unwrap()
            .with_key(key);
        ids.push(client.enqueue(&topic, job).await.unwrap().id);
    }
    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let done: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let start = |member: &'static str| {
        let (runs, done) = (Arc::clone(&runs), Arc::clone(&done));
        let worker = Worker::builder(backend(), group.clone(), [topic.clone()])
            .concurrency(8)
            .fallback(handler_fn(move |job: Job| {
                let (runs, done) = (Arc::clone(&runs), Arc::clone(&done));
                async move {
                    let started = Instant::now();
                    tokio::time::sleep(SLOW).await;
                    let key = String::from_utf8(job.record.key.clone().unwrap().to_vec()).unwrap();
                    runs.lock().unwrap().push(Run {
                        key,
                        offset: job.record.offset,
                        member,
                        start: started,
                        end: Instant::now(),
                    });
                    *done
                        .lock()
                        .unwrap()
                        .entry(job.id().unwrap().to_owned())
                        .or_default() += 1;
                }
            }))
            .build();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        (stop, handle)
    };

    let first = start("first");
    // the second joins while the first is inside its first slow jobs
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the first worker ran nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = start("second");
    let deadline = Instant::now() + Duration::from_secs(120);
    while ids.iter().any(|id| !done.lock().unwrap().contains_key(id)) {
        assert!(
            Instant::now() < deadline,
            "not every job ran: {} of {}",
            done.lock().unwrap().len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // one after the other: the second is handed the first's partitions while it stops
    for (stop, handle) in [first, second] {
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(90), handle)
            .await
            .expect("a worker did not stop within 90 s of its shutdown")
            .unwrap()
            .unwrap();
    }

    let mut runs = runs.lock().unwrap().clone();
    runs.sort_by_key(|r| r.start);
    let members: std::collections::BTreeSet<&str> = runs.iter().map(|r| r.member).collect();
    assert_eq!(
        members.len(),
        2,
        "both workers ran jobs (the second took partitions)"
    );
    let mut by_key: HashMap<&str, Vec<&Run>> = HashMap::new();
    for r in &runs {
        by_key.entry(r.key.as_str()).or_default().push(r);
    }
    let mut moved = 0;
    let mut repeated = 0;
    for (key, rs) in by_key {
        // first runs in offset order; a repeat (redelivery from the committed offset after a
        // handover, at-least-once) may go back, but never overlaps
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<i64> = rs
            .iter()
            .filter(|r| seen.insert(r.offset))
            .map(|r| r.offset)
            .collect();
        repeated += rs.len() - firsts.len();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "key {key}: first runs out of offset order: {firsts:?}"
        );
        for w in rs.windows(2) {
            assert!(
                w[1].start >= w[0].end,
                "key {key}: offset {} on {} started while offset {} ran on {}",
                w[1].offset,
                w[1].member,
                w[0].offset,
                w[0].member
            );
            moved += usize::from(w[0].member != w[1].member);
        }
    }
    assert!(
        moved > 0,
        "no key moved between the workers: the scenario did not test a handover"
    );
    eprintln!(
        "rebalance: {} runs of {} jobs ({repeated} repeated), {moved} key handovers, no overlap, first runs in offset order",
        runs.len(),
        ids.len()
    );
}
