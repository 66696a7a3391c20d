//! The master's own store (Sync ID 1) through the shared `StoreService`:
//! writes go straight to the master's database, with no outbox, because the
//! master is where store data ends up. A transfer shipped from or received
//! at this store moves on at once, in the write's transaction
//! (`crate::transfers::follow`), and the streams are woken after commit.

use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter};
use storesync_shared::domain::entities::store;
use storesync_shared::domain::store_service::StoreContext;
use storesync_shared::proto::v1::{sync_record, SyncRecord};

use crate::changelog::ChangeNotifier;
use storesync_shared::{Error, Result};

/// [`StoreContext`] of the master's own store.
#[derive(Clone)]
pub struct MasterStore {
    db: DatabaseConnection,
    /// Woken after a write that put transfer entries in the change log.
    notifier: ChangeNotifier,
    /// The last change-log entry a write appended, until it is announced.
    logged: std::sync::Arc<std::sync::Mutex<Option<u64>>>,
}

impl MasterStore {
    pub fn new(db: DatabaseConnection, notifier: ChangeNotifier) -> Self {
        Self {
            db,
            notifier,
            logged: Default::default(),
        }
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

    async fn after_write(&self, txn: &DatabaseTransaction, records: &[SyncRecord]) -> Result<()> {
        let invoices: Vec<String> = records
            .iter()
            .filter_map(|record| match &record.record {
                Some(sync_record::Record::Invoice(invoice))
                    if crate::transfers::followed(
                        storesync_shared::domain::convert::kind_to_str(invoice.kind()),
                        invoice.status().as_str_name(),
                    ) =>
                {
                    Some(invoice.id.clone())
                }
                _ => None,
            })
            .collect();
        let requisitions: Vec<String> = records
            .iter()
            .filter_map(|record| match &record.record {
                Some(sync_record::Record::Requisition(requisition)) => Some(requisition.id.clone()),
                _ => None,
            })
            .collect();
        let mut log = crate::changelog::Pending::default();
        crate::transfers::follow_requisitions(txn, &requisitions, &mut log).await?;
        crate::transfers::follow(txn, &invoices, &mut log).await?;
        if let Some(seq) = log.append(txn).await? {
            if let Ok(mut logged) = self.logged.lock() {
                *logged = Some(logged.map_or(seq, |s| s.max(seq)));
            }
        }
        Ok(())
    }

    async fn after_commit(&self) {
        let logged = self.logged.lock().ok().and_then(|mut logged| logged.take());
        // A write that rolled back leaves a number that is announced with
        // the next commit: a wake-up too many, never a change missed.
        if let Some(seq) = logged {
            self.notifier.committed(seq);
        }
    }
}
