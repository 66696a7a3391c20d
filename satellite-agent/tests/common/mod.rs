//! What the satellite's database tests share: a migrated database of its
//! own, an item record and the store this site hosts.
#![allow(dead_code, clippy::unwrap_used)]

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use storesync_shared::proto::v1::{self as pb, sync_record::Record, SyncRecord};

/// A migrated satellite database in `dir`.
pub async fn satellite_db(dir: &tempfile::TempDir) -> DatabaseConnection {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let db = storesync_shared::domain::db::connect(&url, 1)
        .await
        .unwrap();
    satellite_agent::schema::Migrator::up(&db, None)
        .await
        .unwrap();
    db
}

pub fn item(id: &str, code: &str) -> SyncRecord {
    SyncRecord {
        record: Some(Record::Item(pb::Item {
            id: id.into(),
            code: code.into(),
            name: format!("Item {code}"),
            unit: "tab".into(),
            default_pack_size: 10,
            active: true,
            updated_at_ms: 1,
        })),
    }
}

pub fn store() -> pb::Store {
    pb::Store {
        id: "store-2".into(),
        code: "S2".into(),
        name: "Store 2".into(),
        sync_id: 2,
    }
}
