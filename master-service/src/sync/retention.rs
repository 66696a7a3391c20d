//! How long the change log keeps entries, tombstones included.
//!
//! An entry may go once every initialised site has acknowledged past it: such a
//! site never asks for it again, and a site that is not initialised (new, or
//! rebuilding after a lost disk) starts from a snapshot, not from the log. So a
//! delete is never purged before a site that still needs it has applied it, and
//! a site that is switched off keeps its entries until it comes back.

use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use storesync_shared::Result;

use crate::entities::{change_log, site};

/// Deletes the entries every initialised satellite has acknowledged; returns how many.
pub async fn prune(db: &DatabaseConnection) -> Result<u64> {
    let lowest: Option<i64> = site::Entity::find()
        .select_only()
        .column_as(Expr::col(site::Column::DownstreamCursor).min(), "lowest")
        .filter(site::Column::SyncId.gt(1))
        .filter(site::Column::Initialised.eq(true))
        .into_tuple()
        .one(db)
        .await?
        .flatten();
    let Some(lowest) = lowest else { return Ok(0) };
    let deleted = change_log::Entity::delete_many()
        .filter(change_log::Column::Seq.lte(lowest))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected)
}

/// Prunes every `every` until the process ends.
pub async fn run(db: DatabaseConnection, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match prune(&db).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                entries = n,
                "pruned change-log entries every site has acknowledged"
            ),
            Err(error) => tracing::warn!(%error, "could not prune the change log"),
        }
    }
}
