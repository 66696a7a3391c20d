//! The verifier of one sync session: a task beside the session's two halves
//! that runs the site's requested checks ([`super::record::Request`]), one at
//! a time, over the session's stream, and records each result. It looks for
//! requests when the session starts (once the site is initialised), when
//! nudged, and every [`REQUEST_POLL`].
//!
//! # Invariant
//! A satellite older than `storesync_shared::VERIFY_PROTOCOL_VERSION` is
//! never sent an integrity message: every request is answered
//! `CANNOT_VERIFY_VERSION` without touching the stream.
//!
//! A satellite told by the Welcome that a check is due (it stays in interval
//! mode) is released: once the requests found at the start have run, a
//! `VerifyEnd` with check id 0 follows, whatever they ended with.
//!
//! An attempt cut by the end of the session (the stream gone before the
//! check ended) leaves its request requested, for the next session; only an
//! attempt that ended finishes it (see `super::record`).

use std::time::Duration;

use sea_orm::DatabaseConnection;
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::{self as pb, master_message, satellite_message};
use tokio::sync::{mpsc, watch};

use super::check::{self, Link};
use super::record::{self, Request};
use crate::metrics;
use crate::sync::downstream::{Acked, Outbound};

/// Most differences listed in one result (each about 60 bytes: well under
/// the message limit).
pub const MAX_LISTED: usize = 20_000;

/// How often a session looks for checks requested through another process.
pub const REQUEST_POLL: Duration = Duration::from_secs(3);

/// What a session's verifier needs.
pub struct SessionVerifier {
    pub db: DatabaseConnection,
    pub sync_id: u32,
    pub store_id: String,
    pub protocol_version: u32,
    pub tx: Outbound,
    pub acked: watch::Receiver<Acked>,
    /// The Welcome said a check is due (the satellite stays until released).
    pub announced: bool,
    /// The session sends a snapshot first: checks wait until the site has
    /// caught up with the change log.
    pub initialising: bool,
}

/// How one attempt went.
enum Attempt {
    /// It ended: the request is finished with this result.
    Ended,
    /// The session ended during it.
    Cut,
}

impl SessionVerifier {
    /// Runs the site's requested checks until the session ends (`answers`
    /// closed) or the verifier is unregistered (`nudges` closed).
    pub async fn serve(
        self,
        mut nudges: mpsc::Receiver<()>,
        mut answers: mpsc::Receiver<satellite_message::Message>,
    ) {
        let mut announced = self.announced;
        // An old satellite's requests are answered at once (nothing is sent).
        let mut caught_up =
            !self.initialising || self.protocol_version < storesync_shared::VERIFY_PROTOCOL_VERSION;
        let mut first = true;
        loop {
            if !first {
                let tick = if caught_up {
                    REQUEST_POLL
                } else {
                    Duration::from_millis(500)
                };
                tokio::select! {
                    nudge = nudges.recv() => if nudge.is_none() { return },
                    answer = answers.recv() => match answer {
                        // An answer of an abandoned check: dropped.
                        Some(_) => continue,
                        None => return,
                    },
                    () = tokio::time::sleep(tick) => {}
                }
            }
            first = false;
            if !caught_up {
                caught_up = match crate::changelog::head(&self.db).await {
                    Ok(head) => self.acked.borrow().cursor >= head,
                    Err(_) => false,
                };
                if !caught_up {
                    continue;
                }
            }
            if !self.run_requested(&mut answers).await {
                return;
            }
            if announced {
                announced = false;
                let _ = self
                    .tx
                    .send(Ok(pb::MasterMessage {
                        message: Some(master_message::Message::VerifyEnd(pb::VerifyEnd {
                            check_id: 0,
                        })),
                    }))
                    .await;
            }
        }
    }

    /// Runs every check requested of the site, oldest first; false when the
    /// session ended during one.
    async fn run_requested(
        &self,
        answers: &mut mpsc::Receiver<satellite_message::Message>,
    ) -> bool {
        loop {
            let request = match record::next_request(&self.db, self.sync_id).await {
                Ok(Some(request)) => request,
                Ok(None) => return true,
                Err(error) => {
                    tracing::warn!(sync_id = self.sync_id, %error, "could not read the requested integrity checks");
                    return true;
                }
            };
            match self.attempt(answers, &request).await {
                Ok(Attempt::Ended) => {}
                Ok(Attempt::Cut) => return false,
                Err(error) => {
                    tracing::warn!(sync_id = self.sync_id, request = request.id, %error, "could not record an integrity check");
                    return true;
                }
            }
        }
    }

    /// One attempt of `request`: run, then finished, or left requested if
    /// the session ended during it.
    async fn attempt(
        &self,
        answers: &mut mpsc::Receiver<satellite_message::Message>,
        request: &Request,
    ) -> crate::error::Result<Attempt> {
        if request.attempts >= record::MAX_ATTEMPTS {
            let now = now_ms();
            let result = pb::SiteVerification {
                sync_id: self.sync_id,
                outcome: pb::VerifyOutcome::Failed as i32,
                message: format!(
                    "the check was cut {} times by the end of the site's session (last: {}); ask again",
                    request.attempts,
                    if request.message.is_empty() { "the master process ended" } else { &request.message }
                ),
                started_at_ms: now,
                finished_at_ms: now,
                report_only: request.report_only,
                ..Default::default()
            };
            record::save(&self.db, &result, &[], &request.actor).await?;
            record::finish(&self.db, request, &result).await?;
            metrics::integrity_checked(self.sync_id, &result);
            return Ok(Attempt::Ended);
        }
        if !record::begin_attempt(&self.db, request).await? {
            return Ok(Attempt::Ended);
        }
        let (result, repairs) = self.check(answers, request.report_only).await;
        if result.outcome() == pb::VerifyOutcome::NotConnected {
            tracing::info!(sync_id = self.sync_id, request = request.id, attempt = request.attempts + 1, why = %result.message, "integrity check cut by the end of the session; it runs again at the next session");
            record::attempt_cut(&self.db, request, &result.message).await?;
            return Ok(Attempt::Cut);
        }
        if result.outcome() != pb::VerifyOutcome::CannotVerifyVersion {
            record::save(&self.db, &result, &repairs, &request.actor).await?;
        }
        record::finish(&self.db, request, &result).await?;
        metrics::integrity_checked(self.sync_id, &result);
        Ok(Attempt::Ended)
    }

    /// One check, with the repairs to audit. `NOT_CONNECTED`: the session
    /// ended before the check did.
    async fn check(
        &self,
        answers: &mut mpsc::Receiver<satellite_message::Message>,
        report_only: bool,
    ) -> (pb::SiteVerification, Vec<[String; 5]>) {
        let started_at_ms = now_ms();
        let started = std::time::Instant::now();
        let mut result = pb::SiteVerification {
            sync_id: self.sync_id,
            started_at_ms,
            report_only,
            ..Default::default()
        };
        if self.protocol_version < storesync_shared::VERIFY_PROTOCOL_VERSION {
            result.outcome = pb::VerifyOutcome::CannotVerifyVersion as i32;
            result.message = format!(
                "cannot verify: version (the site speaks sync protocol version {}; the check needs {})",
                self.protocol_version,
                storesync_shared::VERIFY_PROTOCOL_VERSION
            );
            result.finished_at_ms = now_ms();
            return (result, Vec::new());
        }
        // Answers of an earlier, abandoned check are dropped.
        while answers.try_recv().is_ok() {}
        let mut link = Link {
            tx: &self.tx,
            answers,
            acked: &self.acked,
            bytes: 0,
            round_trips: 0,
        };
        let ran = check::run(
            &self.db,
            &mut link,
            self.sync_id,
            &self.store_id,
            report_only,
        )
        .await;
        result.bytes_exchanged = link.bytes;
        result.round_trips = link.round_trips;
        let mut repairs = Vec::new();
        match ran {
            Ok(found) => {
                result.rows_compared = found.rows_compared;
                result.rows_differing = found.differences.len() as u64;
                result.rows_repaired = found.rows_repaired;
                result.message = found.message;
                result.site_ledger = found.site_ledger;
                result.site_ledger_total = found.site_ledger_total;
                result.master_ledger = found.master_ledger;
                result.master_ledger_total = found.master_ledger_total;
                result.outcome = if !found.settled {
                    pb::VerifyOutcome::NotSettled
                } else if found.differences.is_empty() {
                    pb::VerifyOutcome::Equal
                } else {
                    pb::VerifyOutcome::Different
                } as i32;
                // The answer lists the first MAX_LISTED (rows_differing counts all).
                result.differences = found
                    .differences
                    .into_iter()
                    .take(MAX_LISTED)
                    .map(|(d, repair)| pb::RowDifference {
                        table: d.table as i32,
                        id: d.id,
                        side: d.side as i32,
                        repair,
                    })
                    .collect();
                repairs = found.repairs;
            }
            Err(error) => {
                result.outcome = match &error {
                    crate::error::Error::Domain(storesync_shared::Error::Unavailable(_)) => {
                        pb::VerifyOutcome::NotConnected
                    }
                    _ => pb::VerifyOutcome::Failed,
                } as i32;
                result.message = error.to_string();
            }
        }
        result.finished_at_ms = now_ms();
        tracing::info!(
            sync_id = self.sync_id,
            outcome = ?result.outcome(),
            compared = result.rows_compared,
            differing = result.rows_differing,
            repaired = result.rows_repaired,
            bytes = result.bytes_exchanged,
            round_trips = result.round_trips,
            took_ms = started.elapsed().as_millis() as u64,
            "integrity check"
        );
        (result, repairs)
    }
}

/// How often the schedule looks for sites due (at most).
pub const SCHEDULE_TICK: Duration = Duration::from_secs(60);
