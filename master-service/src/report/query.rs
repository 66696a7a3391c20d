//! Plumbing the reports share: names and conditions for the statements
//! (built with sea-query, so SQLite and PostgreSQL each get their own
//! placeholders and quoting), checks of the id filters, and page tokens.
//!
//! Reports are one statement each, aggregation in the database, because they
//! join, group and page in ways the entity API spells poorly; sea-query's
//! statement builder spells them, and everything here accepts SQLite and
//! PostgreSQL alike.

use sea_orm::sea_query::{Alias, Condition, Expr, Func, FunctionCall, SelectStatement, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryResult, Statement, Value,
};
use storesync_shared::domain::entities::{item, store};
use storesync_shared::domain::validate;

use crate::error::{Error, Result};

/// Most ids one filter may hold; a longer list is a client bug.
pub const MAX_FILTER_IDS: usize = 1000;

/// `table.column`, `table` being an alias the statement gives a table or subquery.
pub fn col(table: &str, column: &str) -> Expr {
    Expr::col((Alias::new(table), Alias::new(column)))
}

/// A name for a table, subquery or selected column.
pub fn name(name: &str) -> Alias {
    Alias::new(name)
}

/// `COUNT(*)`.
pub fn count_all() -> FunctionCall {
    Func::count(Expr::col(sea_orm::sea_query::Asterisk))
}

/// A literal (not a bound value): where the same expression appears in
/// `SELECT` and `GROUP BY`, PostgreSQL matches them by their text, which two
/// placeholders would make different.
pub fn literal(value: impl Into<Value>) -> SimpleExpr {
    SimpleExpr::Constant(value.into())
}

/// `CAST(0 AS DOUBLE PRECISION)`: a zero of the type of a sum of reals on
/// both backends, for the rows an outer join leaves without one.
pub fn zero_real() -> SimpleExpr {
    Func::cast_as(literal(0), name("DOUBLE PRECISION")).into()
}

/// The keyset condition "after `key`" for rows ordered by `columns`:
/// `c0 > k0 OR (c0 = k0 AND (c1 > k1 OR (c1 = k1 AND …)))`.
pub fn after_key(columns: &[Expr], key: &[Value]) -> Condition {
    match (columns, key) {
        ([column], [value]) => Condition::all().add(column.clone().gt(value.clone())),
        ([column, columns @ ..], [value, key @ ..]) => {
            Condition::any().add(column.clone().gt(value.clone())).add(
                Condition::all()
                    .add(column.clone().eq(value.clone()))
                    .add(after_key(columns, key)),
            )
        }
        _ => Condition::all(),
    }
}

/// Runs `select` on `db`, written in the backend's dialect.
pub async fn query_all<C: ConnectionTrait>(
    db: &C,
    select: &SelectStatement,
) -> Result<Vec<QueryResult>> {
    let statement: Statement = db.get_database_backend().build(select);
    Ok(db.query_all(statement).await?)
}

/// Checks a filter of store ids: UUIDs that name existing stores.
pub async fn check_store_ids<C: ConnectionTrait>(
    db: &C,
    field: &str,
    ids: &[String],
) -> Result<()> {
    check_shape(field, ids)?;
    if ids.is_empty() {
        return Ok(());
    }
    let found: Vec<String> = store::Entity::find()
        .select_only_id()
        .filter(store::Column::Id.is_in(ids.iter().cloned()))
        .into_tuple()
        .all(db)
        .await?;
    report_missing(field, "store", ids, &found)
}

/// Checks a filter of item ids: UUIDs that name existing items.
pub async fn check_item_ids<C: ConnectionTrait>(db: &C, field: &str, ids: &[String]) -> Result<()> {
    check_shape(field, ids)?;
    if ids.is_empty() {
        return Ok(());
    }
    let found: Vec<String> = item::Entity::find()
        .select_only_id()
        .filter(item::Column::Id.is_in(ids.iter().cloned()))
        .into_tuple()
        .all(db)
        .await?;
    report_missing(field, "item", ids, &found)
}

/// `SELECT id` only, for the existence checks.
trait SelectOnlyId {
    fn select_only_id(self) -> Self;
}

impl<E: EntityTrait> SelectOnlyId for sea_orm::Select<E> {
    fn select_only_id(self) -> Self {
        use sea_orm::QuerySelect;
        self.select_only().column_as(
            sea_orm::sea_query::Expr::col(sea_orm::sea_query::Alias::new("id")),
            "id",
        )
    }
}

fn check_shape(field: &str, ids: &[String]) -> Result<()> {
    if ids.len() > MAX_FILTER_IDS {
        return Err(Error::invalid(
            field,
            format!(
                "has {} ids; at most {MAX_FILTER_IDS} are allowed",
                ids.len()
            ),
        ));
    }
    for (n, id) in ids.iter().enumerate() {
        validate::uuid(&format!("{field}[{n}]"), id)?;
    }
    Ok(())
}

fn report_missing(field: &str, what: &str, ids: &[String], found: &[String]) -> Result<()> {
    match ids.iter().enumerate().find(|(_, id)| !found.contains(id)) {
        Some((n, id)) => Err(Error::invalid(
            &format!("{field}[{n}]"),
            format!("{what} {id} does not exist"),
        )),
        None => Ok(()),
    }
}

/// Separates the parts of a page token (a character no code or date holds).
const TOKEN_SEPARATOR: char = '\u{1f}';

/// An opaque page token: `report` and the sort key of the last row, hex-encoded.
pub fn encode_token(report: &str, key: &[String]) -> String {
    let mut text = report.to_owned();
    for part in key {
        text.push(TOKEN_SEPARATOR);
        text.push_str(part);
    }
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The sort key in a token of `report` with `parts` parts (none for an empty token).
pub fn decode_token(report: &str, token: &str, parts: usize) -> Result<Option<Vec<String>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::invalid(
            "page_token",
            "is not a token this server issued for this report",
        )
    };
    if token.len() % 2 != 0 || token.len() > 4096 {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut split = text.split(TOKEN_SEPARATOR);
    if split.next() != Some(report) {
        return Err(bad());
    }
    let key: Vec<String> = split.map(str::to_owned).collect();
    if key.len() != parts {
        return Err(bad());
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_conditions_nest_one_column_per_level() {
        use sea_orm::sea_query::{Query, SqliteQueryBuilder};
        let after = Query::select()
            .column(sea_orm::sea_query::Asterisk)
            .from(name("t"))
            .cond_where(after_key(
                &[col("t", "a"), col("t", "b"), col("t", "c")],
                &["x".into(), 7_i64.into(), "z".into()],
            ))
            .to_string(SqliteQueryBuilder);
        assert_eq!(
            after,
            r#"SELECT * FROM "t" WHERE "t"."a" > 'x' OR ("t"."a" = 'x' AND ("t"."b" > 7 OR ("t"."b" = 7 AND "t"."c" > 'z')))"#
        );
    }

    #[test]
    fn tokens_round_trip_and_refuse_others() {
        let key = vec!["AMOX250".to_owned(), "S2".to_owned()];
        let token = encode_token("soh", &key);
        assert_eq!(decode_token("soh", &token, 2).ok().flatten(), Some(key));
        assert!(
            decode_token("exp", &token, 2).is_err(),
            "another report's token"
        );
        assert!(decode_token("soh", "zz", 2).is_err(), "not hex");
        assert!(decode_token("soh", &token, 3).is_err(), "wrong shape");
        assert!(matches!(decode_token("soh", "", 2), Ok(None)));
    }
}
