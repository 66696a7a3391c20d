//! The sessions live on this process, by Sync ID.
//!
//! # Invariant
//! At most one live session per Sync ID on this process: registering a
//! session tells the one it replaces to end (`ABORTED`). Across replicas the
//! claim in `site_status` decides ([`super::status::claim`]); a claim made on
//! another replica reaches this registry through [`super::cluster`] and ends
//! the local session it replaces.
//!
//! Not here: the claim's SQL (`status`), what a session does (`session`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

/// Live sessions by Sync ID.
#[derive(Default)]
pub(super) struct Sessions {
    /// Each site's live session: its id and the sender that tells it to end.
    active: Mutex<HashMap<u32, (String, watch::Sender<bool>)>>,
}

impl Sessions {
    /// A poisoned lock still holds a consistent map (every change is one
    /// insert or remove), so it is used rather than ending every session.
    fn active(&self) -> MutexGuard<'_, HashMap<u32, (String, watch::Sender<bool>)>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a session; the one it replaces (if any) is told to end.
    /// The returned receiver turns true when this session is replaced.
    pub(super) fn register(&self, sync_id: u32, session_id: &str) -> watch::Receiver<bool> {
        let (replaced_tx, replaced_rx) = watch::channel(false);
        let mut active = self.active();
        if let Some((old_id, old)) = active.insert(sync_id, (session_id.to_owned(), replaced_tx)) {
            tracing::info!(sync_id, old_session = %old_id, new_session = %session_id, "a newer session replaces the old one");
            old.send_replace(true);
        }
        replaced_rx
    }

    /// Another replica's session `session_id` claimed `sync_id`: a different
    /// session of that site here must end.
    pub(super) fn claimed_elsewhere(&self, sync_id: u32, session_id: &str) {
        let mut active = self.active();
        if active.get(&sync_id).is_some_and(|(id, _)| id != session_id) {
            if let Some((old_id, old)) = active.remove(&sync_id) {
                tracing::info!(sync_id, old_session = %old_id, new_session = %session_id, "a session on another replica replaces this one");
                old.send_replace(true);
            }
        }
    }

    /// Session `session_id` ended; a newer session of the site stays registered.
    pub(super) fn unregister(&self, sync_id: u32, session_id: &str) {
        let mut active = self.active();
        if active.get(&sync_id).is_some_and(|(id, _)| id == session_id) {
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
