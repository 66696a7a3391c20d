//! The satellite's own tables, on top of the common ones (`storesync_shared::domain::schema`):
//!
//! - `outbox`: every local change of store data, in a dense sequence, written in
//!   the same transaction as the change (see `outbox`), until the master
//!   acknowledges it.
//! - `sync_state`: one row: the downstream cursor (stored in the same
//!   transaction as the master-data batch it covers), upstream positions,
//!   whether the database is initialised, the hosted store, the master's sync
//!   interval, and the last sync and error; since m0202 also the tag of the
//!   change-log entry at the cursor and the change log's epoch.
//! - `resync_seen` (m0202): the ids a master-data resync has received so far
//!   (see `sync::apply`), emptied when a resync starts and when it completes.

use sea_orm::DbErr;
use sea_orm_migration::prelude::*;
use storesync_shared::domain::schema::{common_migrations, run_script};

/// Runs every pending migration of the satellite.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = common_migrations();
        migrations.push(Box::new(SatelliteTables));
        migrations.push(Box::new(Resync));
        migrations
    }
}

struct SatelliteTables;

impl MigrationName for SatelliteTables {
    fn name(&self) -> &str {
        "m0201_satellite_tables"
    }
}

#[sea_orm_migration::async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait is declared with the elided form
impl MigrationTrait for SatelliteTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_script(manager.get_connection(), SATELLITE_TABLES).await
    }
}

const SATELLITE_TABLES: &str = r#"
CREATE TABLE outbox (
    seq BIGINT PRIMARY KEY,
    payload {blob} NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE sync_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    downstream_cursor BIGINT NOT NULL,
    upstream_last_seq BIGINT NOT NULL,
    upstream_acked_seq BIGINT NOT NULL,
    initialised BOOLEAN NOT NULL,
    store_id TEXT NOT NULL,
    store_code TEXT NOT NULL,
    store_name TEXT NOT NULL,
    sync_interval_minutes INTEGER NOT NULL,
    last_sync_at_ms BIGINT NOT NULL,
    last_error_at_ms BIGINT NOT NULL,
    last_error TEXT NOT NULL
);
INSERT INTO sync_state VALUES (1, 0, 0, 0, FALSE, '', '', '', 0, 0, 0, '')
"#;

struct Resync;

impl MigrationName for Resync {
    fn name(&self) -> &str {
        "m0202_resync"
    }
}

#[sea_orm_migration::async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait is declared with the elided form
impl MigrationTrait for Resync {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_script(manager.get_connection(), RESYNC).await
    }
}

const RESYNC: &str = r#"
ALTER TABLE sync_state ADD COLUMN downstream_tag BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN changelog_epoch TEXT NOT NULL DEFAULT '';
CREATE TABLE resync_seen (
    table_name TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (table_name, id)
)
"#;
