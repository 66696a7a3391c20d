//! How long the change log keeps entries, tombstones included.
//!
//! # Invariant
//! An entry goes only once every site that may still read it has moved past
//! it. A site holds the log from:
//! - its acknowledged cursor, once initialised: it never asks for anything
//!   before it again;
//! - its snapshot's cursor, from the moment its snapshot (initialisation or
//!   master-data resync) starts (`site.snapshot_cursor`, recorded durably
//!   before the first batch is sent, cleared when the snapshot's last batch is
//!   acknowledged): after the snapshot it reads the log from there, however
//!   long the snapshot took and whether or not its final ack arrived.
//!
//! Entries strictly below the lowest of these go; the entry AT each site's
//! cursor stays, so that the site's next Hello can be checked against its tag
//! (`changelog`, `handshake`). A site that is switched off keeps its entries
//! until it comes back or is removed.

use std::time::Duration;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, Statement,
};
use storesync_shared::Result;

use crate::entities::change_log;

/// The lowest cursor any site still reads the log from (None: no site holds it).
pub async fn lowest_held<C: ConnectionTrait>(db: &C) -> Result<Option<i64>> {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            "SELECT MIN(held) AS lowest FROM ( \
                 SELECT downstream_cursor AS held FROM site WHERE sync_id > 1 AND initialised \
                 UNION ALL \
                 SELECT snapshot_cursor AS held FROM site WHERE sync_id > 1 AND snapshot_cursor IS NOT NULL \
             ) AS holders",
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<i64>>("", "lowest")?,
        None => None,
    })
}

/// Deletes the entries no site still needs (see the invariant); returns how many.
pub async fn prune(db: &DatabaseConnection) -> Result<u64> {
    let Some(lowest) = lowest_held(db).await? else {
        return Ok(0);
    };
    let deleted = change_log::Entity::delete_many()
        .filter(change_log::Column::Seq.lt(lowest))
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
