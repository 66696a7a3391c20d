//! Applying what the master sends: master-data changes and snapshot batches.
//!
//! # Invariant: checkpoint with the data
//! A batch's records and its end cursor commit in ONE local transaction. A crash
//! before commit leaves the old cursor and none of the batch (the master resends
//! it); after commit both are there. The last snapshot batch also marks the
//! database initialised and sets the upstream positions from the master's.
//!
//! The tables written, their order and which deletes the master may send come
//! from the registry of synced tables (`storesync_shared::domain::tables`).

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait,
};
use storesync_shared::domain::tables::{self, apply};
use storesync_shared::proto::v1::{DownstreamBatch, Store};
use storesync_shared::{Error, Result};

use crate::entities::{outbox, sync_state};

/// What a committed batch changed in the sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchApplied {
    pub records: usize,
    /// The database became initialised with this batch.
    pub initialised: bool,
}

/// Applies one downstream batch in one transaction with its cursor.
///
/// `upstream_acked_seq` is the master's (from Welcome); the initialising batch
/// that completes the snapshot continues the outbox numbering after it, so that
/// writes made after a re-initialisation are never taken for duplicates.
pub async fn apply_batch(
    db: &DatabaseConnection,
    batch: DownstreamBatch,
    store: Option<&Store>,
    upstream_acked_seq: u64,
) -> Result<BatchApplied> {
    let records = batch.records.len();
    let completes_init = batch.initialisation.as_ref().is_some_and(|i| i.complete);
    let in_init = batch.initialisation.is_some();
    let runs = apply::runs(tables::SYNCED, batch.records)?;
    let txn = db.begin().await?;
    if !in_init {
        let state = sync_state::Entity::find_by_id(1)
            .one(&txn)
            .await?
            .ok_or_else(|| Error::Internal("sync_state row is missing".into()))?;
        if u64::try_from(state.downstream_cursor).unwrap_or(0) >= batch.end_cursor {
            // Already applied (a resend after a lost ack): nothing to do.
            txn.commit().await?;
            return Ok(BatchApplied {
                records: 0,
                initialised: false,
            });
        }
    }
    for run in runs {
        apply::write(&txn, run).await?;
    }
    let cursor = i64::try_from(batch.end_cursor)
        .map_err(|_| Error::invalid("downstream_batch.end_cursor", "is out of range"))?;
    if completes_init {
        let store = store.ok_or_else(|| {
            Error::Internal("the master did not say which store this site hosts".into())
        })?;
        let acked = i64::try_from(upstream_acked_seq)
            .map_err(|_| Error::invalid("welcome.upstream_acked_seq", "is out of range"))?;
        // The outbox is empty while uninitialised (writes are refused until now).
        outbox::Entity::delete_many().exec(&txn).await?;
        // Built once over the whole snapshot, in the transaction that makes
        // the database initialised: no initialised database lacks them.
        build_store_data_indexes(&txn).await?;
        sync_state::Entity::update_many()
            .col_expr(sync_state::Column::DownstreamCursor, Expr::value(cursor))
            .col_expr(sync_state::Column::Initialised, Expr::value(true))
            .col_expr(sync_state::Column::UpstreamLastSeq, Expr::value(acked))
            .col_expr(sync_state::Column::UpstreamAckedSeq, Expr::value(acked))
            .col_expr(sync_state::Column::StoreId, Expr::value(store.id.clone()))
            .col_expr(
                sync_state::Column::StoreCode,
                Expr::value(store.code.clone()),
            )
            .col_expr(
                sync_state::Column::StoreName,
                Expr::value(store.name.clone()),
            )
            .filter(sync_state::Column::Id.eq(1))
            .exec(&txn)
            .await?;
    } else if !in_init {
        sync_state::Entity::update_many()
            .col_expr(sync_state::Column::DownstreamCursor, Expr::value(cursor))
            .filter(sync_state::Column::Id.eq(1))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(BatchApplied {
        records,
        initialised: completes_init,
    })
}

/// Builds the store-data indexes a snapshot load goes without (a no-op for
/// those that exist). Also run at start on an initialised database: a check
/// that costs nothing when they are there.
pub async fn build_store_data_indexes<C: ConnectionTrait>(db: &C) -> Result<()> {
    for (_, create) in storesync_shared::domain::schema::store_data_indexes() {
        db.execute_unprepared(&create).await?;
    }
    Ok(())
}

/// Empties every synced table before a snapshot, so that a half-finished
/// earlier initialisation leaves nothing behind.
///
/// Refuses (and changes nothing) if the database has become initialised in
/// the meantime: its data must never be thrown away.
pub async fn clear_for_initialisation(db: &DatabaseConnection) -> Result<()> {
    let txn = db.begin().await?;
    let state = sync_state::Entity::find_by_id(1)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::Internal("sync_state row is missing".into()))?;
    if state.initialised {
        return Err(Error::FailedPrecondition(
            "the database is initialised; it is not emptied for a snapshot".into(),
        ));
    }
    // Rows before the rows they name.
    for table in tables::SYNCED.iter().rev() {
        tables::write::clear(&txn, *table).await?;
    }
    outbox::Entity::delete_many().exec(&txn).await?;
    // Until the last snapshot batch builds them again (see `apply_batch`).
    for (index, _) in storesync_shared::domain::schema::store_data_indexes() {
        txn.execute_unprepared(&format!("DROP INDEX IF EXISTS {index}"))
            .await?;
    }
    sync_state::Entity::update_many()
        .col_expr(sync_state::Column::DownstreamCursor, Expr::value(0i64))
        .col_expr(sync_state::Column::UpstreamLastSeq, Expr::value(0i64))
        .col_expr(sync_state::Column::UpstreamAckedSeq, Expr::value(0i64))
        .filter(sync_state::Column::Id.eq(1))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// The master acknowledged up to `acked`: drop those outbox entries and record
/// the position, in one transaction.
pub async fn upstream_acked(db: &DatabaseConnection, acked: u64) -> Result<()> {
    let acked = i64::try_from(acked)
        .map_err(|_| Error::invalid("upstream_ack.acked_seq", "is out of range"))?;
    let txn = db.begin().await?;
    outbox::Entity::delete_many()
        .filter(outbox::Column::Seq.lte(acked))
        .exec(&txn)
        .await?;
    sync_state::Entity::update_many()
        .col_expr(sync_state::Column::UpstreamAckedSeq, Expr::value(acked))
        .filter(sync_state::Column::Id.eq(1))
        .filter(sync_state::Column::UpstreamAckedSeq.lt(acked))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// Reconciles the local upstream positions with the master's acknowledged
/// sequence at the start of a session; returns the sequence to send after.
///
/// - Master ahead of everything local (this database was restored from an old
///   copy, or rebuilt without a snapshot): renumber the pending entries to
///   follow the master's sequence, or they would be dropped as duplicates.
/// - Master behind what was acknowledged locally: the master lost data it had
///   acknowledged (restored from a backup); entries it needs are gone from the
///   outbox. That needs an operator: refuse with a clear error.
pub async fn reconcile_upstream(db: &DatabaseConnection, master_acked: u64) -> Result<u64> {
    let txn = db.begin().await?;
    let state = sync_state::Entity::find_by_id(1)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::Internal("sync_state row is missing".into()))?;
    let local_acked = u64::try_from(state.upstream_acked_seq).unwrap_or(0);
    let local_last = u64::try_from(state.upstream_last_seq).unwrap_or(0);
    if master_acked > local_last {
        let shift = i64::try_from(master_acked - local_acked)
            .map_err(|_| Error::Internal("sequence shift overflow".into()))?;
        tracing::warn!(master_acked, local_acked, local_last, "the master has acknowledged more than this outbox ever held: renumbering pending entries after it");
        outbox::Entity::update_many()
            .col_expr(
                outbox::Column::Seq,
                Expr::col(outbox::Column::Seq).add(shift),
            )
            .exec(&txn)
            .await?;
        sync_state::Entity::update_many()
            .col_expr(
                sync_state::Column::UpstreamLastSeq,
                Expr::value(i64::try_from(local_last).unwrap_or(0) + shift),
            )
            .col_expr(
                sync_state::Column::UpstreamAckedSeq,
                Expr::value(i64::try_from(master_acked).unwrap_or(0)),
            )
            .filter(sync_state::Column::Id.eq(1))
            .exec(&txn)
            .await?;
    } else if master_acked < local_acked {
        return Err(Error::FailedPrecondition(format!(
            "the master has applied this site's changes only up to {master_acked}, but it had acknowledged up to {local_acked} \
             (was the master restored from an older backup?); the changes in between are no longer in this outbox"
        )));
    } else {
        // Entries the master applied but whose ack was lost: drop them now.
        upstream_acked_in(&txn, master_acked).await?;
    }
    txn.commit().await?;
    Ok(master_acked)
}

async fn upstream_acked_in<C: ConnectionTrait>(txn: &C, acked: u64) -> Result<()> {
    let acked = i64::try_from(acked).unwrap_or(i64::MAX);
    outbox::Entity::delete_many()
        .filter(outbox::Column::Seq.lte(acked))
        .exec(txn)
        .await?;
    sync_state::Entity::update_many()
        .col_expr(sync_state::Column::UpstreamAckedSeq, Expr::value(acked))
        .filter(sync_state::Column::Id.eq(1))
        .exec(txn)
        .await?;
    Ok(())
}
