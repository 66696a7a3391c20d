//! The integrity check: proof that a site holds what the master holds for
//! it (master data and that site's store data), with a targeted repair, and
//! the stock ledger check.
//!
//! A check runs over the site's live sync session (no new port, the same
//! authentication), driven by a task beside the session's two halves
//! ([`session`]); an operator's request ([`verify_sites`], from
//! `AdminService.VerifySites` and `master-service verify`) and the
//! [`schedule`] reach that task through [`Verifiers`], the checks this
//! process can run, by Sync ID.
//!
//! # Layout
//! - this file: [`Verifiers`], [`Job`], [`verify_sites`];
//! - [`check`]: one check: settle, the Merkle-style descent, the repair;
//! - [`session`]: the task of one session that runs the checks asked of it;
//! - [`record`]: each site's latest result, kept for `SyncStatus`, and the audit;
//! - [`schedule`]: the periodic check of the sites connected to this process.
//!
//! # Invariant
//! Only settled data is compared: a check starts when the site has applied
//! the whole change log and its outbox is empty, and its result counts only
//! if neither moved until the descent ended; otherwise the outcome is
//! `NOT_SETTLED` (retry later) and nothing is repaired.
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

use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::AppState;

/// How long an operator's request waits for one site's check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(300);

/// A check asked of a session's verifier.
pub struct Job {
    /// Name the differences, change nothing.
    pub report_only: bool,
    /// Who asked (the audit's actor).
    pub actor: String,
    /// Where the result goes.
    pub reply: oneshot::Sender<pb::SiteVerification>,
}

/// The verifiers of the sessions live on this process, by Sync ID.
#[derive(Default)]
pub struct Verifiers {
    active: Mutex<HashMap<u32, (String, mpsc::Sender<Job>)>>,
}

impl Verifiers {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (String, mpsc::Sender<Job>)>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Session `session_id` of `sync_id` takes checks from `jobs` (it
    /// replaces an older session's verifier).
    pub fn register(&self, sync_id: u32, session_id: &str, jobs: mpsc::Sender<Job>) {
        self.active().insert(sync_id, (session_id.to_owned(), jobs));
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

    /// Runs a check of `sync_id` over its session and waits for the result.
    pub async fn run(&self, sync_id: u32, report_only: bool, actor: &str) -> pb::SiteVerification {
        let started_at_ms = now_ms();
        let jobs = self.active().get(&sync_id).map(|(_, jobs)| jobs.clone());
        let unanswered = |outcome: pb::VerifyOutcome, message: String| pb::SiteVerification {
            sync_id,
            outcome: outcome as i32,
            message,
            started_at_ms,
            finished_at_ms: now_ms(),
            report_only,
            ..Default::default()
        };
        let Some(jobs) = jobs else {
            return unanswered(
                pb::VerifyOutcome::NotConnected,
                format!("Sync ID {sync_id} has no live sync session on this master process; it is checked when it connects"),
            );
        };
        let (reply, result) = oneshot::channel();
        let job = Job {
            report_only,
            actor: actor.to_owned(),
            reply,
        };
        if jobs.send(job).await.is_err() {
            return unanswered(
                pb::VerifyOutcome::NotConnected,
                format!("the sync session of Sync ID {sync_id} ended"),
            );
        }
        match tokio::time::timeout(CHECK_TIMEOUT, result).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => unanswered(
                pb::VerifyOutcome::Failed,
                format!("the sync session of Sync ID {sync_id} ended during the check; retry"),
            ),
            Err(_) => unanswered(
                pb::VerifyOutcome::Failed,
                format!("no result within {CHECK_TIMEOUT:?}"),
            ),
        }
    }
}

/// Checks `sync_ids` (every satellite when empty), one after the other, and
/// repairs unless `report_only`.
pub async fn verify_sites(
    state: &AppState,
    sync_ids: &[u32],
    report_only: bool,
    actor: &str,
) -> Result<Vec<pb::SiteVerification>> {
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
    let mut results = Vec::with_capacity(wanted.len());
    for sync_id in wanted {
        let result = state
            .site_changes
            .verifiers()
            .run(sync_id, report_only, actor)
            .await;
        results.push(result);
    }
    Ok(results)
}
