//! conveyor-postgres: exactly-once effects with PostgreSQL.
//!
//! conveyor delivers jobs at least once. With PostgreSQL beside it, effects written to the
//! database happen once:
//!
//! - [`Inbox`] ([`inbox`]): a handler gets a transaction in which conveyor records the job's
//!   message id; a redelivered job whose id is recorded is acknowledged without running the
//!   handler again, so the handler's rows are written exactly once.
//! - [`Outbox`] ([`outbox`]): an application enqueues jobs inside its own transaction; the
//!   [`Relay`] ([`relay`]) publishes them in order and marks them sent, loses none when killed,
//!   and what it publishes twice carries the same message id, which the inbox runs once.
//! - [`migrate`] ([`mod@migrate`]): the tables, shipped as migrations
//!   (`conveyor postgres migrate --database-url URL`).
//! - [`testing`]: test support, a fresh database per test.
//!
//! # Layout
//! - `error.rs`: [`Error`], [`Result`].
//! - `migrate.rs`, `migrations/`: the schema.
//! - `inbox.rs`, `outbox.rs`, `relay.rs`: one concept each.
//! - `testing.rs`: test databases (`CONVEYOR_TEST_POSTGRES`, 127.0.0.1:5432, or a throwaway server).

pub mod error;
pub mod inbox;
pub mod migrate;
pub mod outbox;
pub mod relay;
pub mod testing;

pub use error::{Error, Result};
pub use inbox::{Inbox, InboxHandler, InboxStats, Tx};
pub use migrate::migrate;
pub use outbox::Outbox;
pub use relay::{Relay, RelayOptions, RelayStats};

/// A pool on `url` (`postgres://user:password@host:port/db`), checked with one connection.
pub async fn connect(url: &str) -> Result<sqlx::PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await?)
}
