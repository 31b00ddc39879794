//! `conveyor dev`: the configured backend (embedded by default, or Kafka), the configured topics, one webhook worker per route,
//! a member of the scheduler election (always, so schedules put through the API fire without a
//! restart) and the HTTP API, in one process, until a shutdown signal.
//!
//! [`run`] takes its listener and shutdown future as arguments, so tests run it on port 0 and stop
//! it. Shutdown order: stop accepting requests (in-flight requests finish, so every `201` sent was
//! stored), stop the workers (running deliveries finish or are handed back), close the log.

use std::future::Future;
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
    // the request timeout bounds a delivery; this catches anything hanging past it
    options.handler_timeout = route.timeout() + std::time::Duration::from_secs(5);
    options.shutdown_timeout = SHUTDOWN_GRACE;
    options.tiers = config.delay.tiers();
    options.retry_in_place_max =
        std::time::Duration::from_millis(config.delay.retry_in_place_max_ms);
    options.ordered_retries = route.ordered_retries;
    options.priorities = route.priorities();
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
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("API stopped; stopping workers");
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    backend.close().await
}
