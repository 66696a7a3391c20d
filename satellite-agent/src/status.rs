//! The live, in-memory half of the satellite's sync state, shared between the
//! sync client (which drives it) and `AgentService` (which shows it).
//!
//! The durable half (cursors, upstream sequences, the hosted store, whether
//! the database is initialised) lives in the `sync_state` row and the outbox;
//! it moves in the same transactions as the data it describes. What is here is
//! lost on restart on purpose: connection state, initialisation progress, the
//! last error as it happens, and the two wake-up signals.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::ConnectionState;
use tokio::sync::{watch, Notify};

use crate::config::SyncMode;

/// A snapshot of the live sync state.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveStatus {
    /// Where the sync client is: DISCONNECTED until it first connects.
    pub state: ConnectionState,
    pub mode: SyncMode,
    /// An initialisation snapshot is being applied.
    pub initialising: bool,
    pub init_records_done: u64,
    pub init_records_total: u64,
    /// The sync interval in force: configured, until the master's is known.
    pub sync_interval_minutes: u32,
    /// Last session that exchanged everything pending (ms since epoch, 0: never
    /// in this process; the `sync_state` row keeps the durable value).
    pub last_sync_at_ms: i64,
    pub last_error: String,
    pub last_error_at_ms: i64,
}

/// Handle on the live sync state. Cheap to clone; every clone is the same state.
///
/// # For the sync client
/// - [`set_state`](Self::set_state) on every transition (CONNECTING, CONNECTED,
///   WAITING between interval sessions, DISCONNECTED after a failure).
/// - [`set_initialising`](Self::set_initialising) with progress while a snapshot
///   is applied, [`set_initialised`](Self::set_initialised) once its last batch
///   has committed (the durable flag is `sync_state.initialised`).
/// - [`set_error`](Self::set_error) once per failure, with its cause;
///   [`set_synced`](Self::set_synced) after a session has exchanged everything
///   pending (CaughtUp and all acks).
/// - [`set_interval`](Self::set_interval) when the master's Welcome states its
///   preference; [`interval`](Self::interval) for the time to wait.
/// - Wait on [`sync_now_requested`](Self::sync_now_requested) (an operator
///   called `AgentService.SyncNow`) and [`shutdown_requested`](Self::shutdown_requested)
///   (the server is draining: end the session, say Goodbye if possible, return).
#[derive(Clone)]
pub struct SyncHandle {
    inner: Arc<Inner>,
}

struct Inner {
    live: Mutex<LiveStatus>,
    /// `SyncNow` stores a permit if nobody waits, so a request made between
    /// two sessions is not lost.
    sync_now: Notify,
    /// Becomes true once when the server starts to shut down.
    shutdown: watch::Sender<bool>,
    /// A local write added outbox entries (a permit is kept if nobody waits).
    outbox_written: Notify,
}

impl SyncHandle {
    /// A handle in state DISCONNECTED, not initialising, with the configured
    /// mode and interval.
    pub fn new(mode: SyncMode, sync_interval_minutes: u32) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                live: Mutex::new(LiveStatus {
                    state: ConnectionState::Disconnected,
                    mode,
                    initialising: false,
                    init_records_done: 0,
                    init_records_total: 0,
                    sync_interval_minutes,
                    last_sync_at_ms: 0,
                    last_error: String::new(),
                    last_error_at_ms: 0,
                }),
                sync_now: Notify::new(),
                shutdown,
                outbox_written: Notify::new(),
            }),
        }
    }

    fn live(&self) -> MutexGuard<'_, LiveStatus> {
        // A panic while holding this lock cannot leave the plain fields
        // inconsistent in a way that matters; keep serving.
        self.inner
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the live state.
    pub fn snapshot(&self) -> LiveStatus {
        self.live().clone()
    }

    /// The connection state changed.
    pub fn set_state(&self, state: ConnectionState) {
        self.live().state = state;
    }

    /// A snapshot is being applied: `done` of `total` records so far.
    pub fn set_initialising(&self, done: u64, total: u64) {
        let mut live = self.live();
        live.initialising = true;
        live.init_records_done = done;
        live.init_records_total = total;
    }

    /// The snapshot's last batch has committed.
    pub fn set_initialised(&self) {
        let mut live = self.live();
        live.initialising = false;
        live.init_records_done = live.init_records_total;
    }

    /// A failure, as the operator should read it (no secrets).
    pub fn set_error(&self, message: impl Into<String>) {
        let mut live = self.live();
        live.last_error = message.into();
        live.last_error_at_ms = now_ms();
    }

    /// A session has exchanged everything pending, now.
    pub fn set_synced(&self) {
        self.live().last_sync_at_ms = now_ms();
    }

    /// The master's sync interval preference (ignored if 0).
    pub fn set_interval(&self, minutes: u32) {
        if minutes > 0 {
            self.live().sync_interval_minutes = minutes;
        }
    }

    /// The sync interval in force.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.live().sync_interval_minutes.max(1)) * 60)
    }

    /// Asks the sync client to start a session now (or wake the open one).
    pub fn request_sync_now(&self) {
        self.inner.sync_now.notify_one();
    }

    /// Resolves when [`request_sync_now`](Self::request_sync_now) is called
    /// (at once if it was called since the last wait).
    pub async fn sync_now_requested(&self) {
        self.inner.sync_now.notified().await;
    }

    /// A local write added outbox entries: the open session sends them at once.
    pub fn notify_outbox_written(&self) {
        self.inner.outbox_written.notify_one();
    }

    /// Resolves after [`notify_outbox_written`](Self::notify_outbox_written).
    pub async fn outbox_written(&self) {
        self.inner.outbox_written.notified().await;
    }

    /// Tells the sync client that the server is shutting down.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn shutdown_requested(&self) {
        let mut receiver = self.inner.shutdown.subscribe();
        // An error means the sender is gone, which cannot happen while self lives.
        let _ = receiver.wait_for(|stopping| *stopping).await;
    }
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SyncHandle").field(&*self.live()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sync_now_request_waits_for_the_next_session() {
        let handle = SyncHandle::new(SyncMode::Interval, 5);
        handle.request_sync_now();
        tokio::time::timeout(Duration::from_secs(1), handle.clone().sync_now_requested())
            .await
            .expect("the stored request wakes the waiter");
        assert!(!handle.is_shutting_down());
        handle.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(1), handle.shutdown_requested())
            .await
            .expect("shutdown is seen");
    }

    #[test]
    fn progress_and_errors_show_in_the_snapshot() {
        let handle = SyncHandle::new(SyncMode::Streaming, 5);
        handle.set_initialising(10, 100);
        handle.set_error("master unreachable");
        handle.set_interval(0);
        let live = handle.snapshot();
        assert!(live.initialising);
        assert_eq!((live.init_records_done, live.init_records_total), (10, 100));
        assert_eq!(live.last_error, "master unreachable");
        assert_eq!(live.sync_interval_minutes, 5);
        handle.set_initialised();
        assert!(!handle.snapshot().initialising);
    }
}
