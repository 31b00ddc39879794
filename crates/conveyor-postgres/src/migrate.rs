//! The schema: migrations shipped in `migrations/` and embedded in the crate, applied by
//! [`migrate`] (what `conveyor postgres migrate` runs). Idempotent: applied migrations are
//! recorded in `_sqlx_migrations` and skipped.

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::Result;

/// conveyor's migrations (the inbox and outbox tables).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Applies the migrations not yet applied. Safe to run from several processes at once (sqlx
/// takes an advisory lock while it migrates).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
