//! The read side of master data (items, names), as this site holds it.
//!
//! Shared by `MasterDataService` and `StoreService` on every site; on a
//! satellite these are the local copies the sync stream keeps. Writing master
//! data is not here: only the master does it, together with its change log.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::entities::{item, name};
use crate::error::{Error, Result};
use crate::proto::v1 as pb;
use crate::store_ops::{next_token, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::validate;

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

/// Checks a page token, which is the last code of the previous page.
fn code_token(token: &str) -> Result<()> {
    if token.is_empty() {
        Ok(())
    } else {
        validate::code("page_token", token)
    }
}

/// `column` starts with `prefix` (case-sensitive on both backends, unlike
/// SQLite's LIKE).
pub(crate) fn starts_with(
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
    code_token(&request.page_token)?;
    validate::optional_text("code_prefix", &request.code_prefix, 64)?;
    let mut query = item::Entity::find();
    if !request.page_token.is_empty() {
        query = query.filter(item::Column::Code.gt(request.page_token.as_str()));
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
    let next_page_token = next_token(&mut rows, page_size, |last| last.code.clone());
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
    code_token(&request.page_token)?;
    validate::optional_text("code_prefix", &request.code_prefix, 64)?;
    let mut query = name::Entity::find();
    if !request.page_token.is_empty() {
        query = query.filter(name::Column::Code.gt(request.page_token.as_str()));
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
    let next_page_token = next_token(&mut rows, page_size, |last| last.code.clone());
    Ok(pb::ListNamesResponse {
        names: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}
