//! Re-pushing a store the master lost: the master acknowledged this site's
//! changes up to `local_acked`, but now says it has applied them only up to
//! `master_acked` (it was restored from an older backup). The changes in
//! between left the outbox when they were acknowledged, so they cannot be
//! resent; the site's current store is what the master is missing.
//!
//! # Invariant
//! In ONE local transaction: the outbox is replaced by every record of this
//! site's store (the store-owned tables, in the registry's dependency order:
//! stock lines, then invoices, then their lines) numbered densely from
//! `master_acked + 1`, followed by the deletes still pending in the old
//! outbox; `upstream_acked_seq` becomes `master_acked`. Local data is not
//! touched. The master applies the records as whole-row upserts, so records
//! it still had are rewritten unchanged and the ones it lost come back.
//!
//! A row the site deleted after the backup was taken, and whose delete the
//! master had acknowledged, is not re-sent as a delete (the site no longer
//! knows it): the restored master keeps its old copy.

use prost::Message;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use storesync_shared::domain::tables::write::{self, Scope};
use storesync_shared::domain::tables::{self, Owner};
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
    for table in tables::SYNCED
        .iter()
        .copied()
        .filter(|table| matches!(table.owner(), Owner::Store { .. }))
    {
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
