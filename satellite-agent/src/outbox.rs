//! The upstream outbox: local store-data changes waiting for the master.
//!
//! # Invariant: exactly once upstream
//! Every local write appends its changed records here **in the same
//! transaction** as the write, numbered densely from `sync_state.upstream_last_seq`,
//! which moves in that transaction too. SQLite has one writer at a time, so
//! numbers are taken and committed in order. The master acknowledges a sequence
//! only after committing the batch together with it; entries at or below the
//! acknowledged sequence are then deleted here.
//!
//! # Invariant: one history per tag
//! Every entry gets a random, non-zero `tag` when it is written. A copy of
//! this database (a clone, a restored backup) numbers its new entries like
//! the original, but tags them differently; the master keeps the tag of the
//! last entry it acknowledged, so a copy whose entry of that sequence has
//! another tag knows its history has diverged (`sync::apply::reconcile_upstream`).

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
                tag: Set(new_tag()),
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

/// A random tag: positive and non-zero (0 means "unknown"), so it travels
/// as a uint64 and is stored as a BIGINT unchanged.
pub fn new_tag() -> i64 {
    (rand::random::<i64>() & i64::MAX).max(1)
}

/// The tag of entry `seq`, if the outbox still holds it.
pub async fn tag_of<C: ConnectionTrait>(db: &C, seq: u64) -> Result<Option<u64>> {
    let Ok(seq) = i64::try_from(seq) else {
        return Ok(None);
    };
    Ok(outbox::Entity::find_by_id(seq)
        .one(db)
        .await?
        .map(|row| u64::try_from(row.tag).unwrap_or(0)))
}

/// One outbox entry as read back.
pub struct Entry {
    pub seq: u64,
    pub tag: u64,
    pub record: SyncRecord,
}

/// Up to `limit` entries after `after_seq`, in order, with their sequence numbers and tags.
pub async fn read_after<C: ConnectionTrait>(
    db: &C,
    after_seq: u64,
    limit: u64,
) -> Result<Vec<Entry>> {
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
            Ok(Entry {
                seq: u64::try_from(row.seq).unwrap_or(0),
                tag: u64::try_from(row.tag).unwrap_or(0),
                record,
            })
        })
        .collect()
}
