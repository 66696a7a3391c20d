//! Plumbing the reports share: raw SQL text with values bound in the
//! backend's placeholder style, checks of the id filters, and page tokens.
//!
//! Reports are written as plain SQL (one statement each, aggregation in the
//! database) because they join, group and page in ways the entity API spells
//! poorly. Everything here accepts SQLite and PostgreSQL alike.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, Statement, Value,
};
use storesync_shared::entities::{item, store};
use storesync_shared::validate;

use crate::error::{Error, Result};

/// Most ids one filter may hold; a longer list is a client bug.
pub const MAX_FILTER_IDS: usize = 1000;

/// SQL text being built, with its bound values.
pub struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    /// Appends literal SQL (never caller input).
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.text.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind(&mut self, value: impl Into<Value>) -> &mut Self {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => {
                let n = self.values.len();
                self.text.push_str(&format!("${n}"));
            }
            _ => self.text.push('?'),
        }
        self
    }

    /// Appends `(p1, p2, …)` bound to `values` (which must not be empty).
    pub fn bind_list(&mut self, values: &[String]) -> &mut Self {
        self.text.push('(');
        for (n, value) in values.iter().enumerate() {
            if n > 0 {
                self.text.push_str(", ");
            }
            self.bind(value.clone());
        }
        self.text.push(')');
        self
    }

    pub fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
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
