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
//!
//! An operator's change ends a live session the same way (a failure written
//! to the site's status), at once when the admin service or another replica
//! signals it (`registry::SiteChanges`, `cluster`) and at the latest one
//! heartbeat period later (every session re-checks then):
//! - the site disabled: `PERMISSION_DENIED` "… is disabled on the master";
//! - the site removed: `PERMISSION_DENIED` "… was removed …";
//! - the credentials it logged in with changed (its own, or the shared ones
//!   for a site without its own): `UNAUTHENTICATED`; its next login needs
//!   the new password. Other sites' sessions stay.

use std::sync::OnceLock;

use sea_orm::{DatabaseConnection, EntityTrait};
use storesync_shared::domain::entities::setting;

use storesync_shared::kit::stream_compression::Unpacking;
use storesync_shared::proto::v1::{
    master_message, Hello, MasterMessage, RecordRef, SatelliteMessage, SyncError, SyncMode,
};
use storesync_shared::{Error, Result};
use tokio::sync::watch;
use tonic::Status;

use super::downstream::{self, Acked, Outbound};
use super::inbound::Inbound;
use super::upstream::SiteIdentity;
use super::{status, SyncContext};
use crate::entities::site;
use crate::metrics;

/// The credentials a site logs in with now: its own user name and password
/// hash, or the shared ones. A new hash (even of the same password) counts
/// as a change. `None`: the site is gone.
async fn credentials(
    db: &DatabaseConnection,
    sync_id: u32,
) -> Result<Option<(bool, Option<String>, Option<String>)>> {
    let Some(row) = site::Entity::find_by_id(super::upstream::sync_id_i32(sync_id))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let (user, hash) = match (row.sync_user_name, row.sync_password_hash) {
        (Some(user), Some(hash)) => (Some(user), Some(hash)),
        _ => {
            let shared = |key: &'static str| async move {
                Ok::<_, Error>(
                    setting::Entity::find_by_id(key.to_owned())
                        .one(db)
                        .await?
                        .map(|s| s.value),
                )
            };
            (
                shared("sync_user_name").await?,
                shared("sync_password_hash").await?,
            )
        }
    };
    Ok(Some((row.enabled, user, hash)))
}

/// Why a session whose site logged in with `logged_in` may no longer sync,
/// if it may not (see the module doc); a database error keeps the session.
async fn revoked(
    db: &DatabaseConnection,
    sync_id: u32,
    logged_in: &(Option<String>, Option<String>),
) -> Option<Error> {
    match credentials(db, sync_id).await {
        Err(error) => {
            tracing::warn!(sync_id, %error, "could not re-check the site; the session goes on");
            None
        }
        Ok(None) => Some(Error::PermissionDenied(format!(
            "Sync ID {sync_id} was removed from the master's sync-with list; an operator must add it again (AdminService.AddSite)"
        ))),
        Ok(Some((false, _, _))) => Some(Error::PermissionDenied(format!(
            "Sync ID {sync_id} is disabled on the master; an operator re-enables it with UpdateSite"
        ))),
        Ok(Some((true, user, hash))) if user != logged_in.0 || hash != logged_in.1 => {
            Some(Error::Unauthenticated(format!(
                "the sync credentials of Sync ID {sync_id} changed on the master; give this satellite the new sync user name and password"
            )))
        }
        Ok(Some(_)) => None,
    }
}

/// Runs one session to its end and reports how it ended.
pub(super) async fn run(
    ctx: SyncContext,
    identity: SiteIdentity,
    hello: Hello,
    (session_id, integrity_check_due): (String, bool),
    start: downstream::Start,
    inbound: Unpacking<SatelliteMessage>,
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
    let (mut replaced, recheck) = ctx.sessions.register(sync_id, &session_id);
    // The credentials this session logged in with, read after registering so
    // that a later change is signalled to it. A change between the login and
    // this read (milliseconds) is missed; the next login is checked anyway.
    let logged_in = match credentials(&ctx.db, sync_id).await {
        Ok(Some((_, user, hash))) => (user, hash),
        Ok(None) => (None, None),
        Err(error) => {
            tracing::warn!(parent: &span, %error, "could not read the site's credentials; ending the session");
            let _ = tx
                .send(Err(Status::unavailable(
                    "the master cannot record this session; reconnect later",
                )))
                .await;
            ctx.sessions.unregister(sync_id, &session_id);
            return;
        }
    };
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
    // The integrity checks requested of this site (see `crate::integrity`);
    // the Welcome told the satellite whether one is due now.
    let (nudges_tx, nudges_rx) = tokio::sync::mpsc::channel(1);
    let (answers_tx, answers_rx) = tokio::sync::mpsc::channel(16);
    ctx.verifiers.register(sync_id, &session_id, nudges_tx);
    let verifier = tokio::spawn(
        crate::integrity::session::SessionVerifier {
            db: ctx.db.clone(),
            sync_id,
            store_id: identity.store_id.clone(),
            protocol_version: hello.protocol_version,
            tx: tx.clone(),
            acked: ack_rx.clone(),
            announced: integrity_check_due,
            initialising,
        }
        .serve(nudges_rx, answers_rx),
    );
    let mut downstream = tokio::spawn(downstream::run(
        ctx.clone(),
        sync_id,
        identity.store_id.clone(),
        hello.protocol_version,
        start,
        hello.downstream_cursor,
        tx.clone(),
        ack_rx,
    ));
    let mut shutdown = ctx.shutdown.subscribe();
    // The record an upstream batch was refused for, for the SyncError.
    let refused = OnceLock::new();
    // The site's re-checks run beside the two halves, never pausing them: an
    // apply paused mid-transaction would hold the connection the re-check
    // needs (SQLite has one). Also at every heartbeat period: a signal lost
    // between replicas costs at most this long.
    let mut watcher = tokio::spawn({
        let db = ctx.db.clone();
        let every = ctx.settings.heartbeat;
        async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.reset();
            loop {
                tokio::select! {
                    () = recheck.notified() => {}
                    _ = ticks.tick() => {}
                }
                if let Some(error) = revoked(&db, sync_id, &logged_in).await {
                    return error;
                }
            }
        }
    });
    // The inbound half lives only inside this block: when another branch
    // wins, it is dropped here, before `end` below, with any apply it was in
    // the middle of (its transaction rolls back). Kept alive past the block,
    // it would hold its database connection while `end` waits for one: on
    // SQLite's single connection, a stall of the whole master until the pool
    // gives up.
    let outcome: Result<()> = {
        let inbound_half = Inbound {
            ctx: &ctx,
            identity: &identity,
            session_id: &session_id,
            initialising,
            tx: &tx,
            acks: &ack_tx,
            refused: &refused,
            verify_answers: &answers_tx,
        }
        .run(inbound);
        tokio::pin!(inbound_half);
        tokio::select! {
        result = &mut inbound_half => result,
        joined = &mut downstream => match joined {
            Ok(result) => result,
            Err(e) => Err(Error::Internal(format!("downstream task: {e}"))),
        },
        revoked = &mut watcher => Err(revoked.unwrap_or_else(|e| Error::Internal(format!("site re-check task: {e}")))),
        _ = replaced.wait_for(|r| *r) => Err(Error::Aborted(format!("a newer session for Sync ID {sync_id} replaced this one"))),
        _ = shutdown.wait_for(|s| *s) => Err(Error::Unavailable("the master is shutting down; reconnect later".into())),
        }
    };
    watcher.abort();
    downstream.abort();
    // A check that just ended (an interval-mode site says Goodbye right
    // after its last answer) still records its result: the verifier gets no
    // more answers, and a bounded wait to finish; it stays registered until
    // then, so that a caller waiting on this process sees it end.
    drop(answers_tx);
    let mut verifier = verifier;
    if tokio::time::timeout(std::time::Duration::from_secs(10), &mut verifier)
        .await
        .is_err()
    {
        verifier.abort();
    }
    ctx.verifiers.unregister(sync_id, &session_id);
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
