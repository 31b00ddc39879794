//! conveyor-bench: the measurements behind `conveyor bench`: enqueue rate, processing rate of no-op jobs,
//! enqueue-to-handler-start latency, lateness of delayed jobs and request/reply round trips, on
//! any backend.
//!
//! 1. **Enqueue**: `jobs` jobs (~`payload_bytes` of JSON each, keys spread over 1,000 values)
//!    enqueued one job per call by `concurrency` concurrent producers through [`Client`]; each call
//!    returns only when its job is durable.
//! 2. **Process**: a [`Worker`] with `concurrency` slots and a no-op handler drains them; the rate
//!    is jobs / time from the first handler start to the last job done (a Kafka group join is
//!    not counted).
//! 3. **Latency**: `latency_jobs` jobs enqueued one at a time into an idle worker; each is measured
//!    from just before the enqueue call to the start of its handler, and the next is sent only after
//!    the handler started.
//! 4. **Delayed**: `delayed_jobs` jobs enqueued at once with delays spread evenly over
//!    `delayed_window` (through the delay tiers and the forwarder, as in production), run by a
//!    worker with `delayed_max_buffered` (a route's default, 256); each is
//!    measured from its due time to the start of its handler (its lateness). A job that starts
//!    before its due time is counted as early (the figure must be 0).
//! 5. **Request/reply**: `request_jobs` requests sent one at a time to an idle worker that
//!    replies with the payload; each round trip is measured from the call to the reply in the
//!    caller's hands (`request.rs`).
//!
//! Two more phases run apart from these: [`http`], enqueues through the HTTP API as a production
//! process serves it (`--http-jobs`); and the bare-rdkafka baseline (`--raw`), which stays in
//! `conveyor_kafka::raw_bench`, next to the Kafka client it measures.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_core::{Backend, Result, TopicSpec};
use tokio::sync::{mpsc, oneshot};

use conveyor_runtime::{handler_fn, Client, Job, NewJob, Worker};

pub mod http;
mod request;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Jobs for the enqueue and processing phases. Default: 100,000.
    pub jobs: usize,
    /// Producers in the enqueue phase and handler slots in the processing phase. Default: 50.
    pub concurrency: usize,
    /// Jobs in the latency phase. Default: 2,000.
    pub latency_jobs: usize,
    /// Approximate JSON payload size in bytes. Default: 100.
    pub payload_bytes: usize,
    /// Partitions of the benchmark topics. Default: 8.
    pub partitions: i32,
    /// Distinct keys the jobs are spread over (jobs of one key run one at a time, in order).
    /// Default: 1,000.
    pub keys: usize,
    /// How long the processing phase's handler sleeps per job, in milliseconds (0: a no-op
    /// handler). Default: 0.
    pub handler_ms: u64,
    /// Jobs in the delayed phase (0 skips it). Default: 10,000.
    pub delayed_jobs: usize,
    /// The delays of the delayed phase are spread over this window. Default: 20 s.
    pub delayed_window: Duration,
    /// The delayed phase's worker's `max_buffered`. Default: 256, a route's default in
    /// `conveyor dev`, so the figure is what a route gets.
    pub delayed_max_buffered: usize,
    /// Requests in the request/reply phase (0 skips it). Default: 2,000.
    pub request_jobs: usize,
    /// Job lookup's state records in the processing phase: on (the default, as in
    /// production), off, or both (the phase runs twice over the same jobs, off first).
    pub lookup: Lookup,
}

/// Which job-lookup settings the processing phase measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lookup {
    /// State records on (the default).
    #[default]
    On,
    /// State records off.
    Off,
    /// Both, off first, each by a group of its own over the same jobs.
    Both,
}

impl Lookup {
    /// Parses `on`, `off` or `both`.
    pub fn parse(s: &str) -> Option<Lookup> {
        match s {
            "on" => Some(Lookup::On),
            "off" => Some(Lookup::Off),
            "both" => Some(Lookup::Both),
            _ => None,
        }
    }

    fn settings(self) -> Vec<bool> {
        match self {
            Lookup::On => vec![true],
            Lookup::Off => vec![false],
            Lookup::Both => vec![false, true],
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Lookup::On => "on",
            Lookup::Off => "off",
            Lookup::Both => "both",
        }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            jobs: 100_000,
            concurrency: 50,
            latency_jobs: 2_000,
            payload_bytes: 100,
            partitions: 8,
            keys: 1_000,
            handler_ms: 0,
            delayed_jobs: 10_000,
            delayed_window: Duration::from_secs(20),
            delayed_max_buffered: 256,
            request_jobs: 2_000,
            lookup: Lookup::On,
        }
    }
}

/// The figures.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The backend's name.
    pub backend: String,
    /// Jobs enqueued per second (single-job calls, concurrent producers).
    pub enqueue_jobs_s: f64,
    /// No-op jobs processed per second.
    pub process_jobs_s: f64,
    /// Enqueue-to-handler-start latency percentiles, in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Lateness of delayed jobs (handler start minus due time), median, in milliseconds.
    pub delayed_p50_ms: f64,
    /// 99th percentile of the lateness.
    pub delayed_p99_ms: f64,
    /// Delayed jobs that started before their due time (must be 0).
    pub delayed_early: usize,
    /// Request/reply round trip, median, in milliseconds.
    pub request_p50_ms: f64,
    /// 99th percentile of the round trip.
    pub request_p99_ms: f64,
    /// The job-lookup settings the processing phase ran with.
    pub lookup: Lookup,
    /// With [`Lookup::Both`]: no-op jobs processed per second with the state records off
    /// (`process_jobs_s` is then the rate with them on).
    pub process_lookup_off_jobs_s: Option<f64>,
    /// With a sleeping handler: what `concurrency` tasks doing nothing but that sleep, in a
    /// loop, reach per second on the same runtime, measured right after the processing phase
    /// ([`sleep_bound`]). The runtime's timer ends a sleep at its next millisecond tick, so
    /// this, not `concurrency / handler_ms`, is the most any worker can reach here.
    pub handler_bound_jobs_s: Option<f64>,
}

impl BenchReport {
    /// The machine-readable last line.
    pub fn result_line(&self) -> String {
        let off = self
            .process_lookup_off_jobs_s
            .map(|r| format!(" process_lookup_off_jobs_s={r:.0}"))
            .unwrap_or_default();
        let bound = self
            .handler_bound_jobs_s
            .map(|b| {
                format!(
                    " handler_bound_jobs_s={b:.0} process_of_bound={:.3}",
                    self.process_jobs_s / b.max(f64::MIN_POSITIVE)
                )
            })
            .unwrap_or_default();
        format!(
            "RESULT backend={} lookup={} enqueue_jobs_s={:.0} process_jobs_s={:.0}{off}{bound} p50_ms={:.3} p95_ms={:.3} p99_ms={:.3} delayed_p50_ms={:.1} delayed_p99_ms={:.1} delayed_early={} request_p50_ms={:.3} request_p99_ms={:.3}",
            self.backend, self.lookup.as_str(), self.enqueue_jobs_s, self.process_jobs_s, self.p50_ms, self.p95_ms, self.p99_ms,
            self.delayed_p50_ms, self.delayed_p99_ms, self.delayed_early, self.request_p50_ms, self.request_p99_ms
        )
    }
}

fn payload(i: usize, size: usize) -> serde_json::Value {
    let pad = size.saturating_sub(40);
    serde_json::json!({ "n": i, "user": format!("user-{}", i % 1000), "pad": "x".repeat(pad) })
}

/// The processing phase: a worker of group `group` with `concurrency` slots and a no-op
/// handler drains `topic`, with job lookup's state records on or off; returns jobs per second
/// from the first handler start to the last job done.
async fn process(
    backend: &Arc<dyn Backend>,
    topic: &str,
    group: &str,
    opts: &BenchOptions,
    states: bool,
    progress: impl Fn(String) + Send + Sync + Clone + 'static,
) -> Result<f64> {
    let lookup = if states { "on" } else { "off" };
    let handler_ms = opts.handler_ms;
    let what = match handler_ms {
        0 => "no-op handler".to_owned(),
        ms => format!("handler sleeping {ms} ms"),
    };
    progress(format!(
        "process: {what}, concurrency {}, job lookup {lookup}",
        opts.concurrency
    ));
    let worker = Worker::builder(Arc::clone(backend), group, [topic.to_owned()])
        .concurrency(opts.concurrency)
        .max_buffered((opts.concurrency * 40).max(1024))
        .job_states(states)
        .handler(
            "noop",
            handler_fn(move |_job: Job| async move {
                if handler_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(handler_ms)).await;
                }
            }),
        )
        .build();
    let stats = worker.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    while stats.started.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let started = Instant::now();
    let ticker = spawn_ticker(
        "process",
        opts.jobs,
        {
            let s = Arc::clone(&stats);
            move || s.done.load(Ordering::Relaxed)
        },
        progress.clone(),
    );
    while (stats.done.load(Ordering::Relaxed) as usize) < opts.jobs {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let process_secs = started.elapsed().as_secs_f64();
    stop_ticker(ticker).await;
    let _ = stop.send(());
    handle.await.expect("worker task")?;
    let rate = opts.jobs as f64 / process_secs;
    progress(format!(
        "process: {} jobs in {:.2} s = {:.0} jobs/s (job lookup {lookup})",
        opts.jobs, process_secs, rate
    ));
    Ok(rate)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs the phases; `progress` receives human-readable lines while it runs.
pub async fn run(
    backend: Arc<dyn Backend>,
    opts: &BenchOptions,
    progress: impl Fn(String) + Send + Sync + Clone + 'static,
) -> Result<BenchReport> {
    let total = opts.jobs;
    let suffix = uuid_suffix();
    let jobs_topic = format!("bench.jobs.{suffix}");
    let latency_topic = format!("bench.latency.{suffix}");
    backend
        .create_topic(&TopicSpec::new(jobs_topic.clone(), opts.partitions))
        .await?;
    backend
        .create_topic(&TopicSpec::new(latency_topic.clone(), opts.partitions))
        .await?;
    let client = Client::new(Arc::clone(&backend)).with_producer("conveyor-bench");

    // 1. enqueue
    progress(format!(
        "enqueue: {} jobs of ~{} B over {} keys and {} partitions by {} concurrent producers",
        opts.jobs, opts.payload_bytes, opts.keys, opts.partitions, opts.concurrency
    ));
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut producers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (client, next, topic, jobs, size, keys) = (
            client.clone(),
            Arc::clone(&next),
            jobs_topic.clone(),
            opts.jobs,
            opts.payload_bytes,
            opts.keys.max(1),
        );
        producers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<(), conveyor_core::Error>(());
                }
                let job = NewJob::json("noop", &payload(i, size))
                    .expect("payload serializes")
                    .with_key(format!("user-{}", i % keys));
                client.enqueue(&topic, job).await?;
            }
        }));
    }
    let ticker = spawn_ticker(
        "enqueue",
        opts.jobs,
        {
            let next = Arc::clone(&next);
            move || next.load(Ordering::Relaxed).min(total) as u64
        },
        progress.clone(),
    );
    for p in producers {
        p.await.expect("producer task")?;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    stop_ticker(ticker).await;
    let enqueue_jobs_s = opts.jobs as f64 / enqueue_secs;
    progress(format!(
        "enqueue: {} jobs in {:.2} s = {:.0} jobs/s",
        opts.jobs, enqueue_secs, enqueue_jobs_s
    ));

    // 2. process: the same jobs, once per job-lookup setting asked for (each by a group of
    // its own), so the cost of the state records shows in one run
    let mut process_jobs_s = 0.0;
    let mut process_lookup_off_jobs_s = None;
    let settings = match opts.jobs {
        0 => Vec::new(),
        _ => opts.lookup.settings(),
    };
    for (n, states) in settings.into_iter().enumerate() {
        let rate = process(
            &backend,
            &jobs_topic,
            &format!("bench.process.{suffix}.{n}"),
            opts,
            states,
            progress.clone(),
        )
        .await?;
        match states {
            true => process_jobs_s = rate,
            false => process_lookup_off_jobs_s = Some(rate),
        }
    }
    if opts.lookup == Lookup::Off {
        process_jobs_s = process_lookup_off_jobs_s.take().unwrap_or_default();
    }
    let handler_bound_jobs_s = match (opts.jobs, opts.handler_ms) {
        (0, _) | (_, 0) => None,
        (_, ms) => {
            let bound = sleep_bound(opts.concurrency, Duration::from_millis(ms)).await;
            progress(format!(
                "process: the bound of {} tasks sleeping {ms} ms in a loop: {bound:.0} per second (processing reached {:.3} of it)",
                opts.concurrency,
                process_jobs_s / bound.max(f64::MIN_POSITIVE)
            ));
            Some(bound)
        }
    };

    // 3. latency
    progress(format!(
        "latency: {} jobs, one at a time, into an idle worker",
        opts.latency_jobs
    ));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let worker = Worker::builder(
        Arc::clone(&backend),
        format!("bench.latency.{suffix}"),
        [latency_topic.clone()],
    )
    .concurrency(opts.concurrency)
    .handler(
        "probe",
        handler_fn(move |job: Job| {
            let at = Instant::now();
            let n: usize = job
                .json::<serde_json::Value>()
                .ok()
                .and_then(|v| v["n"].as_u64())
                .unwrap_or(0) as usize;
            let _ = started_tx.send((n, at));
            async {}
        }),
    )
    .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    // let the worker join its group and go idle
    let warmup = client
        .enqueue(
            &latency_topic,
            NewJob::json("probe", &payload(usize::MAX >> 1, opts.payload_bytes)).expect("json"),
        )
        .await?;
    let _ = warmup;
    started_rx.recv().await;
    let samples = Arc::new(Mutex::new(Vec::with_capacity(opts.latency_jobs)));
    for i in 0..opts.latency_jobs {
        let sent = Instant::now();
        client
            .enqueue(
                &latency_topic,
                NewJob::json("probe", &payload(i, opts.payload_bytes))
                    .expect("json")
                    .with_key(format!("user-{}", i % 1000)),
            )
            .await?;
        loop {
            let (n, at) = started_rx.recv().await.expect("worker alive");
            if n == i {
                samples
                    .lock()
                    .expect("samples")
                    .push(at.duration_since(sent).as_secs_f64() * 1000.0);
                break;
            }
        }
        if (i + 1) % 500 == 0 {
            progress(format!("latency: {}/{}", i + 1, opts.latency_jobs));
        }
    }
    let _ = stop.send(());
    handle.await.expect("worker task")?;
    let mut s = samples.lock().expect("samples").clone();
    s.sort_by(|a, b| a.total_cmp(b));
    progress(format!(
        "latency: p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&s, 0.50),
        percentile(&s, 0.95),
        percentile(&s, 0.99),
        s.last().copied().unwrap_or(0.0)
    ));
    let (delayed_p50_ms, delayed_p99_ms, delayed_early) = match opts.delayed_jobs {
        0 => (0.0, 0.0, 0),
        _ => delayed(&backend, &client, opts, &suffix, progress.clone()).await?,
    };
    let (request_p50_ms, request_p99_ms) = match opts.request_jobs {
        0 => (0.0, 0.0),
        _ => request::round_trips(&backend, opts, &suffix, progress.clone()).await?,
    };
    Ok(BenchReport {
        backend: backend.name().to_owned(),
        enqueue_jobs_s,
        process_jobs_s,
        p50_ms: percentile(&s, 0.50),
        p95_ms: percentile(&s, 0.95),
        p99_ms: percentile(&s, 0.99),
        delayed_p50_ms,
        delayed_p99_ms,
        delayed_early,
        request_p50_ms,
        lookup: opts.lookup,
        process_lookup_off_jobs_s,
        handler_bound_jobs_s,
        request_p99_ms,
    })
}

/// Sleeps per second that `tasks` tasks reach doing nothing but sleeping `each` in a loop for
/// three seconds: the ceiling of a worker whose handler sleeps `each` with `tasks` slots.
async fn sleep_bound(tasks: usize, each: Duration) -> f64 {
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let window = Duration::from_secs(3);
    let loops: Vec<_> = (0..tasks.max(1))
        .map(|_| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                while started.elapsed() < window {
                    tokio::time::sleep(each).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Phase 4: lateness of `delayed_jobs` delayed jobs; returns p50, p99 (ms) and the early count.
async fn delayed(
    backend: &Arc<dyn Backend>,
    client: &Client,
    opts: &BenchOptions,
    suffix: &str,
    progress: impl Fn(String) + Send + Sync + Clone + 'static,
) -> Result<(f64, f64, usize)> {
    let topic = format!("bench.delayed.{suffix}");
    backend
        .create_topic(&TopicSpec::new(topic.clone(), opts.partitions))
        .await?;
    let n = opts.delayed_jobs;
    progress(format!(
        "delayed: {n} jobs with delays spread over {:?}, through the delay tiers (max_buffered {})",
        opts.delayed_window, opts.delayed_max_buffered
    ));
    let (tx, mut rx) = mpsc::unbounded_channel::<f64>();
    let (warm_tx, mut warm_rx) = mpsc::unbounded_channel::<()>();
    let worker = Worker::builder(
        Arc::clone(backend),
        format!("bench.delayed.{suffix}"),
        [topic.clone()],
    )
    .concurrency(opts.concurrency)
    .max_buffered(opts.delayed_max_buffered)
    .handler(
        "delayed",
        handler_fn(move |job: Job| {
            let now = std::time::SystemTime::now();
            let late = job
                .record
                .headers
                .get_str(conveyor_core::headers::DUE_AT)
                .and_then(conveyor_core::headers::parse_time)
                .map_or(f64::NAN, |due| match now.duration_since(due) {
                    Ok(d) => d.as_secs_f64() * 1000.0,
                    Err(e) => -e.duration().as_secs_f64() * 1000.0,
                });
            let _ = tx.send(late);
            async {}
        }),
    )
    .handler(
        "warm-up",
        handler_fn(move |_job: Job| {
            let _ = warm_tx.send(());
            async {}
        }),
    )
    .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    // a Kafka group join takes seconds: measured from a worker that runs
    client
        .enqueue(&topic, NewJob::json("warm-up", &0).expect("json"))
        .await?;
    warm_rx.recv().await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let jobs = chunk
            .iter()
            .map(|&i| {
                let delay = opts.delayed_window.mul_f64(i as f64 / n as f64);
                NewJob::json("delayed", &payload(i, opts.payload_bytes))
                    .expect("json")
                    .with_key(format!("user-{}", i % 1000))
                    .process_in(delay)
            })
            .collect();
        client.enqueue_batch(&topic, jobs).await?;
    }
    let mut late = Vec::with_capacity(n);
    while late.len() < n {
        match tokio::time::timeout(opts.delayed_window + Duration::from_secs(120), rx.recv()).await
        {
            Ok(Some(l)) => late.push(l),
            _ => {
                let _ = stop.send(());
                return Err(conveyor_core::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "delayed: only {} of {n} jobs ran within the window and 2 minutes more",
                        late.len()
                    ),
                )));
            }
        }
        if late.len() % 2000 == 0 {
            progress(format!("delayed: {}/{n}", late.len()));
        }
    }
    let _ = stop.send(());
    handle.await.expect("worker task")?;
    let early = late.iter().filter(|l| **l < 0.0 || l.is_nan()).count();
    late.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&late, 0.50), percentile(&late, 0.99));
    progress(format!(
        "delayed: {n} jobs, lateness p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms, {early} early",
        late.last().copied().unwrap_or(0.0)
    ));
    Ok((p50, p99, early))
}

fn uuid_suffix() -> String {
    conveyor_core::headers::new_message_id().replace('-', "")[..12].to_owned()
}

type Ticker = (oneshot::Sender<()>, tokio::task::JoinHandle<()>);

/// Reports `count()` of `total` once a second until stopped.
fn spawn_ticker(
    phase: &'static str,
    total: usize,
    count: impl Fn() -> u64 + Send + 'static,
    progress: impl Fn(String) + Send + 'static,
) -> Ticker {
    let (tx, mut rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let start = Instant::now();
        loop {
            tokio::select! {
                _ = &mut rx => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    let n = count();
                    progress(format!("  {phase}: {n}/{total} ({:.0} jobs/s so far)", n as f64 / start.elapsed().as_secs_f64()));
                }
            }
        }
    });
    (tx, handle)
}

async fn stop_ticker(t: Ticker) {
    let _ = t.0.send(());
    let _ = t.1.await;
}
