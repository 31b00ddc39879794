//! The relay: publishes the outbox's committed rows to the backend, in order, and marks them sent.
//!
//! One relay works at a time: each holds a PostgreSQL advisory lock ([`RelayOptions::lock_key`])
//! on a connection of its own, and a second relay waits for it (and takes over when the first
//! stops or dies: PostgreSQL releases the lock with the connection). The relay reads the unsent
//! rows (`sent_at IS NULL`) in id order, publishes them (one publish per run of rows with the
//! same topic) and then marks exactly the rows it published. It never keeps a high-water mark:
//! ids are taken at insert and transactions commit out of id order, so a row that commits late
//! with a lower id is simply unsent when it becomes visible, and is published then.
//!
//! Guarantees:
//! - nothing committed is lost: a row is marked sent only after the backend acknowledged it,
//!   so a relay killed at any moment leaves it unsent and the next relay publishes it;
//! - what is published twice (killed between publish and mark) has the same message id, which
//!   an [`Inbox`](crate::Inbox) runs once;
//! - per key, jobs of transactions that committed one after the other are published in that
//!   order (the later one's row was inserted after the earlier one committed, so it has a
//!   higher id and is never visible without it); transactions that overlapped have no order
//!   between them and are published in the order the relay sees them.
//!
//! Defaults are on [`RelayOptions`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conveyor_core::{headers, Backend};
use conveyor_runtime::{Client, NewJob};
use sqlx::{ConnectOptions, PgConnection, PgPool};

use crate::{Error, Result};

/// How a [`Relay`] works. Every default is stated on its field.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Rows read and published per round. Default: 256.
    pub batch: usize,
    /// How long an idle relay waits before looking for new rows. Default: 50 ms.
    pub poll_interval: Duration,
    /// The advisory lock (`pg_advisory_lock`) that lets one relay work at a time; relays of
    /// different outboxes in one database would need different keys. Default:
    /// [`RelayOptions::DEFAULT_LOCK_KEY`].
    pub lock_key: i64,
    /// Sent rows older than this are deleted (checked every minute); `None` keeps them.
    /// Default: 24 hours.
    pub retain_sent: Option<Duration>,
    /// The wait after an error before trying again. Default: 1 s.
    pub retry_delay: Duration,
}

impl RelayOptions {
    /// The default advisory lock key: "conveyor" in ASCII.
    pub const DEFAULT_LOCK_KEY: i64 = 0x636f_6e76_6579_6f72;
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch: 256,
            poll_interval: Duration::from_millis(50),
            lock_key: Self::DEFAULT_LOCK_KEY,
            retain_sent: Some(Duration::from_secs(24 * 3600)),
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// Counts of what a [`Relay`] did.
#[derive(Debug, Default)]
pub struct RelayStats {
    published: AtomicU64,
    refused: AtomicU64,
    rounds: AtomicU64,
    errors: AtomicU64,
    locked: AtomicU64,
}

impl RelayStats {
    /// Unique jobs the backend refused as duplicates (another job held the key): marked sent
    /// without being published, each logged, so the outbox never stalls behind them.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Rows published and marked sent.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Publishes made (each of one or more rows of one topic).
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Errors it recovered from (database or backend), each followed by a retry.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Times it took the advisory lock (1 unless its connection was lost).
    pub fn locked(&self) -> u64 {
        self.locked.load(Ordering::Relaxed)
    }
}

/// Publishes the outbox (see the module docs).
#[derive(Debug)]
pub struct Relay {
    pool: PgPool,
    client: Client,
    options: RelayOptions,
    stats: Arc<RelayStats>,
}

/// An outbox row, as read by the relay.
type Row = (
    i64,
    String,
    String,
    String,
    Option<Vec<u8>>,
    Vec<u8>,
    Option<String>,
    Vec<String>,
    Vec<Vec<u8>>,
);

impl Relay {
    /// A relay from the outbox in `pool`'s database to `backend`. It opens one connection of
    /// its own (with the pool's options) to hold the lock and read and mark rows.
    pub fn new(pool: PgPool, backend: Arc<dyn Backend>) -> Self {
        Relay {
            pool,
            client: Client::new(backend).with_producer("conveyor-postgres relay"),
            options: RelayOptions::default(),
            stats: Arc::default(),
        }
    }

    /// Sets the options.
    pub fn options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// What it did so far.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
    }

    /// Publishes until `shutdown` resolves, then returns after the round in flight (whose rows
    /// are marked, or left for the next relay). Database and transient backend errors are
    /// logged and retried after [`RelayOptions::retry_delay`]; an error no retry can fix (an
    /// unknown topic, a record too large, missing tables, a backend whose
    /// [`health`](conveyor_core::Backend::health) says it takes no more writes) ends it with
    /// that error.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            let conn = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                c = self.lock() => c,
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "outbox relay: {e}; trying again in {:?}",
                        self.options.retry_delay
                    );
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(self.options.retry_delay) => continue,
                    }
                }
            };
            let mut pruned = tokio::time::Instant::now();
            loop {
                let wait = match self.round(&mut conn).await {
                    Ok(0) => self.options.poll_interval,
                    Ok(_) => Duration::ZERO,
                    Err(e) if permanent(&e) => return Err(e),
                    Err(Error::Database(e)) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("outbox relay: PostgreSQL: {e}; reconnecting");
                        break;
                    }
                    Err(e) => {
                        // a backend that takes no more writes until the process restarts (the
                        // embedded log after a full disk): retrying in place never succeeds
                        if let Err(broken) = self.client.backend().health() {
                            return Err(Error::Backend(broken));
                        }
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "outbox relay: {e}; trying again in {:?}",
                            self.options.retry_delay
                        );
                        self.options.retry_delay
                    }
                };
                if pruned.elapsed() >= Duration::from_secs(60) {
                    pruned = tokio::time::Instant::now();
                    if let Err(e) = self.prune(&mut conn).await {
                        tracing::warn!("outbox relay: deleting old sent rows: {e}");
                    }
                }
                tokio::select! {
                    biased;
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(self.options.retry_delay) => {}
            }
        }
    }

    /// Takes the lock and publishes until the outbox is empty; returns the rows published.
    /// For tests and one-off drains; waits while another relay holds the lock.
    pub async fn drain(&self) -> Result<u64> {
        let mut conn = self.lock().await?;
        let mut total = 0;
        loop {
            match self.round(&mut conn).await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// A connection of its own holding the advisory lock (waiting for it while another relay
    /// holds it).
    async fn lock(&self) -> Result<PgConnection> {
        let options = self.pool.connect_options().as_ref().clone();
        let mut conn = options.connect().await?;
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(self.options.lock_key)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            tracing::info!(
                "outbox relay: another relay holds the lock {}; waiting for it",
                self.options.lock_key
            );
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(self.options.lock_key)
                .execute(&mut conn)
                .await?;
        }
        self.stats.locked.fetch_add(1, Ordering::Relaxed);
        tracing::info!("outbox relay: holding the lock; publishing");
        Ok(conn)
    }

    /// One round: reads up to `batch` unsent rows in id order, publishes each run of one topic,
    /// marks what was published. Returns the rows published.
    async fn round(&self, conn: &mut PgConnection) -> Result<u64> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, topic, message_id, job_type, key, payload, content_type, header_names, \
             header_values FROM conveyor_outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(self.options.batch as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| Error::from_query(e, "conveyor_outbox"))?;
        let mut published = 0;
        let unique = |j: &NewJob| j.headers.get(headers::UNIQUE_KEY).is_some();
        let mut rows = rows
            .into_iter()
            .map(|r| (r.0, r.1.clone(), to_job(r)))
            .peekable();
        while let Some((id, topic, job)) = rows.next() {
            // a unique job goes alone: a batch with two jobs of one unique key is refused
            // whole, and a duplicate must not hold up the rows behind it
            let alone = unique(&job);
            let mut run = vec![(id, job)];
            if !alone {
                while let Some((id, _, job)) = rows.next_if(|(_, t, j)| *t == topic && !unique(j)) {
                    run.push((id, job));
                }
            }
            let ids: Vec<i64> = run.iter().map(|(id, _)| *id).collect();
            let jobs: Vec<NewJob> = run.into_iter().map(|(_, j)| j).collect();
            let refused = match self.client.enqueue_batch(&topic, jobs).await {
                Ok(_) => false,
                Err(conveyor_core::Error::DuplicateJob {
                    unique_key,
                    existing_id,
                    ..
                }) if alone => {
                    tracing::warn!(outbox_id = ids[0], topic, unique_key, existing_id, "outbox relay: a unique job refused as a duplicate (another job holds its key); marked sent without publishing");
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(e) => return Err(Error::Backend(e)),
            };
            self.stats.rounds.fetch_add(1, Ordering::Relaxed);
            // only the rows just published, by id: never a range that could cover a row
            // committed late
            sqlx::query("UPDATE conveyor_outbox SET sent_at = now() WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *conn)
                .await?;
            if !refused {
                self.stats
                    .published
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            published += ids.len() as u64;
        }
        Ok(published)
    }

    async fn prune(&self, conn: &mut PgConnection) -> Result<u64> {
        let Some(keep) = self.options.retain_sent else {
            return Ok(0);
        };
        let r = sqlx::query(
            "DELETE FROM conveyor_outbox WHERE sent_at < now() - make_interval(secs => $1)",
        )
        .bind(keep.as_secs_f64())
        .execute(conn)
        .await?;
        Ok(r.rows_affected())
    }
}

/// Errors a retry cannot fix.
fn permanent(e: &Error) -> bool {
    use conveyor_core::Error as C;
    match e {
        Error::NotMigrated(_) | Error::InvalidArgument(_) | Error::Migrate(_) => true,
        Error::Backend(b) => matches!(
            b,
            C::UnknownTopic(_)
                | C::InvalidTopicName { .. }
                | C::ReservedTopic { .. }
                | C::RecordTooLarge { .. }
                | C::InvalidArgument(_)
        ),
        _ => false,
    }
}

fn to_job(row: Row) -> NewJob {
    let (_, _, message_id, job_type, key, payload, content_type, names, values) = row;
    let mut job = NewJob::raw(job_type, payload, content_type).with_id(message_id);
    if let Some(key) = key {
        job = job.with_key(key);
    }
    for (n, v) in names.into_iter().zip(values) {
        job.headers.append(n, v);
    }
    job
}
