//! The read side of master data (items, names), as this site holds it.
//!
//! Shared by `MasterDataService` and `StoreService` on every site; on a
//! satellite these are the local copies the sync stream keeps. Writing master
//! data is not here: only the master does it, together with its change log.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::domain::entities::{item, name};
use crate::domain::error::{Error, Result};
use crate::domain::store_ops::{next_token, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::domain::validate;
use crate::proto::v1 as pb;

/// One item. NOT_FOUND names it.
pub async fn get_item<C: ConnectionTrait>(db: &C, id: &str) -> Result<pb::Item> {
    validate::uuid("id", id)?;
    item::Entity::find_by_id(id.to_owned())
        .one(db)
        .await?
        .map(Into::into)
        .ok_or_else(|| Error::NotFound(format!("item {id} does not exist")))
}

/// One name. NOT_FOUND names it.
pub async fn get_name<C: ConnectionTrait>(db: &C, id: &str) -> Result<pb::Name> {
    validate::uuid("id", id)?;
    name::Entity::find_by_id(id.to_owned())
        .one(db)
        .await?
        .map(Into::into)
        .ok_or_else(|| Error::NotFound(format!("name {id} does not exist")))
}

/// The token of the page after the one ending at `last_code`: the code in hex.
/// Opaque to callers, and stable: a row added or removed between calls does
/// not make the next page skip or repeat another row.
pub fn encode_page_token(last_code: &str) -> String {
    last_code.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Inverse of [`encode_page_token`]; an empty token is the first page (None).
pub fn decode_page_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::invalid(
            "page_token",
            "is not a token from a previous page; leave it empty for the first page",
        )
    };
    if token.len() % 2 != 0 || token.len() > 256 {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// `column` starts with `prefix` (case-sensitive on both backends, unlike
/// SQLite's LIKE).
pub fn starts_with(
    column: sea_orm::sea_query::SimpleExpr,
    prefix: &str,
) -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::{Alias, Expr, Func};
    let length = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
    Expr::expr(Func::cust(Alias::new("substr")).args([
        column,
        Expr::val(1).into(),
        Expr::val(length).into(),
    ]))
    .eq(prefix)
}

/// Items ordered by code (keyset paging: the token is the last code).
pub async fn list_items<C: ConnectionTrait>(
    db: &C,
    request: &pb::ListItemsRequest,
) -> Result<pb::ListItemsResponse> {
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let after = decode_page_token(&request.page_token)?;
    validate::optional_text("code_prefix", &request.code_prefix, 64)?;
    let mut query = item::Entity::find();
    if let Some(after) = after {
        query = query.filter(item::Column::Code.gt(after));
    }
    if !request.code_prefix.is_empty() {
        query = query.filter(starts_with(
            sea_orm::sea_query::Expr::col(item::Column::Code).into(),
            &request.code_prefix,
        ));
    }
    if request.active_only {
        query = query.filter(item::Column::Active.eq(true));
    }
    let mut rows = query
        .order_by_asc(item::Column::Code)
        .limit(page_size + 1)
        .all(db)
        .await?;
    let next_page_token = next_token(&mut rows, page_size, |last| encode_page_token(&last.code));
    Ok(pb::ListItemsResponse {
        items: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

/// Names ordered by code (keyset paging: the token is the last code).
pub async fn list_names<C: ConnectionTrait>(
    db: &C,
    request: &pb::ListNamesRequest,
) -> Result<pb::ListNamesResponse> {
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let after = decode_page_token(&request.page_token)?;
    validate::optional_text("code_prefix", &request.code_prefix, 64)?;
    let mut query = name::Entity::find();
    if let Some(after) = after {
        query = query.filter(name::Column::Code.gt(after));
    }
    if !request.code_prefix.is_empty() {
        query = query.filter(starts_with(
            sea_orm::sea_query::Expr::col(name::Column::Code).into(),
            &request.code_prefix,
        ));
    }
    if request.active_only {
        query = query.filter(name::Column::Active.eq(true));
    }
    let mut rows = query
        .order_by_asc(name::Column::Code)
        .limit(page_size + 1)
        .all(db)
        .await?;
    let next_page_token = next_token(&mut rows, page_size, |last| encode_page_token(&last.code));
    Ok(pb::ListNamesResponse {
        names: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        for code in ["A", "AMOX250TAB", "a/b_c.d-e", "ÄÖ"] {
            assert_eq!(
                decode_page_token(&encode_page_token(code))
                    .expect("decodes")
                    .as_deref(),
                Some(code)
            );
        }
        assert_eq!(decode_page_token("").expect("first page"), None);
        for bad in ["x", "zz", "abc", "ff"] {
            let err = decode_page_token(bad).expect_err("rejects");
            assert!(err.to_string().starts_with("page_token:"), "{err}");
        }
    }
}
