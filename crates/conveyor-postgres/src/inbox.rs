//! The inbox: a handler whose effects are written to PostgreSQL exactly once per message id.
//!
//! Delivery is at-least-once: a worker killed after a handler's effects committed but before
//! the job's offset did runs the job again, and a client or relay that publishes twice
//! publishes the same message id twice. [`Inbox`] removes both: for each delivery it opens a
//! transaction, inserts the job's message id into `conveyor_inbox` (`ON CONFLICT DO NOTHING`),
//! and only when that inserted a row hands the transaction to the handler; it commits the
//! transaction after the handler returns it. The handler's rows and the inbox row commit
//! together or not at all, so:
//!
//! - a redelivered job whose id is recorded is acknowledged without running the handler
//!   (counted in [`InboxStats::duplicates`]);
//! - a handler error rolls everything back and the job is retried as usual;
//! - two deliveries of one id at once (a zombie member after a rebalance) cannot both write:
//!   the second insert waits on the first transaction's key and then sees it;
//! - a job without a message id fails permanently (it could not be recognised again).
//!
//! The handler receives the [`Tx`] by value and hands it back (`Ok(tx)`): it cannot commit
//! half of the work, keep the transaction, or forget the inbox row. Effects outside the
//! transaction (an e-mail sent, an HTTP call) are not covered: they may happen once per attempt.
//!
//! The inbox keeps every id until [`Inbox::prune`] (`conveyor postgres prune-inbox`) removes
//! those recorded before a time. A pruned id no longer stops its message: keep ids longer than
//! the input topic can keep a record (on Kafka `retention.ms` plus `segment.ms`: whole segments
//! are deleted) and than any replay you might run, or a late redelivery or a replay runs the
//! handler again.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool, backend: std::sync::Arc<dyn conveyor_core::Backend>) {
//! use conveyor_postgres::Inbox;
//! use conveyor_runtime::Worker;
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: String, amount: i64 }
//!
//! let inbox = Inbox::new(pool);
//! let worker = Worker::builder(backend, "orders-writer", ["orders"])
//!     .job("order.created", inbox.job(|mut tx, order: Order, _job| async move {
//!         sqlx::query("INSERT INTO orders (order_id, amount) VALUES ($1, $2)")
//!             .bind(&order.id)
//!             .bind(order.amount)
//!             .execute(&mut *tx)
//!             .await?;
//!         Ok(tx)
//!     }))
//!     .build();
//! # }
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use conveyor_core::Outcome;
use conveyor_runtime::{Handler, Job, JobError};
use serde::de::DeserializeOwned;
use sqlx::PgPool;

/// The transaction a handler writes its effects in; conveyor commits it.
pub type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// The future [`Inbox::job`]'s closures return.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

/// The inbox name used by [`Inbox::new`].
pub const DEFAULT_INBOX: &str = "default";

/// Rows [`Inbox::prune`] deletes per statement.
pub const PRUNE_BATCH: i64 = 10_000;

/// Counts of what an [`Inbox`] did, since it was made.
#[derive(Debug, Default)]
pub struct InboxStats {
    ran: AtomicU64,
    duplicates: AtomicU64,
    rolled_back: AtomicU64,
}

impl InboxStats {
    /// Deliveries whose handler ran and whose transaction committed.
    pub fn ran(&self) -> u64 {
        self.ran.load(Ordering::Relaxed)
    }

    /// Deliveries acknowledged without running the handler: their message id was recorded.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Deliveries rolled back: the handler failed, or beginning or committing failed.
    pub fn rolled_back(&self) -> u64 {
        self.rolled_back.load(Ordering::Relaxed)
    }
}

/// Runs handlers once per message id, in a PostgreSQL transaction (see the module docs).
/// Cloning is cheap; clones share the pool and the stats.
#[derive(Debug, Clone)]
pub struct Inbox {
    pool: PgPool,
    name: Arc<str>,
    stats: Arc<InboxStats>,
}

impl Inbox {
    /// An inbox on `pool` named [`DEFAULT_INBOX`]. The tables come from [`crate::migrate`].
    pub fn new(pool: PgPool) -> Self {
        Inbox {
            pool,
            name: DEFAULT_INBOX.into(),
            stats: Arc::default(),
        }
    }

    /// Names the inbox: message ids are recorded per name, so two consumers (two groups reading
    /// one topic for different effects) each run a message once. Default: [`DEFAULT_INBOX`].
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into().into();
        self
    }

    /// The inbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What it did so far.
    pub fn stats(&self) -> Arc<InboxStats> {
        Arc::clone(&self.stats)
    }

    /// Deletes this inbox's ids recorded more than `older_than` ago, in batches of
    /// [`PRUNE_BATCH`] (short transactions, no long lock on the table); returns how many. A
    /// pruned id no longer stops a redelivery of its message (see the [module docs](self)).
    /// Refuses `older_than` under one second (`InvalidArgument`): that would forget jobs
    /// still being redelivered.
    pub async fn prune(&self, older_than: std::time::Duration) -> crate::Result<u64> {
        if older_than < std::time::Duration::from_secs(1) {
            return Err(crate::Error::InvalidArgument(format!(
                "prune keeps at least the last second of ids, got {older_than:?}: keep them longer than the input topic's retention"
            )));
        }
        let mut deleted = 0;
        loop {
            let r = sqlx::query(
                "DELETE FROM conveyor_inbox WHERE ctid IN (SELECT ctid FROM conveyor_inbox \
                 WHERE inbox = $1 AND processed_at < now() - make_interval(secs => $2) LIMIT $3)",
            )
            .bind(&*self.name)
            .bind(older_than.as_secs_f64())
            .bind(PRUNE_BATCH)
            .execute(&self.pool)
            .await
            .map_err(|e| crate::Error::from_query(e, "conveyor_inbox"))?;
            deleted += r.rows_affected();
            if r.rows_affected() < PRUNE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }

    /// Whether `message_id` is recorded (its handler ran and committed).
    pub async fn contains(&self, message_id: &str) -> crate::Result<bool> {
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM conveyor_inbox WHERE inbox = $1 AND message_id = $2")
                .bind(&*self.name)
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| crate::Error::from_query(e, "conveyor_inbox"))?;
        Ok(row.is_some())
    }

    /// A [`Handler`] for JSON payloads of type `T`: `f(tx, payload, job)` runs in the inbox's
    /// transaction and returns it. A payload that does not decode fails permanently.
    pub fn handler<T, F, Fut>(&self, f: F) -> InboxHandler<T, F>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Tx, T, Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Tx, JobError>> + Send + 'static,
    {
        InboxHandler {
            inbox: self.clone(),
            f,
            _t: PhantomData,
        }
    }

    /// The same as [`Inbox::handler`], as a closure for `WorkerBuilder::job` (which decodes the
    /// payload first).
    pub fn job<T, F, Fut>(&self, f: F) -> impl Fn(T, Job) -> JobFuture + Send + Sync + 'static
    where
        T: Send + 'static,
        F: Fn(Tx, T, Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Tx, JobError>> + Send + 'static,
    {
        let inbox = self.clone();
        let f = Arc::new(f);
        move |payload: T, job: Job| {
            let (inbox, f) = (inbox.clone(), Arc::clone(&f));
            Box::pin(async move { inbox.run(job, move |tx, job| f(tx, payload, job)).await })
        }
    }

    /// One delivery: records the id and runs `f` in one transaction, or acknowledges a
    /// duplicate. `Ok(())` when the job is done (ran now, or before).
    pub async fn run<F, Fut>(&self, job: Job, f: F) -> Result<(), JobError>
    where
        F: FnOnce(Tx, Job) -> Fut,
        Fut: Future<Output = Result<Tx, JobError>>,
    {
        let Some(id) = job.id().filter(|id| !id.is_empty()).map(str::to_owned) else {
            return Err(JobError::fail(format!(
                "job at {}/{}@{} has no message_id header: an inbox runs a job once per message id, \
                 so it cannot run this one; enqueue through conveyor's client (which sets one) or \
                 set the `message_id` header",
                job.record.topic, job.record.partition, job.record.offset
            )));
        };
        let mut tx = self.pool.begin().await.map_err(|e| {
            self.stats.rolled_back.fetch_add(1, Ordering::Relaxed);
            JobError::retry(format!("inbox: beginning a PostgreSQL transaction: {e}"))
        })?;
        // Waits on a concurrent delivery's uncommitted row with this key, then sees it.
        let inserted = sqlx::query(
            "INSERT INTO conveyor_inbox (inbox, message_id, topic, \"partition\", \"offset\") \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&*self.name)
        .bind(&id)
        .bind(&job.record.topic)
        .bind(job.record.partition)
        .bind(job.record.offset)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            self.stats.rolled_back.fetch_add(1, Ordering::Relaxed);
            match crate::Error::from_query(e, "conveyor_inbox") {
                e @ crate::Error::NotMigrated(_) => JobError::retry(format!("inbox: {e}")),
                e => JobError::retry(format!("inbox: recording message id {id}: {e}")),
            }
        })?
        .rows_affected();
        if inserted == 0 {
            let _ = tx.rollback().await;
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            // its reply (if it was a request) went out with its first run
            job.skip_reply();
            tracing::debug!(inbox = %self.name, message_id = %id, "inbox: already ran; acknowledged without running");
            return Ok(());
        }
        match f(tx, job).await {
            // dropping the transaction rolls it back
            Err(e) => {
                self.stats.rolled_back.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Ok(tx) => match tx.commit().await {
                Ok(()) => {
                    self.stats.ran.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                // committed or not: a retry runs it, or finds the id and acknowledges it
                Err(e) => {
                    self.stats.rolled_back.fetch_add(1, Ordering::Relaxed);
                    Err(JobError::retry(format!(
                        "inbox: committing message id {id}: {e}"
                    )))
                }
            },
        }
    }
}

/// The [`Handler`] made by [`Inbox::handler`].
pub struct InboxHandler<T, F> {
    inbox: Inbox,
    f: F,
    _t: PhantomData<fn() -> T>,
}

impl<T, F> std::fmt::Debug for InboxHandler<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InboxHandler<{}>({})",
            std::any::type_name::<T>(),
            self.inbox.name
        )
    }
}

#[async_trait]
impl<T, F, Fut> Handler for InboxHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Tx, T, Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Tx, JobError>> + Send + 'static,
{
    async fn handle(&self, job: Job) -> Outcome {
        let payload = match job.json::<T>() {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let f = &self.f;
        match self
            .inbox
            .run(job, move |tx, job| f(tx, payload, job))
            .await
        {
            Ok(()) => Outcome::Done,
            Err(e) => e.into(),
        }
    }
}
