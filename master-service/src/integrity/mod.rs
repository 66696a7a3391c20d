//! The integrity check: proof that a site holds what the master holds for
//! it (master data and that site's store data), with a targeted repair, and
//! the stock ledger check.
//!
//! A check runs over the site's live sync session (no new port, the same
//! authentication), driven by a task beside the session's two halves
//! ([`session`]). A check is asked for by recording a request in the
//! master's database ([`record::request`]): an operator's ([`verify_sites`],
//! from `AdminService.VerifySites` and `master-service verify`) or the
//! [`schedule`]'s. Whichever master process holds the site's session (or
//! next gets it) runs it: the session's verifier looks for requests when the
//! session starts, when [`Verifiers::nudge`] wakes it (a request made on
//! this process) and every [`session::REQUEST_POLL`] (one made on another
//! replica). The Welcome tells an interval-mode site that a check is due, so
//! that it stays until the check has run. The caller waits by reading the
//! request's result on record, so it works across replicas.
//!
//! # Layout
//! - this file: [`Verifiers`], [`verify_sites`];
//! - [`check`]: one check: settle, the Merkle-style descent, the repair;
//! - [`session`]: the task of one session that runs the site's requested checks;
//! - [`record`]: the requests, each site's latest result, kept for
//!   `SyncStatus`, and the audit;
//! - [`schedule`]: the periodic check of every site.
//!
//! # Invariant
//! Only settled data is compared: a check starts when the site has applied
//! the whole change log and its outbox is empty, and its result counts only
//! if neither moved until the descent ended; otherwise the outcome is
//! `NOT_SETTLED` (the caller asks again) and nothing is repaired.
//!
//! A requested check runs until an attempt ends: an attempt cut by the end
//! of the session leaves it requested for the site's next session, at most
//! [`record::MAX_ATTEMPTS`] attempts (then it ends FAILED, saying why).
//!
//! # Ownership
//! Repairs follow the owners of [`storesync_shared::domain::tables::Owner`]:
//! master data by the master's version (a stray row at the site is deleted);
//! a store's data by the hosting site's version where both hold a row, and a
//! row only one side holds is copied to the other, never deleted. Repairs
//! travel as a `VerifyRepair` the satellite applies in one transaction
//! (master → site) and as outbox entries the site re-sends through the
//! normal exactly-once upstream (site → master).

pub mod check;
pub mod record;
pub mod schedule;
pub mod session;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use storesync_shared::proto::v1 as pb;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::AppState;

/// How long a caller that does not say (`wait_seconds` 0) waits for the
/// check of a site whose session is live on this process.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest `wait_seconds` accepted.
pub const MAX_WAIT_SECONDS: u32 = 3600;
/// How often a waiting caller reads the request's result.
const RESULT_POLL: Duration = Duration::from_millis(200);

/// The verifiers of the sessions live on this process, by Sync ID: a nudge
/// makes one look for requested checks at once.
#[derive(Default)]
pub struct Verifiers {
    active: Mutex<HashMap<u32, (String, mpsc::Sender<()>)>>,
}

impl Verifiers {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (String, mpsc::Sender<()>)>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Session `session_id` of `sync_id` is woken through `nudges` (it
    /// replaces an older session's verifier).
    pub fn register(&self, sync_id: u32, session_id: &str, nudges: mpsc::Sender<()>) {
        self.active()
            .insert(sync_id, (session_id.to_owned(), nudges));
    }

    /// Session `session_id` ended; a newer session's verifier stays.
    pub fn unregister(&self, sync_id: u32, session_id: &str) {
        let mut active = self.active();
        if active.get(&sync_id).is_some_and(|(id, _)| id == session_id) {
            active.remove(&sync_id);
        }
    }

    /// The Sync IDs with a verifier here.
    pub fn live(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.active().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Whether `sync_id` has a verifier here.
    pub fn is_live(&self, sync_id: u32) -> bool {
        self.active().contains_key(&sync_id)
    }

    /// Wakes the verifier of `sync_id` here, if there is one (a nudge
    /// already waiting is enough); returns whether there is.
    pub fn nudge(&self, sync_id: u32) -> bool {
        match self.active().get(&sync_id) {
            Some((_, nudges)) => {
                let _ = nudges.try_send(());
                true
            }
            None => false,
        }
    }
}

/// Checks `sync_ids` (every satellite when empty) and repairs unless
/// `report_only`: each check is requested, then its result waited for (see
/// `wait_seconds` in `AdminService.VerifySites`); a site not checked in
/// time is answered `QUEUED`.
pub async fn verify_sites(
    state: &AppState,
    sync_ids: &[u32],
    report_only: bool,
    actor: &str,
    wait_seconds: u32,
) -> Result<Vec<pb::SiteVerification>> {
    if wait_seconds > MAX_WAIT_SECONDS {
        return Err(Error::invalid(
            "wait_seconds",
            format!("{wait_seconds} is more than {MAX_WAIT_SECONDS} (one hour)"),
        ));
    }
    let listed: Vec<u32> = crate::sites::list(&state.db)
        .await?
        .into_iter()
        .map(|site| site.sync_id)
        .filter(|id| *id != 1)
        .collect();
    let wanted = if sync_ids.is_empty() {
        listed
    } else {
        for (index, id) in sync_ids.iter().enumerate() {
            if !(2..=64).contains(id) {
                return Err(storesync_shared::Error::invalid(
                    &format!("sync_ids[{index}]"),
                    format!("{id} is not a satellite's Sync ID (2 to 64)"),
                )
                .into());
            }
            if !listed.contains(id) {
                return Err(Error::Domain(storesync_shared::Error::NotFound(format!(
                    "sync_ids[{index}]: Sync ID {id} is not in the sync-with list"
                ))));
            }
        }
        sync_ids.to_vec()
    };
    let verifiers = state.site_changes.verifiers();
    let mut requested = Vec::with_capacity(wanted.len());
    for sync_id in wanted {
        let request = record::request(&state.db, sync_id, report_only, actor).await?;
        verifiers.nudge(sync_id);
        requested.push(request);
    }
    let wait = Duration::from_secs(u64::from(wait_seconds));
    let started = tokio::time::Instant::now();
    let mut results = Vec::with_capacity(requested.len());
    for request in requested {
        let until = if wait_seconds > 0 {
            Until::Deadline(started + wait)
        } else if verifiers.is_live(request.sync_id) {
            Until::SessionHere(tokio::time::Instant::now() + CHECK_TIMEOUT)
        } else {
            Until::Now
        };
        results.push(wait_for(&state.db, verifiers, &request, until).await?);
    }
    Ok(results)
}

/// How long a caller waits for one request's result.
pub(crate) enum Until {
    /// Not at all.
    Now,
    /// Until then.
    Deadline(tokio::time::Instant),
    /// While the site has a session on this process, at most until then.
    SessionHere(tokio::time::Instant),
}

/// The result of `request`, once finished, or `QUEUED`.
pub(crate) async fn wait_for(
    db: &DatabaseConnection,
    verifiers: &Verifiers,
    request: &record::Request,
    until: Until,
) -> Result<pb::SiteVerification> {
    loop {
        let state = match record::result_of(db, request.id).await? {
            Ok(result) => return Ok(result),
            Err(state) => state,
        };
        let over = match until {
            Until::Now => true,
            Until::Deadline(at) => tokio::time::Instant::now() >= at,
            Until::SessionHere(at) => {
                tokio::time::Instant::now() >= at || !verifiers.is_live(request.sync_id)
            }
        };
        if over {
            // A result written as the wait ended still counts.
            return Ok(match record::result_of(db, request.id).await? {
                Ok(result) => result,
                Err(state) => queued(&state),
            });
        }
        drop(state);
        tokio::time::sleep(RESULT_POLL).await;
    }
}

/// The answer for a check still requested.
fn queued(request: &record::Request) -> pb::SiteVerification {
    let mut message = format!(
        "check requested at {} ms (by {}); it runs at the site's next session",
        request.requested_at_ms, request.actor
    );
    if request.attempts > 0 {
        message.push_str(&format!(
            "; {} of {} attempts begun so far{}",
            request.attempts,
            record::MAX_ATTEMPTS,
            if request.message.is_empty() {
                String::new()
            } else {
                format!(" (last: {})", request.message)
            }
        ));
    }
    pb::SiteVerification {
        sync_id: request.sync_id,
        outcome: pb::VerifyOutcome::Queued as i32,
        message,
        started_at_ms: request.requested_at_ms,
        report_only: request.report_only,
        ..Default::default()
    }
}

/// Whether a session of `sync_id` about to start has a check to run (the
/// Welcome's `integrity_check_due`): one requested, or (interval mode,
/// schedule on) one due now, which is requested here. A database error
/// says no: the check then runs at a later session.
pub async fn due_in_session(
    db: &DatabaseConnection,
    sync_id: u32,
    interval: bool,
    every: Option<Duration>,
    scheduled_report_only: bool,
) -> bool {
    let requested = match (interval, every) {
        (true, Some(every)) => schedule::request_if_due(db, sync_id, every, scheduled_report_only)
            .await
            .map(|request| request.is_some()),
        _ => record::next_request(db, sync_id)
            .await
            .map(|request| request.is_some()),
    };
    requested.unwrap_or_else(|error| {
        tracing::warn!(sync_id, %error, "could not read the requested integrity checks");
        false
    })
}
