//! Master data: items and names, written only here.
//!
//! # Invariant
//! Every change of an item or name and its change-log entry commit in one
//! transaction (`changelog::append`), and the change notifier is told only after
//! the commit. A delete writes a tombstone. So the change log, which the sync
//! stream sends to every satellite, holds exactly the committed changes.
//!
//! Rules live in the plain functions of this module; [`MasterDataApi`] only
//! adapts them to gRPC. It does not touch store data, except to count what
//! still refers to a record that is about to be deleted.

use sea_orm::sea_query::{Alias, Expr, Func};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use storesync_shared::entities::{invoice, invoice_line, item, name, stock_line, store};
use storesync_shared::proto::v1::{self as pb, sync_record, RecordRef, SyncRecord, Table};
use storesync_shared::validate::{self, now_ms};
use tonic::{Request, Response, Status};

use crate::changelog::{self, ChangeNotifier};
use crate::error::{unique_violation_as, Error, Result};
use crate::AppState;

/// Checks an item as given to `UpsertItem`.
pub fn check_item(item: &pb::Item) -> Result<()> {
    if !item.id.is_empty() {
        validate::uuid("item.id", &item.id)?;
    }
    validate::code("item.code", &item.code)?;
    validate::text("item.name", &item.name, 256)?;
    validate::text("item.unit", &item.unit, 32)?;
    validate::pack_size("item.default_pack_size", item.default_pack_size)?;
    Ok(())
}

/// Checks a name as given to `UpsertName`.
pub fn check_name(name: &pb::Name) -> Result<()> {
    if !name.id.is_empty() {
        validate::uuid("name.id", &name.id)?;
    }
    validate::code("name.code", &name.code)?;
    validate::text("name.name", &name.name, 256)?;
    Ok(())
}

/// Creates (empty id) or replaces an item; returns it as stored.
pub async fn upsert_item(
    db: &DatabaseConnection,
    notifier: &ChangeNotifier,
    mut input: pb::Item,
) -> Result<pb::Item> {
    check_item(&input)?;
    let txn = db.begin().await?;
    let creating = input.id.is_empty();
    if creating {
        input.id = validate::new_id();
    } else if item::Entity::find_by_id(input.id.clone())
        .one(&txn)
        .await?
        .is_none()
    {
        return Err(Error::not_found(format!(
            "item.id: no item has id {}; leave the id empty to create one",
            input.id
        )));
    }
    if let Some(other) = item::Entity::find()
        .filter(item::Column::Code.eq(input.code.as_str()))
        .filter(item::Column::Id.ne(input.id.as_str()))
        .one(&txn)
        .await?
    {
        return Err(Error::already_exists(format!(
            "item.code: {:?} is taken by item {}",
            input.code, other.id
        )));
    }
    input.updated_at_ms = now_ms();
    let row = item::Model::from(input.clone())
        .into_active_model()
        .reset_all();
    let taken = || format!("item.code: {:?} is taken by another item", input.code);
    if creating {
        item::Entity::insert(row)
            .exec_without_returning(&txn)
            .await
            .map_err(|e| unique_violation_as(e, taken))?;
    } else {
        row.update(&txn)
            .await
            .map_err(|e| unique_violation_as(e, taken))?;
    }
    let seq = changelog::append(
        &txn,
        &SyncRecord {
            record: Some(sync_record::Record::Item(input.clone())),
        },
    )
    .await?;
    txn.commit().await?;
    notifier.committed(seq);
    Ok(input)
}

/// Deletes an item no store data refers to, leaving a tombstone in the change log.
pub async fn delete_item(
    db: &DatabaseConnection,
    notifier: &ChangeNotifier,
    id: &str,
) -> Result<()> {
    validate::uuid("id", id)?;
    let txn = db.begin().await?;
    let Some(found) = item::Entity::find_by_id(id.to_owned()).one(&txn).await? else {
        return Err(Error::not_found(format!("no item has id {id}")));
    };
    let stock_lines = stock_line::Entity::find()
        .filter(stock_line::Column::ItemId.eq(id))
        .count(&txn)
        .await?;
    let invoice_lines = invoice_line::Entity::find()
        .filter(invoice_line::Column::ItemId.eq(id))
        .count(&txn)
        .await?;
    if stock_lines + invoice_lines > 0 {
        return Err(Error::failed_precondition(format!(
            "item {:?} ({id}) is still used by {stock_lines} stock line(s) and \
             {invoice_lines} invoice line(s); set it inactive instead",
            found.code
        )));
    }
    item::Entity::delete_by_id(id.to_owned()).exec(&txn).await?;
    let seq = changelog::append(&txn, &tombstone(Table::Item, id)).await?;
    txn.commit().await?;
    notifier.committed(seq);
    Ok(())
}

/// One item by id.
pub async fn get_item<C: ConnectionTrait>(db: &C, id: &str) -> Result<pb::Item> {
    validate::uuid("id", id)?;
    item::Entity::find_by_id(id.to_owned())
        .one(db)
        .await?
        .map(pb::Item::from)
        .ok_or_else(|| Error::not_found(format!("no item has id {id}")))
}

/// Creates (empty id) or replaces a name; returns it as stored.
///
/// A name that stands for one of the network's stores (same id as the store)
/// keeps its code, display name and store flag: those follow the site
/// (`AdminService.UpdateSite`).
pub async fn upsert_name(
    db: &DatabaseConnection,
    notifier: &ChangeNotifier,
    mut input: pb::Name,
) -> Result<pb::Name> {
    check_name(&input)?;
    let txn = db.begin().await?;
    let creating = input.id.is_empty();
    if creating {
        input.id = validate::new_id();
    } else {
        let Some(current) = name::Entity::find_by_id(input.id.clone()).one(&txn).await? else {
            return Err(Error::not_found(format!(
                "name.id: no name has id {}; leave the id empty to create one",
                input.id
            )));
        };
        if let Some(store) = store::Entity::find_by_id(input.id.clone())
            .one(&txn)
            .await?
        {
            if current.code != input.code
                || current.name != input.name
                || current.is_store != input.is_store
            {
                return Err(Error::failed_precondition(format!(
                    "name {:?} stands for the store of Sync ID {}: its code, name and \
                     is_store follow the site; rename the store with AdminService.UpdateSite",
                    current.code, store.sync_id
                )));
            }
        }
    }
    if let Some(other) = name::Entity::find()
        .filter(name::Column::Code.eq(input.code.as_str()))
        .filter(name::Column::Id.ne(input.id.as_str()))
        .one(&txn)
        .await?
    {
        return Err(Error::already_exists(format!(
            "name.code: {:?} is taken by name {}",
            input.code, other.id
        )));
    }
    input.updated_at_ms = now_ms();
    let row = name::Model::from(input.clone())
        .into_active_model()
        .reset_all();
    let taken = || format!("name.code: {:?} is taken by another name", input.code);
    if creating {
        name::Entity::insert(row)
            .exec_without_returning(&txn)
            .await
            .map_err(|e| unique_violation_as(e, taken))?;
    } else {
        row.update(&txn)
            .await
            .map_err(|e| unique_violation_as(e, taken))?;
    }
    let seq = changelog::append(&txn, &name_record(input.clone())).await?;
    txn.commit().await?;
    notifier.committed(seq);
    Ok(input)
}

/// Deletes a name that no invoice refers to and that no store stands on,
/// leaving a tombstone in the change log.
pub async fn delete_name(
    db: &DatabaseConnection,
    notifier: &ChangeNotifier,
    id: &str,
) -> Result<()> {
    validate::uuid("id", id)?;
    let txn = db.begin().await?;
    let Some(found) = name::Entity::find_by_id(id.to_owned()).one(&txn).await? else {
        return Err(Error::not_found(format!("no name has id {id}")));
    };
    if let Some(store) = store::Entity::find_by_id(id.to_owned()).one(&txn).await? {
        return Err(Error::failed_precondition(format!(
            "name {:?} ({id}) stands for the store of Sync ID {}; remove the site instead",
            found.code, store.sync_id
        )));
    }
    let invoices = invoice::Entity::find()
        .filter(invoice::Column::NameId.eq(id))
        .count(&txn)
        .await?;
    if invoices > 0 {
        return Err(Error::failed_precondition(format!(
            "name {:?} ({id}) is still used by {invoices} invoice(s); set it inactive instead",
            found.code
        )));
    }
    name::Entity::delete_by_id(id.to_owned()).exec(&txn).await?;
    let seq = changelog::append(&txn, &tombstone(Table::Name, id)).await?;
    txn.commit().await?;
    notifier.committed(seq);
    Ok(())
}

/// One name by id.
pub async fn get_name<C: ConnectionTrait>(db: &C, id: &str) -> Result<pb::Name> {
    validate::uuid("id", id)?;
    name::Entity::find_by_id(id.to_owned())
        .one(db)
        .await?
        .map(pb::Name::from)
        .ok_or_else(|| Error::not_found(format!("no name has id {id}")))
}

/// The change-log record of a name as it is now.
pub fn name_record(name: pb::Name) -> SyncRecord {
    SyncRecord {
        record: Some(sync_record::Record::Name(name)),
    }
}

/// The change-log record of a deleted item or name.
pub fn tombstone(table: Table, id: &str) -> SyncRecord {
    SyncRecord {
        record: Some(sync_record::Record::Deleted(RecordRef {
            table: table as i32,
            id: id.to_owned(),
        })),
    }
}

/// A page of a list ordered by code, as asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct PageQuery {
    /// Rows per page.
    pub size: u64,
    /// Codes at or before this one were on earlier pages.
    pub after_code: Option<String>,
    pub code_prefix: String,
    pub active_only: bool,
}

/// Largest page; 0 asks for [`DEFAULT_PAGE_SIZE`].
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;

impl PageQuery {
    /// Checks `page_size` and decodes `page_token`.
    pub fn new(
        page_size: u32,
        page_token: &str,
        code_prefix: &str,
        active_only: bool,
    ) -> Result<Self> {
        let size = validate::page_size("page_size", page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let after_code = if page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(page_token)?)
        };
        validate::optional_text("code_prefix", code_prefix, 64)?;
        Ok(Self {
            size,
            after_code,
            code_prefix: code_prefix.to_owned(),
            active_only,
        })
    }
}

/// The token of the page after the one ending at `last_code`: the code in hex.
/// Opaque to callers, and stable: a row added or removed between calls does
/// not make the next page skip or repeat another row.
pub fn encode_page_token(last_code: &str) -> String {
    last_code.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Inverse of [`encode_page_token`].
pub fn decode_page_token(token: &str) -> Result<String> {
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
    String::from_utf8(bytes).map_err(|_| bad())
}

/// A page of items ordered by code, and the next page's token ("" on the last).
pub async fn list_items<C: ConnectionTrait>(
    db: &C,
    page: &PageQuery,
) -> Result<(Vec<pb::Item>, String)> {
    let mut query = item::Entity::find().order_by_asc(item::Column::Code);
    if let Some(after) = &page.after_code {
        query = query.filter(item::Column::Code.gt(after.as_str()));
    }
    if !page.code_prefix.is_empty() {
        query = query.filter(code_has_prefix(item::Column::Code, &page.code_prefix));
    }
    if page.active_only {
        query = query.filter(item::Column::Active.eq(true));
    }
    let rows = query.limit(page.size + 1).all(db).await?;
    let (rows, next) = split_page(rows, page.size, |row| &row.code);
    Ok((rows.into_iter().map(pb::Item::from).collect(), next))
}

/// A page of names ordered by code, and the next page's token ("" on the last).
pub async fn list_names<C: ConnectionTrait>(
    db: &C,
    page: &PageQuery,
) -> Result<(Vec<pb::Name>, String)> {
    let mut query = name::Entity::find().order_by_asc(name::Column::Code);
    if let Some(after) = &page.after_code {
        query = query.filter(name::Column::Code.gt(after.as_str()));
    }
    if !page.code_prefix.is_empty() {
        query = query.filter(code_has_prefix(name::Column::Code, &page.code_prefix));
    }
    if page.active_only {
        query = query.filter(name::Column::Active.eq(true));
    }
    let rows = query.limit(page.size + 1).all(db).await?;
    let (rows, next) = split_page(rows, page.size, |row| &row.code);
    Ok((rows.into_iter().map(pb::Name::from).collect(), next))
}

/// `substr(code, 1, n) = prefix`: case-sensitive on both backends, and free of
/// LIKE's wildcards (codes may hold `_`).
fn code_has_prefix<C: ColumnTrait>(column: C, prefix: &str) -> sea_orm::sea_query::SimpleExpr {
    let len = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
    Expr::expr(
        Func::cust(Alias::new("substr"))
            .arg(Expr::col(column))
            .arg(1)
            .arg(len),
    )
    .eq(prefix)
}

/// Keeps `size` of the `size + 1` rows fetched; the extra one says whether
/// another page follows.
fn split_page<T>(mut rows: Vec<T>, size: u64, code: impl Fn(&T) -> &String) -> (Vec<T>, String) {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if rows.len() > size {
        rows.truncate(size);
        let next = rows
            .last()
            .map(|row| encode_page_token(code(row)))
            .unwrap_or_default();
        (rows, next)
    } else {
        (rows, String::new())
    }
}

/// `MasterDataService` over the functions above.
#[derive(Clone)]
pub struct MasterDataApi {
    state: AppState,
}

impl MasterDataApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl pb::master_data_service_server::MasterDataService for MasterDataApi {
    async fn upsert_item(
        &self,
        request: Request<pb::UpsertItemRequest>,
    ) -> Result<Response<pb::UpsertItemResponse>, Status> {
        let input = request
            .into_inner()
            .item
            .ok_or_else(|| Error::invalid("item", "is required"))?;
        let item = upsert_item(&self.state.db, &self.state.notifier, input).await?;
        Ok(Response::new(pb::UpsertItemResponse { item: Some(item) }))
    }

    async fn delete_item(
        &self,
        request: Request<pb::DeleteItemRequest>,
    ) -> Result<Response<pb::DeleteItemResponse>, Status> {
        delete_item(
            &self.state.db,
            &self.state.notifier,
            &request.into_inner().id,
        )
        .await?;
        Ok(Response::new(pb::DeleteItemResponse {}))
    }

    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        Ok(Response::new(
            get_item(&self.state.db, &request.into_inner().id).await?,
        ))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        let r = request.into_inner();
        let page = PageQuery::new(r.page_size, &r.page_token, &r.code_prefix, r.active_only)?;
        let (items, next_page_token) = list_items(&self.state.db, &page).await?;
        Ok(Response::new(pb::ListItemsResponse {
            items,
            next_page_token,
        }))
    }

    async fn upsert_name(
        &self,
        request: Request<pb::UpsertNameRequest>,
    ) -> Result<Response<pb::UpsertNameResponse>, Status> {
        let input = request
            .into_inner()
            .name
            .ok_or_else(|| Error::invalid("name", "is required"))?;
        let name = upsert_name(&self.state.db, &self.state.notifier, input).await?;
        Ok(Response::new(pb::UpsertNameResponse { name: Some(name) }))
    }

    async fn delete_name(
        &self,
        request: Request<pb::DeleteNameRequest>,
    ) -> Result<Response<pb::DeleteNameResponse>, Status> {
        delete_name(
            &self.state.db,
            &self.state.notifier,
            &request.into_inner().id,
        )
        .await?;
        Ok(Response::new(pb::DeleteNameResponse {}))
    }

    async fn get_name(
        &self,
        request: Request<pb::GetNameRequest>,
    ) -> Result<Response<pb::Name>, Status> {
        Ok(Response::new(
            get_name(&self.state.db, &request.into_inner().id).await?,
        ))
    }

    async fn list_names(
        &self,
        request: Request<pb::ListNamesRequest>,
    ) -> Result<Response<pb::ListNamesResponse>, Status> {
        let r = request.into_inner();
        let page = PageQuery::new(r.page_size, &r.page_token, &r.code_prefix, r.active_only)?;
        let (names, next_page_token) = list_names(&self.state.db, &page).await?;
        Ok(Response::new(pb::ListNamesResponse {
            names,
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        for code in ["A", "AMOX250TAB", "a/b_c.d-e", "ÄÖ"] {
            assert_eq!(
                decode_page_token(&encode_page_token(code)).expect("decodes"),
                code
            );
        }
        for bad in ["x", "zz", "abc", "ff"] {
            let err = decode_page_token(bad).expect_err("rejects");
            assert!(err.to_string().starts_with("page_token:"), "{err}");
        }
        assert!(PageQuery::new(1001, "", "", false).is_err());
        assert_eq!(PageQuery::new(0, "", "", false).expect("ok").size, 100);
    }

    #[test]
    fn item_checks_name_the_field() {
        let good = pb::Item {
            code: "AMOX250".into(),
            name: "Amoxicillin 250 mg".into(),
            unit: "tab".into(),
            default_pack_size: 100,
            active: true,
            ..Default::default()
        };
        assert!(check_item(&good).is_ok());
        let cases = [
            (
                pb::Item {
                    code: String::new(),
                    ..good.clone()
                },
                "item.code:",
            ),
            (
                pb::Item {
                    code: "a b".into(),
                    ..good.clone()
                },
                "item.code:",
            ),
            (
                pb::Item {
                    name: " ".into(),
                    ..good.clone()
                },
                "item.name:",
            ),
            (
                pb::Item {
                    unit: String::new(),
                    ..good.clone()
                },
                "item.unit:",
            ),
            (
                pb::Item {
                    default_pack_size: 0,
                    ..good.clone()
                },
                "item.default_pack_size:",
            ),
            (
                pb::Item {
                    id: "nope".into(),
                    ..good.clone()
                },
                "item.id:",
            ),
        ];
        for (item, field) in cases {
            let err = check_item(&item).expect_err("rejects");
            assert!(
                err.to_string().starts_with(field),
                "{err} should name {field}"
            );
        }
    }

    #[test]
    fn pages_split_after_size_rows() {
        let rows = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let (page, next) = split_page(rows.clone(), 2, |s| s);
        assert_eq!(page, vec!["a", "b"]);
        assert_eq!(decode_page_token(&next).expect("token"), "b");
        let (page, next) = split_page(rows, 3, |s| s);
        assert_eq!(page.len(), 3);
        assert!(next.is_empty());
    }
}
