//! Run with: `cargo run -p conveyor-examples --bin cv_eval -- enqueue --count 100 && cargo run -p conveyor-examples --bin cv_eval -- worker --exit-when-idle`
//! (add `--backend kafka --brokers 127.0.0.1:9092` to both for Kafka).
//!
//! The CV evaluator of `shared/seeds/000` on conveyor: evaluation jobs on `evaluate-jobs`, run by
//! the consumer group `ai-cv-evaluator-workers`, each writing its result back as an event on
//! `evaluation-results` and a follow-up job on `notify-candidate` **in the same transaction** as
//! the job's offset (`WorkerBuilder::transactional`). Kill the worker at any moment: a
//! `read_committed` reader (every conveyor reader) sees each evaluation's result exactly once.
//!
//! Commands:
//! - `enqueue --count N [--from I]`: creates the topics, enqueues evaluations of CVs I..I+N.
//! - `worker [--at-least-once] [--exit-when-idle]`: runs the worker (transactional unless
//!   `--at-least-once`); with `--exit-when-idle` it stops once the group has no lag left.
//! - `results`: prints how many results and notifications each CV has
//!   (`<topic> <cv_id> <count>`, one line each).
//!
//! `--prefix P` puts `P` before every topic and group name.

use std::collections::BTreeMap;
use std::time::Duration;

use conveyor_core::{Backend, Record, TopicSpec};
use conveyor_examples::backend::Which;
use conveyor_runtime::{Client, Job, JobError, NewJob, Worker};
use serde::{Deserialize, Serialize};

/// The topic and group names, each after an optional `--prefix` (tests run several at once).
#[derive(Debug, Clone)]
struct Names {
    jobs: String,
    results: String,
    notify: String,
    group: String,
}

impl Names {
    fn new(prefix: &str) -> Names {
        Names {
            jobs: format!("{prefix}evaluate-jobs"),
            results: format!("{prefix}evaluation-results"),
            notify: format!("{prefix}notify-candidate"),
            group: format!("{prefix}ai-cv-evaluator-workers"),
        }
    }
}

/// An evaluation job's payload.
#[derive(Debug, Serialize, Deserialize)]
struct Evaluate {
    cv_id: u64,
}

/// The event written back.
#[derive(Debug, Serialize, Deserialize)]
struct Evaluated {
    cv_id: u64,
    score: u64,
    job_id: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = Which::from_args(&args)?.open()?;
    let flag = |name: &str| args.iter().any(|a| a == name);
    let prefix = args
        .iter()
        .position(|a| a == "--prefix")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_default();
    let names = Names::new(&prefix);
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<u64>())
            .transpose()
    };
    let result = match args.first().map(String::as_str) {
        Some("enqueue") => {
            enqueue(
                &backend,
                &names,
                value("--from")?.unwrap_or(0),
                value("--count")?.unwrap_or(100),
            )
            .await
        }
        Some("worker") => {
            worker(
                backend.clone(),
                names.clone(),
                !flag("--at-least-once"),
                flag("--exit-when-idle"),
            )
            .await
        }
        Some("results") => {
            for topic in [&names.results, &names.notify] {
                for (cv, n) in counts(&*backend, topic).await? {
                    println!("{topic} {cv} {n}");
                }
            }
            Ok(())
        }
        _ => Err(anyhow::anyhow!(
            "usage: cv_eval enqueue --count N | worker [--at-least-once] [--exit-when-idle] | results"
        )),
    };
    backend.close().await?;
    result
}

async fn enqueue(
    backend: &std::sync::Arc<dyn Backend>,
    names: &Names,
    from: u64,
    count: u64,
) -> anyhow::Result<()> {
    for t in [&names.jobs, &names.results, &names.notify] {
        backend.create_topic(&TopicSpec::new(t.as_str(), 4)).await?;
    }
    let client = Client::new(backend.clone()).with_producer("cv-api");
    let ids: Vec<u64> = (from..from + count).collect();
    for chunk in ids.chunks(500) {
        let jobs = chunk
            .iter()
            .map(|&cv_id| {
                Ok(NewJob::json("evaluate", &Evaluate { cv_id })?.with_key(cv_id.to_string()))
            })
            .collect::<serde_json::Result<Vec<_>>>()?;
        client.enqueue_batch(&names.jobs, jobs).await?;
    }
    eprintln!("enqueued {count} evaluations");
    Ok(())
}

/// The evaluation: deterministic, a little slow, so a kill lands mid-work.
async fn evaluate(names: &Names, cv: Evaluate, job: Job) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(1 + cv.cv_id % 5)).await;
    let score = (cv.cv_id * 7919) % 100;
    let event = Evaluated {
        cv_id: cv.cv_id,
        score,
        job_id: job.id().unwrap_or_default().to_owned(),
    };
    job.emit_record(
        names.results.as_str(),
        Record::new(serde_json::to_vec(&event).map_err(JobError::fail)?)
            .with_key(cv.cv_id.to_string()),
    );
    job.emit(
        names.notify.as_str(),
        NewJob::json(
            "notify",
            &serde_json::json!({ "cv_id": cv.cv_id, "score": score }),
        )
        .map_err(JobError::fail)?
        .with_key(cv.cv_id.to_string()),
    );
    Ok(())
}

async fn worker(
    backend: std::sync::Arc<dyn Backend>,
    names: Names,
    transactional: bool,
    exit_when_idle: bool,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    if exit_when_idle {
        let b = backend.clone();
        let (group, jobs) = (names.group.clone(), names.jobs.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Ok(lag) = conveyor_runtime::group_lag(&*b, &group, &jobs).await {
                    if lag.has_commits() && lag.lag == 0 {
                        let _ = stop.send(());
                        return;
                    }
                }
            }
        });
    } else {
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop.send(());
        });
    }
    let names = std::sync::Arc::new(names);
    let worker = Worker::builder(backend, names.group.clone(), [names.jobs.clone()])
        .concurrency(16)
        .transactional(transactional)
        .job("evaluate", move |cv: Evaluate, job| {
            let names = names.clone();
            async move { evaluate(&names, cv, job).await }
        })
        .build();
    let stats = worker.stats();
    worker
        .run(async {
            let _ = stopped.await;
        })
        .await?;
    eprintln!(
        "worker stopped: {} evaluated, {} records emitted",
        stats.done.load(std::sync::atomic::Ordering::Relaxed),
        stats.emitted.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

/// How many records of `topic` each CV has, read from the start (committed only).
async fn counts(backend: &dyn Backend, topic: &str) -> anyhow::Result<BTreeMap<u64, u64>> {
    let mut counts = BTreeMap::new();
    let Some(info) = backend.describe_topic(topic).await? else {
        return Ok(counts);
    };
    for p in &info.partitions {
        let mut offset = p.low;
        while offset < p.high {
            let batch = backend.fetch(topic, p.partition, offset, 1000).await?;
            let Some(last) = batch.last() else { break };
            offset = last.offset + 1;
            for r in &batch {
                let v: serde_json::Value = serde_json::from_slice(&r.value)?;
                let cv = v["cv_id"]
                    .as_u64()
                    .ok_or_else(|| anyhow::anyhow!("a record of {topic} without a cv_id: {v}"))?;
                *counts.entry(cv).or_insert(0) += 1;
            }
        }
    }
    Ok(counts)
}
