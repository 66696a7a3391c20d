//! Refused upstream batches on record, per site: what an operator needs to see
//! why a site's changes do not arrive (`AdminService.ListRefusals`, the count
//! in `SyncStatus`, `master-service report rejections`).
//!
//! One row per batch and reason: a satellite sends a refused batch again on
//! every reconnect, which raises `attempts` rather than adding rows. At most
//! [`KEEP_PER_SITE`] rows per site are kept, the most recently refused.
//!
//! Written after the refused batch's transaction rolled back, on its own: a
//! refusal that cannot be recorded (the database gone) is still logged and
//! counted by the `batches rejected` metric.

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
    Set,
};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1 as pb;

use super::error::ApplyError;
use crate::entities::refusal;

/// Rows kept per site.
pub const KEEP_PER_SITE: u64 = 100;

/// Whether `error` is a refusal of the batch's content or order (what an
/// operator must act on), rather than the session's end or the master's own failure.
pub fn is_refusal(error: &ApplyError) -> bool {
    !matches!(
        error,
        ApplyError::Replaced { .. }
            | ApplyError::SiteRemoved { .. }
            | ApplyError::Database(_)
            | ApplyError::Internal(_)
    )
}

/// The contract's name of a status code, e.g. `PERMISSION_DENIED`.
fn code_name(code: tonic::Code) -> String {
    // tonic spells them `PermissionDenied`: the wire's names are upper snake case.
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Records that the batch `first_seq..=last_seq` of `sync_id` was refused
/// for `error` (once more, if it was before), and keeps the site's newest
/// [`KEEP_PER_SITE`].
pub async fn record<C: ConnectionTrait>(
    db: &C,
    sync_id: u32,
    first_seq: u64,
    last_seq: u64,
    error: &ApplyError,
) -> Result<(), DbErr> {
    let now = now_ms();
    let sync_id = i32::try_from(sync_id).unwrap_or(i32::MAX);
    let (record_table, record_id) = error
        .record()
        .map_or((0, String::new()), |r| (r.contract as i32, r.id.clone()));
    refusal::Entity::insert(refusal::ActiveModel {
        sync_id: Set(sync_id),
        first_seq: Set(i64::try_from(first_seq).unwrap_or(i64::MAX)),
        last_seq: Set(i64::try_from(last_seq).unwrap_or(i64::MAX)),
        code: Set(code_name(error.code())),
        reason: Set(error.to_string()),
        record_table: Set(record_table),
        record_id: Set(record_id),
        first_at_ms: Set(now),
        last_at_ms: Set(now),
        attempts: Set(1),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([
            refusal::Column::SyncId,
            refusal::Column::FirstSeq,
            refusal::Column::LastSeq,
            refusal::Column::Code,
            refusal::Column::RecordTable,
            refusal::Column::RecordId,
        ])
        .value(
            refusal::Column::Attempts,
            Expr::col((refusal::Entity, refusal::Column::Attempts)).add(1),
        )
        .update_columns([refusal::Column::LastAtMs, refusal::Column::Reason])
        .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    let newest = Query::select()
        .column(refusal::Column::Id)
        .from(refusal::Entity)
        .and_where(refusal::Column::SyncId.eq(sync_id))
        .order_by(refusal::Column::LastAtMs, Order::Desc)
        .order_by(refusal::Column::Id, Order::Desc)
        .limit(KEEP_PER_SITE)
        .to_owned();
    refusal::Entity::delete_many()
        .filter(refusal::Column::SyncId.eq(sync_id))
        .filter(refusal::Column::Id.not_in_subquery(newest))
        .exec(db)
        .await?;
    Ok(())
}

/// Which refusals to list.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    /// Only this site (`None`: all).
    pub sync_id: Option<u32>,
    /// Only those refused at or after this time.
    pub since_ms: i64,
}

/// Up to `limit` refusals after the first `offset`, most recently refused first.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    filter: Filter,
    offset: u64,
    limit: u64,
) -> Result<Vec<pb::Refusal>, DbErr> {
    let mut query = refusal::Entity::find().filter(refusal::Column::LastAtMs.gte(filter.since_ms));
    if let Some(sync_id) = filter.sync_id {
        query = query.filter(refusal::Column::SyncId.eq(i32::try_from(sync_id).unwrap_or(-1)));
    }
    Ok(query
        .order_by_desc(refusal::Column::LastAtMs)
        .order_by_desc(refusal::Column::Id)
        .offset(offset)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(|row| pb::Refusal {
            sync_id: u32::try_from(row.sync_id).unwrap_or(0),
            first_seq: u64::try_from(row.first_seq).unwrap_or(0),
            last_seq: u64::try_from(row.last_seq).unwrap_or(0),
            code: row.code,
            reason: row.reason,
            record: (row.record_table != 0).then_some(pb::RecordRef {
                table: row.record_table,
                id: row.record_id,
            }),
            first_at_ms: row.first_at_ms,
            last_at_ms: row.last_at_ms,
            attempts: u64::try_from(row.attempts).unwrap_or(0),
        })
        .collect())
}

/// Per site: how many refusals are on record, and when the latest was.
pub async fn counts<C: ConnectionTrait>(db: &C) -> Result<HashMap<i32, (u64, i64)>, DbErr> {
    let rows: Vec<(i32, i64, Option<i64>)> = refusal::Entity::find()
        .select_only()
        .column(refusal::Column::SyncId)
        .column_as(refusal::Column::Id.count(), "n")
        .column_as(refusal::Column::LastAtMs.max(), "latest")
        .group_by(refusal::Column::SyncId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(sync_id, n, latest)| {
            (
                sync_id,
                (u64::try_from(n).unwrap_or(0), latest.unwrap_or(0)),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_contracts() {
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Internal), "INTERNAL");
    }
}
