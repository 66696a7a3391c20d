//! Re-pushing a store the master lost: the master acknowledged this site's
//! changes up to `local_acked`, but now says it has applied them only up to
//! `master_acked` (it was restored from an older backup). The changes in
//! between left the outbox when they were acknowledged, so they cannot be
//! resent; the site's current store is what the master is missing.
//!
//! # Invariant
//! In ONE local transaction: the outbox is replaced by every record of this
//! site's store (the store-owned tables: requisitions and their lines first,
//! then the registry's dependency order: stock lines, then invoices, then
//! their lines) numbered densely from
//! `master_acked + 1`, followed by the deletes still pending in the old
//! outbox; `upstream_acked_seq` becomes `master_acked`. Local data is not
//! touched. The master applies the records as whole-row upserts, so records
//! it still had are rewritten unchanged and the ones it lost come back.
//!
//! A row the site deleted after the backup was taken, and whose delete the
//! master had acknowledged, is not re-sent as a delete (the site no longer
//! knows it): the restored master keeps its old copy.
//!
//! # Rows the master created for this store
//! The master may set aside this site's copy of an inbound shipment (a
//! response) it lost and cannot derive yet (`docs/TRANSFERS.md`, "Across a
//! master restore"). When the other store's re-push lets it create the row
//! again, it hands it over; the handover of a row this site already holds
//! queues this site's copy upstream in the apply's transaction
//! ([`push_back`]), so the master ends with the site's row (its receipt,
//! its numbers) and the local row is never overwritten.

use prost::Message;
use sea_orm::sea_query::Expr;
use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use storesync_shared::domain::tables::write::{self, Scope};
use storesync_shared::domain::tables::{self, Owner, SyncTable};
use storesync_shared::proto::v1::Table;
use storesync_shared::proto::v1::{sync_record, SyncRecord};
use storesync_shared::{Error, Result};

use crate::entities::{outbox, sync_state};

/// Records read per query while re-pushing.
const PAGE: u64 = 1000;

/// Replaces the outbox with the whole store of `store_id` after
/// `master_acked` (see the invariant), inside the caller's transaction;
/// returns how many records were queued.
pub async fn repush_store<C: ConnectionTrait>(
    txn: &C,
    master_acked: u64,
    local_acked: u64,
    store_id: &str,
) -> Result<u64> {
    let acked = i64::try_from(master_acked)
        .map_err(|_| Error::invalid("welcome.upstream_acked_seq", "is out of range"))?;
    let pending_deletes: Vec<SyncRecord> = outbox::Entity::find()
        .order_by_asc(outbox::Column::Seq)
        .all(txn)
        .await?
        .into_iter()
        .filter_map(|row| SyncRecord::decode(row.payload.as_slice()).ok())
        .filter(|record| matches!(record.record, Some(sync_record::Record::Deleted(_))))
        .collect();
    outbox::Entity::delete_many().exec(txn).await?;
    sync_state::Entity::update_many()
        .col_expr(sync_state::Column::UpstreamLastSeq, Expr::value(acked))
        .col_expr(sync_state::Column::UpstreamAckedSeq, Expr::value(acked))
        .filter(sync_state::Column::Id.eq(1))
        .exec(txn)
        .await?;
    let mut queued = 0u64;
    for table in repush_order() {
        let mut after = String::new();
        loop {
            let rows = write::page(txn, table, Scope::Store(store_id), &after, Some(PAGE)).await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get_by_index(0)?;
            let records = rows
                .iter()
                .map(|row| {
                    Ok(SyncRecord {
                        record: Some(table.record_of(row)?),
                    })
                })
                .collect::<std::result::Result<Vec<_>, sea_orm::DbErr>>()?;
            queued += records.len() as u64;
            crate::outbox::append(txn, &records).await?;
        }
    }
    queued += pending_deletes.len() as u64;
    crate::outbox::append(txn, &pending_deletes).await?;
    tracing::warn!(
        master_acked,
        local_acked,
        records = queued,
        "the master has lost changes it had acknowledged (restored from an older backup?): re-pushing this site's whole store"
    );
    Ok(queued)
}

/// The store-owned tables in the order a re-push sends them: requisitions
/// first, then the registry's order (stock lines, invoices, their lines).
/// A request comes before the shipments that may answer it: the master
/// holds a shipment supplying a response it lost until the request it
/// answers is back (see `docs/TRANSFERS.md`, "Across a master restore"),
/// so a site's own shipments never wait behind its requests.
fn repush_order() -> Vec<&'static dyn SyncTable> {
    let store_owned = || {
        tables::SYNCED
            .iter()
            .copied()
            .filter(|table| matches!(table.owner(), Owner::Store { .. }))
    };
    let first = |table: &&dyn SyncTable| {
        matches!(table.table(), Table::Requisition | Table::RequisitionLine)
    };
    store_owned()
        .filter(first)
        .chain(store_owned().filter(|table| !first(table)))
        .collect()
}

/// Which of `ids` this database holds in `table`.
pub async fn held_ids<C: ConnectionTrait>(
    txn: &C,
    table: &dyn SyncTable,
    ids: &[String],
) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = Query::select();
    query
        .column(Alias::new("id"))
        .from(Alias::new(table.name()))
        .and_where(sea_orm::sea_query::Expr::col(Alias::new("id")).is_in(ids.iter().cloned()));
    let found = txn
        .query_all(txn.get_database_backend().build(&query))
        .await?;
    found
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).map_err(Error::from))
        .collect()
}

/// Queues this site's copies of rows `ids` of `table` upstream, in the
/// caller's transaction: the master handed them over again, so it had lost
/// them (restored from a backup older than their creation) and created
/// them anew from the other store's re-push; this site owns them and its
/// copy (a receipt, a finalised response, its numbers and times) is the one
/// the master must hold. The master accepts it as an update of the row it
/// created (the links agree: both derive from the same outbound or request).
pub async fn push_back<C: ConnectionTrait>(
    txn: &C,
    table: &dyn SyncTable,
    ids: &[String],
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut query = Query::select();
    query
        .columns(table.columns().into_iter().map(|c| Alias::new(c.name)))
        .from(Alias::new(table.name()))
        .and_where(sea_orm::sea_query::Expr::col(Alias::new("id")).is_in(ids.iter().cloned()))
        .order_by(Alias::new("id"), sea_orm::Order::Asc);
    let rows = txn
        .query_all(txn.get_database_backend().build(&query))
        .await?;
    let records = rows
        .iter()
        .map(|row| {
            Ok(SyncRecord {
                record: Some(table.record_of(row)?),
            })
        })
        .collect::<std::result::Result<Vec<_>, sea_orm::DbErr>>()?;
    tracing::warn!(
        table = table.name(),
        rows = records.len(),
        "the master handed over again rows this site holds (restored from an older backup?): sending this site's copies back"
    );
    crate::outbox::append(txn, &records).await?;
    Ok(())
}
