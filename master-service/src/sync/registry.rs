//! The sessions live on this process, by Sync ID.
//!
//! # Invariant
//! At most one live session per Sync ID on this process: registering a
//! session tells the one it replaces to end (`ABORTED`). Across replicas the
//! claim in `site_status` decides ([`super::status::claim`]); a claim made on
//! another replica reaches this registry through [`super::cluster`] and ends
//! the local session it replaces.
//!
//! An operator's change to a site (disabled, removed, its or the shared
//! sync password changed) reaches its live session as a *re-check*
//! ([`SiteChanges::changed`]): the session reads the site again and ends if
//! it may no longer sync (see `session`). A re-check is a hint, never lost
//! for a registered session (a `Notify` keeps one permit), and sessions also
//! re-check at every heartbeat period, so a missed hint costs one period.
//!
//! Not here: the claim's SQL (`status`), what a session does (`session`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

/// One live session: its id, the sender that tells it to end, and its re-check.
type Entry = (String, watch::Sender<bool>, Arc<Notify>);

/// Live sessions by Sync ID.
#[derive(Default)]
pub(super) struct Sessions {
    /// Each site's live session.
    active: Mutex<HashMap<u32, Entry>>,
}

/// Tells this process's live sessions that an operator changed their site
/// (or, with `None`, the shared credentials of every site). Cheap to clone;
/// the admin service holds one, the sync service the same.
#[derive(Clone, Default)]
pub struct SiteChanges {
    pub(super) sessions: Arc<Sessions>,
    /// The integrity checks this process's sessions can run.
    pub(super) verifiers: Arc<crate::integrity::Verifiers>,
}

impl SiteChanges {
    /// The integrity checks this process's sessions can run.
    pub fn verifiers(&self) -> &crate::integrity::Verifiers {
        &self.verifiers
    }

    /// Site `sync_id` (`None`: every site) changed: its session re-checks.
    pub fn changed(&self, sync_id: Option<u32>) {
        self.sessions.recheck(sync_id);
    }
}

impl Sessions {
    /// A poisoned lock still holds a consistent map (every change is one
    /// insert or remove), so it is used rather than ending every session.
    fn active(&self) -> MutexGuard<'_, HashMap<u32, Entry>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a session; the one it replaces (if any) is told to end.
    /// The returned receiver turns true when this session is replaced; the
    /// `Notify` wakes when its site changed and it must re-check.
    pub(super) fn register(
        &self,
        sync_id: u32,
        session_id: &str,
    ) -> (watch::Receiver<bool>, Arc<Notify>) {
        let (replaced_tx, replaced_rx) = watch::channel(false);
        let recheck = Arc::new(Notify::new());
        let mut active = self.active();
        if let Some((old_id, old, _)) = active.insert(
            sync_id,
            (session_id.to_owned(), replaced_tx, recheck.clone()),
        ) {
            tracing::info!(sync_id, old_session = %old_id, new_session = %session_id, "a newer session replaces the old one");
            old.send_replace(true);
        }
        (replaced_rx, recheck)
    }

    /// Site `sync_id` (`None`: every site) changed: its live session re-checks.
    pub(super) fn recheck(&self, sync_id: Option<u32>) {
        for (id, (_, _, recheck)) in self.active().iter() {
            if sync_id.is_none_or(|s| s == *id) {
                recheck.notify_one();
            }
        }
    }

    /// Another replica's session `session_id` claimed `sync_id`: a different
    /// session of that site here must end.
    pub(super) fn claimed_elsewhere(&self, sync_id: u32, session_id: &str) {
        let mut active = self.active();
        if active
            .get(&sync_id)
            .is_some_and(|(id, _, _)| id != session_id)
        {
            if let Some((old_id, old, _)) = active.remove(&sync_id) {
                tracing::info!(sync_id, old_session = %old_id, new_session = %session_id, "a session on another replica replaces this one");
                old.send_replace(true);
            }
        }
    }

    /// Session `session_id` ended; a newer session of the site stays registered.
    pub(super) fn unregister(&self, sync_id: u32, session_id: &str) {
        let mut active = self.active();
        if active
            .get(&sync_id)
            .is_some_and(|(id, _, _)| id == session_id)
        {
            active.remove(&sync_id);
        }
    }

    /// Sync IDs with a live session, in order.
    pub(super) fn live(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.active().keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}
