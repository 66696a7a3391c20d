//! Whole-row upserts of records received from another site, in arrival order.
//!
//! Records are written with multi-row `INSERT … ON CONFLICT (id) DO UPDATE`
//! statements (never one statement per record). A statement may not touch one
//! row twice, and unique columns (item and name codes) are checked row by row,
//! so a run of records is cut into statements wherever an id repeats: the rows
//! land in exactly the order they were sent, each state valid when it was made.
//! On SQLite the update is skipped for a row already as sent (`DO UPDATE …
//! WHERE` some column differs): a resend or a master-data resync writes no
//! page for rows it does not change.
//!
//! On SQLite the statements are written here rather than by sea-query, in a
//! few fixed sizes (`SQLITE_ROWS` rows, then powers of two for the rest of a
//! run): every shape is prepared once and then found in sqlx's per-connection
//! statement cache, where one statement per distinct row count would be parsed
//! anew each time, and the values move out of the models instead of being
//! copied through a query tree. Not one statement per record: each statement
//! is a round trip to sqlx's SQLite worker thread (not measured against this;
//! `satellite-agent/benches/apply.rs` can, with `SQLITE_ROWS` = 1). PostgreSQL
//! keeps sea-query's statements.

use std::collections::HashSet;
use std::fmt::Write;

use sea_orm::sea_query::{Alias, OnConflict, Query, SimpleExpr};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, IdenStatic, IntoActiveModel,
    Iterable, Statement, Value,
};

use crate::domain::tables::{Row, SyncTable};

/// Bind parameters per statement: below SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_PARAMETERS: usize = 30_000;

/// Rows per SQLite statement. Larger statements save little per row and each
/// shape stays prepared in the connection's cache, its program growing with
/// its rows.
const SQLITE_ROWS: usize = 128;

/// Upserts `models` of entity `E` in order; `id_of` gives each row's primary key.
pub async fn all<E, C>(
    db: &C,
    models: Vec<E::Model>,
    id_of: impl Fn(&E::Model) -> &str,
) -> Result<(), DbErr>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel>,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
    C: ConnectionTrait,
{
    if models.is_empty() {
        return Ok(());
    }
    let runs = cut(
        &models,
        rows_per_statement(db, E::Column::iter().count()),
        id_of,
    );
    let columns: Vec<String> = E::Column::iter()
        .map(|c| IdenStatic::as_str(&c).to_owned())
        .collect();
    let rows = models
        .into_iter()
        .map(|model| {
            let mut active = model.into_active_model();
            Row(E::Column::iter()
                .map(|c| active.take(c).into_value().unwrap_or(Value::Int(None)))
                .collect())
        })
        .collect();
    write(
        db,
        sea_orm::EntityName::table_name(&E::default()),
        &columns,
        rows,
        &runs,
    )
    .await
}

/// Upserts `rows` of `table` in order (see the module docs).
pub async fn rows<C: ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    rows: Vec<Row>,
) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    let columns: Vec<String> = table.columns().into_iter().map(|c| c.name).collect();
    let runs = cut(&rows, rows_per_statement(db, columns.len()), Row::id);
    write(db, table.name(), &columns, rows, &runs).await
}

fn rows_per_statement<C: ConnectionTrait>(db: &C, columns: usize) -> usize {
    match db.get_database_backend() {
        DbBackend::Sqlite => SQLITE_ROWS,
        _ => 1000,
    }
    .min(MAX_PARAMETERS / columns.max(1))
    .max(1)
}

/// The lengths of consecutive statements: at most `limit` rows each, a new
/// one wherever an id repeats within the current one.
fn cut<M>(models: &[M], limit: usize, id_of: impl Fn(&M) -> &str) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut ids_in_run: HashSet<&str> = HashSet::with_capacity(limit.min(models.len()));
    for model in models {
        let id = id_of(model);
        if ids_in_run.len() == limit || ids_in_run.contains(id) {
            lengths.push(ids_in_run.len());
            ids_in_run.clear();
        }
        ids_in_run.insert(id);
    }
    lengths.push(ids_in_run.len());
    lengths
}

/// Writes `rows` of `table` (values in `columns` order, the key `id` first)
/// as the statements `runs` says.
async fn write<C: ConnectionTrait>(
    db: &C,
    table: &str,
    columns: &[String],
    rows: Vec<Row>,
    runs: &[usize],
) -> Result<(), DbErr> {
    match db.get_database_backend() {
        DbBackend::Sqlite => sqlite::write(db, table, columns, rows, runs).await,
        _ => sea_query_write(db, table, columns, rows, runs).await,
    }
}

async fn sea_query_write<C: ConnectionTrait>(
    db: &C,
    table: &str,
    columns: &[String],
    rows: Vec<Row>,
    runs: &[usize],
) -> Result<(), DbErr> {
    let mut rows = rows.into_iter();
    for &run in runs {
        let mut insert = Query::insert();
        insert
            .into_table(Alias::new(table))
            .columns(columns.iter().map(|c| Alias::new(c.as_str())))
            .on_conflict(
                OnConflict::column(Alias::new(columns[0].as_str()))
                    .update_columns(columns[1..].iter().map(|c| Alias::new(c.as_str())))
                    .to_owned(),
            );
        for row in rows.by_ref().take(run) {
            insert
                .values(row.0.into_iter().map(SimpleExpr::from))
                .map_err(|e| DbErr::Custom(e.to_string()))?;
        }
        db.execute(db.get_database_backend().build(&insert)).await?;
    }
    Ok(())
}

mod sqlite {
    use std::sync::Arc;

    use super::*;

    /// Writes each run of `runs` as statements of `SQLITE_ROWS` rows and then
    /// of decreasing powers of two, in order.
    pub(super) async fn write<C: ConnectionTrait>(
        db: &C,
        table: &str,
        columns: &[String],
        rows: Vec<Row>,
        runs: &[usize],
    ) -> Result<(), DbErr> {
        let mut rows = rows.into_iter();
        for &run in runs {
            let mut left = run;
            while left > 0 {
                let size = if left >= SQLITE_ROWS {
                    SQLITE_ROWS
                } else {
                    1 << left.ilog2()
                };
                left -= size;
                let sql = cached(table, columns, size);
                let mut values = Vec::with_capacity(size * columns.len());
                for row in rows.by_ref().take(size) {
                    values.extend(row.0);
                }
                db.execute(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    sql.as_ref(),
                    values,
                ))
                .await?;
            }
        }
        Ok(())
    }

    /// The texts built so far, by table, columns and rows: a few shapes per
    /// table (`SQLITE_ROWS` and the powers of two below it), kept for the
    /// process. Building a text anew for every run of records took about an
    /// eighth of a satellite's CPU while it applied master-data changes,
    /// where items and names alternate in short runs (a profile of
    /// `storesync-bench downstream`).
    type Shapes = std::collections::HashMap<String, Vec<(Vec<String>, usize, Arc<str>)>>;
    static SHAPES: std::sync::LazyLock<std::sync::Mutex<Shapes>> =
        std::sync::LazyLock::new(Default::default);

    /// [`statement`], built once per shape (a look-up allocates nothing).
    pub(super) fn cached(table: &str, columns: &[String], rows: usize) -> Arc<str> {
        let mut shapes = SHAPES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, _, sql)) = shapes.get(table).and_then(|known| {
            known
                .iter()
                .find(|(cs, n, _)| *n == rows && cs.as_slice() == columns)
        }) {
            return Arc::clone(sql);
        }
        let sql: Arc<str> = statement(table, columns, rows).into();
        shapes.entry(table.to_owned()).or_default().push((
            columns.to_vec(),
            rows,
            Arc::clone(&sql),
        ));
        sql
    }

    /// `INSERT INTO "t" ("a", …) VALUES (?, …), … ON CONFLICT ("id") DO UPDATE SET "a" = excluded."a", …`
    pub(super) fn statement(table: &str, columns: &[String], rows: usize) -> String {
        let list = |cs: &[String]| {
            cs.iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let row = format!("({})", vec!["?"; columns.len()].join(", "));
        let mut sql = format!("INSERT INTO \"{table}\" ({}) VALUES {row}", list(columns));
        for _ in 1..rows {
            sql.push_str(", ");
            sql.push_str(&row);
        }
        let (key, update) = columns.split_at(1);
        let _ = write!(sql, " ON CONFLICT ({}) DO ", list(key));
        if update.is_empty() {
            sql.push_str("NOTHING");
        } else {
            sql.push_str("UPDATE SET ");
            let set: Vec<String> = update
                .iter()
                .map(|c| format!("\"{c}\" = excluded.\"{c}\""))
                .collect();
            sql.push_str(&set.join(", "));
            // A row already as sent is left alone: no page of it or of its
            // indexes is written again (a resend, a master-data resync).
            let changed: Vec<String> = update
                .iter()
                .map(|c| format!("\"{table}\".\"{c}\" IS NOT excluded.\"{c}\""))
                .collect();
            let _ = write!(sql, " WHERE {}", changed.join(" OR "));
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::{ConnectionTrait, EntityTrait, QueryOrder};

    use crate::domain::entities::item;

    fn item(id: &str, code: &str, version: i64) -> item::Model {
        item::Model {
            id: id.into(),
            code: code.into(),
            name: format!("{id} v{version}"),
            unit: "tab".into(),
            default_pack_size: 1,
            active: true,
            updated_at_ms: version,
        }
    }

    /// An in-memory SQLite database with the item table, then `more` (SQL).
    async fn item_table(more: &str) -> sea_orm::DatabaseConnection {
        let db = crate::domain::db::connect("sqlite::memory:", 1)
            .await
            .unwrap();
        db.execute_unprepared(&format!(
            "CREATE TABLE item (id TEXT PRIMARY KEY, code TEXT NOT NULL UNIQUE, name TEXT NOT NULL, \
             unit TEXT NOT NULL, default_pack_size INTEGER NOT NULL, active BOOLEAN NOT NULL, \
             updated_at_ms BIGINT NOT NULL); {more}"
        ))
        .await
        .unwrap();
        db
    }

    /// Codes traded within one batch and ids repeated across statement
    /// boundaries end as the last version of each record, on SQLite.
    #[tokio::test]
    async fn repeated_ids_and_traded_codes_end_as_sent_last() {
        let db = item_table("").await;
        // 300 items (more than one statement's rows), each sent three times.
        let mut rows: Vec<item::Model> = Vec::new();
        for version in 0..3 {
            for n in 0..300 {
                rows.push(item(&format!("i{n:03}"), &format!("C{n:03}"), version));
            }
        }
        // Then i000 and i001 trade codes: one steps aside first.
        rows.push(item("i001", "TMP", 3));
        rows.push(item("i000", "C001", 3));
        rows.push(item("i001", "C000", 3));
        let txn = crate::domain::db::begin(&db).await.unwrap();
        super::all::<item::Entity, _>(&txn, rows, |r| &r.id)
            .await
            .unwrap();
        txn.commit().await.unwrap();

        let stored = item::Entity::find()
            .order_by_asc(item::Column::Id)
            .all(&db)
            .await
            .unwrap();
        assert_eq!(stored.len(), 300);
        assert_eq!(stored[0], item("i000", "C001", 3));
        assert_eq!(stored[1], item("i001", "C000", 3));
        assert!(stored[2..]
            .iter()
            .all(|r| r.updated_at_ms == 2 && r.code == r.id.replace('i', "C")));
    }

    /// A statement's text is built once per table, columns and rows, and
    /// another list of columns or rows gets a text of its own.
    #[test]
    fn a_shape_is_built_once_and_told_apart() {
        let columns = |names: &[&str]| names.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        let (x, y) = (columns(&["id", "x"]), columns(&["id", "y"]));
        let first = super::sqlite::cached("shape_test", &x, 4);
        let again = super::sqlite::cached("shape_test", &x, 4);
        assert!(std::sync::Arc::ptr_eq(&first, &again), "built once");
        assert_eq!(&*first, super::sqlite::statement("shape_test", &x, 4));
        let other_columns = super::sqlite::cached("shape_test", &y, 4);
        assert_eq!(
            &*other_columns,
            super::sqlite::statement("shape_test", &y, 4)
        );
        assert_ne!(first, other_columns);
        let other_rows = super::sqlite::cached("shape_test", &x, 2);
        assert_eq!(&*other_rows, super::sqlite::statement("shape_test", &x, 2));
        assert_ne!(first, other_rows);
    }

    /// Rows sent again as they are stored are not rewritten on SQLite; a
    /// row that differs in one column is.
    #[tokio::test]
    async fn unchanged_rows_are_not_rewritten() {
        let db = item_table(
            "CREATE TABLE rewrites (n INTEGER NOT NULL); INSERT INTO rewrites VALUES (0); \
             CREATE TRIGGER item_rewritten AFTER UPDATE ON item BEGIN UPDATE rewrites SET n = n + 1; END;",
        )
        .await;
        let rows: Vec<item::Model> = (0..200)
            .map(|n| item(&format!("i{n:03}"), &format!("C{n:03}"), 1))
            .collect();
        let rewrites = |db: sea_orm::DatabaseConnection| async move {
            let row = db
                .query_one(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Sqlite,
                    "SELECT n FROM rewrites",
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        };
        super::all::<item::Entity, _>(&db, rows.clone(), |r| &r.id)
            .await
            .unwrap();
        // The same rows again: nothing is rewritten.
        super::all::<item::Entity, _>(&db, rows.clone(), |r| &r.id)
            .await
            .unwrap();
        assert_eq!(rewrites(db.clone()).await, 0);
        // One row changed in one column (a boolean): that row only.
        let mut again = rows;
        again[7].active = false;
        super::all::<item::Entity, _>(&db, again, |r| &r.id)
            .await
            .unwrap();
        assert_eq!(rewrites(db.clone()).await, 1);
        let stored = item::Entity::find_by_id("i007".to_owned())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert!(!stored.active);
    }
}
