//! PLACEHOLDER until the satellite-local branch lands: the live sync status handle.
use storesync_shared::proto::v1::ConnectionState;
#[derive(Clone, Default)]
pub struct SyncHandle {
    now: std::sync::Arc<tokio::sync::Notify>,
    outbox: std::sync::Arc<tokio::sync::Notify>,
}
impl SyncHandle {
    pub fn set_state(&self, _s: ConnectionState) {}
    pub fn set_error(&self, _e: String) {}
    pub fn set_synced(&self) {}
    pub fn set_interval(&self, _m: u32) {}
    pub fn set_initialising(&self, _d: u64, _t: u64) {}
    pub fn set_initialised(&self) {}
    pub async fn sync_now_requested(&self) {
        self.now.notified().await
    }
    pub async fn outbox_written(&self) {
        self.outbox.notified().await
    }
}
