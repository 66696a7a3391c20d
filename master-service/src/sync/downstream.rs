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
//! - An entry aimed at one store (`change_log.store_id`, see `changelog`) is
//!   sent only to that store's site; for the others it is passed over inside
//!   a batch that still ends after it, so every site's cursor moves through
//!   the one sequence and the check above holds.
//! - A site older than `HANDOVER_PROTOCOL_VERSION` is never sent an entry
//!   aimed at its store, and its cursor never passes one: its downstream
//!   waits before it (still saying `CaughtUp`, so interval mode ends) until
//!   the satellite is upgraded.
//! - A snapshot holds the change log from its cursor (`retention`) from
//!   before its first batch is sent until its last is acknowledged.
//! - The snapshot's master data is a copy of ONE database state, at the copy's
//!   cursor (see `shared_snapshot`; shared by the snapshots that start near
//!   it), and the change log is replayed from that cursor: the records are
//!   exactly the state after it, so the changes replayed after it apply
//!   cleanly in order (codes stay unique at every step). The log is held from
//!   that cursor (or an earlier one) before anything is sent.
//! - The store's data is read in pages by id, each page at the state of its
//!   own read, all at or after the replay cursor: entries are whole rows and
//!   deletes, so the replay brings every row to the latest state. A store row
//!   may name an item or name newer than the master data sent (created after
//!   the copy's cursor): the replay brings it; the satellite does not refuse
//!   a row whose item is not there yet.
//! - The satellite stores each batch's end cursor in the same transaction as its
//!   records and acknowledges; at most `window` batches are unacknowledged.
//! - Memory: a snapshot batch holds one of the process's
//!   `snapshot_batches_in_flight` slots from when its rows are read until it
//!   is acknowledged, so the snapshots of all sites together hold at most
//!   that many batches (plus one copy of master data, shared).

use std::collections::VecDeque;
use std::time::Duration;

use prost::Message;
use sea_orm::{DatabaseConnection, EntityTrait};
use storesync_shared::domain::entities::store;
use storesync_shared::domain::tables::write::{self, Scope};
use storesync_shared::domain::tables::{self, Owner, SyncTable};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::{
    master_message, CaughtUp, DownstreamBatch, Heartbeat, InitialisationProgress, MasterMessage,
    SyncRecord, Table,
};
use storesync_shared::{Error, Result};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tracing::Instrument;

use super::shared_snapshot::MasterData;
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The change log after the satellite's cursor.
    Continue,
    /// A snapshot of master data and the store's data (an empty database).
    Initialise,
    /// The rest of a snapshot a cut interrupted (see [`Resume`]).
    ResumeInitialisation(Resume),
    /// A snapshot of master data only (`Welcome.resync_master_data`).
    ResyncMasterData,
    /// The rest of a master-data resync a cut interrupted (see [`Resume`]).
    ResumeResync(Resume),
}

/// Runs the downstream half of a session until the peer goes away or an error.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: SyncContext,
    sync_id: u32,
    store_id: String,
    protocol_version: u32,
    start: Start,
    mut cursor: u64,
    tx: Outbound,
    mut acks: watch::Receiver<Acked>,
) -> Result<()> {
    if start != Start::Continue {
        let master_only = matches!(start, Start::ResyncMasterData | Start::ResumeResync(_));
        let resume = match &start {
            Start::ResumeInitialisation(resume) | Start::ResumeResync(resume) => Some(resume),
            _ => None,
        };
        cursor = send_snapshot(
            &ctx,
            sync_id,
            &store_id,
            &tx,
            &mut acks,
            master_only,
            resume,
        )
        .await?;
    }
    let settings = &ctx.settings;
    let mut changes = ctx.notifier.subscribe();
    // Unacknowledged batches: end cursor, bytes, when sent.
    let mut in_flight: VecDeque<(u64, usize, std::time::Instant)> = VecDeque::new();
    let mut rate = LinkRate::new(settings.downstream_batch_bytes);
    let mut entry_size = EntrySize::default();
    let mut caught_up_at: Option<u64> = None;
    // The entry an older site waits before (see below), once logged.
    let mut held_logged: Option<i64> = None;
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let acked = acks.borrow_and_update().cursor;
        let mut link_free_at: Option<std::time::Instant> = None;
        while let Some(&(end, bytes, sent_at)) = in_flight.front() {
            if end > acked {
                break;
            }
            in_flight.pop_front();
            let now = std::time::Instant::now();
            let started = link_free_at.map_or(sent_at, |free| free.max(sent_at));
            rate.moved(bytes, now.duration_since(started));
            link_free_at = Some(now);
        }
        if in_flight.len() < settings.downstream_window {
            let limit =
                entry_size.entries_for(rate.batch_bytes(), settings.downstream_batch_records);
            let mut entries = changelog::read_after(&ctx.db, cursor, limit).await?;
            entry_size.read(&entries);
            let bytes = keep_within_bytes(&mut entries, rate.batch_bytes());
            if let Some(first) = entries.first() {
                if u64::try_from(first.seq).ok() != cursor.checked_add(1) {
                    return Err(Error::Unavailable(format!(
                        "the change log no longer holds the entries after cursor {cursor} (it resumes at {}); \
                         reconnect: this site's master data is re-synchronised from a snapshot",
                        first.seq
                    )));
                }
            }
            // A site older than the handover protocol cannot take a row handed
            // to its store: its downstream stops before the first one (never
            // past it: nothing is skipped) until the satellite is upgraded.
            if protocol_version < storesync_shared::HANDOVER_PROTOCOL_VERSION {
                if let Some(at) = entries
                    .iter()
                    .position(|entry| entry.store_id.as_deref() == Some(store_id.as_str()))
                {
                    let seq = entries[at].seq;
                    if held_logged != Some(seq) {
                        tracing::warn!(
                            sync_id,
                            seq,
                            protocol_version,
                            "Sync ID {sync_id} speaks sync protocol {protocol_version}: change-log entry {seq} hands its store a transfer, which needs protocol {}; its downstream waits there until its satellite-agent is upgraded",
                            storesync_shared::HANDOVER_PROTOCOL_VERSION
                        );
                        held_logged = Some(seq);
                    }
                    entries.truncate(at);
                }
            }
            if let Some(last) = entries.last() {
                let end = u64::try_from(last.seq).unwrap_or(cursor);
                let end_tag = u64::try_from(last.tag).unwrap_or(0);
                // Entries aimed at another store's site are passed over: the
                // batch still ends at `end` (possibly with no records), so the
                // cursor moves past them and the gap check above holds.
                entries.retain(|entry| entry.store_id.as_deref().is_none_or(|s| s == store_id));
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
                tracing::debug!(
                    sync_id,
                    from = cursor + 1,
                    end_cursor = end,
                    records = records.len(),
                    "downstream batch sent"
                );
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
                        after_cursor: Some(cursor),
                    }),
                )
                .instrument(span)
                .await?;
                cursor = end;
                in_flight.push_back((end, bytes, std::time::Instant::now()));
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

/// The bytes a change-log entry takes in a batch, as the last read found them:
/// how many entries to read for a batch of so many bytes. Reading the most a
/// batch may carry (10,000 entries) to send the few that fit a slow link's
/// batch made every batch cost a full read: 63 sites of such batches kept the
/// master and its database busy reading what they then threw away.
#[derive(Debug)]
struct EntrySize {
    /// Mean bytes of the entries last read (as `keep_within_bytes` counts them).
    mean: usize,
}

impl Default for EntrySize {
    /// Until something is read: an item or name change is about 150–300 bytes.
    fn default() -> Self {
        Self { mean: 256 }
    }
}

impl EntrySize {
    /// Entries to read for a batch of `batch_bytes`: a quarter more than the
    /// mean says fit (so that a batch of entries a little larger than the
    /// mean still fills), at least one, at most `max_records`.
    fn entries_for(&self, batch_bytes: usize, max_records: usize) -> u64 {
        let fit = batch_bytes / self.mean.max(1);
        (fit + fit / 4 + 1).min(max_records.max(1)) as u64
    }

    /// Learns from the entries a read returned (before any were cut).
    fn read(&mut self, entries: &[crate::entities::change_log::Model]) {
        if entries.is_empty() {
            return;
        }
        let bytes: usize = entries.iter().map(|entry| entry.payload.len() + 16).sum();
        self.mean = (bytes / entries.len()).max(1);
    }
}

/// Cuts `entries` after the last one that fits in `max_bytes` (always keeping
/// the first, so that one large record still moves); returns their bytes.
fn keep_within_bytes(
    entries: &mut Vec<crate::entities::change_log::Model>,
    max_bytes: usize,
) -> usize {
    let mut bytes = 0usize;
    let fits = entries
        .iter()
        .take_while(|entry| {
            bytes += entry.payload.len() + 16;
            bytes <= max_bytes
        })
        .count();
    entries.truncate(fits.max(1));
    entries.iter().map(|entry| entry.payload.len() + 16).sum()
}

/// Where a cut snapshot continues (from the satellite's Hello, checked by
/// `handshake::welcome`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The change-log cursor the snapshot is replayed from (its first session's).
    pub cursor: u64,
    /// The last record the satellite holds, in snapshot order.
    pub after_table: Table,
    pub after_id: String,
    /// Snapshot records the satellite holds.
    pub records_done: u64,
}

/// The tables of a snapshot in the order they are sent: master data first,
/// then the store row and (unless `master_only`) the store's data, each in
/// the registry's order. A resume position names a table of this list.
fn snapshot_tables(master_only: bool) -> Vec<&'static dyn SyncTable> {
    let master = tables::SYNCED
        .iter()
        .copied()
        .filter(|table| table.owner() == Owner::Master);
    let store = tables::SYNCED
        .iter()
        .copied()
        .filter(move |table| match table.owner() {
            Owner::Master => false,
            Owner::MasterForStore { .. } | Owner::MasterForStores { .. } => true,
            Owner::Store { .. } => !master_only,
        });
    master.chain(store).collect()
}

/// Where reading `table` starts for a snapshot that resumes after `resume`:
/// None when the table was sent whole before the cut, "" when it was not
/// started, else the id to continue after.
fn start_of<'r>(
    tables_in_order: &[&dyn SyncTable],
    table: &dyn SyncTable,
    resume: Option<&'r Resume>,
) -> Option<&'r str> {
    let Some(resume) = resume else {
        return Some("");
    };
    let position = |t: Table| tables_in_order.iter().position(|x| x.table() == t);
    match (position(table.table()), position(resume.after_table)) {
        (Some(this), Some(cut)) if this < cut => None,
        (Some(this), Some(cut)) if this == cut => Some(resume.after_id.as_str()),
        _ => Some(""),
    }
}

/// Whether the change log still holds every entry after `cursor`.
async fn log_holds_after(db: &DatabaseConnection, cursor: u64) -> Result<bool> {
    Ok(match changelog::oldest(db).await? {
        // The log is pruned from its start only: no gap after its oldest.
        Some(oldest) => oldest <= cursor.saturating_add(1),
        None => changelog::head(db).await? <= cursor,
    })
}

/// The records of `copy` a snapshot sends, as ranges of its positions: every
/// master-data table of `tables_in_order` not sent whole before the cut of
/// `resume`; the table of the cut from after its last record (or whole again
/// when the copy no longer holds that record: rows resent are only
/// rewritten).
fn master_ranges(
    copy: &MasterData,
    tables_in_order: &[&dyn SyncTable],
    resume: Option<&Resume>,
) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let mut n = 0;
    while n < copy.len() {
        let table = copy.get(n).0;
        let mut end = n;
        while end < copy.len() && copy.get(end).0 == table {
            end += 1;
        }
        let start = tables_in_order
            .iter()
            .find(|t| t.table() == table)
            .and_then(|t| start_of(tables_in_order, *t, resume));
        match start {
            None => {}
            Some("") => ranges.push(n..end),
            Some(after) => {
                let from = copy
                    .position_after(table, after)
                    .filter(|from| (n..=end).contains(from))
                    .unwrap_or(n);
                ranges.push(from..end);
            }
        }
        n = end;
    }
    ranges
}

/// Sends the snapshot for a site's initialisation (or, `master_only`, its
/// master-data resync: master data and the store row, none of the store's
/// data); returns the cursor the change log continues from. Both resume the
/// same way after a cut.
///
/// A `resume`d snapshot continues after the record the satellite holds,
/// read from a copy of master data (and store pages) at cursor C2 >= the
/// first session's cursor C; the change log is then replayed from C, not C2. Entries are
/// whole rows and deletes, so replaying C..C2 over rows already at C2 ends
/// with every row as it is at C2 and the rows sent before the cut brought up
/// to date. The log is held from C by the first session's hold
/// (`site.snapshot_cursor`, left as it is).
async fn send_snapshot(
    ctx: &SyncContext,
    sync_id: u32,
    store_id: &str,
    tx: &Outbound,
    acks: &mut watch::Receiver<Acked>,
    master_only: bool,
    resume: Option<&Resume>,
) -> Result<u64> {
    let db = &ctx.db;
    let tables_in_order = snapshot_tables(master_only);
    let wants_master_data = tables_in_order.iter().any(|table| {
        table.owner() == Owner::Master && start_of(&tables_in_order, *table, resume).is_some()
    });
    // The master data (a shared copy at one cursor, see `shared_snapshot`)
    // and the cursor the change log is replayed from.
    let (master_data, replay_from) = match resume {
        None => {
            let head = changelog::head(db).await?;
            // A copy at most a batch of entries behind the head is sent with
            // that much more to replay rather than read again.
            let lag = ctx.settings.downstream_batch_records as u64;
            let reused = ctx.master_data.reusable(head.saturating_sub(lag)).await;
            // Hold the log from the copy's cursor or the head as it is now
            // (a new copy's cursor will be at or after it), durably, before
            // anything is read or sent.
            let hold = reused.as_ref().map_or(head, |copy| copy.cursor.min(head));
            status::snapshot_started(db, sync_id, hold).await?;
            let copy = match reused {
                // A reused copy's entries were held by the sessions sending
                // it; still there now that this hold is recorded, they stay.
                // (Pruned in between, the replay finds the gap and the site
                // re-synchronises its master data; see `run`.)
                Some(copy) if log_holds_after(db, copy.cursor).await? => copy,
                _ => ctx.master_data.at_least(db, &tables_in_order, head).await?,
            };
            let cursor = copy.cursor;
            (Some(copy), cursor)
        }
        Some(resume) if wants_master_data => (
            Some(
                ctx.master_data
                    .at_least(db, &tables_in_order, resume.cursor)
                    .await?,
            ),
            resume.cursor,
        ),
        Some(resume) => (None, resume.cursor),
    };
    let head = master_data.as_ref().map_or(replay_from, |copy| copy.cursor);
    // The records of the copy this snapshot sends: each table not sent
    // before a cut, from after the record the satellite holds.
    let master_records: Vec<std::ops::Range<usize>> = match &master_data {
        None => Vec::new(),
        Some(copy) => master_ranges(copy, &tables_in_order, resume),
    };
    let replay_tag = changelog::tag_at(db, replay_from).await?.unwrap_or(0);
    if store::Entity::find_by_id(store_id.to_owned())
        .one(db)
        .await?
        .is_none()
    {
        return Err(Error::Internal(format!(
            "store {store_id} of Sync ID {sync_id} is missing"
        )));
    }
    let done_before = resume.map_or(0, |r| r.records_done);
    let mut total = done_before
        + master_records
            .iter()
            .map(|range| range.len() as u64)
            .sum::<u64>();
    for table in &tables_in_order {
        if table.owner() == Owner::Master {
            continue;
        }
        match start_of(&tables_in_order, *table, resume) {
            None => {}
            Some("") => total += write::count(db, *table, Scope::Store(store_id)).await?,
            // The rest of a cut table: its exact count would cost a scan; the
            // progress total is an estimate that the last batch makes exact.
            Some(_) => total += write::count(db, *table, Scope::Store(store_id)).await? / 2,
        }
    }
    tracing::info!(
        sync_id,
        total,
        cursor = head,
        replay_from,
        resumed_after = done_before,
        master_only,
        "sending snapshot"
    );
    status::initialisation(db, sync_id, true, done_before, total).await;

    let mut sender = SnapshotSender {
        ctx,
        sync_id,
        tx,
        acks,
        sent: done_before,
        acked_before: done_before,
        total,
        replay_from,
        pending: Vec::new(),
        pending_bytes: 0,
        last: None,
        rate: LinkRate::new(ctx.settings.downstream_batch_bytes),
        batches: VecDeque::new(),
        slot: None,
    };
    if let Some(copy) = &master_data {
        for n in master_records.into_iter().flatten() {
            let (table, id, encoded) = copy.get(n);
            let record = SyncRecord::decode(encoded)
                .map_err(|e| Error::Internal(format!("a shared master-data record: {e}")))?;
            sender.push(table, id.to_owned(), record).await?;
        }
    }
    drop(master_data);
    // Store data in pages by id, so a large store never sits in memory whole.
    let page = ctx.settings.downstream_batch_records as u64;
    for table in &tables_in_order {
        if table.owner() == Owner::Master {
            continue;
        }
        if let Some(after) = start_of(&tables_in_order, *table, resume) {
            send_store_rows(&mut sender, *table, store_id, after, page).await?;
        }
    }
    sender.finish(replay_from, replay_tag).await?;
    Ok(replay_from)
}

/// Pushes every row of one table for `store_id`'s site after id `after`
/// into the snapshot, `page` rows per query, in id order (keyset paging: no
/// offset scans).
async fn send_store_rows(
    sender: &mut SnapshotSender<'_>,
    table: &dyn SyncTable,
    store_id: &str,
    after: &str,
    page: u64,
) -> Result<()> {
    let mut after = after.to_owned();
    loop {
        // The page's rows are the next batch: read under its slot.
        sender.take_slot().await?;
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
                .push(
                    table.table(),
                    after.clone(),
                    SyncRecord {
                        record: Some(table.record_of(&row)?),
                    },
                )
                .await?;
        }
    }
}

/// What the link has moved lately, to size batches to it: a batch should
/// take about [`LinkRate::TARGET`] on the wire, so that a slow link still
/// delivers a message (and its ack comes back) well within the idle limit,
/// while a fast one gets the largest batches.
///
/// What a cut costs on a slow link is mostly the message on the wire when it
/// comes (part of one batch, never usable), the reconnection, and the first
/// batches of the new session compressing without the old one's context.
/// Measured on the slow-link test (64 kbit/s, 300 ms, a cut about every 6 s,
/// 20,000 records, session-long deflate; `slow_link` prints the split):
///
/// | target | resent | cut short | reconnect | compression | link-sized batches uncut | initialised |
/// |---|---|---|---|---|---|---|
/// | 2 s | 17.3 % | 55.9 KB | 7.3 KB | 19.7 KB | 5.8 KB | 142 s |
/// | 1 s | 13.0 % | 29.9 KB | 6.8 KB | 14.8 KB | 15.1 KB | 151 s |
/// | 0.5 s | 13.2 % | 24.0 KB | 6.3 KB | 6.6 KB | 31.2 KB | 179 s |
///
/// Below 1 s each batch's own framing costs what the cuts save, and with a
/// window of two batches the link idles a round trip per batch. (With gzip,
/// which compresses each message alone, smaller batches resent more: half-
/// and quarter-size batches at a 2 s target 34–45 % against 28 %.)
#[derive(Debug)]
pub(super) struct LinkRate {
    /// Bytes per batch now.
    batch_bytes: usize,
    max_bytes: usize,
}

impl LinkRate {
    /// How long one batch should be on the wire.
    const TARGET: Duration = Duration::from_secs(1);
    /// The first batch of a session, before anything is measured: 4 s at
    /// 64 kbit/s (less with gzip), a blink on a LAN (the next batches grow
    /// fourfold an ack to the link). A cut loses at most a window of these.
    const FIRST: usize = 32 * 1024;
    const MIN: usize = 8 * 1024;

    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            batch_bytes: Self::FIRST.min(max_bytes),
            max_bytes,
        }
    }

    /// Bytes per batch now.
    pub(super) fn batch_bytes(&self) -> usize {
        self.batch_bytes
    }

    /// A batch of `bytes` was acknowledged `took` after the link started on
    /// it: the next batches carry what the link moves in [`Self::TARGET`]
    /// (growing at most fourfold a step, so one fast ack does not flood a
    /// slow link).
    /// A batch well under the current size says little about the link (a
    /// trickle of changes): it is not counted.
    pub(super) fn moved(&mut self, bytes: usize, took: Duration) {
        if bytes < self.batch_bytes / 2 {
            return;
        }
        let secs = took.as_secs_f64().max(0.001);
        let fits = (bytes as f64 / secs * Self::TARGET.as_secs_f64()) as usize;
        self.batch_bytes = fits
            .min(self.batch_bytes.saturating_mul(4))
            .clamp(Self::MIN.min(self.max_bytes), self.max_bytes);
    }
}

/// Cuts the snapshot into batches and keeps at most `window` unacknowledged.
struct SnapshotSender<'a> {
    ctx: &'a SyncContext,
    sync_id: u32,
    tx: &'a Outbound,
    acks: &'a mut watch::Receiver<Acked>,
    /// Records sent, counting those a resumed snapshot's satellite held.
    sent: u64,
    /// Records the satellite held when this session started (acks below it
    /// are from before).
    acked_before: u64,
    total: u64,
    /// The cursor the change log is replayed from after the snapshot.
    replay_from: u64,
    pending: Vec<SyncRecord>,
    /// Encoded size of `pending`.
    pending_bytes: usize,
    /// Table and id of the last record pushed.
    last: Option<(Table, String)>,
    rate: LinkRate,
    /// Unacknowledged batches: records done at their end, bytes, when sent,
    /// and the slot each holds (see [`SnapshotSender::take_slot`]).
    batches: VecDeque<(u64, usize, std::time::Instant, OwnedSemaphorePermit)>,
    /// The slot of the batch being gathered.
    slot: Option<OwnedSemaphorePermit>,
}

impl SnapshotSender<'_> {
    /// Takes one of the process's snapshot batch slots for the next batch,
    /// unless it holds one: every snapshot batch from the moment its rows are
    /// read until it is acknowledged holds one, so that the snapshots of many
    /// sites at once hold at most `snapshot_batches_in_flight` batches in
    /// memory, whatever their number. Waiting, the satellite is sent
    /// heartbeats (its session stays up).
    ///
    /// Waiting, the slots of batches the satellite acknowledges meanwhile
    /// are given back as the acks arrive: a session waiting here holding
    /// slots of acknowledged batches could, with others, hold every slot,
    /// and no snapshot would move again.
    async fn take_slot(&mut self) -> Result<()> {
        if self.slot.is_some() {
            return Ok(());
        }
        let slots = self.ctx.snapshot_slots.clone();
        let acquire = slots.acquire_owned();
        tokio::pin!(acquire);
        let mut heartbeat = tokio::time::interval(self.ctx.settings.heartbeat);
        heartbeat.tick().await;
        loop {
            self.note_acks();
            tokio::select! {
                permit = &mut acquire => {
                    let permit = permit.map_err(|_| Error::Unavailable("shutting down".into()))?;
                    self.slot = Some(permit);
                    return Ok(());
                }
                changed = self.acks.changed() => acked(changed)?,
                _ = heartbeat.tick() => {
                    send(self.tx, master_message::Message::Heartbeat(Heartbeat { sent_at_ms: now_ms(), upstream_backlog: 0 })).await?;
                }
            }
        }
    }

    async fn push(&mut self, table: Table, id: String, record: SyncRecord) -> Result<()> {
        self.take_slot().await?;
        self.pending_bytes += record.encoded_len() + 16;
        self.pending.push(record);
        self.last = Some((table, id));
        if self.pending.len() >= self.ctx.settings.downstream_batch_records
            || self.pending_bytes >= self.rate.batch_bytes()
        {
            self.flush(false, 0, 0).await?;
        }
        Ok(())
    }

    /// Takes the acknowledged batches off `batches`, measuring the link.
    fn note_acks(&mut self) {
        let done = self.acks.borrow().init_records_done;
        let now = std::time::Instant::now();
        // The link starts on a batch when the one before it is through (or
        // when it is sent, if the link was idle).
        let mut link_free_at: Option<std::time::Instant> = None;
        while let Some(&(end, bytes, sent_at, _)) = self.batches.front() {
            if end > done {
                break;
            }
            self.batches.pop_front();
            let started = link_free_at.map_or(sent_at, |free| free.max(sent_at));
            self.rate.moved(bytes, now.duration_since(started));
            link_free_at = Some(now);
        }
    }

    async fn flush(&mut self, complete: bool, end_cursor: u64, end_tag: u64) -> Result<()> {
        let window = self.ctx.settings.downstream_window;
        // Wait for acknowledgements rather than queueing the whole store in
        // memory. The limit counts from the last ack (progress), not from the
        // start: batches are sized to the link, so a live link acks often.
        let idle_limit = self.ctx.settings.heartbeat.max(Duration::from_secs(1)) * 3;
        let mut reported = 0;
        loop {
            self.note_acks();
            let done = self.acks.borrow().init_records_done.max(self.acked_before);
            if self.batches.len() < window
                && self.sent.saturating_sub(done)
                    < window as u64 * self.ctx.settings.downstream_batch_records as u64
            {
                break;
            }
            if done != reported {
                status::initialisation(&self.ctx.db, self.sync_id, true, done, self.total).await;
                reported = done;
            }
            tokio::select! {
                changed = self.acks.changed() => acked(changed)?,
                _ = tokio::time::sleep(idle_limit) => {
                    return Err(Error::Unavailable(format!("the satellite acknowledged nothing of the snapshot for {idle_limit:?}")));
                }
            }
        }
        self.take_slot().await?;
        let slot = self
            .slot
            .take()
            .ok_or_else(|| Error::Internal("a snapshot batch without its slot".into()))?;
        let records = std::mem::take(&mut self.pending);
        let bytes = std::mem::take(&mut self.pending_bytes);
        self.sent += records.len() as u64;
        if complete {
            // Exact now, whatever the estimate of a resumed snapshot said.
            self.total = self.sent;
        }
        self.batches
            .push_back((self.sent, bytes, std::time::Instant::now(), slot));
        // What a slow link's resend after a cut is made of, for diagnosis:
        // each batch's size as sized to the link.
        tracing::debug!(
            sync_id = self.sync_id,
            records = records.len(),
            bytes,
            records_done = self.sent,
            next_batch_bytes = self.rate.batch_bytes(),
            "snapshot batch"
        );
        let (last_table, last_id) = self
            .last
            .clone()
            .map_or((Table::Unspecified, String::new()), |(t, id)| (t, id));
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
                    snapshot_cursor: self.replay_from,
                    last_table: last_table as i32,
                    last_id,
                }),
                trace_context,
                end_tag,
                after_cursor: None,
            }),
        )
        .instrument(span)
        .await
    }

    async fn finish(mut self, replay_from: u64, replay_tag: u64) -> Result<()> {
        self.flush(true, replay_from, replay_tag).await?;
        tracing::info!(
            sync_id = self.sync_id,
            records = self.sent,
            "initialisation snapshot sent"
        );
        Ok(())
    }
}

/// A snapshot's wait for acknowledgements: the session's acks ended with it.
fn acked(changed: std::result::Result<(), watch::error::RecvError>) -> Result<()> {
    changed.map_err(|_| Error::Unavailable("the session ended during initialisation".into()))
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
            store_id: None,
        }
    }

    #[test]
    fn batches_follow_what_the_link_moves() {
        use super::LinkRate;
        use std::time::Duration;
        let mut rate = LinkRate::new(4 * 1024 * 1024);
        // 64 kbit/s: 32 KiB took 4 s, so a batch is about 1 s of the link.
        rate.moved(32 * 1024, Duration::from_secs(4));
        assert_eq!(rate.batch_bytes(), 8 * 1024);
        // A trickle says nothing about the link.
        rate.moved(100, Duration::from_secs(3));
        assert_eq!(rate.batch_bytes(), 8 * 1024);
        // 16 KiB in 2 s: still 1 s of it.
        rate.moved(16 * 1024, Duration::from_secs(2));
        assert_eq!(rate.batch_bytes(), 8 * 1024);
        // A LAN: growing fourfold an ack, up to the limit.
        for _ in 0..10 {
            let bytes = rate.batch_bytes();
            rate.moved(bytes, Duration::from_millis(5));
        }
        assert_eq!(rate.batch_bytes(), 4 * 1024 * 1024);
    }

    #[test]
    fn a_resumed_snapshot_skips_the_tables_before_its_cut() {
        use super::{snapshot_tables, start_of, Resume};
        use storesync_shared::proto::v1::Table;
        let tables = snapshot_tables(false);
        let resume = Resume {
            cursor: 5,
            after_table: Table::StockLine,
            after_id: "m".into(),
            records_done: 10,
        };
        let at = |table: Table| {
            let table = tables
                .iter()
                .find(|t| t.table() == table)
                .expect("a snapshot table");
            start_of(&tables, *table, Some(&resume)).map(str::to_owned)
        };
        assert_eq!(at(Table::Item), None, "master data was sent before the cut");
        assert_eq!(at(Table::StockLine), Some("m".into()));
        assert_eq!(at(Table::InvoiceLine), Some(String::new()));
    }

    #[test]
    fn a_batch_reads_about_what_fits_its_bytes() {
        use super::EntrySize;
        let mut size = EntrySize::default();
        // Before anything is read: the guess, 256 bytes an entry.
        assert_eq!(size.entries_for(32 * 1024, 10_000), 161);
        // 184-byte payloads (200 bytes an entry): 8 KiB is 40 of them, and a
        // quarter more is read.
        size.read(&(1..=50).map(|n| entry(n, 184)).collect::<Vec<_>>());
        assert_eq!(size.entries_for(8 * 1024, 10_000), 51);
        // Never more than a batch may carry, never none.
        assert_eq!(size.entries_for(4 * 1024 * 1024, 10_000), 10_000);
        assert_eq!(size.entries_for(10, 10_000), 1);
        // Nothing read teaches nothing.
        size.read(&[]);
        assert_eq!(size.entries_for(8 * 1024, 10_000), 51);
        // What fits is what keep_within_bytes then keeps: 40 of the 51.
        let mut entries: Vec<_> = (1..=51).map(|n| entry(n, 184)).collect();
        keep_within_bytes(&mut entries, 8 * 1024);
        assert_eq!(entries.len(), 40);
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
