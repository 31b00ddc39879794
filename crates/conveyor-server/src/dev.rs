//! `conveyor dev`: the configured backend (embedded by default, or Kafka), the configured topics, one webhook worker per route,
//! a member of the scheduler election (always, so schedules put through the API fire without a
//! restart) and the HTTP API, in one process, until a shutdown signal.
//!
//! [`run`] takes its listener and shutdown future as arguments, so tests run it on port 0 and stop
//! it. Shutdown order: stop accepting requests (in-flight requests get [`API_DRAIN`] to finish,
//! so every `201` sent was stored; connections open after that are closed), stop the workers
//! (running deliveries get [`SHUTDOWN_GRACE`] to finish or are handed back), close the log.

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use conveyor_core::{Backend, Error};
use conveyor_embedded::EmbeddedBackend;
use conveyor_kafka::KafkaBackend;
use conveyor_runtime::control::Control;
use conveyor_runtime::{Scheduler, WebhookHandler, Worker, WorkerOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{app, AppState};
use crate::config::Config;
use crate::supervise::{supervise, RouteHealth};

/// How long a stopping `conveyor dev` lets running deliveries finish before handing them back
/// (uncommitted, so redelivered): 25 s, inside Kubernetes' default 30 s termination grace.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(25);

/// Opens the backend the configuration names and creates the configured topics.
pub async fn open_backend(config: &Config) -> Result<Arc<dyn Backend>, Error> {
    let backend: Arc<dyn Backend> = match config.backend.as_str() {
        "kafka" => {
            let kafka = KafkaBackend::connect(config.kafka.to_config())?;
            kafka.ping().await?;
            Arc::new(kafka)
        }
        _ => Arc::new(EmbeddedBackend::open(config.embedded_config())?),
    };
    for spec in config.all_topics() {
        match backend.create_topic(&spec).await {
            Ok(_) => {}
            Err(Error::TopicConflict {
                topic,
                existing,
                requested,
            }) => {
                tracing::warn!(
                    topic,
                    existing,
                    requested,
                    "topic exists with another partition count; keeping it"
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(backend)
}

/// The worker delivering a route's jobs to its webhook.
pub fn route_worker(
    config: &Config,
    route: &crate::config::RouteConfig,
    backend: Arc<dyn Backend>,
    control: Control,
) -> Worker {
    let mut options = WorkerOptions::new(route.group(), route.topics());
    options.concurrency = route.concurrency;
    options.max_buffered = route.max_buffered;
    options.retry = route.retry.clone().unwrap_or_else(|| config.retry.clone());
    // the request timeout bounds a delivery (a job's own `timeout_ms` bounds both the request
    // and the attempt instead); this catches anything hanging past it
    options.handler_timeout = route.timeout() + std::time::Duration::from_secs(5);
    options.shutdown_timeout = SHUTDOWN_GRACE;
    options.tiers = config.delay.tiers();
    options.retry_in_place_max =
        std::time::Duration::from_millis(config.delay.retry_in_place_max_ms);
    options.ordered_retries = route.ordered_retries;
    options.priorities = route.priorities();
    options.job_states = route.job_states;
    Worker::builder(backend, route.group(), route.topics())
        .options(options)
        .control(control)
        .fallback(WebhookHandler::new(route.url.clone(), route.timeout()))
        .build()
}

/// Runs everything until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let backend = open_backend(&config).await?;
    let control = Control::open(Arc::clone(&backend)).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let health = Arc::new(RouteHealth::default());
    let mut workers = Vec::new();
    for route in &config.routes {
        let name = format!("{} -> {}", route.topic, route.url);
        let (config, route, backend) = (config.clone(), route.clone(), Arc::clone(&backend));
        let control = control.clone();
        workers.push(tokio::spawn(supervise(
            name,
            Arc::clone(&health),
            stop_rx.clone(),
            move |mut stop| {
                let worker = route_worker(&config, &route, Arc::clone(&backend), control.clone());
                worker.run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
            },
        )));
    }
    {
        // one member of the election: the elected process fires every schedule's ticks
        let (config, backend, control) = (config.clone(), Arc::clone(&backend), control.clone());
        workers.push(tokio::spawn(supervise(
            "scheduler".into(),
            Arc::clone(&health),
            stop_rx.clone(),
            move |mut stop| {
                Scheduler::new(Arc::clone(&backend), config.schedules.clone())
                    .control(control.clone())
                    .options(config.scheduler.options())
                    .run(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
            },
        )));
    }
    let mut state = AppState::new(Arc::clone(&backend));
    state.configured_schedules = Arc::new(config.schedules.clone());
    state.routes = health;
    state.control = Arc::new(tokio::sync::OnceCell::new_with(Some(control)));
    state.max_body_bytes = config.api.max_body_bytes;
    state.max_batch = config.api.max_batch;
    state.max_reply_timeout = std::time::Duration::from_millis(config.api.max_reply_timeout_ms);
    state.waiting_requests =
        crate::api::requests::WaitingLimit::new(config.api.max_waiting_requests);
    state.schedule_limits = config.scheduler.limits();
    // job lookup: `waiting` states of the jobs the API enqueues, and the index read at start
    state.client = state
        .client
        .with_job_states(conveyor_runtime::job_states::EnqueueLog::start(
            Arc::clone(&backend),
            config.job_states_off(),
        ));
    let jobs = conveyor_runtime::job_states::JobIndex::open(
        Arc::clone(&backend),
        conveyor_runtime::job_states::DEFAULT_MAX_JOBS,
    )
    .await?;
    state.jobs = Arc::new(tokio::sync::OnceCell::new_with(Some(jobs)));
    if let Some(topic) = &config.api.reply_topic {
        state.client = state.client.with_reply_topic(topic.clone());
    }
    // read at start, so the first repeat after a crash is answered without a wait
    state.idempotency_options = config.api.idempotency();
    let idempotency =
        crate::api::idempotency::Idempotency::open(Arc::clone(&backend), state.idempotency_options)
            .await?;
    state.idempotency = Arc::new(tokio::sync::OnceCell::new_with(Some(idempotency)));
    // A backend that can take no more writes (the embedded log after a full disk) stops the
    // process the way SIGTERM does, as fjall advises: a supervisor's restart brings it back once
    // the disk has room, where staying up would refuse every write while looking alive.
    let broken: Arc<std::sync::Mutex<Option<Error>>> = Arc::default();
    let broke = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let (backend, broken, broke) = (
            Arc::clone(&backend),
            Arc::clone(&broken),
            Arc::clone(&broke),
        );
        async move {
            tokio::select! {
                () = shutdown => {}
                e = unhealthy(&backend) => {
                    tracing::error!(error = %e, "stopping: the backend takes no more writes");
                    *broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    broke.notify_one();
                }
            }
        }
    };
    // the stop signal reaches the server; from then on requests in flight get API_DRAIN to
    // finish, and connections still open after it (a client that sent half a request, one
    // waiting for a reply) are closed, so a stop always ends
    let stopping = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let stopping = Arc::clone(&stopping);
        async move {
            shutdown.await;
            stopping.notify_one();
        }
    };
    let serve = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .into_future();
    tokio::select! {
        served = serve => served?,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(API_DRAIN).await;
        } => tracing::warn!("connections still open {API_DRAIN:?} after the stop signal (half-sent requests, waits for replies) are closed; stopping the workers"),
        // requests waiting for replies (up to `api.max_reply_timeout_ms`) would wait for
        // nothing: their replies cannot be written any more
        () = async {
            broke.notified().await;
            tokio::time::sleep(BROKEN_DRAIN).await;
        } => tracing::warn!("requests still open {BROKEN_DRAIN:?} after the backend broke are not waited for (they cannot store anything); stopping the workers"),
    }
    tracing::info!("API stopped; stopping workers");
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    let closed = backend.close().await;
    let broken = broken.lock().unwrap_or_else(|p| p.into_inner()).take();
    match broken {
        Some(e) => Err(e),
        None => closed,
    }
}

/// How long requests in flight get to finish after the stop signal; with the workers'
/// [`SHUTDOWN_GRACE`] a stop takes at most 30 s, Kubernetes' default termination grace.
pub const API_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How long requests in flight get to finish once the backend broke.
const BROKEN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Completes with the backend's [`Backend::health`] error once it has one.
async fn unhealthy(backend: &Arc<dyn Backend>) -> Error {
    loop {
        // off the runtime's threads: the embedded probe may wait for a journal sync
        let b = Arc::clone(backend);
        match tokio::task::spawn_blocking(move || b.health()).await {
            Ok(Err(e)) => return e,
            Ok(Ok(())) => {}
            Err(e) => tracing::warn!(error = %e, "the backend health check failed to run"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
