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
/// SQLite gets WAL, `synchronous=FULL` and a busy timeout, so that readers
/// never block the writer. FULL: COMMIT returns only once the WAL is fsynced,
/// so what a side sends or acknowledges after a commit survives a power cut
/// (with NORMAL a commit reached the disk only at the next checkpoint: an
/// acknowledged batch or invoice could vanish, `tests/tests/power_cut.rs`).
/// It costs one fsync per commit.
///
/// Two SQLite settings are for applying sync batches (`satellite-agent/benches/apply.rs`):
/// - `cache_size` 8 MiB instead of 2 MiB: a 1000-record batch dirties pages all
///   over the indexes; with 2 MiB they spilled to the WAL before the commit and
///   were read back (about 40 % more records per CPU-second). It bounds the
///   memory the connection keeps.
/// - `wal_autocheckpoint` 10,000 pages instead of 1,000: a checkpoint (copying
///   the WAL into the database, with an fsync) every few batches instead of
///   every one, and a page changed by several batches is copied once. The WAL
///   file grows to about 40 MiB and is reused.
///
/// PostgreSQL keeps sqlx's defaults, which set TCP_NODELAY.
///
/// [`BENCH_SYNCHRONOUS_NORMAL`] set to `1` in the environment puts SQLite back
/// on `synchronous=NORMAL`: it exists only so that `storesync-bench` can show
/// what durability costs, and loses acknowledged data in a power cut.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let max_connections = if is_postgres(url) { max_connections } else { 1 };
    let synchronous = if std::env::var(BENCH_SYNCHRONOUS_NORMAL).as_deref() == Ok("1") {
        tracing::warn!(
            "{BENCH_SYNCHRONOUS_NORMAL}=1: SQLite commits are NOT durable before they are sent or \
             acknowledged (for measuring the cost of durability only; a power cut loses data)"
        );
        sea_orm::sqlx::sqlite::SqliteSynchronous::Normal
    } else {
        sea_orm::sqlx::sqlite::SqliteSynchronous::Full
    };
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .busy_timeout(Duration::from_secs(30))
                .pragma("cache_size", "-8192")
                .pragma("wal_autocheckpoint", "10000")
                .create_if_missing(true)
        });
    Database::connect(options).await
}

/// The environment variable that trades durability for speed, for the
/// benchmark program only (see [`connect`]).
pub const BENCH_SYNCHRONOUS_NORMAL: &str = "STORESYNC_BENCH_SQLITE_SYNCHRONOUS_NORMAL";

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The SQLite URL of a file path, creating the file if it is missing.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}
