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

use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter,
};
use storesync_shared::domain::entities::{invoice, invoice_line, item, name, stock_line, store};
use storesync_shared::domain::master_data_read as read;
use storesync_shared::domain::validate::{self, now_ms};
use storesync_shared::proto::v1::{self as pb, sync_record, RecordRef, SyncRecord, Table};
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
    let txn = storesync_shared::domain::db::begin(db).await?;
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
    let txn = storesync_shared::domain::db::begin(db).await?;
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
    let txn = storesync_shared::domain::db::begin(db).await?;
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
    let txn = storesync_shared::domain::db::begin(db).await?;
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
            read::get_item(&self.state.db, &request.into_inner().id).await?,
        ))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        Ok(Response::new(
            read::list_items(&self.state.db, &request.into_inner()).await?,
        ))
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
            read::get_name(&self.state.db, &request.into_inner().id).await?,
        ))
    }

    async fn list_names(
        &self,
        request: Request<pb::ListNamesRequest>,
    ) -> Result<Response<pb::ListNamesResponse>, Status> {
        Ok(Response::new(
            read::list_names(&self.state.db, &request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
