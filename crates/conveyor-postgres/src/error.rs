//! The crate's error type: what failed (the database, a migration, the backend) and what to do.

/// An error of `conveyor-postgres`. New variants may be added, so match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A query or the connection to PostgreSQL failed.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("PostgreSQL migrations: {0} (the migrations run in one transaction each; fix the cause and run `conveyor postgres migrate` again)")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The backend refused or failed a publish.
    #[error(transparent)]
    Backend(#[from] conveyor_core::Error),
    /// The conveyor tables are missing: the migrations were not applied.
    #[error("the table `{0}` does not exist: run `conveyor postgres migrate --database-url URL` (or conveyor_postgres::migrate) first")]
    NotMigrated(&'static str),
    /// Invalid input.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Turns "relation does not exist" for one of conveyor's tables into [`Error::NotMigrated`].
    pub(crate) fn from_query(e: sqlx::Error, table: &'static str) -> Error {
        if let sqlx::Error::Database(db) = &e {
            // 42P01: undefined_table
            if db.code().as_deref() == Some("42P01") {
                return Error::NotMigrated(table);
            }
        }
        Error::Database(e)
    }
}
