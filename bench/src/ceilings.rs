//! Ceilings for the satellite's figures: the same rows bulk-inserted into a
//! scratch SQLite file, as fast as SQLite takes them on this machine.
//!
//! The scratch file is opened with the satellite's connection settings
//! (`storesync_shared::domain::db::connect`: WAL, `synchronous=FULL`, its
//! page cache and checkpoint interval) and given the satellite's schema as
//! its migrations made it: every table and index definition copied from the
//! satellite's own file (`sqlite_master`), so the tables, keys and indexes
//! are those of the satellite binary under test. The rows are read from the
//! satellite's own file after it applied them (the very rows it wrote, not
//! generated again) and inserted with plain multi-row `INSERT`s of a fixed
//! size (each size prepared once, then found in the connection's statement
//! cache), in ONE transaction, committed durably. Reading them is not timed;
//! beginning, inserting, building indexes and committing is.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use storesync_shared::domain::tables::{self, write::Scope, Row, SyncTable};
use storesync_tests::{Backend, TestDb};

/// SQLite's limit of bound parameters per statement (since 3.32).
const MAX_PARAMETERS: usize = 32_766;

/// Rows per `INSERT`: as many as the parameter limit allows, at most this.
const MAX_ROWS: usize = 1_000;

/// Rows read from the satellite's file at a time (bounds the bench's memory).
const PAGE: u64 = 100_000;

/// A scratch SQLite file with the satellite's schema, removed on drop.
pub struct Scratch {
    _file: TestDb,
    pub db: DatabaseConnection,
}

impl Scratch {
    /// A new file, opened as the satellite opens its own, with the schema of
    /// the satellite's file `source`.
    pub async fn like(source: &DatabaseConnection) -> anyhow::Result<Self> {
        let file = TestDb::new(Backend::Sqlite);
        let db = storesync_shared::domain::db::connect(&file.url(), 1).await?;
        let schema = source
            .query_all(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' \
                 ORDER BY type = 'index', rowid",
            ))
            .await?;
        for definition in schema {
            let sql: String = definition.try_get_by_index(0)?;
            db.execute_unprepared(&sql).await?;
        }
        Ok(Self { _file: file, db })
    }
}

/// `INSERT INTO "t" ("a", …) VALUES (?, …), …` with `rows` rows.
fn insert_sql(table: &dyn SyncTable, rows: usize) -> String {
    let columns = table.columns();
    let names: Vec<String> = columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
    let row = format!("({})", vec!["?"; columns.len()].join(", "));
    let mut sql = format!(
        "INSERT INTO \"{}\" ({}) VALUES {row}",
        table.name(),
        names.join(", ")
    );
    for _ in 1..rows {
        sql.push_str(", ");
        sql.push_str(&row);
    }
    sql
}

/// Inserts `rows` of `table` on `db` (a transaction), statements of the
/// largest size first and one statement for the remainder.
async fn insert<C: ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    rows: Vec<Row>,
) -> anyhow::Result<()> {
    let per_statement = (MAX_PARAMETERS / table.columns().len().max(1)).clamp(1, MAX_ROWS);
    let full = insert_sql(table, per_statement);
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Row> = rows.by_ref().take(per_statement).collect();
        let sql = if chunk.len() == per_statement {
            full.clone()
        } else {
            insert_sql(table, chunk.len())
        };
        let values: Vec<Value> = chunk.into_iter().flat_map(|row| row.0).collect();
        db.execute(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            values,
        ))
        .await?;
    }
    Ok(())
}

/// Reads rows of `table` from `source` selected by `filter` (an SQL
/// condition), in id order.
async fn read(
    source: &DatabaseConnection,
    table: &dyn SyncTable,
    filter: &str,
) -> anyhow::Result<Vec<Row>> {
    let columns: Vec<String> = table
        .columns()
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    let found = source
        .query_all(Statement::from_string(
            DbBackend::Sqlite,
            format!(
                "SELECT {} FROM \"{}\" WHERE {filter} ORDER BY id",
                columns.join(", "),
                table.name()
            ),
        ))
        .await?;
    Ok(found
        .iter()
        .map(|result| Row::read(table, result))
        .collect::<Result<_, _>>()?)
}

/// The downstream ceiling: the items and names whose codes start with
/// `prefix` (one run's changes) read from the satellite's file `source`,
/// then inserted into `scratch` in one durable transaction. Returns the rows
/// and the time the insert took.
pub async fn master_data_insert(
    scratch: &Scratch,
    source: &DatabaseConnection,
    prefix: &str,
) -> anyhow::Result<(usize, Duration)> {
    let mut by_table = Vec::new();
    for (table, kind) in [(tables::SYNCED[0], "I"), (tables::SYNCED[1], "N")] {
        let rows = read(source, table, &format!("code LIKE '{prefix}{kind}%'")).await?;
        by_table.push((table, rows));
    }
    let count = by_table.iter().map(|(_, rows)| rows.len()).sum();
    let started = Instant::now();
    let txn = storesync_shared::domain::db::begin(&scratch.db).await?;
    for (table, rows) in by_table {
        insert(&txn, table, rows).await?;
    }
    txn.commit().await?;
    Ok((count, started.elapsed()))
}

/// The initialisation ceiling: every row of every synced table the
/// satellite's file `source` holds, inserted into a new scratch file in one
/// durable transaction, with the store-data indexes dropped first and built
/// at the end, as the satellite loads a snapshot. Reading (in pages of
/// [`PAGE`] rows, between inserts) is not timed. Returns the rows and the
/// time taken.
pub async fn bulk_load(source: &DatabaseConnection) -> anyhow::Result<(usize, Duration)> {
    let scratch = Scratch::like(source).await?;
    for (index, _) in storesync_shared::domain::schema::store_data_indexes() {
        scratch
            .db
            .execute_unprepared(&format!("DROP INDEX IF EXISTS {index}"))
            .await?;
    }
    let mut timed = Duration::ZERO;
    let mut count = 0;
    let started = Instant::now();
    let txn = storesync_shared::domain::db::begin(&scratch.db).await?;
    timed += started.elapsed();
    for table in tables::SYNCED.iter().copied() {
        let mut after = String::new();
        loop {
            let page = tables::write::page(source, table, Scope::All, &after, Some(PAGE)).await?;
            let rows: Vec<Row> = page
                .iter()
                .map(|result| Row::read(table, result))
                .collect::<Result<_, _>>()?;
            let Some(last) = rows.last() else { break };
            after = last.id().to_owned();
            let full = rows.len() as u64 == PAGE;
            count += rows.len();
            let started = Instant::now();
            insert(&txn, table, rows).await?;
            timed += started.elapsed();
            if !full {
                break;
            }
        }
    }
    let started = Instant::now();
    for (_, create) in storesync_shared::domain::schema::store_data_indexes() {
        txn.execute_unprepared(&create).await?;
    }
    txn.commit().await?;
    timed += started.elapsed();
    Ok((count, timed))
}
