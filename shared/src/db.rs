//! Opening the database: PostgreSQL or SQLite, with the settings sync needs.

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
use std::time::Duration;

/// Opens `url` (`postgres://…` or `sqlite://path?mode=rwc`).
///
/// A SQLite pool has exactly one connection: SQLite allows one writer, and two
/// deferred transactions that both upgrade to writing fail with SQLITE_BUSY
/// without waiting. One connection serialises them instead. Code must therefore
/// never use the pool while it holds a transaction from it.
///
/// SQLite gets WAL, `synchronous=NORMAL` (durable at each checkpoint, and a
/// transaction is atomic either way) and a busy timeout, so that readers never
/// block the writer. PostgreSQL keeps sqlx's defaults, which set TCP_NODELAY.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let max_connections = if is_postgres(url) { max_connections } else { 1 };
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .create_if_missing(true)
        });
    Database::connect(options).await
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The SQLite URL of a file path, creating the file if it is missing.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}
