//! One session after the Welcome: the [`Session`] keeps its state, sends
//! upstream batches from the outbox ([`Session::fill_window`]), and has one
//! method per kind of message from the master. [`Session::run`] only waits
//! and dispatches (the upstream and downstream rules are in the parent
//! module's doc).
//!
//! In interval mode, once the master has caught up, nothing is initialising
//! and every upstream batch is acknowledged, the satellite says Goodbye
//! (not while the master's integrity check is open, see [`super::verify`]).

use std::collections::VecDeque;
use std::time::Duration;

use prost::Message;
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::kit::stream_compression::Unpacking;
use storesync_shared::proto::v1::{
    master_message, satellite_message, CaughtUp, DownstreamAck, DownstreamBatch, Goodbye,
    Heartbeat, MasterMessage, SatelliteMessage, SyncError, SyncMode, UpstreamAck, UpstreamBatch,
    Welcome,
};
use storesync_shared::{Error, Result};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::connect::status_error;
use super::handshake::Opened;
use super::verify::Verifier;
use super::{apply, ClientSettings};
use crate::entities::outbox as outbox_table;
use crate::outbox;
use crate::status::SyncHandle;

/// The state of one session with the master.
pub(super) struct Session<'a> {
    db: &'a DatabaseConnection,
    settings: &'a ClientSettings,
    handle: &'a SyncHandle,
    /// The upstream sender: every message to the master goes through it.
    tx: mpsc::Sender<SatelliteMessage>,
    welcome: Welcome,
    /// Records per upstream batch: ours, within the master's limit.
    batch_records: usize,
    /// A snapshot is being applied: nothing is sent upstream until it is done.
    initialising: bool,
    /// The last outbox sequence sent (or acknowledged before this session).
    sent_seq: u64,
    /// Last sequence of each unacknowledged upstream batch, in order.
    in_flight: VecDeque<u64>,
    /// Bytes and send time of each unacknowledged batch (as `in_flight`),
    /// and [`Self::master_held`] when it was sent.
    in_flight_bytes: VecDeque<(usize, std::time::Instant, Duration)>,
    /// The time the master says it held this session's batches so far
    /// (`UpstreamAck.held_micros`): what of a batch's round trip was the
    /// master's, not the link's.
    master_held: Duration,
    /// Bytes per upstream batch now: sized to what the link moves (see
    /// [`upstream_batch_bytes`]).
    batch_bytes: usize,
    /// An upstream batch of this session was acknowledged: until then the
    /// window is one batch, so the first measures the link on its own.
    link_measured: bool,
    /// The master has sent everything it has (CaughtUp).
    caught_up: bool,
    /// The master's last `SyncError`: it explains the status that follows.
    master_error: Option<String>,
    /// The master's integrity check in progress (see [`super::verify`]).
    verifier: Verifier,
    /// Outbox entries at the last heartbeat.
    backlog: u64,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        db: &'a DatabaseConnection,
        settings: &'a ClientSettings,
        handle: &'a SyncHandle,
        opened: Opened,
    ) -> (Self, Unpacking<MasterMessage>) {
        let Opened {
            tx,
            inbound,
            welcome,
            sent_seq,
        } = opened;
        let batch_records = settings
            .batch_records
            .min(welcome.max_batch_records.max(1) as usize);
        let session = Self {
            db,
            settings,
            handle,
            tx,
            batch_records,
            initialising: welcome.initialising,
            sent_seq,
            in_flight: VecDeque::new(),
            in_flight_bytes: VecDeque::new(),
            master_held: Duration::ZERO,
            batch_bytes: settings.batch_bytes.min(FIRST_BATCH_BYTES),
            link_measured: false,
            caught_up: false,
            master_error: None,
            verifier: Verifier::announced(welcome.integrity_check_due),
            backlog: 0,
            welcome,
        };
        (session, inbound)
    }

    /// Exchanges until done (interval) or broken.
    pub(super) async fn run(mut self, mut inbound: Unpacking<MasterMessage>) -> Result<()> {
        let heartbeat_every =
            Duration::from_secs(u64::from(self.welcome.heartbeat_interval_seconds.max(1)));
        let idle_limit = heartbeat_every * 3;
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let handle = self.handle;
        let mut heard_at = tokio::time::Instant::now();

        loop {
            self.fill_window().await?;
            if self.settings.mode == SyncMode::Interval
                && self.caught_up
                && !self.initialising
                && self.in_flight.is_empty()
                && !self.verifier.is_open()
            {
                if self.say_goodbye_if_done().await? {
                    wait_closed(&mut inbound, idle_limit).await;
                    return Ok(());
                }
                continue;
            }
            tokio::select! {
                next = inbound.message() => {
                    let message = match next {
                        Err(status) => return Err(self.ended_by_master(status)),
                        Ok(None) => return Err(Error::Unavailable("the master ended the session".into())),
                        Ok(Some(message)) => message,
                    };
                    // Handling a message may take long (a large batch on a
                    // busy machine, an integrity check hashing every row): the
                    // master is told meanwhile that this side is alive
                    // ([`beating`]), and the time is not the master's silence.
                    let (tx, backlog) = (self.tx.clone(), self.backlog);
                    match message.message {
                        Some(master_message::Message::DownstreamBatch(batch)) => {
                            beating(&tx, heartbeat_every, backlog, self.on_downstream_batch(batch)).await??
                        }
                        Some(master_message::Message::UpstreamAck(ack)) => {
                            beating(&tx, heartbeat_every, backlog, self.on_upstream_ack(ack)).await??
                        }
                        Some(master_message::Message::CaughtUp(caught_up)) => self.on_caught_up(caught_up),
                        Some(master_message::Message::Heartbeat(beat)) => self.on_heartbeat(beat),
                        Some(master_message::Message::Error(error)) => self.on_error(error),
                        Some(master_message::Message::VerifyBegin(begin)) => {
                            let answer = self.verifier.begin(self.db, begin);
                            if let Some(answer) = beating(&tx, heartbeat_every, backlog, answer).await? {
                                send(&tx, answer).await?;
                            }
                        }
                        Some(master_message::Message::VerifyRequest(request)) => {
                            let answer = self.verifier.request(self.db, request);
                            send(&tx, beating(&tx, heartbeat_every, backlog, answer).await?).await?;
                        }
                        Some(master_message::Message::VerifyRepair(repair)) => {
                            let store = self.welcome.store.as_ref().map(|s| s.id.clone()).unwrap_or_default();
                            let answer = self.verifier.repair(self.db, &store, repair);
                            send(&tx, beating(&tx, heartbeat_every, backlog, answer).await?).await?;
                        }
                        Some(master_message::Message::VerifyEnd(end)) => {
                            let answer = self.verifier.end(self.db, end);
                            send(&tx, beating(&tx, heartbeat_every, backlog, answer).await?).await?;
                        }
                        Some(master_message::Message::Welcome(_)) => {
                            return Err(Error::InvalidArgument("a second Welcome from the master".into()));
                        }
                        // `Unpacking` inflates every chunk; one inside a chunk is refused there.
                        Some(master_message::Message::Compressed(_)) => {
                            return Err(Error::InvalidArgument("a CompressedChunk inside a CompressedChunk from the master".into()));
                        }
                        // A kind this agent does not know (a newer master's): ignored.
                        None => tracing::debug!("ignored a master message of a kind this agent does not know"),
                    }
                    heard_at = tokio::time::Instant::now();
                }
                // Only what arrives from the master moves this deadline, not
                // this side's own ticks.
                _ = tokio::time::sleep_until(heard_at + idle_limit) => {
                    return Err(Error::Unavailable(format!("nothing from the master for {idle_limit:?}")));
                }
                _ = heartbeat.tick() => self.send_heartbeat().await?,
                _ = handle.outbox_written() => {}
                _ = poll.tick() => {}
            }
        }
    }

    /// The upstream sender: fills the window of unacknowledged batches from
    /// the outbox.
    async fn fill_window(&mut self) -> Result<()> {
        let settings = self.settings;
        // One batch alone until the first ack has measured the link.
        let window = if self.link_measured {
            settings.window
        } else {
            1
        };
        while !self.initialising && self.in_flight.len() < window {
            let started = std::time::Instant::now();
            let Some(mut batch) =
                next_batch(self.db, self.sent_seq, self.batch_records, self.batch_bytes).await?
            else {
                break;
            };
            let bytes = batch.encoded_len();
            tracing::debug!(
                records = batch.records.len(),
                bytes,
                in_flight = self.in_flight.len(),
                read_us = started.elapsed().as_micros() as u64,
                "upstream batch read"
            );
            self.sent_seq = batch.last_seq;
            self.in_flight.push_back(batch.last_seq);
            self.in_flight_bytes
                .push_back((bytes, std::time::Instant::now(), self.master_held));
            // One trace per batch: the master's apply becomes a child of this span.
            let span = tracing::info_span!(parent: None, "sync.upstream.push", otel.kind = "producer", sync_id = settings.sync_id, first_seq = batch.first_seq, last_seq = batch.last_seq, records = batch.records.len());
            batch.trace_context = storesync_shared::kit::telemetry::propagation::inject(&span);
            send(&self.tx, satellite_message::Message::UpstreamBatch(batch))
                .instrument(span)
                .await?;
        }
        Ok(())
    }

    /// Interval mode, all exchanged: says Goodbye unless a local write added
    /// outbox entries meanwhile (then returns false, to send them first).
    async fn say_goodbye_if_done(&self) -> Result<bool> {
        let pending = outbox::read_after(self.db, self.sent_seq, 1).await?;
        if !pending.is_empty() {
            return Ok(false);
        }
        send(&self.tx, satellite_message::Message::Goodbye(Goodbye {})).await?;
        self.handle.set_synced();
        tracing::info!("interval sync complete");
        Ok(true)
    }

    /// Tells the master this side is alive, with the outbox backlog.
    async fn send_heartbeat(&mut self) -> Result<()> {
        self.backlog = outbox_table::Entity::find().count(self.db).await?;
        send_heartbeat(&self.tx, self.backlog).await
    }

    /// The master ended the stream with `status`; its `SyncError`, sent just
    /// before, explains a status that came without a message.
    fn ended_by_master(&mut self, status: tonic::Status) -> Error {
        status_error(match self.master_error.take() {
            Some(text) if status.message().is_empty() => tonic::Status::new(status.code(), text),
            _ => status,
        })
    }

    /// Applies a downstream batch with its cursor in one transaction and
    /// acknowledges it; the snapshot's last batch ends the initialisation.
    async fn on_downstream_batch(&mut self, batch: DownstreamBatch) -> Result<()> {
        let (db, settings, handle) = (self.db, self.settings, self.handle);
        let end_cursor = batch.end_cursor;
        let progress = batch.initialisation.clone();
        let span = tracing::info_span!(parent: None, "sync.downstream.apply", otel.kind = "consumer", sync_id = settings.sync_id, end_cursor, records = batch.records.len());
        storesync_shared::kit::telemetry::propagation::set_parent(&span, &batch.trace_context);
        let tables = crate::metrics::tables_of(&batch.records);
        tracing::debug!(
            end_cursor,
            records = batch.records.len(),
            snapshot = progress.is_some(),
            "downstream batch received"
        );
        let started = std::time::Instant::now();
        let applied = apply::apply_with(
            db,
            batch,
            apply::Applying {
                store: self.welcome.store.as_ref(),
                upstream_acked_seq: self.welcome.upstream_acked_seq,
                upstream_acked_tag: self.welcome.upstream_acked_tag,
                epoch: &self.welcome.changelog_epoch,
                resync: self.welcome.resync_master_data,
            },
        )
        .instrument(span)
        .await?;
        crate::metrics::downstream_applied(settings.sync_id, &tables, applied.records, started);
        tracing::debug!(
            end_cursor,
            applied = applied.records,
            "downstream batch applied"
        );
        if let Some(progress) = &progress {
            handle.set_initialising(progress.records_done, progress.records_total);
            if progress.records_done == progress.records_total
                || progress.records_done % 10_000 < 1000
            {
                tracing::info!(
                    done = progress.records_done,
                    total = progress.records_total,
                    "initialising"
                );
            }
        }
        if applied.initialised {
            self.initialising = false;
            self.sent_seq = self.welcome.upstream_acked_seq;
            handle.set_initialised();
            tracing::info!(
                cursor = end_cursor,
                "initialised from the master's snapshot"
            );
        }
        if applied.resynced {
            // The progress shown while the resync ran ends with it.
            handle.set_initialised();
            tracing::info!(
                cursor = end_cursor,
                "master data re-synchronised from the master's snapshot"
            );
        }
        let init_records_done = progress.map(|p| p.records_done).unwrap_or(0);
        send(
            &self.tx,
            satellite_message::Message::DownstreamAck(DownstreamAck {
                cursor: end_cursor,
                init_records_done,
                initialisation_complete: applied.initialised,
            }),
        )
        .await?;
        handle.set_synced();
        Ok(())
    }

    /// The master committed upstream entries up to `ack.acked_seq`: they leave
    /// the outbox and the window.
    async fn on_upstream_ack(&mut self, ack: UpstreamAck) -> Result<()> {
        let started = std::time::Instant::now();
        apply::upstream_acked(self.db, ack.acked_seq).await?;
        tracing::debug!(
            acked_seq = ack.acked_seq,
            commit_us = started.elapsed().as_micros() as u64,
            "upstream ack recorded"
        );
        self.master_held += Duration::from_micros(ack.held_micros);
        while self
            .in_flight
            .front()
            .is_some_and(|last| *last <= ack.acked_seq)
        {
            self.in_flight.pop_front();
            if let Some((bytes, sent_at, held_before)) = self.in_flight_bytes.pop_front() {
                // The link's part of the round trip: without the time the
                // master held this batch and the ones ahead of it in the
                // window since it was sent (a busy master, as in a
                // reconnect storm, is not a slow link: sized to the ack's
                // delay, batches stayed at a few hundred records and the
                // master's cost per batch held the storm back).
                let link = link_time(sent_at.elapsed(), self.master_held - held_before);
                self.batch_bytes = upstream_batch_bytes(
                    self.batch_bytes,
                    self.settings.batch_bytes,
                    bytes,
                    link,
                    !self.link_measured,
                );
                self.link_measured = true;
            }
        }
        self.handle.set_synced();
        Ok(())
    }

    /// The master has sent everything it has (in interval mode, the session
    /// can end once upstream is acknowledged too).
    fn on_caught_up(&mut self, _: CaughtUp) {
        self.caught_up = true;
        self.handle.set_synced();
    }

    /// Its arrival is all that matters: it keeps the idle limit from expiring.
    fn on_heartbeat(&self, _: Heartbeat) {}

    /// The master reports why it is about to end the session; the status
    /// that follows may come without the message (see `ended_by_master`).
    fn on_error(&mut self, error: SyncError) {
        tracing::warn!(code = error.code, message = %error.message, "the master reports an error");
        self.master_error = Some(error.message);
    }
}

/// The first upstream batch of a session, before the link is measured.
const FIRST_BATCH_BYTES: usize = 32 * 1024;

/// The size of the next upstream batches after one of `bytes` was
/// acknowledged `took` after it was sent, the time the master says it held
/// batches meanwhile taken out (`UpstreamAck.held_micros`, see
/// `on_upstream_ack`): what the link moves in about two
/// seconds (at least 8 KiB, at most `max`), so that a slow link still gets
/// each batch and its ack through well within the idle limit. A batch well
/// under the current size (a trickle) says little about the link and
/// changes nothing.
///
/// The session's `first` batch went alone (a window of one), so its time is
/// the link's and the master's apply with nothing queued before it: the size
/// goes straight to what it shows (a fast link: full batches from the second
/// on, where a fourfold growth per ack sent four batches of 32 KiB and four
/// of 128 KiB first, each read from 2,000 outbox entries). Later batches
/// share the window, so one measurement moves the size at most fourfold.
fn upstream_batch_bytes(
    current: usize,
    max: usize,
    bytes: usize,
    took: Duration,
    first: bool,
) -> usize {
    if bytes < current / 2 {
        return current;
    }
    let fits = (bytes as f64 / took.as_secs_f64().max(0.001) * 2.0) as usize;
    let fits = if first {
        fits
    } else {
        fits.min(current.saturating_mul(4))
    };
    fits.clamp((8 * 1024).min(max), max)
}

/// The link's part of a batch's `round_trip`: without the time the master
/// held batches of this session (this one and those ahead of it in the
/// window) since it was sent.
fn link_time(round_trip: Duration, held_since_sent: Duration) -> Duration {
    round_trip.saturating_sub(held_since_sent)
}

/// At most the bytes the smallest outbox entry takes in a batch (a deleted
/// row's reference: its table and a 36-character id, about 50 with the
/// framing counted in [`next_batch`]): a batch of `max_bytes` reads no more
/// entries than could fit.
const MIN_ENTRY_BYTES: usize = 48;

/// The next upstream batch after `after_seq`, bounded by records and bytes.
async fn next_batch(
    db: &DatabaseConnection,
    after_seq: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Option<UpstreamBatch>> {
    // A small batch reads few entries, not `max_records` to send a tenth.
    let read = max_records.min(max_bytes / MIN_ENTRY_BYTES + 1);
    let entries = outbox::read_after(db, after_seq, read as u64).await?;
    let Some(first) = entries.first() else {
        return Ok(None);
    };
    let first_seq = first.seq;
    let mut records = Vec::with_capacity(entries.len());
    let mut bytes = 0usize;
    let mut last_seq = first_seq;
    let mut last_tag = 0;
    for entry in entries {
        let size = entry.record.encoded_len() + 8;
        if !records.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        last_seq = entry.seq;
        last_tag = entry.tag;
        records.push(entry.record);
    }
    Ok(Some(UpstreamBatch {
        first_seq,
        last_seq,
        records,
        trace_context: Default::default(),
        last_tag,
    }))
}

/// Sends `message` to the master; an error means the stream is gone.
/// After the Goodbye: waits (at most `limit`) until the master closes the
/// stream, so that the frames queued before it (the ack completing
/// initialisation, the last downstream acks) are delivered rather than cut
/// off with the stream. What the master still sends is left for next time
/// (it was not acknowledged, so it is sent again).
async fn wait_closed(inbound: &mut Unpacking<MasterMessage>, limit: Duration) {
    let closed = tokio::time::timeout(limit, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    if closed.is_err() {
        tracing::debug!(
            ?limit,
            "the master did not close the stream after the Goodbye"
        );
    }
}

/// Tells the master this side is alive, with `backlog` outbox entries.
async fn send_heartbeat(tx: &mpsc::Sender<SatelliteMessage>, backlog: u64) -> Result<()> {
    send(
        tx,
        satellite_message::Message::Heartbeat(Heartbeat {
            sent_at_ms: now_ms(),
            upstream_backlog: backlog,
        }),
    )
    .await
}

/// Runs `work`, the handling of one message from the master, sending a
/// heartbeat every `every` until it is done.
///
/// The master ends a session it hears nothing from for three heartbeat
/// intervals. Work the master itself asked for can take longer than that: an
/// integrity check hashing every row of a large store, a large batch applied
/// while 62 other satellites share the cores. Such a site is busy, not gone. The backlog sent is the last one counted:
/// the database may be held by `work`.
async fn beating<T>(
    tx: &mpsc::Sender<SatelliteMessage>,
    every: Duration,
    backlog: u64,
    work: impl std::future::Future<Output = T>,
) -> Result<T> {
    let mut work = std::pin::pin!(work);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            _ = beat.tick() => send_heartbeat(tx, backlog).await?,
        }
    }
}

pub(super) async fn send(
    tx: &mpsc::Sender<SatelliteMessage>,
    message: satellite_message::Message,
) -> Result<()> {
    tx.send(SatelliteMessage {
        message: Some(message),
    })
    .await
    .map_err(|_| Error::Unavailable("the stream to the master closed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heartbeats `beating` sent, in order (their backlogs).
    fn beats(rx: &mut mpsc::Receiver<SatelliteMessage>) -> Vec<u64> {
        let mut backlogs = Vec::new();
        while let Ok(message) = rx.try_recv() {
            match message.message {
                Some(satellite_message::Message::Heartbeat(beat)) => {
                    backlogs.push(beat.upstream_backlog)
                }
                other => panic!("beating sent {other:?}, not a heartbeat"),
            }
        }
        backlogs
    }

    #[tokio::test(start_paused = true)]
    async fn long_work_keeps_the_master_told_the_site_is_alive() {
        let (tx, mut rx) = mpsc::channel(16);
        let every = Duration::from_secs(15);
        // Longer than the master's idle limit (three intervals).
        let work = async {
            tokio::time::sleep(every * 3 + every / 2).await;
            "applied"
        };
        assert_eq!(
            beating(&tx, every, 7, work)
                .await
                .expect("the work's output"),
            "applied"
        );
        assert_eq!(beats(&mut rx), vec![7, 7, 7], "one heartbeat per interval");
    }

    #[tokio::test(start_paused = true)]
    async fn short_work_sends_no_heartbeat() {
        let (tx, mut rx) = mpsc::channel(16);
        let every = Duration::from_secs(15);
        let work = async {
            tokio::time::sleep(every - Duration::from_millis(1)).await;
            3
        };
        assert_eq!(
            beating(&tx, every, 0, work)
                .await
                .expect("the work's output"),
            3
        );
        assert!(beats(&mut rx).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_stream_ends_the_work() {
        let (tx, rx) = mpsc::channel(16);
        drop(rx);
        let every = Duration::from_secs(15);
        let work = tokio::time::sleep(every * 10);
        let error = beating(&tx, every, 0, work)
            .await
            .expect_err("a heartbeat to a closed stream fails");
        assert!(error.to_string().contains("closed"), "{error}");
    }

    const MAX: usize = 4 * 1024 * 1024;

    #[test]
    fn the_first_batch_sizes_the_next_to_the_link_at_once() {
        // 32 KiB acknowledged after 10 ms: 3.3 MB/s, 6.5 MB in two seconds.
        let fast = upstream_batch_bytes(
            FIRST_BATCH_BYTES,
            MAX,
            FIRST_BATCH_BYTES,
            Duration::from_millis(10),
            true,
        );
        assert_eq!(fast, MAX);
        // The same on a later batch grows fourfold at most.
        let later = upstream_batch_bytes(
            FIRST_BATCH_BYTES,
            MAX,
            FIRST_BATCH_BYTES,
            Duration::from_millis(10),
            false,
        );
        assert_eq!(later, 4 * FIRST_BATCH_BYTES);
    }

    #[test]
    fn a_slow_link_keeps_batches_to_two_seconds_of_it() {
        // 32 KiB in 4 s (64 kbit/s): 16 KiB in two seconds.
        let slow = upstream_batch_bytes(
            FIRST_BATCH_BYTES,
            MAX,
            FIRST_BATCH_BYTES,
            Duration::from_secs(4),
            true,
        );
        assert_eq!(slow, FIRST_BATCH_BYTES / 2);
        // A trickle says nothing about the link.
        let trickle =
            upstream_batch_bytes(FIRST_BATCH_BYTES, MAX, 1_000, Duration::from_secs(4), true);
        assert_eq!(trickle, FIRST_BATCH_BYTES);
    }

    #[test]
    fn a_busy_master_is_not_a_slow_link() {
        // A full window on a loopback link to a master busy with 62 other
        // sites: 400 KiB acknowledged 3 s after it was sent, of which the
        // master held this batch and the three ahead of it 2.99 s.
        let round_trip = Duration::from_secs(3);
        let held = Duration::from_millis(2_990);
        let link = link_time(round_trip, held);
        assert_eq!(link, Duration::from_millis(10));
        let sized = upstream_batch_bytes(400 * 1024, MAX, 400 * 1024, link, false);
        assert_eq!(
            sized,
            4 * 400 * 1024,
            "sized to the link: growing (fourfold an ack) to full batches"
        );
        // Sized to the whole round trip, as before the master said how long
        // it held them (and as with a master that does not say: 0), the
        // batches shrink to what 3 s of ack delay suggests.
        let by_round_trip = upstream_batch_bytes(
            400 * 1024,
            MAX,
            400 * 1024,
            link_time(round_trip, Duration::ZERO),
            false,
        );
        assert!(by_round_trip < 300 * 1024, "{by_round_trip}");
        // More held than the round trip (its start overlapped an apply
        // already running) is no time at all, not a negative one.
        assert_eq!(link_time(held, round_trip), Duration::ZERO);
    }
}
