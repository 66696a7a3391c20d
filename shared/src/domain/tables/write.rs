//! Reading and writing synced tables, generated from their definitions, on
//! each backend.
//!
//! # Backends
//! [`Backend`] is taken once from the connection (`get_database_backend`);
//! the statements differ only where speed asks for it:
//! - PostgreSQL writes one table's rows of a site's batch with ONE
//!   `INSERT … SELECT … FROM UNNEST($arrays) WHERE NOT EXISTS … ON CONFLICT (id)
//!   DO UPDATE … WHERE t.<owner> = EXCLUDED.<owner>`, each column bound as an
//!   array of its type but the owner column, bound once as the site's store,
//!   and text columns, each bound where it can be as ONE text that
//!   `string_to_array` splits ([`pack`]).
//!   The text depends only on the table (and, rarely, a column that could not
//!   be packed), so each connection prepares it once
//!   (sea-orm runs statements persistent, in sqlx's per-connection cache). The
//!   `ON CONFLICT … WHERE` leaves a row of another store alone and uncounted;
//!   each of the table's references adds a `NOT EXISTS` that leaves a row
//!   naming another store's row unwritten and uncounted. Its `OFFSET 0` keeps
//!   it a per-row look-up of the named id in its primary key (the planner may
//!   not turn it into a join that reads the whole named table). A row naming
//!   a row the same transaction has already upserted for the site ([`Written`])
//!   skips that look-up (a bound `bool[]` says which): that row is the site's
//!   store's, or the batch would have been refused. A table's
//!   [`super::UpdateGuard`] joins the `DO UPDATE … WHERE`. Fewer affected
//!   rows than sent means one of the three, named by queries that run only
//!   then (the guard first, then a reference).
//! - SQLite (the portable path) checks references and ownership with
//!   queries first and writes with [`crate::domain::upsert`]'s fixed-size multi-row statements.
//!
//! Everything runs on the caller's sea-orm connection or transaction.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::Order;
use sea_orm::sea_query::{Alias, Expr, Func, PgFunc, Query, SelectStatement, SimpleExpr};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, Value};

use super::{Reference, Row, SyncTable};

/// How a database is written, chosen once from its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Array-bound set statements.
    Postgres,
    /// Statements every backend runs (SQLite).
    Portable,
}

impl Backend {
    /// The way to write `db`.
    pub fn of<C: ConnectionTrait>(db: &C) -> Self {
        match db.get_database_backend() {
            DbBackend::Postgres => Self::Postgres,
            _ => Self::Portable,
        }
    }
}

/// `column` is one of `ids`, as one condition of a sea-orm query on `db`.
///
/// On PostgreSQL `column = ANY($n)` with the ids bound as ONE `text[]`: one
/// statement text whatever their number (prepared once per connection, where
/// an `IN ($1, …, $n)` list is a new statement to parse and plan for every
/// count), and planned as a probe of the column's index per id (a long `IN`
/// list of literals let the planner choose a scan of the whole table).
/// Elsewhere (SQLite) an `IN (…)` list. Each id is kept once.
pub fn one_of<C, Col>(db: &C, column: Col, ids: impl IntoIterator<Item = String>) -> SimpleExpr
where
    C: ConnectionTrait,
    Col: ColumnTrait,
{
    let mut ids: Vec<String> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    match Backend::of(db) {
        Backend::Postgres => {
            Expr::col(column.as_column_ref()).eq(PgFunc::any(Expr::val(text_array(ids))))
        }
        Backend::Portable => column.is_in(ids),
    }
}

/// Why a site's rows were not written.
#[derive(Debug)]
pub enum WriteError {
    /// `id` already belongs to a row of `store`, another store.
    Foreign { id: String, store: String },
    /// A row names, in one of its references, a row of another store.
    Reference(ForeignReference),
    /// Row `id` exists and fails the table's [`super::UpdateGuard`], which
    /// says `why`.
    Guarded { id: String, why: &'static str },
    /// The database failed.
    Database(DbErr),
    /// The statements disagree with themselves; details for the log.
    Inconsistent(String),
}

impl From<DbErr> for WriteError {
    fn from(error: DbErr) -> Self {
        Self::Database(error)
    }
}

/// The ids one transaction has upserted so far for a site, by table: every
/// one is a row of the site's store (an upsert that met another store's row
/// refused the batch), so a reference to one of them is known to be the
/// store's own and needs no look-up. Rows only ever change store by being
/// deleted and created again, which no other writer can do to a row this
/// transaction holds locked.
#[derive(Debug, Default)]
pub struct Written(HashMap<&'static str, HashSet<String, foldhash::fast::RandomState>>);

impl Written {
    /// Whether `id` of `table` was upserted for the site in this transaction.
    pub fn has(&self, table: &str, id: &str) -> bool {
        self.0.get(table).is_some_and(|ids| ids.contains(id))
    }

    fn add(&mut self, table: &'static str, ids: impl IntoIterator<Item = String>) {
        self.0.entry(table).or_default().extend(ids);
    }
}

/// Ids per `IN (…)` list on the portable path.
const IDS_PER_QUERY: usize = 500;

/// Writes a site's changes to one of its store's tables: `upserts` (whole
/// rows, at most one per id, each of `store_id`) and then `deletes`, only
/// ever touching rows of `store_id`. An id of another store's row, or an
/// upsert whose [`super::Reference`]s name a row of another store (`tables`
/// resolves the referenced tables), refuses the lot; the caller's transaction
/// must then roll back. A refusal for a reference takes precedence over one
/// for an id. `written` holds the ids upserted before in the same
/// transaction for the same site (a reference to one is not looked up) and
/// gets this call's.
pub async fn store_rows<C: ConnectionTrait>(
    db: &C,
    tables: &[&dyn SyncTable],
    table: &dyn SyncTable,
    store_id: &str,
    upserts: Vec<Row>,
    deletes: Vec<String>,
    written: &mut Written,
) -> Result<(), WriteError> {
    let Some(store_column) = table.owner().store_column() else {
        return Err(WriteError::Inconsistent(format!(
            "{} is not a store's data",
            table.name()
        )));
    };
    match Backend::of(db) {
        Backend::Postgres => {
            if !upserts.is_empty() {
                // The owner column is bound once, as `store_id`: every row must say so.
                if let Some(row) = upserts
                    .iter()
                    .find(|row| table.store_of(row) != Some(store_id))
                {
                    return Err(WriteError::Inconsistent(format!(
                        "{} {} is not of store {store_id}",
                        table.name(),
                        row.id()
                    )));
                }
                let sent = upserts.len() as u64;
                let (statement, kept) =
                    unnest_upsert(tables, table, store_column, store_id, upserts, written);
                let affected = db.execute(statement).await?.rows_affected();
                if affected != sent {
                    return Err(refused(
                        db,
                        tables,
                        table,
                        store_column,
                        store_id,
                        &kept.rows(),
                        written,
                    )
                    .await?);
                }
                written.add(table.name(), kept.ids().map(str::to_owned));
            }
            if !deletes.is_empty() {
                let ids: Vec<&str> = deletes.iter().map(String::as_str).collect();
                if let Some(foreign) = find_foreign(db, table, store_column, store_id, &ids).await?
                {
                    return Err(foreign);
                }
                db.execute(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    format!(
                        "DELETE FROM \"{}\" WHERE id = ANY($1::text[]) AND \"{store_column}\" = $2::text",
                        table.name()
                    ),
                    [text_array(deletes), store_id.into()],
                ))
                .await?;
            }
        }
        Backend::Portable => {
            if let Some(found) =
                foreign_reference(db, tables, table, store_id, &upserts, written).await?
            {
                return Err(WriteError::Reference(found));
            }
            let ids: Vec<&str> = upserts
                .iter()
                .map(Row::id)
                .chain(deletes.iter().map(String::as_str))
                .collect();
            if let Some(foreign) = find_foreign(db, table, store_column, store_id, &ids).await? {
                return Err(foreign);
            }
            let upserted: Vec<String> = upserts.iter().map(|row| row.id().to_owned()).collect();
            crate::domain::upsert::rows(db, table, upserts).await?;
            written.add(table.name(), upserted);
            for chunk in deletes.chunks(IDS_PER_QUERY) {
                let mut delete = Query::delete();
                delete
                    .from_table(Alias::new(table.name()))
                    .and_where(Expr::col(Alias::new("id")).is_in(chunk.iter().map(String::as_str)))
                    .and_where(Expr::col(Alias::new(store_column)).eq(store_id));
                db.execute(db.get_database_backend().build(&delete)).await?;
            }
        }
    }
    Ok(())
}

/// The columns of rows moved into an upsert that a refusal may have to
/// name (`id` and the table's references: all [`foreign_reference`] and
/// [`find_foreign`] read) and that [`Written`] keeps (`id`): a copy of the
/// column's packed text where it was packed ([`pack`]), else one text per
/// row, where whole values would be two allocations each.
struct Kept {
    /// Each kept column's index and its texts, `id` first.
    columns: Vec<(usize, KeptTexts)>,
    count: usize,
    width: usize,
}

enum KeptTexts {
    Packed(String),
    Each(Vec<Option<String>>),
}

impl KeptTexts {
    fn get(&self) -> Box<dyn Iterator<Item = Option<&str>> + '_> {
        match self {
            Self::Packed(text) => Box::new(
                text.split(char::from(PACK_SEPARATOR))
                    .map(|text| (text.as_bytes() != [PACK_NULL]).then_some(text)),
            ),
            Self::Each(texts) => Box::new(texts.iter().map(Option::as_deref)),
        }
    }
}

impl Kept {
    fn of(table: &dyn SyncTable, rows: &[Row], packed: &[Option<String>]) -> Self {
        let indexes = std::iter::once(0).chain(
            table
                .references()
                .iter()
                .filter_map(|reference| table.column_index(reference.column)),
        );
        Self {
            columns: indexes
                .map(|index| {
                    let texts = match packed.get(index) {
                        Some(Some(text)) => KeptTexts::Packed(text.clone()),
                        _ => KeptTexts::Each(
                            rows.iter()
                                .map(|row| row.text(index).map(str::to_owned))
                                .collect(),
                        ),
                    };
                    (index, texts)
                })
                .collect(),
            count: rows.len(),
            width: rows.first().map_or(0, |row| row.0.len()),
        }
    }

    /// The rows' ids.
    fn ids(&self) -> impl Iterator<Item = &str> {
        self.columns[0].1.get().map(Option::unwrap_or_default)
    }

    /// The kept columns as rows of their own (the other columns empty).
    fn rows(&self) -> Vec<Row> {
        let mut rows = vec![Row(vec![Value::String(None); self.width.max(1)]); self.count];
        for (index, texts) in &self.columns {
            for (row, text) in rows.iter_mut().zip(texts.get()) {
                if let (Some(cell), Some(text)) = (row.0.get_mut(*index), text) {
                    *cell = text.into();
                }
            }
        }
        rows
    }
}

/// Why the upsert of `rows` wrote fewer rows than sent: a reference to
/// another store's row first, else an id of another store's row.
async fn refused<C: ConnectionTrait>(
    db: &C,
    tables: &[&dyn SyncTable],
    table: &dyn SyncTable,
    store_column: &str,
    store_id: &str,
    rows: &[Row],
    written: &Written,
) -> Result<WriteError, DbErr> {
    if let Some(guarded) = guarded(db, table, rows).await? {
        return Ok(guarded);
    }
    if let Some(found) = foreign_reference(db, tables, table, store_id, rows, written).await? {
        return Ok(WriteError::Reference(found));
    }
    let ids: Vec<&str> = rows.iter().map(Row::id).collect();
    Ok(
        match find_foreign(db, table, store_column, store_id, &ids).await? {
            Some(foreign) => foreign,
            None => WriteError::Inconsistent(format!(
                "upsert into {} wrote fewer rows than sent, yet no id or reference names another store",
                table.name()
            )),
        },
    )
}

/// The first of `rows` (in order) that exists and fails the table's
/// [`super::UpdateGuard`], read with the guard itself: its `excluded` row is
/// the sent `id` and references, all a guard may name of it (and all that
/// [`Kept`] keeps).
async fn guarded<C: ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    rows: &[Row],
) -> Result<Option<WriteError>, DbErr> {
    let Some(guard) = table.update_guard() else {
        return Ok(None);
    };
    let mut names = vec!["id"];
    let mut columns = vec![rows
        .iter()
        .map(|row| row.id().to_owned())
        .collect::<Vec<_>>()];
    for reference in table.references() {
        let index = table.column_index(reference.column);
        names.push(reference.column);
        columns.push(
            rows.iter()
                .map(|row| {
                    index
                        .and_then(|i| row.text(i))
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect(),
        );
    }
    let arrays: Vec<String> = (1..=names.len()).map(|n| format!("${n}::text[]")).collect();
    let sql = format!(
        "SELECT excluded.id FROM UNNEST({arrays}) WITH ORDINALITY AS excluded({names}, \"row\") \
         JOIN \"{table}\" t ON t.id = excluded.id WHERE ({guard}) IS NOT TRUE ORDER BY excluded.\"row\" LIMIT 1",
        arrays = arrays.join(", "),
        names = names
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", "),
        table = table.name(),
        guard = guard.sql,
    );
    let found = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            columns.into_iter().map(text_array),
        ))
        .await?;
    found
        .map(|row| {
            Ok(WriteError::Guarded {
                id: row.try_get_by_index(0)?,
                why: guard.why,
            })
        })
        .transpose()
}

/// The upsert of `rows` (each of `store_id`) as column arrays; see the
/// module docs. The owner column is bound once, as `store_id`, not as an
/// array; each of the table's references adds a `NOT EXISTS` that leaves a
/// row naming another store's row unwritten (and uncounted), skipped (by a
/// `bool[]` of its own) for a row naming a row in `written`.
fn unnest_upsert(
    tables: &[&dyn SyncTable],
    table: &dyn SyncTable,
    store_column: &str,
    store_id: &str,
    rows: Vec<Row>,
    written: &Written,
) -> (Statement, Kept) {
    let columns = table.columns();
    let store_index = columns.iter().position(|c| c.name == store_column);
    let names: Vec<String> = columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
    // The references checked: the named table, its owner column, and the
    // referencing column's index.
    let checked: Vec<(&Reference, &dyn SyncTable, &str, usize)> = table
        .references()
        .iter()
        .filter_map(|reference| {
            let target = *tables.iter().find(|t| t.name() == reference.table)?;
            let target_store = target.owner().store_column()?;
            let index = table.column_index(reference.column)?;
            Some((reference, target, target_store, index))
        })
        .collect();
    // Parameters: one array per column but the owner column, one `bool[]`
    // per checked reference, then the store.
    let store_param = format!(
        "${}::text",
        columns.len() + checked.len() + 1 - usize::from(store_index.is_some())
    );
    // Text columns each packed into one text where they can be (see [`pack`]).
    let packed: Vec<Option<String>> = columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            (column.kind == super::Kind::Text && Some(index) != store_index)
                .then(|| pack(&rows, index))
                .flatten()
        })
        .collect();
    // Kept for naming a refused row (the rows move into the statement).
    let kept = Kept::of(table, &rows, &packed);
    let mut arrays = Vec::new();
    let mut aliases = Vec::new();
    let mut selected = Vec::new();
    for (index, (column, name)) in columns.iter().zip(&names).enumerate() {
        if Some(index) == store_index {
            selected.push(store_param.clone());
        } else {
            arrays.push(if packed[index].is_some() {
                format!(
                    "string_to_array(${}::text, chr(30), chr(31))",
                    arrays.len() + 1
                )
            } else {
                format!("${}::{}", arrays.len() + 1, column.kind.postgres_array())
            });
            aliases.push(name.clone());
            selected.push(format!("u.{name}"));
        }
    }
    // Each checked reference: a look-up, and a `bool[]` saying which rows
    // name a row already known to be the store's (and skip it).
    let mut guards: Vec<String> = Vec::new();
    let mut known: Vec<Vec<bool>> = Vec::new();
    for (reference, target, target_store, index) in checked {
        let alias = format!("\"known {}\"", reference.column);
        arrays.push(format!("${}::bool[]", arrays.len() + 1));
        aliases.push(alias.clone());
        guards.push(format!(
            "(u.{alias} OR NOT EXISTS (SELECT 1 FROM \"{}\" r WHERE r.id = u.\"{}\" AND r.\"{target_store}\" <> {store_param} OFFSET 0))",
            target.name(),
            reference.column
        ));
        known.push(
            rows.iter()
                .map(|row| {
                    row.text(index)
                        .is_some_and(|id| written.has(target.name(), id))
                })
                .collect(),
        );
    }
    let set: Vec<String> = names
        .iter()
        .skip(1)
        .filter(|name| name.trim_matches('"') != store_column)
        .map(|name| format!("{name} = EXCLUDED.{name}"))
        .collect();
    let sql = format!(
        "INSERT INTO \"{table}\" AS t ({names}) SELECT {selected} FROM UNNEST({arrays}) AS u({aliases}){guards} \
         ON CONFLICT (id) DO UPDATE SET {set} WHERE t.\"{store_column}\" = EXCLUDED.\"{store_column}\"{guard}",
        table = table.name(),
        names = names.join(", "),
        selected = selected.join(", "),
        arrays = arrays.join(", "),
        aliases = aliases.join(", "),
        guards = if guards.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", guards.join(" AND "))
        },
        set = set.join(", "),
        guard = table
            .update_guard()
            .map(|guard| format!(" AND ({})", guard.sql))
            .unwrap_or_default(),
    );
    let mut values: Vec<Vec<Value>> = packed
        .iter()
        .map(|packed| Vec::with_capacity(if packed.is_some() { 0 } else { rows.len() }))
        .collect();
    for row in rows {
        for ((column, value), packed) in values.iter_mut().zip(row.0).zip(&packed) {
            if packed.is_none() {
                column.push(value);
            }
        }
    }
    let mut values: Vec<Value> = columns
        .iter()
        .zip(values)
        .zip(packed)
        .enumerate()
        .filter(|(index, _)| Some(*index) != store_index)
        .map(|(_, ((c, column), packed))| match packed {
            Some(text) => Value::String(Some(Box::new(text))),
            None => Value::Array(c.kind.array_type(), Some(Box::new(column))),
        })
        .collect();
    values.extend(known.into_iter().map(|flags| {
        Value::Array(
            sea_orm::sea_query::ArrayType::Bool,
            Some(Box::new(flags.into_iter().map(Value::from).collect())),
        )
    }));
    values.push(store_id.into());
    (
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values),
        kept,
    )
}

/// Separates the texts of a packed column (ASCII record separator, `chr(30)`).
const PACK_SEPARATOR: u8 = 0x1e;
/// A NULL in a packed column (ASCII unit separator, `chr(31)`).
const PACK_NULL: u8 = 0x1f;

/// Column `index` of `rows` as ONE text that `string_to_array($n, chr(30),
/// chr(31))` splits back into its texts, or `None` where it cannot be (a
/// value that is not text, a text holding either control character, a lone
/// empty text, which splits into no element at all).
///
/// One bound text per column where an array is one value per row: sea-orm
/// copies every bound value once more before binding it, and a text array
/// costs two allocations a row to copy and two to free.
fn pack(rows: &[Row], index: usize) -> Option<String> {
    let mut length = rows.len();
    for row in rows {
        match row.0.get(index)? {
            Value::String(Some(text)) => {
                if memchr::memchr2(PACK_SEPARATOR, PACK_NULL, text.as_bytes()).is_some()
                    || (rows.len() == 1 && text.is_empty())
                {
                    return None;
                }
                length += text.len();
            }
            Value::String(None) => length += 1,
            _ => return None,
        }
    }
    let mut packed = String::with_capacity(length);
    for (at, row) in rows.iter().enumerate() {
        if at > 0 {
            packed.push(char::from(PACK_SEPARATOR));
        }
        match row.0.get(index) {
            Some(Value::String(Some(text))) => packed.push_str(text),
            _ => packed.push(char::from(PACK_NULL)),
        }
    }
    Some(packed)
}

fn text_array(texts: Vec<String>) -> Value {
    Value::Array(
        sea_orm::sea_query::ArrayType::String,
        Some(Box::new(texts.into_iter().map(Value::from).collect())),
    )
}

/// A row of `ids` that belongs to another store than `store_id`, if any.
async fn find_foreign<C: ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    store_column: &str,
    store_id: &str,
    ids: &[&str],
) -> Result<Option<WriteError>, DbErr> {
    Ok(
        other_store_row(db, table.name(), store_column, store_id, ids)
            .await?
            .map(|(id, store)| WriteError::Foreign { id, store }),
    )
}

/// A row a site sent that names, in `column`, a row of another store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignReference {
    /// The referencing row's id.
    pub id: String,
    pub column: &'static str,
    /// The row it names, and the store that row belongs to.
    pub target_table: &'static str,
    pub target_id: String,
    pub store: String,
}

/// The first of `rows` (of `table`, sent by the site hosting `store_id`)
/// whose [`super::Reference`]s name a row of another store, if any. `tables`
/// resolves the referenced tables. A reference to a row that does not exist
/// (yet) is not this check's business: the row, when it comes, is checked
/// for its own store. Nor is one to a row in `written` (the store's own).
pub async fn foreign_reference<C: ConnectionTrait>(
    db: &C,
    tables: &[&dyn SyncTable],
    table: &dyn SyncTable,
    store_id: &str,
    rows: &[Row],
    written: &Written,
) -> Result<Option<ForeignReference>, DbErr> {
    for reference in table.references() {
        let (Some(target), Some(index)) = (
            tables.iter().find(|t| t.name() == reference.table),
            table.column_index(reference.column),
        ) else {
            continue;
        };
        let Some(target_store) = target.owner().store_column() else {
            continue;
        };
        // Each named id once, with the first row naming it.
        let mut named: HashMap<&str, &str> = HashMap::new();
        for row in rows {
            if let Some(id) = row
                .text(index)
                .filter(|id| !id.is_empty() && !written.has(target.name(), id))
            {
                named.entry(id).or_insert(row.id());
            }
        }
        if named.is_empty() {
            continue;
        }
        let ids: Vec<&str> = named.keys().copied().collect();
        if let Some((target_id, store)) =
            other_store_row(db, target.name(), target_store, store_id, &ids).await?
        {
            return Ok(Some(ForeignReference {
                id: named[target_id.as_str()].to_owned(),
                column: reference.column,
                target_table: target.name(),
                target_id,
                store,
            }));
        }
    }
    Ok(None)
}

/// One of `ids` in `table` whose `store_column` is not `store_id`, with that store.
async fn other_store_row<C: ConnectionTrait>(
    db: &C,
    table: &str,
    store_column: &str,
    store_id: &str,
    ids: &[&str],
) -> Result<Option<(String, String)>, DbErr> {
    let found = match Backend::of(db) {
        Backend::Postgres => {
            db.query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT u.id, r.store FROM UNNEST($1::text[]) AS u(id), \
                     LATERAL (SELECT \"{store_column}\" AS store FROM \"{table}\" WHERE id = u.id OFFSET 0) r \
                     WHERE r.store <> $2::text LIMIT 1"
                ),
                [
                    text_array(ids.iter().map(|id| (*id).to_owned()).collect()),
                    store_id.into(),
                ],
            ))
            .await?
        }
        Backend::Portable => {
            let mut found = None;
            for chunk in ids.chunks(IDS_PER_QUERY) {
                let mut query = Query::select();
                query
                    .column(Alias::new("id"))
                    .column(Alias::new(store_column))
                    .from(Alias::new(table))
                    .and_where(Expr::col(Alias::new("id")).is_in(chunk.iter().copied()))
                    .and_where(Expr::col(Alias::new(store_column)).ne(store_id))
                    .limit(1);
                found = db.query_one(db.get_database_backend().build(&query)).await?;
                if found.is_some() {
                    break;
                }
            }
            found
        }
    };
    found
        .map(|row| Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?)))
        .transpose()
}

/// Which rows of a table a read takes.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Every row.
    All,
    /// The rows sent to the site hosting this store (by the table's owner
    /// column); every row of a table whose rows go to every site.
    Store(&'a str),
}

fn select(table: &dyn SyncTable, scope: Scope<'_>) -> SelectStatement {
    let mut query = Query::select();
    query.from(Alias::new(table.name()));
    if let Scope::Store(store_id) = scope {
        let columns = table.owner().store_columns();
        if !columns.is_empty() {
            let mut any = sea_orm::Condition::any();
            for column in columns {
                any = any.add(Expr::col(Alias::new(column)).eq(store_id));
            }
            query.cond_where(any);
        }
    }
    query
}

/// Up to `limit` rows of `table` in `scope` with ids after `after`, in id
/// order (keyset paging: no offset scans), each selected with the table's
/// columns in order (see [`Row::read`] and [`SyncTable::record_of`]).
pub async fn page<C: ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    scope: Scope<'_>,
    after: &str,
    limit: Option<u64>,
) -> Result<Vec<QueryResult>, DbErr> {
    let mut query = select(table, scope);
    query
        .columns(table.columns().into_iter().map(|c| Alias::new(c.name)))
        .and_where(Expr::col(Alias::new("id")).gt(after))
        .order_by(Alias::new("id"), Order::Asc);
    if let Some(limit) = limit {
        query.limit(limit);
    }
    db.query_all(db.get_database_backend().build(&query)).await
}

/// How many rows of `table` are in `scope`.
pub async fn count<C: ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    scope: Scope<'_>,
) -> Result<u64, DbErr> {
    let mut query = select(table, scope);
    query.expr(Func::count(Expr::col(Alias::new("id"))));
    let found = db
        .query_one(db.get_database_backend().build(&query))
        .await?;
    let count: i64 = match found {
        Some(found) => found.try_get_by_index(0)?,
        None => 0,
    };
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Deletes every row of `table`.
pub async fn clear<C: ConnectionTrait>(db: &C, table: &dyn SyncTable) -> Result<(), DbErr> {
    let mut delete = Query::delete();
    delete.from_table(Alias::new(table.name()));
    db.execute(db.get_database_backend().build(&delete)).await?;
    Ok(())
}

/// Deletes the row of `table` with this id, if there is one.
pub async fn delete<C: ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    id: &str,
) -> Result<(), DbErr> {
    let mut delete = Query::delete();
    delete
        .from_table(Alias::new(table.name()))
        .and_where(Expr::col(Alias::new("id")).eq(id));
    db.execute(db.get_database_backend().build(&delete)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(texts: &[Option<&str>]) -> Vec<Row> {
        texts
            .iter()
            .map(|text| {
                Row(vec![
                    "id".into(),
                    Value::String(text.map(|t| Box::new(t.to_owned()))),
                ])
            })
            .collect()
    }

    #[test]
    fn a_packed_column_splits_back_into_its_texts() {
        for texts in [
            vec![Some("a"), None, Some(""), Some("NULL"), Some("{x},\"y\"")],
            vec![Some(""), Some("")],
            vec![None],
            vec![Some("Paracétamol 500 mg")],
        ] {
            let packed = KeptTexts::Packed(pack(&rows(&texts), 1).expect("packable"));
            assert_eq!(packed.get().collect::<Vec<_>>(), texts);
        }
    }

    #[test]
    fn a_column_that_cannot_be_packed_is_not() {
        // A lone empty text would split into no element at all.
        assert_eq!(pack(&rows(&[Some("")]), 1), None);
        // Either control character would split or read as NULL.
        assert_eq!(pack(&rows(&[Some("a"), Some("b\u{1e}c")]), 1), None);
        assert_eq!(pack(&rows(&[Some("\u{1f}")]), 1), None);
        // Not text.
        let numbers = vec![Row(vec!["id".into(), Value::Double(Some(1.0))])];
        assert_eq!(pack(&numbers, 1), None);
    }
}
