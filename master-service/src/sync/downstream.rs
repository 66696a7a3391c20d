//! Master → satellite: the initialisation snapshot, then the change log from
//! the satellite's cursor, then live changes as they commit.
//!
//! # Invariants
//! - The change log is read strictly after the cursor, in sequence order, and
//!   has no gaps (see `changelog`), so nothing is skipped or reordered. The
//!   reader refuses to skip: the first entry read after cursor `c` must be
//!   `c + 1`; if it is not, entries were pruned under the site, and the session
//!   ends (`UNAVAILABLE`) so that the next Hello re-synchronises the site's
//!   master data (`handshake`).
//! - A snapshot holds the change log from its cursor (`retention`) from
//!   before its first batch is sent until its last is acknowledged.
//! - The snapshot's master data and its cursor come from ONE database snapshot
//!   (a repeatable-read transaction on PostgreSQL; a transaction on SQLite's one
//!   connection): the records are exactly the state after that cursor, so the
//!   changes replayed after it apply cleanly in order.
//! - The satellite stores each batch's end cursor in the same transaction as its
//!   records and acknowledges; at most `window` batches are unacknowledged.

use std::collections::VecDeque;
use std::time::Duration;

use prost::Message;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, IsolationLevel, TransactionTrait,
};
use storesync_shared::domain::entities::store;
use storesync_shared::domain::tables::write::{self, Scope};
use storesync_shared::domain::tables::{self, Owner, SyncTable};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::{
    master_message, CaughtUp, DownstreamBatch, Heartbeat, InitialisationProgress, MasterMessage,
    SyncRecord,
};
use storesync_shared::{Error, Result};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::{status, SyncContext};
use crate::changelog;

/// Most writes a downstream batch's span links to (a batch may carry
/// thousands; the first ones are enough to follow a change).
const MAX_LINKS: usize = 32;

/// What the satellite has acknowledged so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acked {
    pub cursor: u64,
    pub init_records_done: u64,
}

/// Sends to the satellite; an error means the peer is gone.
pub type Outbound = mpsc::Sender<std::result::Result<MasterMessage, tonic::Status>>;

pub(super) async fn send(tx: &Outbound, message: master_message::Message) -> Result<()> {
    tx.send(Ok(MasterMessage {
        message: Some(message),
    }))
    .await
    .map_err(|_| Error::Unavailable("the satellite went away".into()))
}

/// What the downstream half starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The change log after the satellite's cursor.
    Continue,
    /// A snapshot of master data and the store's data (an empty database).
    Initialise,
    /// A snapshot of master data only (`Welcome.resync_master_data`).
    ResyncMasterData,
}

/// Runs the downstream half of a session until the peer goes away or an error.
pub async fn run(
    ctx: SyncContext,
    sync_id: u32,
    store_id: String,
    start: Start,
    mut cursor: u64,
    tx: Outbound,
    mut acks: watch::Receiver<Acked>,
) -> Result<()> {
    if start != Start::Continue {
        let master_only = start == Start::ResyncMasterData;
        cursor = send_snapshot(&ctx, sync_id, &store_id, &tx, &mut acks, master_only).await?;
    }
    let settings = &ctx.settings;
    let mut changes = ctx.notifier.subscribe();
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut caught_up_at: Option<u64> = None;
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let acked = acks.borrow_and_update().cursor;
        while in_flight.front().is_some_and(|end| *end <= acked) {
            in_flight.pop_front();
        }
        if in_flight.len() < settings.downstream_window {
            let mut entries =
                changelog::read_after(&ctx.db, cursor, settings.downstream_batch_records as u64)
                    .await?;
            keep_within_bytes(&mut entries, settings.downstream_batch_bytes);
            if let Some(first) = entries.first() {
                if u64::try_from(first.seq).ok() != cursor.checked_add(1) {
                    return Err(Error::Unavailable(format!(
                        "the change log no longer holds the entries after cursor {cursor} (it resumes at {}); \
                         reconnect: this site's master data is re-synchronised from a snapshot",
                        first.seq
                    )));
                }
            }
            if let Some(last) = entries.last() {
                let end = u64::try_from(last.seq).unwrap_or(cursor);
                let end_tag = u64::try_from(last.tag).unwrap_or(0);
                let records = entries
                    .iter()
                    .map(|entry| {
                        SyncRecord::decode(entry.payload.as_slice()).map_err(|e| {
                            Error::Internal(format!(
                                "change-log entry {} is corrupt: {e}",
                                entry.seq
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                // One trace per batch, started when it is sent (changes of many
                // writes share a batch); each satellite's apply is its child,
                // and it links to the writes it carries.
                let span = tracing::info_span!(parent: None, "sync.downstream.send", otel.kind = "producer", sync_id, end_cursor = end, records = records.len());
                storesync_shared::kit::telemetry::propagation::add_links(
                    &span,
                    entries.iter().map(|entry| entry.traceparent.as_str()),
                    MAX_LINKS,
                );
                let trace_context = storesync_shared::kit::telemetry::propagation::inject(&span);
                send(
                    &tx,
                    master_message::Message::DownstreamBatch(DownstreamBatch {
                        records,
                        end_cursor: end,
                        initialisation: None,
                        trace_context,
                        end_tag,
                    }),
                )
                .instrument(span)
                .await?;
                cursor = end;
                in_flight.push_back(end);
                continue;
            }
            if caught_up_at != Some(cursor) {
                send(&tx, master_message::Message::CaughtUp(CaughtUp { cursor })).await?;
                caught_up_at = Some(cursor);
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The notifier is gone (shutting down): fall back to the poll below.
                    tokio::time::sleep(settings.poll_fallback).await;
                }
            }
            _ = acks.changed() => {}
            _ = tokio::time::sleep(settings.poll_fallback) => {}
            _ = heartbeat.tick() => {
                send(&tx, master_message::Message::Heartbeat(Heartbeat { sent_at_ms: now_ms(), upstream_backlog: 0 })).await?;
            }
        }
    }
}

/// Cuts `entries` after the last one that fits in `max_bytes` (always keeping
/// the first, so that one large record still moves).
fn keep_within_bytes(entries: &mut Vec<crate::entities::change_log::Model>, max_bytes: usize) {
    let mut bytes = 0usize;
    let fits = entries
        .iter()
        .take_while(|entry| {
            bytes += entry.payload.len() + 16;
            bytes <= max_bytes
        })
        .count();
    entries.truncate(fits.max(1));
}

/// Master data as of one change-log cursor, read in one database snapshot:
/// the cursor, the tag of the entry there (0: none) and the records.
async fn master_data_snapshot(db: &DatabaseConnection) -> Result<(u64, u64, Vec<SyncRecord>)> {
    let isolation = (db.get_database_backend() == DbBackend::Postgres)
        .then_some(IsolationLevel::RepeatableRead);
    let txn = db.begin_with_config(isolation, None).await?;
    let head = changelog::head(&txn).await?;
    let head_tag = changelog::tag_at(&txn, head).await?.unwrap_or(0);
    let mut records: Vec<SyncRecord> = Vec::new();
    for table in tables::SYNCED {
        if table.owner() != Owner::Master {
            continue;
        }
        for row in write::page(&txn, *table, Scope::All, "", None).await? {
            records.push(SyncRecord {
                record: Some(table.record_of(&row)?),
            });
        }
    }
    txn.commit().await?;
    Ok((head, head_tag, records))
}

/// Sends the snapshot for a site's initialisation (or, `master_only`, its
/// master-data resync: master data and the store row, none of the store's
/// data); returns its cursor.
async fn send_snapshot(
    ctx: &SyncContext,
    sync_id: u32,
    store_id: &str,
    tx: &Outbound,
    acks: &mut watch::Receiver<Acked>,
    master_only: bool,
) -> Result<u64> {
    let db = &ctx.db;
    // Hold the log from the head as it is now (the snapshot's cursor will be
    // at or after it), durably, before anything is read or sent.
    let hold = changelog::head(db).await?;
    status::snapshot_started(db, sync_id, hold).await?;
    let (head, head_tag, master_records) = master_data_snapshot(db).await?;
    if store::Entity::find_by_id(store_id.to_owned())
        .one(db)
        .await?
        .is_none()
    {
        return Err(Error::Internal(format!(
            "store {store_id} of Sync ID {sync_id} is missing"
        )));
    }
    // Everything sent to this store's site besides master data: its store row
    // and its store's data.
    let store_tables: Vec<&dyn SyncTable> = tables::SYNCED
        .iter()
        .copied()
        .filter(|table| match table.owner() {
            Owner::Master => false,
            Owner::MasterForStore { .. } => true,
            Owner::Store { .. } => !master_only,
        })
        .collect();
    let mut total = master_records.len() as u64;
    for table in &store_tables {
        total += write::count(db, *table, Scope::Store(store_id)).await?;
    }
    tracing::info!(
        sync_id,
        total,
        cursor = head,
        master_only,
        "sending snapshot"
    );
    status::initialisation(db, sync_id, true, 0, total).await;

    let mut sender = SnapshotSender {
        ctx,
        sync_id,
        tx,
        acks,
        sent: 0,
        total,
        pending: Vec::new(),
        pending_bytes: 0,
    };
    for record in master_records {
        sender.push(record).await?;
    }
    // Store data in pages by id, so a large store never sits in memory whole.
    let page = ctx.settings.downstream_batch_records as u64;
    for table in store_tables {
        send_store_rows(&mut sender, table, store_id, page).await?;
    }
    sender.finish(head, head_tag).await?;
    Ok(head)
}

/// Pushes every row of one table for `store_id`'s site into the snapshot,
/// `page` rows per query, in id order (keyset paging: no offset scans).
async fn send_store_rows(
    sender: &mut SnapshotSender<'_>,
    table: &dyn SyncTable,
    store_id: &str,
    page: u64,
) -> Result<()> {
    let mut after = String::new();
    loop {
        let rows = write::page(
            &sender.ctx.db,
            table,
            Scope::Store(store_id),
            &after,
            Some(page),
        )
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in rows {
            after = row.try_get_by_index(0)?;
            sender
                .push(SyncRecord {
                    record: Some(table.record_of(&row)?),
                })
                .await?;
        }
    }
}

/// Cuts the snapshot into batches and keeps at most `window` unacknowledged.
struct SnapshotSender<'a> {
    ctx: &'a SyncContext,
    sync_id: u32,
    tx: &'a Outbound,
    acks: &'a mut watch::Receiver<Acked>,
    sent: u64,
    total: u64,
    pending: Vec<SyncRecord>,
    /// Encoded size of `pending`.
    pending_bytes: usize,
}

impl SnapshotSender<'_> {
    async fn push(&mut self, record: SyncRecord) -> Result<()> {
        self.pending_bytes += record.encoded_len() + 16;
        self.pending.push(record);
        if self.pending.len() >= self.ctx.settings.downstream_batch_records
            || self.pending_bytes >= self.ctx.settings.downstream_batch_bytes
        {
            self.flush(false, 0, 0).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, complete: bool, end_cursor: u64, end_tag: u64) -> Result<()> {
        let batch_size = self.ctx.settings.downstream_batch_records as u64;
        let window = self.ctx.settings.downstream_window as u64 * batch_size;
        // Wait for acknowledgements rather than queueing the whole store in memory.
        let mut reported = 0;
        while self
            .sent
            .saturating_sub(self.acks.borrow().init_records_done)
            >= window
        {
            let done = self.acks.borrow().init_records_done;
            if done != reported {
                status::initialisation(&self.ctx.db, self.sync_id, true, done, self.total).await;
                reported = done;
            }
            tokio::select! {
                changed = self.acks.changed() => {
                    if changed.is_err() {
                        return Err(Error::Unavailable("the session ended during initialisation".into()));
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(self.ctx.settings.heartbeat.as_secs().max(1) * 3)) => {
                    return Err(Error::Unavailable("the satellite stopped acknowledging the snapshot".into()));
                }
            }
        }
        let records = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.sent += records.len() as u64;
        let span = tracing::info_span!(parent: None, "sync.downstream.send", otel.kind = "producer", sync_id = self.sync_id, end_cursor, records = records.len(), initialisation = true);
        let trace_context = storesync_shared::kit::telemetry::propagation::inject(&span);
        send(
            self.tx,
            master_message::Message::DownstreamBatch(DownstreamBatch {
                records,
                end_cursor,
                initialisation: Some(InitialisationProgress {
                    records_done: self.sent,
                    records_total: self.total,
                    complete,
                }),
                trace_context,
                end_tag,
            }),
        )
        .instrument(span)
        .await
    }

    async fn finish(mut self, head: u64, head_tag: u64) -> Result<()> {
        self.flush(true, head, head_tag).await?;
        tracing::info!(
            sync_id = self.sync_id,
            records = self.sent,
            "initialisation snapshot sent"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::keep_within_bytes;
    use crate::entities::change_log;

    fn entry(seq: i64, size: usize) -> change_log::Model {
        change_log::Model {
            seq,
            table_name: "ITEM".into(),
            record_id: seq.to_string(),
            deleted: false,
            payload: vec![0; size],
            changed_at_ms: 0,
            tag: 0,
            traceparent: String::new(),
        }
    }

    #[test]
    fn batches_stop_at_the_byte_limit_but_always_carry_one_record() {
        let mut entries: Vec<_> = (1..=10).map(|n| entry(n, 84)).collect();
        keep_within_bytes(&mut entries, 350);
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let mut huge = vec![entry(1, 10_000), entry(2, 10)];
        keep_within_bytes(&mut huge, 100);
        assert_eq!(
            huge.len(),
            1,
            "a record larger than the limit still travels, alone"
        );
    }
}
