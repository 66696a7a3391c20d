//! The inbound half of a session: reads the satellite's messages and hands
//! each kind to its handler, until the satellite says Goodbye, goes away,
//! falls silent or errs.
//!
//! - [`Inbound::on_upstream_batch`]: applies the batch ([`super::upstream`])
//!   and acknowledges it;
//! - [`Inbound::on_downstream_ack`]: moves the site's cursor and wakes the
//!   downstream half, which waits for acks to keep its window;
//! - [`Inbound::on_heartbeat`]: refreshes the site's status, and ends the
//!   session if another one has claimed the site since;
//! - [`Inbound::on_verify_answer`]: hands the satellite's answers to an
//!   integrity check to the session's verifier (`crate::integrity`).
//!
//! A satellite silent for three heartbeats is taken as gone (`UNAVAILABLE`).

use std::sync::OnceLock;
use std::time::Instant;

use storesync_shared::kit::stream_compression::Unpacking;
use storesync_shared::proto::v1::{
    master_message, satellite_message, DownstreamAck, Heartbeat, RecordRef, SatelliteMessage,
    UpstreamAck, UpstreamBatch,
};
use storesync_shared::{Error, Result};
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tracing::Instrument;

use super::downstream::{self, Acked, Outbound};
use super::error::ApplyError;
use super::upstream::{self, SiteIdentity};
use super::{refusals, status, SyncContext};
use crate::metrics;

/// What the inbound half of one session needs and keeps.
pub(super) struct Inbound<'a> {
    pub(super) ctx: &'a SyncContext,
    pub(super) identity: &'a SiteIdentity,
    pub(super) session_id: &'a str,
    /// The site is receiving its snapshot; the first downstream ack with a
    /// cursor ends that.
    pub(super) initialising: bool,
    /// To the satellite (upstream acks).
    pub(super) tx: &'a Outbound,
    /// To the downstream half: what the satellite has acknowledged.
    pub(super) acks: &'a watch::Sender<Acked>,
    /// Set to the record an upstream batch was refused for, so the session's
    /// `SyncError` can name it.
    pub(super) refused: &'a OnceLock<RecordRef>,
    /// To the session's integrity verifier (`crate::integrity::session`):
    /// the satellite's answers to a check.
    pub(super) verify_answers: &'a mpsc::Sender<satellite_message::Message>,
}

impl Inbound<'_> {
    /// Reads the satellite's messages until it says Goodbye, goes away or errs.
    pub(super) async fn run(mut self, mut inbound: Unpacking<SatelliteMessage>) -> Result<()> {
        let idle_limit = self.ctx.settings.heartbeat * 3;
        loop {
            let next = tokio::time::timeout(idle_limit, inbound.message())
                .await
                .map_err(|_| {
                    Error::Unavailable(format!(
                        "no message from the satellite for {idle_limit:?}; closing the session"
                    ))
                })?;
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(()),
                Err(status) => return Err(inbound_failure(&status)),
            };
            match message.message {
                Some(satellite_message::Message::UpstreamBatch(batch)) => {
                    self.on_upstream_batch(batch).await?
                }
                Some(satellite_message::Message::DownstreamAck(ack)) => {
                    self.on_downstream_ack(ack).await?
                }
                Some(satellite_message::Message::Heartbeat(beat)) => {
                    self.on_heartbeat(beat).await?
                }
                Some(satellite_message::Message::Goodbye(_)) => return Ok(()),
                Some(
                    answer @ (satellite_message::Message::VerifyReply(_)
                    | satellite_message::Message::VerifyRepaired(_)
                    | satellite_message::Message::VerifyLedger(_)),
                ) => self.on_verify_answer(answer),
                Some(satellite_message::Message::Hello(_)) => {
                    return Err(Error::InvalidArgument(
                        "a session takes one Hello, at its start".into(),
                    ));
                }
                // `Unpacking` inflates every chunk; one inside a chunk is refused there.
                Some(satellite_message::Message::Compressed(_)) => {
                    return Err(Error::InvalidArgument(
                        "compressed: a CompressedChunk inside a CompressedChunk".into(),
                    ));
                }
                // A kind this master does not know (a newer satellite's), or
                // an empty message: ignored, never fatal (the contract grows
                // additively; see `storesync_shared::MIN_PROTOCOL_VERSION`).
                None => tracing::debug!(
                    sync_id = self.identity.sync_id,
                    "ignored a satellite message of a kind this master does not know"
                ),
            }
        }
    }

    /// Applies an upstream batch in order and acknowledges it.
    async fn on_upstream_batch(&self, batch: UpstreamBatch) -> Result<()> {
        let received = Instant::now();
        let (ctx, identity, session_id, tx) = (self.ctx, self.identity, self.session_id, self.tx);
        let sync_id = identity.sync_id;
        if batch.records.len() > ctx.settings.max_batch_records as usize {
            let error = ApplyError::invalid(
                "upstream_batch.records",
                format!(
                    "{} records exceed the limit of {}",
                    batch.records.len(),
                    ctx.settings.max_batch_records
                ),
            );
            metrics::upstream_rejected(sync_id, &error);
            self.record_refusal(batch.first_seq, batch.last_seq, &error)
                .await;
            return Err(error.into());
        }
        let (first, last) = (batch.first_seq, batch.last_seq);
        // One trace per batch: this apply is a child of the satellite's push.
        let span = tracing::info_span!(parent: None, "sync.upstream.apply", otel.kind = "consumer", sync_id, first_seq = first, last_seq = last, records = batch.records.len());
        storesync_shared::kit::telemetry::propagation::set_parent(&span, &batch.trace_context);
        let tables = metrics::tables_of(&batch.records);
        let started = Instant::now();
        let applied = match upstream::apply_batch(&ctx.db, identity, session_id, batch)
            .instrument(span)
            .await
        {
            Ok(applied) => applied,
            Err(error) => {
                metrics::upstream_rejected(sync_id, &error);
                if let Some(record) = error.record() {
                    let _ = self.refused.set(record.to_ref());
                }
                self.record_refusal(first, last, &error).await;
                return Err(error.into());
            }
        };
        let apply_us = started.elapsed().as_micros() as u64;
        if let Some(seq) = applied.logged {
            ctx.notifier.committed(seq);
        }
        metrics::upstream_applied(sync_id, &tables, applied.applied, started);
        tracing::debug!(
            sync_id,
            first,
            last,
            applied = applied.applied,
            apply_us,
            "upstream batch applied"
        );
        downstream::send(
            tx,
            master_message::Message::UpstreamAck(UpstreamAck {
                acked_seq: applied.acked_seq,
                applied: applied.applied,
                held_micros: u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX),
            }),
        )
        .await?;
        status::synced(&ctx.db, sync_id, u64::from(applied.applied)).await;
        Ok(())
    }

    /// Puts a refused batch on record (see [`refusals`]); a failure to
    /// record it is logged, never the session's end.
    async fn record_refusal(&self, first_seq: u64, last_seq: u64, error: &ApplyError) {
        if !refusals::is_refusal(error) {
            return;
        }
        let sync_id = self.identity.sync_id;
        if let Err(db_error) =
            refusals::record(&self.ctx.db, sync_id, first_seq, last_seq, error).await
        {
            tracing::warn!(sync_id, %db_error, refusal = %error, "could not record the refused batch");
        }
    }

    /// The satellite applied downstream up to `ack.cursor`: record it, end the
    /// initialisation if this ack completes it, and tell the downstream half.
    async fn on_downstream_ack(&mut self, ack: DownstreamAck) -> Result<()> {
        let sync_id = self.identity.sync_id;
        let db = &self.ctx.db;
        if ack.cursor > 0 {
            status::downstream_acked(db, sync_id, ack.cursor, self.initialising).await?;
            self.transfers_delivered(ack.cursor).await?;
        }
        if self.initialising && ack.cursor > 0 {
            self.initialising = false;
            let done = ack.init_records_done;
            status::initialisation(db, sync_id, false, done, done).await;
            tracing::info!(sync_id, records = done, "site initialised");
        }
        // send_modify, not send_replace(… acks.borrow() …): a read guard
        // held while sending would deadlock on the watch's lock.
        self.acks.send_modify(|acked| {
            acked.cursor = acked.cursor.max(ack.cursor);
            acked.init_records_done = ack.init_records_done;
        });
        status::synced(db, sync_id, 0).await;
        Ok(())
    }

    /// Transfers to this site's store whose inbound shipment the site has
    /// now acknowledged are delivered (`crate::transfers::delivered`).
    async fn transfers_delivered(&self, cursor: u64) -> Result<()> {
        let txn = storesync_shared::domain::db::begin(&self.ctx.db).await?;
        let logged = crate::transfers::delivered(&txn, &self.identity.store_id, cursor).await?;
        txn.commit().await?;
        if let Some(seq) = logged {
            self.ctx.notifier.committed(seq);
        }
        Ok(())
    }

    /// An answer to the integrity check in progress goes to the session's
    /// verifier; with no check waiting (it gave up), it is dropped.
    fn on_verify_answer(&self, answer: satellite_message::Message) {
        if self.verify_answers.try_send(answer).is_err() {
            tracing::debug!(
                sync_id = self.identity.sync_id,
                "dropped an integrity answer no check waits for"
            );
        }
    }

    /// The satellite is alive; a session that lost its claim ends (`ABORTED`).
    async fn on_heartbeat(&self, beat: Heartbeat) -> Result<()> {
        let sync_id = self.identity.sync_id;
        if !status::heartbeat(
            &self.ctx.db,
            sync_id,
            self.session_id,
            beat.upstream_backlog,
        )
        .await
        {
            return Err(Error::Aborted(format!(
                "a newer session for Sync ID {sync_id} replaced this one"
            )));
        }
        Ok(())
    }
}

/// Why reading the satellite's stream failed, as the status to end it with.
/// tonic reports a message it cannot decode as INTERNAL and one over the size
/// limit as OUT_OF_RANGE; both are the sender's fault, not the master's.
fn inbound_failure(status: &Status) -> Error {
    match status.code() {
        tonic::Code::Internal => {
            Error::InvalidArgument(format!("a malformed message: {}", status.message()))
        }
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Error::InvalidArgument(format!(
                "a message over the size limit of {} bytes: {}",
                storesync_shared::kit::server::MAX_MESSAGE_BYTES,
                status.message()
            ))
        }
        // A CompressedChunk refused by `Unpacking` (it names what is wrong).
        tonic::Code::InvalidArgument => Error::InvalidArgument(status.message().to_owned()),
        _ => Error::Unavailable(format!("the stream broke: {}", status.message())),
    }
}
