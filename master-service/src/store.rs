//! The master's own store (Sync ID 1) through the shared `StoreService`:
//! writes go straight to the master's database, with no outbox, because the
//! master is where store data ends up.

use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter};
use storesync_shared::domain::entities::store;
use storesync_shared::domain::store_service::StoreContext;
use storesync_shared::proto::v1::SyncRecord;
use storesync_shared::{Error, Result};

/// [`StoreContext`] of the master's own store.
#[derive(Clone)]
pub struct MasterStore {
    db: DatabaseConnection,
}

impl MasterStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl StoreContext for MasterStore {
    async fn store_id(&self) -> Result<String> {
        store::Entity::find()
            .filter(store::Column::SyncId.eq(1))
            .one(&self.db)
            .await?
            .map(|s| s.id)
            .ok_or_else(|| Error::Internal("the master's own store (Sync ID 1) is missing".into()))
    }

    async fn after_write(&self, _txn: &DatabaseTransaction, _records: &[SyncRecord]) -> Result<()> {
        Ok(())
    }
}
