//! `conveyor dev`: the configured backend (embedded by default, or Kafka), the configured topics, one webhook worker per route,
//! a member of the scheduler election (always, so schedules put through the API fire without a
//! restart) and the HTTP API, in one process, until a shutdown signal: [`crate::serve`] with
//! every role. Here too: the backend's opening ([`open_backend`]) and a route's worker
//! ([`route_worker`]), which `serve` shares.
//!
//! [`run`] takes its listener and shutdown future as arguments, so tests run it on port 0 and stop
//! it. Shutdown order: stop accepting requests (in-flight requests get [`API_DRAIN`] to finish,
//! so every `201` sent was stored; connections open after that are closed), stop the workers
//! (running deliveries get [`SHUTDOWN_GRACE`] to finish or are handed back), close the log.

use std::future::Future;
use std::sync::Arc;

use conveyor_core::{Backend, Error};
use conveyor_embedded::EmbeddedBackend;
use conveyor_kafka::KafkaBackend;
use conveyor_runtime::time::control::Control;
use conveyor_runtime::{Worker, WorkerOptions};
use tokio::net::TcpListener;

use crate::config::Config;

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
        .fallback(route.webhook_handler())
        .build()
}

/// Runs everything (`conveyor serve --role all`) until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    crate::serve::run(config, crate::serve::Role::All, listener, shutdown).await
}

/// How long requests in flight get to finish after the stop signal; with the workers'
/// [`SHUTDOWN_GRACE`] a stop takes at most 30 s, Kubernetes' default termination grace.
pub const API_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
