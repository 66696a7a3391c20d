//! The master change log: every change of master data (items, names), in
//! commit order, for the sync stream to send downstream.
//!
//! # Invariant: no gaps
//! A writer takes its sequence number with
//! `UPDATE counter SET value = value + 1 … RETURNING value` inside its own
//! transaction. The row lock that update takes is held until commit, so change-log
//! writers are serialised: a transaction that holds number N commits (or rolls
//! back, and N is taken again by the next writer) before anyone can take N + 1.
//! Therefore every number at or below the highest committed one is committed, and
//! a reader that has read up to N never meets a row below N later. (Sequences
//! taken before commit, as from `nextval`, do not have this property.) Master data
//! changes are rare next to store data, so serialising their writers costs nothing
//! that matters.
//!
//! Each entry holds the whole record after the change (or a tombstone), encoded as
//! a `SyncRecord`, so that applying entries in order is idempotent.

use prost::Message;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, Statement,
};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::{sync_record, SyncRecord, Table};
use storesync_shared::{Error, Result};
use tokio::sync::watch;

use crate::entities::change_log;

/// Appends `record` to the change log inside the caller's transaction and
/// returns its sequence number. Call [`ChangeNotifier::committed`] after commit.
pub async fn append<C: ConnectionTrait>(txn: &C, record: &SyncRecord) -> Result<u64> {
    let (table, record_id, deleted) = describe(record)?;
    let backend = txn.get_database_backend();
    let row = txn
        .query_one(Statement::from_string(
            backend,
            "UPDATE counter SET value = value + 1 WHERE name = 'change_log' RETURNING value",
        ))
        .await?
        .ok_or_else(|| Error::Internal("the change_log counter row is missing".into()))?;
    let seq: i64 = row.try_get("", "value")?;
    change_log::Entity::insert(change_log::ActiveModel {
        seq: Set(seq),
        table_name: Set(table.as_str_name().to_owned()),
        record_id: Set(record_id),
        deleted: Set(deleted),
        payload: Set(record.encode_to_vec()),
        changed_at_ms: Set(now_ms()),
    })
    .exec_without_returning(txn)
    .await?;
    // Delivered by PostgreSQL when this transaction commits: wakes the other replicas.
    crate::sync::cluster::notify(txn, crate::sync::cluster::CHANGES_CHANNEL, &seq.to_string())
        .await?;
    u64::try_from(seq).map_err(|_| Error::Internal(format!("negative change-log sequence {seq}")))
}

/// Table, id and tombstone flag of a master-data record.
fn describe(record: &SyncRecord) -> Result<(Table, String, bool)> {
    match &record.record {
        Some(sync_record::Record::Item(item)) => Ok((Table::Item, item.id.clone(), false)),
        Some(sync_record::Record::Name(name)) => Ok((Table::Name, name.id.clone(), false)),
        Some(sync_record::Record::Deleted(r)) if matches!(r.table(), Table::Item | Table::Name) => {
            Ok((r.table(), r.id.clone(), true))
        }
        _ => Err(Error::Internal(
            "only items and names enter the change log".into(),
        )),
    }
}

/// Highest committed sequence number (0 when the log is empty).
pub async fn head<C: ConnectionTrait>(db: &C) -> Result<u64> {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            "SELECT value FROM counter WHERE name = 'change_log'",
        ))
        .await?
        .ok_or_else(|| Error::Internal("the change_log counter row is missing".into()))?;
    let value: i64 = row.try_get("", "value")?;
    Ok(u64::try_from(value).unwrap_or(0))
}

/// Up to `limit` entries after `cursor`, in order.
pub async fn read_after<C: ConnectionTrait>(
    db: &C,
    cursor: u64,
    limit: u64,
) -> Result<Vec<change_log::Model>> {
    let cursor = i64::try_from(cursor)
        .map_err(|_| Error::invalid("downstream_cursor", "is out of range"))?;
    Ok(change_log::Entity::find()
        .filter(change_log::Column::Seq.gt(cursor))
        .order_by_asc(change_log::Column::Seq)
        .limit(limit)
        .all(db)
        .await?)
}

/// Wakes the streams that tail the change log when a change commits.
///
/// The log is the truth; this only saves the streams from polling. A missed
/// wake-up delays a change until the next one, never loses it.
#[derive(Clone)]
pub struct ChangeNotifier {
    sender: watch::Sender<u64>,
}

impl Default for ChangeNotifier {
    fn default() -> Self {
        Self {
            sender: watch::channel(0).0,
        }
    }
}

impl ChangeNotifier {
    /// Tells every tailing stream that entries up to `seq` have committed.
    pub fn committed(&self, seq: u64) {
        self.sender.send_if_modified(|current| {
            let newer = seq > *current;
            if newer {
                *current = seq;
            }
            newer
        });
    }

    /// Wakes every tailing stream to re-read the log, whether or not anything
    /// is known to have changed (after notifications may have been missed).
    pub fn wake_all(&self) {
        self.sender.send_modify(|_| {});
    }

    /// A receiver that wakes on every commit after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }
}
