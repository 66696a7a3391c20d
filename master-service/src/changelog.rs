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
//! that matters. Transfers are not rare (a site's batch that ships stock writes
//! the log), so their entries are gathered and appended as their
//! transaction's last statement ([`Pending`]): the lock is held for the
//! commit, not for the batch's work.
//!
//! Since m0110 an entry may name a store (`store_id`): a store row handed
//! over to that store's site, or a transfer record (see `crate::transfers`).
//! Such an entry goes only to the site hosting that store; the others'
//! readers pass over it (their cursor still moves past it), so the log has
//! one sequence for every site and the no-gaps argument is unchanged.
//!
//! Each entry holds the whole record after the change (or a tombstone), encoded as
//! a `SyncRecord`, so that applying entries in order is idempotent.
//!
//! # Invariant: a cursor names one entry, in one epoch
//! Every entry gets a random `tag` when written; a satellite keeps the tag of
//! the entry at its cursor. The log has an epoch (`changelog_epoch`), new when
//! the database is a restored copy (its physical identity changed, see
//! [`ensure_epoch`]) or when a satellite shows that the log was rewound (its
//! cursor is past the head, or the entry at its cursor has another tag, see
//! `sync::handshake`). A satellite whose epoch or tag does not match has
//! master data the log cannot bring up to date: it is re-synchronised from a
//! master-data snapshot, never left to skip the reused sequence numbers.

use std::borrow::Borrow;

use prost::Message;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, Statement,
};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::{sync_record, SyncRecord, Table};
use storesync_shared::{Error, Result};
use tokio::sync::watch;

use crate::entities::change_log;

/// Appends `record` to the change log inside the caller's transaction and
/// returns its sequence number. Call [`ChangeNotifier::committed`] after commit.
pub async fn append<C: ConnectionTrait>(txn: &C, record: &SyncRecord) -> Result<u64> {
    write(txn, vec![(None, record)])
        .await?
        .ok_or_else(|| Error::Internal("one entry appended, yet no sequence".into()))
}

/// Change-log entries for single stores' sites (a store row the master
/// hands over to that site, a transfer record; see `crate::transfers`:
/// other sites' readers pass over them), gathered while a transaction does
/// its work and appended by [`Pending::append`] as the last thing before it
/// commits.
///
/// Taking the sequence takes the counter row lock, which every writer of
/// the log then waits for until this transaction ends. Taken at the end,
/// it is held for the append and the commit only: sites whose batches ship
/// stock to other stores (every one of them writes the log) would
/// otherwise apply their batches one at a time, each waiting for the rest
/// of another's work.
#[derive(Debug, Default)]
pub struct Pending {
    entries: Vec<(String, SyncRecord)>,
}

impl Pending {
    /// Adds `records`, in order, for the site hosting `store_id` only.
    pub fn for_store(&mut self, store_id: &str, records: &[SyncRecord]) {
        self.entries.extend(
            records
                .iter()
                .map(|record| (store_id.to_owned(), record.clone())),
        );
    }

    /// Appends the entries gathered, in the order added, with one sequence
    /// update, one insert per 500 and one notification for them all; returns
    /// the last sequence number, None when there are none. Call it as the
    /// transaction's last statement (see the type's docs). The numbers are
    /// consecutive and taken under the same counter row lock as one by one,
    /// so the no-gaps argument is unchanged.
    pub async fn append<C: ConnectionTrait>(self, txn: &C) -> Result<Option<u64>> {
        write(
            txn,
            self.entries
                .into_iter()
                .map(|(store_id, record)| (Some(store_id), record))
                .collect(),
        )
        .await
    }
}

/// Writes `entries` (each for the site hosting its store, or for every
/// site) in order, numbered consecutively with one counter update, and
/// wakes the other replicas on commit; the last number, None for none.
async fn write<C: ConnectionTrait, R: Borrow<SyncRecord>>(
    txn: &C,
    entries: Vec<(Option<String>, R)>,
) -> Result<Option<u64>> {
    if entries.is_empty() {
        return Ok(None);
    }
    let described = entries
        .iter()
        .map(|(store_id, record)| describe(record.borrow(), store_id.is_some()))
        .collect::<Result<Vec<_>>>()?;
    let count = i64::try_from(entries.len())
        .map_err(|_| Error::Internal("too many change-log entries at once".into()))?;
    let backend = txn.get_database_backend();
    let row = txn
        .query_one(Statement::from_sql_and_values(
            backend,
            match backend {
                DbBackend::Postgres => {
                    "UPDATE counter SET value = value + $1 WHERE name = 'change_log' RETURNING value"
                }
                _ => "UPDATE counter SET value = value + ? WHERE name = 'change_log' RETURNING value",
            },
            [count.into()],
        ))
        .await?
        .ok_or_else(|| Error::Internal("the change_log counter row is missing".into()))?;
    let last: i64 = row.try_get("", "value")?;
    let first = last - count + 1;
    let now = now_ms();
    let traceparent =
        storesync_shared::kit::telemetry::propagation::traceparent(&tracing::Span::current());
    let entries: Vec<change_log::ActiveModel> = entries
        .into_iter()
        .zip(described)
        .zip(first..)
        .map(
            |(((store_id, record), (table, record_id, deleted)), seq)| change_log::ActiveModel {
                seq: Set(seq),
                table_name: Set(table.as_str_name().to_owned()),
                record_id: Set(record_id),
                deleted: Set(deleted),
                payload: Set(record.borrow().encode_to_vec()),
                changed_at_ms: Set(now),
                tag: Set(new_tag()),
                traceparent: Set(traceparent.clone()),
                store_id: Set(store_id),
            },
        )
        .collect();
    // SQLite binds at most 32,766 values: 9 columns, well under in chunks of 500.
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        let chunk: Vec<change_log::ActiveModel> = entries.by_ref().take(500).collect();
        change_log::Entity::insert_many(chunk)
            .exec_without_returning(txn)
            .await?;
    }
    // Delivered by PostgreSQL when this transaction commits: wakes the other replicas.
    crate::sync::cluster::notify(
        txn,
        crate::sync::cluster::CHANGES_CHANNEL,
        &last.to_string(),
    )
    .await?;
    u64::try_from(last)
        .map(Some)
        .map_err(|_| Error::Internal(format!("negative change-log sequence {last}")))
}

/// A random, non-zero, positive tag (0 means "none" on the wire).
fn new_tag() -> i64 {
    let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
    let tag = ((high ^ low) >> 1) as i64;
    tag.max(1)
}

/// Table, id and tombstone flag of a master-data record, or (`for_store`)
/// of a row handed to one store's site.
fn describe(record: &SyncRecord, for_store: bool) -> Result<(Table, String, bool)> {
    match &record.record {
        Some(sync_record::Record::Invoice(r)) if for_store => {
            Ok((Table::Invoice, r.id.clone(), false))
        }
        Some(sync_record::Record::InvoiceLine(r)) if for_store => {
            Ok((Table::InvoiceLine, r.id.clone(), false))
        }
        Some(sync_record::Record::Transfer(r)) if for_store => {
            Ok((Table::Transfer, r.id.clone(), false))
        }
        Some(sync_record::Record::Requisition(r)) if for_store => {
            Ok((Table::Requisition, r.id.clone(), false))
        }
        Some(sync_record::Record::RequisitionLine(r)) if for_store => {
            Ok((Table::RequisitionLine, r.id.clone(), false))
        }
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

/// The tag of the entry at `seq`, if the log still holds it.
pub async fn tag_at<C: ConnectionTrait>(db: &C, seq: u64) -> Result<Option<u64>> {
    let Ok(seq) = i64::try_from(seq) else {
        return Ok(None);
    };
    let tag: Option<i64> = change_log::Entity::find_by_id(seq)
        .select_only()
        .column(change_log::Column::Tag)
        .into_tuple()
        .one(db)
        .await?;
    Ok(tag.map(|t| u64::try_from(t).unwrap_or(0)))
}

/// The lowest sequence the log still holds (None when it is empty).
pub async fn oldest<C: ConnectionTrait>(db: &C) -> Result<Option<u64>> {
    let oldest: Option<i64> = change_log::Entity::find()
        .select_only()
        .column_as(
            sea_orm::sea_query::Expr::col(change_log::Column::Seq).min(),
            "m",
        )
        .into_tuple()
        .one(db)
        .await?
        .flatten();
    Ok(oldest.and_then(|o| u64::try_from(o).ok()))
}

/// The change log's epoch and the identity it was recorded with.
async fn epoch_row<C: ConnectionTrait>(db: &C) -> Result<Option<(String, String)>> {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            "SELECT epoch, db_identity FROM changelog_epoch WHERE id = 1",
        ))
        .await?;
    row.map(|row| Ok((row.try_get("", "epoch")?, row.try_get("", "db_identity")?)))
        .transpose()
}

/// The change log's current epoch.
pub async fn epoch<C: ConnectionTrait>(db: &C) -> Result<String> {
    Ok(epoch_row(db)
        .await?
        .map(|(epoch, _)| epoch)
        .unwrap_or_default())
}

/// The physical identity of the database: on PostgreSQL the current
/// database's OID and, where this role may read it, the cluster's system
/// identifier; a dump restored into another database or cluster has another.
/// Empty on SQLite (a copied file is the same file; rewinds are found by the
/// entry tags instead).
async fn db_identity<C: ConnectionTrait>(db: &C) -> String {
    if db.get_database_backend() != DbBackend::Postgres {
        return String::new();
    }
    let one = |sql: &'static str| async move {
        db.query_one(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get_by_index::<String>(0).ok())
            .unwrap_or_default()
    };
    let oid = one("SELECT oid::text FROM pg_database WHERE datname = current_database()").await;
    let system = one("SELECT system_identifier::text FROM pg_control_system()").await;
    format!("pg:{oid}:{system}")
}

/// At start: creates the epoch on a new database, and starts a new one when
/// the database's physical identity is not the one recorded (a dump restored
/// into a new database or cluster). Returns the current epoch.
pub async fn ensure_epoch(db: &DatabaseConnection) -> Result<String> {
    let identity = db_identity(db).await;
    match epoch_row(db).await? {
        Some((epoch, recorded)) if recorded == identity => Ok(epoch),
        Some((old, recorded)) => {
            let epoch = uuid::Uuid::new_v4().to_string();
            tracing::warn!(%old, %epoch, %recorded, %identity, "this database is not the one the change log's epoch was recorded in (restored from a backup?): starting a new change-log epoch; every satellite re-synchronises its master data");
            write_epoch(db, &epoch, &identity).await?;
            Ok(epoch)
        }
        None => {
            let epoch = uuid::Uuid::new_v4().to_string();
            write_epoch(db, &epoch, &identity).await?;
            Ok(epoch)
        }
    }
}

/// Starts a new epoch now (the log was found rewound); returns it. Every
/// satellite of the old epoch then re-synchronises its master data.
pub async fn start_new_epoch(db: &DatabaseConnection) -> Result<String> {
    let identity = db_identity(db).await;
    let epoch = uuid::Uuid::new_v4().to_string();
    write_epoch(db, &epoch, &identity).await?;
    Ok(epoch)
}

async fn write_epoch(db: &DatabaseConnection, epoch: &str, identity: &str) -> Result<()> {
    let backend = db.get_database_backend();
    let txn = storesync_shared::domain::db::begin(db).await?;
    txn.execute(Statement::from_string(
        backend,
        "DELETE FROM changelog_epoch WHERE id = 1",
    ))
    .await?;
    txn.execute(Statement::from_sql_and_values(
        backend,
        match backend {
            DbBackend::Postgres => "INSERT INTO changelog_epoch (id, epoch, db_identity, started_at_ms) VALUES (1, $1, $2, $3)",
            _ => "INSERT INTO changelog_epoch (id, epoch, db_identity, started_at_ms) VALUES (1, ?, ?, ?)",
        },
        [epoch.into(), identity.into(), now_ms().into()],
    ))
    .await?;
    txn.commit().await?;
    Ok(())
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
