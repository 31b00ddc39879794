//! `conveyor serve`: the production assembly, one process per role so the API and the workers
//! scale apart.
//!
//! | role | runs | serves on `api.listen` |
//! |---|---|---|
//! | `api` | the HTTP API | the API, `/healthz`, `/readyz` (the backend answers) |
//! | `workers` | one webhook worker per route | `/healthz`, `/readyz` (the backend answers, no route worker down) |
//! | `scheduler` | a member of the scheduler election (the elected one fires the ticks) | `/healthz`, `/readyz` (the backend answers, the scheduler runs) |
//! | `all` | all of them (what `conveyor dev` runs) | the API and the probes |
//!
//! Roles other than `all` need the `kafka` backend (the embedded log belongs to one process).
//! An API that would listen beyond loopback without tokens is refused at start
//! ([`check_exposure`]) unless `api.allow_unauthenticated = true` (then logged as a warning).
//!
//! Shutdown order: stop accepting requests (in-flight requests get [`API_DRAIN`] to finish, so
//! every `201` sent was stored; connections open after that are closed), stop the workers
//! (running deliveries get [`crate::dev::SHUTDOWN_GRACE`] to finish or are handed back), close
//! the backend.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use conveyor_core::{Backend, Error};
use conveyor_runtime::time::control::Control;
use conveyor_runtime::Scheduler;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{app, probes, AppState};
use crate::config::Config;
use crate::dev::{open_backend, route_worker, API_DRAIN};
use crate::supervise::{supervise, RouteHealth};

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API only.
    Api,
    /// The routes' webhook workers only.
    Workers,
    /// A member of the scheduler election only.
    Scheduler,
    /// Everything.
    All,
}

impl Role {
    /// The role's name, as `--role` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Workers => "workers",
            Role::Scheduler => "scheduler",
            Role::All => "all",
        }
    }

    fn api(self) -> bool {
        matches!(self, Role::Api | Role::All)
    }

    fn workers(self) -> bool {
        matches!(self, Role::Workers | Role::All)
    }

    fn scheduler(self) -> bool {
        matches!(self, Role::Scheduler | Role::All)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "api" => Ok(Role::Api),
            "workers" => Ok(Role::Workers),
            "scheduler" => Ok(Role::Scheduler),
            "all" => Ok(Role::All),
            _ => Err(format!(
                "`{s}` is not a role: use api, workers, scheduler or all"
            )),
        }
    }
}

/// How an API on `addr` with `config`'s tokens is exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// Tokens guard it, or it listens on loopback only.
    Guarded,
    /// Open beyond loopback, allowed by `api.allow_unauthenticated` (warn).
    OpenAllowed,
    /// Open beyond loopback, not allowed: `serve` refuses to start, `dev` warns.
    Open,
}

/// Whether an API listening on `addr` is reachable beyond this machine without a token.
pub fn check_exposure(config: &Config, addr: SocketAddr) -> Exposure {
    if !config.api.tokens.is_empty() || addr.ip().is_loopback() {
        Exposure::Guarded
    } else if config.api.allow_unauthenticated {
        Exposure::OpenAllowed
    } else {
        Exposure::Open
    }
}

/// The message for an API open beyond loopback.
pub fn exposure_message(addr: SocketAddr) -> String {
    format!(
        "the API listens on {addr}, beyond loopback, without tokens: anyone who reaches it can enqueue, cancel, pause and replay. Configure [[api.tokens]] (`conveyor tokens create`), listen on 127.0.0.1, or set api.allow_unauthenticated = true to accept it"
    )
}

/// Runs what `role` names until `shutdown` completes.
pub async fn run(
    config: Config,
    role: Role,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if role != Role::All && config.backend != "kafka" {
        return Err(Error::InvalidArgument(format!(
            "--role {} needs the kafka backend: the embedded backend's log belongs to one process, so it runs every role (--role all); set backend = \"kafka\" to run the API and the workers apart",
            role.as_str()
        )));
    }
    if let Some(t) = config.tracing.to_config() {
        if conveyor_runtime::observation::trace::init(t) {
            tracing::info!(
                endpoint = %conveyor_core::redact::url(
                    config.tracing.otlp_endpoint.as_deref().unwrap_or("")
                ),
                sample_ratio = config.tracing.sample_ratio,
                "exporting traces (OTLP/HTTP JSON)"
            );
        }
    }
    let backend = open_backend(&config).await?;
    let control = Control::open(Arc::clone(&backend)).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let health = Arc::new(RouteHealth::default());
    let mut workers = Vec::new();
    let routes = if role.workers() {
        &config.routes[..]
    } else {
        &[]
    };
    for route in routes {
        let name = format!("{} -> {}", route.topic, route.shown_url());
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
    if role.scheduler() {
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
    state.role = role.as_str();
    state.configured_schedules = Arc::new(config.schedules.clone());
    state.routes = health;
    state.control = Arc::new(tokio::sync::OnceCell::new_with(Some(control)));
    state.max_body_bytes = config.api.max_body_bytes;
    state.max_batch = config.api.max_batch;
    state.max_reply_timeout = std::time::Duration::from_millis(config.api.max_reply_timeout_ms);
    state.waiting_requests =
        crate::api::requests::WaitingLimit::new(config.api.max_waiting_requests);
    state.schedule_limits = config.scheduler.limits();
    state.known_groups = Arc::new(config.routes.iter().map(|r| r.group()).collect());
    // job lookup: `waiting` states of the jobs the API enqueues, and the index read at start
    if role.api() {
        state.client = state.client.with_job_states(
            conveyor_runtime::observation::job_states::EnqueueLog::start(
                Arc::clone(&backend),
                config.job_states_off(),
            ),
        );
        // read in the background: the API (and its probes) answer at once, lookups wait for
        // the first read (`AppState::jobs`), however long 7 days of states take to read
        let cell = Arc::clone(&state.jobs);
        let b = Arc::clone(&backend);
        tokio::spawn(async move {
            let opened = cell
                .get_or_try_init(|| {
                    conveyor_runtime::observation::job_states::JobIndex::open(
                        b,
                        conveyor_runtime::observation::job_states::DEFAULT_MAX_JOBS,
                    )
                })
                .await;
            if let Err(e) = opened {
                tracing::warn!(error = %e, "cannot read the job states yet; the first lookup tries again");
            }
        });
    }
    state.tokens = crate::auth::Tokens::new(&config.api.tokens, |_| None)
        .map_err(|(i, key, e)| Error::InvalidArgument(format!("api.tokens[{i}].{key}: {e}")))?;
    if let Some(topic) = &config.api.reply_topic {
        state.client = state.client.with_reply_topic(topic.clone());
    }
    let router = if role.api() {
        // read at start, so the first repeat after a crash is answered without a wait
        state.idempotency_options = config.api.idempotency();
        let idempotency = crate::api::idempotency::Idempotency::open(
            Arc::clone(&backend),
            state.idempotency_options,
        )
        .await?;
        state.idempotency = Arc::new(tokio::sync::OnceCell::new_with(Some(idempotency)));
        app(state)
    } else {
        probes(state)
    };
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
    crate::api::metrics::init();
    // a process without the route workers still reports their lag on its /metrics (the API
    // role's scrape shows the backlog it is feeding)
    let _lag: Vec<_> = match role.workers() {
        true => Vec::new(),
        false => config
            .routes
            .iter()
            .map(|r| {
                conveyor_runtime::observation::metrics::watch(
                    Arc::clone(&backend),
                    &r.group(),
                    &r.topics(),
                    config.delay.tiers(),
                    ".dlq",
                )
            })
            .collect(),
    };
    let _metrics = match &config.metrics.listen {
        Some(addr) => Some(crate::metrics_listener::spawn(addr).await?),
        None => None,
    };
    let serve =
        crate::http::serve(listener, router, config.api.http_limits(), shutdown).into_future();
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
    // the last spans (the drained deliveries') reach the collector before the process ends
    conveyor_runtime::observation::trace::flush(std::time::Duration::from_secs(2)).await;
    let closed = backend.close().await;
    let broken = broken.lock().unwrap_or_else(|p| p.into_inner()).take();
    match broken {
        Some(e) => Err(e),
        None => closed,
    }
}

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
