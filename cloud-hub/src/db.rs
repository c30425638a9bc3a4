//! The hub's Postgres connection pool and its forward-only migrations (owned by `schema`).

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Every Postgres migration, embedded at build time from `schema/migrations/postgres`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../schema/migrations/postgres");

/// How many connections one hub process opens at most.
pub const POOL_CONNECTIONS_MAX: u32 = 16;

/// Why the database could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No URL was given.
    #[error("no database URL: pass --database-url or set DATABASE_URL")]
    Missing,
    /// The database URL does not parse.
    #[error("the database URL is not valid ({0}); expected postgres://USER@HOST:PORT/DATABASE")]
    BadUrl(#[source] sqlx::Error),
    /// The server did not accept a connection.
    #[error("cannot connect to Postgres at {target}: {source}; is the server running?")]
    Connect {
        /// Host and database, without credentials.
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed; the database is left at the last migration that succeeded.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Opens a pool to `url`, waiting up to `acquire_timeout` for the first connection.
pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<PgPool, DbError> {
    if url.trim().is_empty() {
        return Err(DbError::Missing);
    }
    let options: PgConnectOptions = url.parse().map_err(DbError::BadUrl)?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default)")
    );
    PgPoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { target, source })
}

/// Applies every migration not yet applied. Safe to run at every start and from several hubs.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
