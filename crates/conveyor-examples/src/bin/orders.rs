//! Run with: `cargo run -p conveyor-examples --bin orders -- --database-url postgres://postgres@127.0.0.1:5432/test`
//! (embedded: API and workers in this one process; for Kafka add `--backend kafka --brokers
//! 127.0.0.1:9092` and split them with `--role api` and `--role worker`), then
//! `curl -X POST http://127.0.0.1:1378/orders -H 'content-type: application/json' -d '{"id": "0196f1d2-58a4-7c41-9f1e-3f7a5b2c9d10", "src_currency": 1, "dst_currency": 2, "description": "test order", "channel": 1}'`.
//!
//! The orders service of `shared/seeds/001` on conveyor: `POST /orders` publishes an
//! `order.created` job to the topic `orders`; a worker pool (the group `orders-writer`) writes
//! each order as a row of the PostgreSQL table `orders` **through the inbox**
//! (`conveyor_postgres::Inbox`), so each order is written once even though delivery is
//! at-least-once. The order's id, chosen by the client, becomes the job's message id
//! deterministically (UUIDv5 of the order id): a client that retries a POST after a timeout or a
//! crash publishes the same message id again, and the inbox drops the second copy. The `orders`
//! table has no uniqueness constraint on `order_id`: only the inbox keeps rows from repeating.
//! An order without an `id` gets a fresh one (returned), and is then not safe to retry.
//!
//! Options: `--database-url URL` (or `DATABASE_URL`), `--listen ADDR` (default
//! 127.0.0.1:1378), `--role api|worker|both` (default both; embedded: both only, one process
//! owns the log), `--concurrency N` (handler slots, default 30, as in the seed), `--topic T`
//! (default orders), `--group G` (default orders-writer), `--partitions N` (default 8),
//! `--session-timeout-ms MS` (Kafka: how soon a killed worker's partitions move), and the
//! backend flags of `conveyor_examples::backend`. It applies conveyor's migrations and creates
//! its table and topic at start. Stops on SIGTERM or Ctrl-C (requests in flight finish, running
//! jobs finish and are committed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use conveyor_core::{Backend, TopicSpec};
use conveyor_examples::backend::Which;
use conveyor_postgres::Inbox;
use conveyor_runtime::{Client, NewJob, Worker};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// Namespace of the orders' message ids: `message_id = UUIDv5(ORDERS, order id)`.
const ORDERS: Uuid = Uuid::from_u128(0x6f72_6465_7273_4000_8000_636f_6e76_6579);

/// The job type of a new order.
const ORDER_CREATED: &str = "order.created";

/// What a client posts (the seed's order, plus the client's id for safe retries).
#[derive(Debug, Deserialize)]
struct NewOrder {
    id: Option<Uuid>,
    src_currency: i32,
    dst_currency: i32,
    description: String,
    channel: i32,
}

/// The job's payload.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: Uuid,
    src_currency: i32,
    dst_currency: i32,
    description: String,
    channel: i32,
}

/// The answer to a stored order.
#[derive(Debug, Serialize)]
struct Accepted {
    id: Uuid,
    message_id: String,
    partition: i32,
    offset: i64,
}

/// What `POST /orders` refuses, each with a stable code.
#[derive(Debug)]
enum ApiError {
    /// The order is not valid.
    Invalid(String),
    /// The backend did not store it; the client should retry with the same id.
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_order", m),
            ApiError::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{m}; retry with the same id"),
            ),
        };
        (
            status,
            Json(serde_json::json!({"code": code, "message": message})),
        )
            .into_response()
    }
}

#[derive(Clone)]
struct AppState {
    client: Client,
    topic: Arc<str>,
}

/// The HTTP API: `POST /orders`.
fn app(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .with_state(state)
}

async fn create_order(
    State(state): State<AppState>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    if order.description.len() > 1000 {
        return Err(ApiError::Invalid(
            "description: at most 1000 bytes".to_owned(),
        ));
    }
    let id = order.id.unwrap_or_else(Uuid::now_v7);
    let message_id = Uuid::new_v5(&ORDERS, id.as_bytes()).to_string();
    let job = NewJob::json(
        ORDER_CREATED,
        &Order {
            id,
            src_currency: order.src_currency,
            dst_currency: order.dst_currency,
            description: order.description,
            channel: order.channel,
        },
    )
    .map_err(|e| ApiError::Invalid(e.to_string()))?
    .with_key(id.to_string())
    .with_id(message_id.clone());
    let at = state
        .client
        .enqueue(&state.topic, job)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(Accepted {
            id,
            message_id,
            partition: at.partition,
            offset: at.offset,
        }),
    ))
}

/// The worker pool, written as the README's "Writing workers in Rust" shows: each order
/// becomes a row, in the inbox's transaction.
fn worker(
    backend: Arc<dyn Backend>,
    inbox: &Inbox,
    group: &str,
    topic: &str,
    concurrency: usize,
) -> Worker {
    Worker::builder(backend, group, [topic])
        .concurrency(concurrency)
        .job(
            ORDER_CREATED,
            inbox.job(|mut tx, order: Order, _job| async move {
                sqlx::query(
                    "INSERT INTO orders (order_id, src_currency, dst_currency, description, channel) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(order.id.to_string())
                .bind(order.src_currency)
                .bind(order.dst_currency)
                .bind(&order.description)
                .bind(order.channel)
                .execute(&mut *tx)
                .await?; // a database error is retried with backoff
                Ok(tx) // conveyor commits the row together with the inbox's record of the job
            }),
        )
        .build()
}

/// conveyor's tables and the `orders` table (deliberately without a unique `order_id`).
async fn migrate(pool: &PgPool) -> Result<()> {
    conveyor_postgres::migrate(pool).await?;
    let mut tx = pool.begin().await?;
    // several processes may start at once: one creates the table
    sqlx::query("SELECT pg_advisory_xact_lock(7305)")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (
            id           bigserial   PRIMARY KEY,
            order_id     text        NOT NULL,
            src_currency integer     NOT NULL,
            dst_currency integer     NOT NULL,
            description  text        NOT NULL,
            channel      integer     NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

fn value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match value(args, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} `{v}` is not a number")),
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = Which::from_args(&args)?;
    let database_url = value(&args, "--database-url")
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .context("--database-url URL (or DATABASE_URL) is required")?;
    let listen: SocketAddr = value(&args, "--listen")
        .unwrap_or_else(|| "127.0.0.1:1378".into())
        .parse()
        .context("--listen must be HOST:PORT")?;
    let role = value(&args, "--role").unwrap_or_else(|| "both".into());
    let (api_role, worker_role) = match role.as_str() {
        "both" => (true, true),
        "api" => (true, false),
        "worker" => (false, true),
        other => bail!("--role `{other}`: use api, worker or both"),
    };
    if matches!(which, Which::Embedded(_)) && role != "both" {
        bail!("--role {role} with the embedded backend: its log lives in one process, so run --role both there, or use --backend kafka to split the API and the workers");
    }
    let concurrency = number(&args, "--concurrency", 30usize)?;
    let partitions = number(&args, "--partitions", 8i32)?;
    let topic = value(&args, "--topic").unwrap_or_else(|| "orders".into());
    let group = value(&args, "--group").unwrap_or_else(|| "orders-writer".into());

    let backend: Arc<dyn Backend> = match (&which, value(&args, "--session-timeout-ms")) {
        (Which::Kafka(brokers), Some(ms)) => {
            let mut c = conveyor_kafka::KafkaConfig::new(brokers.clone());
            c.session_timeout = Duration::from_millis(ms.parse().context("--session-timeout-ms")?);
            Arc::new(conveyor_kafka::KafkaBackend::connect(c)?)
        }
        _ => which.open()?,
    };
    match backend
        .create_topic(&TopicSpec::new(topic.clone(), partitions))
        .await
    {
        Ok(_) | Err(conveyor_core::Error::TopicConflict { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let pool = conveyor_postgres::connect(&database_url).await?;
    migrate(&pool).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if worker_role {
        let inbox = Inbox::new(pool.clone()).with_name(group.clone());
        let w = worker(Arc::clone(&backend), &inbox, &group, &topic, concurrency);
        let until = stopped();
        tasks.spawn(async move {
            w.run(until).await?;
            let s = inbox.stats();
            eprintln!(
                "orders: worker stopped; {} orders written, {} duplicate deliveries dropped by the inbox",
                s.ran(),
                s.duplicates()
            );
            anyhow::Ok(())
        });
    }
    if api_role {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        eprintln!("orders: listening on http://{}", listener.local_addr()?);
        let state = AppState {
            client: Client::new(Arc::clone(&backend)).with_producer("orders-api"),
            topic: topic.clone().into(),
        };
        let until = stopped();
        tasks.spawn(async move {
            axum::serve(listener, app(state))
                .with_graceful_shutdown(until)
                .await?;
            anyhow::Ok(())
        });
    }
    eprintln!(
        "orders: role {role}, topic {topic}, group {group}, {} backend",
        backend.name()
    );
    tokio::select! {
        _ = stop_signal() => {}
        Some(r) = tasks.join_next() => { r??; bail!("a part of the service stopped early"); }
    }
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    backend.close().await?;
    Ok(())
}
