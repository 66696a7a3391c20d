//! Opening the database: PostgreSQL or SQLite, with the settings sync needs.

use sea_orm::{
    AccessMode, ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbErr,
    IsolationLevel, TransactionTrait,
};
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

/// Begins a transaction on `db` that a caller who goes away cannot leave open.
///
/// Every transaction of the product starts here, never with
/// `TransactionTrait::begin` (clippy's `disallowed-methods` in `clippy.toml`
/// enforces it).
///
/// # Invariant
/// A connection goes back to the pool outside any transaction block. sqlx
/// 0.8's PostgreSQL `BEGIN` breaks this when the future running it is dropped
/// while `BEGIN` is in flight (a client that disconnects, a session ending
/// mid-apply, a timeout): its guard rolls back only once it has counted the
/// transaction, which happens after the round trip, so the connection returns
/// to the pool inside a transaction nothing will end (sqlx issues 4385 and
/// 4393; 0.8.6 is the newest 0.8). Every later "autocommitted" write on that
/// connection is then invisible to the others, and lost when that transaction
/// rolls back: an unlock token that does not work, a session's claim that
/// vanishes, an acknowledged batch that was never committed.
///
/// Here `BEGIN` runs in a task of its own, which a dropped caller does not
/// cancel: the task completes it, and if nobody is waiting any more the
/// transaction is dropped there, which queues its `ROLLBACK` before the
/// connection is used again (`tests/begin_cancel.rs`).
pub async fn begin(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    begin_with_config(db, None, None).await
}

/// [`begin`] with an isolation level and access mode.
pub async fn begin_with_config(
    db: &DatabaseConnection,
    isolation: Option<IsolationLevel>,
    access: Option<AccessMode>,
) -> Result<DatabaseTransaction, DbErr> {
    let db = db.clone();
    #[allow(clippy::disallowed_methods)]
    let started = tokio::spawn(async move { db.begin_with_config(isolation, access).await });
    started
        .await
        .map_err(|error| DbErr::Custom(format!("beginning a transaction: {error}")))?
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
