//! The outbox: jobs enqueued inside the application's own PostgreSQL transaction.
//!
//! [`Outbox::enqueue`] inserts a row into `conveyor_outbox` on the application's connection or
//! transaction: the job exists exactly when the application's other writes of that transaction
//! committed, never for a rolled-back one. The [`Relay`](crate::Relay) publishes the rows later.
//! The message id is fixed at insert (the job's own [`NewJob::with_id`], else a fresh UUIDv7),
//! so a row published twice (a relay killed between publishing and marking it sent) is the same
//! job twice, which an [`Inbox`](crate::Inbox) runs once.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), conveyor_postgres::Error> {
//! use conveyor_postgres::Outbox;
//! use conveyor_runtime::NewJob;
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1").execute(&mut *tx).await?;
//! let job = NewJob::json("receipt.send", &serde_json::json!({"account": 1})).unwrap();
//! let id = Outbox::enqueue(&mut tx, "receipts", job.with_key("account-1")).await?;
//! tx.commit().await?; // the job is enqueued with the update, or neither happens
//! # let _ = id; Ok(()) }
//! ```

use conveyor_runtime::NewJob;
use sqlx::PgConnection;

use crate::{Error, Result};

/// Enqueues jobs in the application's transaction (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Outbox;

impl Outbox {
    /// Inserts `job` for `topic` on `conn` (typically `&mut tx` of an open transaction); returns
    /// its message id. Published by the relay once the transaction commits. A topic that is
    /// not a valid name, or one of conveyor's own (`conveyor.*`), is refused here.
    pub async fn enqueue(conn: &mut PgConnection, topic: &str, job: NewJob) -> Result<String> {
        conveyor_core::topic::validate_job_topic(topic)?;
        insert(conn, topic, job).await
    }

    /// Inserts several jobs for `topic`, in order (the relay publishes them in this order);
    /// returns their message ids.
    pub async fn enqueue_batch(
        conn: &mut PgConnection,
        topic: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<String>> {
        conveyor_core::topic::validate_job_topic(topic)?;
        let mut ids = Vec::with_capacity(jobs.len());
        for job in jobs {
            ids.push(insert(conn, topic, job).await?);
        }
        Ok(ids)
    }

    /// Rows not yet published.
    pub async fn pending(conn: &mut PgConnection) -> Result<i64> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM conveyor_outbox WHERE sent_at IS NULL")
                .fetch_one(conn)
                .await
                .map_err(|e| Error::from_query(e, "conveyor_outbox"))?;
        Ok(n)
    }
}

async fn insert(conn: &mut PgConnection, topic: &str, job: NewJob) -> Result<String> {
    let id = match job.id {
        Some(id) if id.is_empty() => {
            return Err(Error::InvalidArgument(
                "the job's message id is empty: leave it unset for a fresh one".into(),
            ))
        }
        Some(id) => id,
        None => uuid::Uuid::now_v7().to_string(),
    };
    let (names, values): (Vec<String>, Vec<Vec<u8>>) = job
        .headers
        .iter()
        .map(|(n, v)| (n.to_owned(), v.to_vec()))
        .unzip();
    sqlx::query(
        "INSERT INTO conveyor_outbox \
         (topic, message_id, job_type, key, payload, content_type, header_names, header_values) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(topic)
    .bind(&id)
    .bind(&job.job_type)
    .bind(job.key.as_deref())
    .bind(&job.payload[..])
    .bind(job.content_type.as_deref())
    .bind(&names)
    .bind(&values)
    .execute(conn)
    .await
    .map_err(|e| Error::from_query(e, "conveyor_outbox"))?;
    Ok(id)
}
