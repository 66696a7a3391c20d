//! One session's life after the Welcome: register and claim the site, run
//! the inbound half ([`super::inbound`]) and the downstream half
//! ([`super::downstream`]) until one of them ends, the session is replaced or
//! the server drains, then report how it ended.
//!
//! # Invariant
//! A session applies nothing before its claim in `site_status` is recorded:
//! the claim decides which session may apply the site's batches, across
//! replicas. Whatever ends the session, it is unregistered and marked
//! disconnected (only if it still holds the claim, see `status::disconnected`).
//!
//! How a session ends, as the satellite sees it:
//! - the satellite said Goodbye or closed its stream: the stream just ends;
//! - the claim could not be recorded: `UNAVAILABLE`;
//! - otherwise a `SyncError` message, then the same status: `ABORTED` when a
//!   newer session of the site replaced it, `UNAVAILABLE` when the master
//!   drains or the stream broke (both only logged), or the failure's own
//!   status, which is also written to the site's status.

use std::sync::OnceLock;

use storesync_shared::proto::v1::{
    master_message, Hello, MasterMessage, RecordRef, SatelliteMessage, SyncError, SyncMode,
};
use storesync_shared::{Error, Result};
use tokio::sync::watch;
use tonic::{Status, Streaming};

use super::downstream::{self, Acked, Outbound};
use super::inbound::Inbound;
use super::upstream::SiteIdentity;
use super::{status, SyncContext};
use crate::metrics;

/// Runs one session to its end and reports how it ended.
pub(super) async fn run(
    ctx: SyncContext,
    identity: SiteIdentity,
    hello: Hello,
    session_id: String,
    start: downstream::Start,
    inbound: Streaming<SatelliteMessage>,
    tx: Outbound,
) {
    let sync_id = identity.sync_id;
    let span = tracing::info_span!("sync_session", sync_id, session = %session_id);
    let mode = if hello.mode() == SyncMode::Interval {
        "interval"
    } else {
        "streaming"
    };
    tracing::info!(parent: &span, mode, agent_version = %hello.agent_version, initialise = hello.needs_initialisation, cursor = hello.downstream_cursor, "session started");
    let mut replaced = ctx.sessions.register(sync_id, &session_id);
    // The claim in the database decides which session may apply this site's
    // batches, across replicas; without it the session cannot go on.
    let claimed = status::claim(
        &ctx.db,
        sync_id,
        &session_id,
        mode,
        &hello.agent_version,
        hello.protocol_version,
        hello.upstream_backlog,
    )
    .await;
    if let Err(error) = claimed {
        tracing::warn!(parent: &span, %error, "could not claim the site; ending the session");
        let _ = tx
            .send(Err(Status::unavailable(
                "the master cannot record this session; reconnect later",
            )))
            .await;
        ctx.sessions.unregister(sync_id, &session_id);
        return;
    }
    metrics::session_opened(sync_id);

    let (ack_tx, ack_rx) = watch::channel(Acked {
        cursor: hello.downstream_cursor,
        init_records_done: 0,
    });
    let initialising = start != downstream::Start::Continue;
    let mut downstream = tokio::spawn(downstream::run(
        ctx.clone(),
        sync_id,
        identity.store_id.clone(),
        start,
        hello.downstream_cursor,
        tx.clone(),
        ack_rx,
    ));
    let mut shutdown = ctx.shutdown.subscribe();
    // The record an upstream batch was refused for, for the SyncError.
    let refused = OnceLock::new();
    let inbound_half = Inbound {
        ctx: &ctx,
        identity: &identity,
        session_id: &session_id,
        initialising,
        tx: &tx,
        acks: &ack_tx,
        refused: &refused,
    }
    .run(inbound);
    tokio::pin!(inbound_half);
    let outcome: Result<()> = tokio::select! {
        result = &mut inbound_half => result,
        joined = &mut downstream => match joined {
            Ok(result) => result,
            Err(e) => Err(Error::Internal(format!("downstream task: {e}"))),
        },
        _ = replaced.wait_for(|r| *r) => Err(Error::Aborted(format!("a newer session for Sync ID {sync_id} replaced this one"))),
        _ = shutdown.wait_for(|s| *s) => Err(Error::Unavailable("the master is shutting down; reconnect later".into())),
    };
    downstream.abort();
    end(&ctx, &span, sync_id, &tx, outcome, refused.get().cloned()).await;
    metrics::session_closed(sync_id);
    ctx.sessions.unregister(sync_id, &session_id);
    status::disconnected(&ctx.db, sync_id, &session_id).await;
}

/// Logs how the session ended and tells the satellite: a failure is sent as
/// a `SyncError` message (naming `record` when an upstream batch was refused
/// for one) and then as the stream's status.
async fn end(
    ctx: &SyncContext,
    span: &tracing::Span,
    sync_id: u32,
    tx: &Outbound,
    outcome: Result<()>,
    record: Option<RecordRef>,
) {
    match outcome {
        Ok(()) => tracing::info!(parent: span, "session ended by the satellite"),
        Err(error) => {
            let routine = matches!(error, Error::Unavailable(_) | Error::Aborted(_));
            if routine {
                tracing::info!(parent: span, %error, "session ended");
            } else {
                tracing::warn!(parent: span, %error, "session failed");
            }
            let status = Status::from(error);
            if !routine {
                status::error(&ctx.db, sync_id, status.message()).await;
            }
            let _ = tx
                .send(Ok(MasterMessage {
                    message: Some(master_message::Message::Error(SyncError {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        record,
                    })),
                }))
                .await;
            let _ = tx.send(Err(status)).await;
        }
    }
}
