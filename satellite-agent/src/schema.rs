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
//! - `m0203_database_identity`: the database's identity (`sync_state.database_id`,
//!   a UUID made once, here: for a new database when it is created, for one
//!   from before at its first start), a random `tag` on every outbox entry,
//!   the tag of the last acknowledged entry (`upstream_acked_tag`), and
//!   `halted`: why this database stopped syncing for good (a copy whose
//!   history diverged from the master's; see `sync::apply::reconcile_upstream`).
//! - `m0204_resume`: `snapshot_resume`, at most one row while an
//!   initialisation is in progress: the snapshot's cursor and epoch and the
//!   last record held, written with each snapshot batch, so that a cut
//!   snapshot continues where it stopped (`sync::apply`).

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter};
use sea_orm_migration::prelude::*;
use storesync_shared::domain::schema::{
    common_migrations, run_script, Script, INVOICE_NUMBER_INDEX, REQUISITION_TABLES,
    TRANSFER_TABLES,
};

use crate::entities::sync_state;

/// Runs every pending migration of the satellite.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = common_migrations();
        migrations.extend([
            Script::boxed("m0201_satellite_tables", &[SATELLITE_TABLES]),
            Script::boxed("m0202_resync", &[RESYNC]),
            Box::new(DatabaseIdentity),
            Script::boxed("m0204_resume", &[RESUME]),
            // The common transfer columns and table.
            Script::boxed("m0210_transfers", &[TRANSFER_TABLES]),
            // The invoice's requisition link and the requisition tables.
            Script::boxed("m0211_requisitions", &[REQUISITION_TABLES]),
            // The index that finds a store's next invoice number.
            Script::boxed("m0212_invoice_numbers", &[INVOICE_NUMBER_INDEX]),
        ]);
        migrations
    }
}

struct DatabaseIdentity;

impl MigrationName for DatabaseIdentity {
    fn name(&self) -> &str {
        "m0203_database_identity"
    }
}

#[sea_orm_migration::async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait is declared with the elided form
impl MigrationTrait for DatabaseIdentity {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        run_script(db, DATABASE_IDENTITY).await?;
        // Made once, in the migration's transaction: a copy of this file
        // (clone, backup) carries the same identity; the outbox tags tell
        // the copies' histories apart.
        let id = uuid::Uuid::new_v4().to_string();
        sync_state::Entity::update_many()
            .col_expr(sync_state::Column::DatabaseId, Expr::value(id))
            .filter(sync_state::Column::DatabaseId.eq(""))
            .exec(db)
            .await?;
        Ok(())
    }
}

/// Entries written before tags existed keep tag 0: "unknown", never compared.
const DATABASE_IDENTITY: &str = r#"
ALTER TABLE outbox ADD COLUMN tag BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN database_id TEXT NOT NULL DEFAULT '';
ALTER TABLE sync_state ADD COLUMN upstream_acked_tag BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN halted TEXT NOT NULL DEFAULT ''
"#;

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

const RESYNC: &str = r#"
ALTER TABLE sync_state ADD COLUMN downstream_tag BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN changelog_epoch TEXT NOT NULL DEFAULT '';
CREATE TABLE resync_seen (
    table_name TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (table_name, id)
)
"#;

const RESUME: &str = r#"
CREATE TABLE snapshot_resume (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot_cursor BIGINT NOT NULL,
    changelog_epoch TEXT NOT NULL,
    last_table INTEGER NOT NULL,
    last_id TEXT NOT NULL,
    records_done BIGINT NOT NULL
)
"#;
