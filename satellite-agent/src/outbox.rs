//! The upstream outbox: local store-data changes waiting for the master.
//!
//! # Invariant: exactly once upstream
//! Every local write appends its changed records here **in the same
//! transaction** as the write, numbered densely from `sync_state.upstream_last_seq`,
//! which moves in that transaction too. SQLite has one writer at a time, so
//! numbers are taken and committed in order. The master acknowledges a sequence
//! only after committing the batch together with it; entries at or below the
//! acknowledged sequence are then deleted here.

use prost::Message;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::SyncRecord;
use storesync_shared::{Error, Result};

use crate::entities::{outbox, sync_state};

/// Appends `records` inside the caller's transaction; returns the last sequence used.
pub async fn append<C: ConnectionTrait>(txn: &C, records: &[SyncRecord]) -> Result<u64> {
    let state = sync_state::Entity::find_by_id(1)
        .one(txn)
        .await?
        .ok_or_else(|| Error::Internal("sync_state row is missing".into()))?;
    if records.is_empty() {
        return Ok(u64::try_from(state.upstream_last_seq).unwrap_or(0));
    }
    let created_at_ms = now_ms();
    let first = state.upstream_last_seq + 1;
    let mut last = state.upstream_last_seq;
    // Bounded chunks keep each statement under SQLite's variable limit.
    for chunk in records.chunks(1000) {
        let rows = chunk.iter().map(|record| {
            last += 1;
            outbox::ActiveModel {
                seq: Set(last),
                payload: Set(record.encode_to_vec()),
                created_at_ms: Set(created_at_ms),
            }
        });
        outbox::Entity::insert_many(rows.collect::<Vec<_>>())
            .exec_without_returning(txn)
            .await?;
    }
    debug_assert_eq!(last - first + 1, records.len() as i64);
    sync_state::Entity::update_many()
        .col_expr(
            sync_state::Column::UpstreamLastSeq,
            sea_orm::sea_query::Expr::value(last),
        )
        .filter(sync_state::Column::Id.eq(1))
        .exec(txn)
        .await?;
    Ok(u64::try_from(last).unwrap_or(0))
}

/// Up to `limit` entries after `after_seq`, in order, with their sequence numbers.
pub async fn read_after<C: ConnectionTrait>(
    db: &C,
    after_seq: u64,
    limit: u64,
) -> Result<Vec<(u64, SyncRecord)>> {
    let after = i64::try_from(after_seq)
        .map_err(|_| Error::Internal("outbox sequence out of range".into()))?;
    let rows = outbox::Entity::find()
        .filter(outbox::Column::Seq.gt(after))
        .order_by_asc(outbox::Column::Seq)
        .limit(limit)
        .all(db)
        .await?;
    rows.into_iter()
        .map(|row| {
            let record = SyncRecord::decode(row.payload.as_slice()).map_err(|e| {
                Error::Internal(format!("outbox entry {} is corrupt: {e}", row.seq))
            })?;
            Ok((u64::try_from(row.seq).unwrap_or(0), record))
        })
        .collect()
}
