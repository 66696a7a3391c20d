//! The satellite's part of `StoreService`: which store it hosts (once the sync
//! stream has initialised it), and the outbox entry of every write.
//!
//! # Invariant
//! A store write and its outbox entries commit in one transaction
//! ([`SatelliteStore::after_write`] runs inside it), so nothing is written that
//! will not travel upstream, and nothing travels that was not written.

use sea_orm::{DatabaseConnection, DatabaseTransaction, EntityTrait};
use storesync_shared::domain::store_service::StoreContext;
use storesync_shared::proto::v1::SyncRecord;
use storesync_shared::{Error, Result};

use crate::entities::sync_state;
use crate::outbox;
use crate::status::SyncHandle;

/// What callers read while the satellite has no store yet.
pub const NOT_INITIALISED: &str = "this satellite is not initialised yet: it receives its store and master data from the master over the sync stream (see AgentService.Status)";

/// [`StoreContext`] of a satellite.
#[derive(Clone)]
pub struct SatelliteStore {
    db: DatabaseConnection,
    /// Told about every write, so the open sync session sends it at once.
    sync: SyncHandle,
}

impl SatelliteStore {
    pub fn new(db: DatabaseConnection, sync: SyncHandle) -> Self {
        Self { db, sync }
    }
}

/// The `sync_state` row (migrations insert it).
pub async fn sync_state<C: sea_orm::ConnectionTrait>(db: &C) -> Result<sync_state::Model> {
    sync_state::Entity::find_by_id(1)
        .one(db)
        .await?
        .ok_or_else(|| Error::Internal("the sync_state row is missing".into()))
}

/// The hosted store's id, or FAILED_PRECONDITION before initialisation.
fn hosted_store(state: &sync_state::Model) -> Result<String> {
    if state.initialised && !state.store_id.is_empty() {
        Ok(state.store_id.clone())
    } else {
        Err(Error::FailedPrecondition(NOT_INITIALISED.into()))
    }
}

#[tonic::async_trait]
impl StoreContext for SatelliteStore {
    async fn store_id(&self) -> Result<String> {
        hosted_store(&sync_state(&self.db).await?)
    }

    async fn after_write(&self, txn: &DatabaseTransaction, records: &[SyncRecord]) -> Result<()> {
        // Checked again inside the transaction: a re-initialisation may have
        // started since `store_id` was read.
        hosted_store(&sync_state(txn).await?)?;
        outbox::append(txn, records).await?;
        // Before commit is early but harmless: the session's outbox read waits
        // for SQLite's one connection, so it sees the write once it commits.
        self.sync.notify_outbox_written();
        Ok(())
    }
}
