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
//! - `m0230_without_rowid`: every synced table rebuilt `WITHOUT ROWID`, its
//!   rows and indexes kept (see [`WithoutRowid`]).
//! - `m0231_ledger_index`: invoice lines by stock line, for the integrity
//!   check's stock ledger (see `LEDGER_INDEX`).

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use sea_orm_migration::prelude::*;
use storesync_shared::domain::schema::{
    common_migrations, run_script, Script, INVOICE_NUMBER_INDEX, LEDGER_INDEX, REQUISITION_TABLES,
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
            Box::new(WithoutRowid),
            Script::boxed("m0231_ledger_index", &[LEDGER_INDEX]),
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

/// `m0230_without_rowid`: every synced table kept in its primary key
/// (`WITHOUT ROWID`) rather than in a rowid table plus a separate unique
/// index on `id`. A row is then written to one b-tree fewer (the key is
/// stored once, not twice) on every downstream apply, snapshot load and
/// local write; look-ups by id read one b-tree instead of two.
///
/// Each table is rebuilt from its own definition as it stands
/// (`sqlite_master`, so columns added by later migrations are kept): a new
/// table with the same columns and constraints `WITHOUT ROWID`, the rows
/// copied, the old table dropped, the new one renamed, and its indexes
/// created again from their own definitions. All tables in one transaction
/// (a savepoint: SQLite migrations run outside one); a table already
/// `WITHOUT ROWID` is left as it is, so running it again changes nothing.
struct WithoutRowid;

impl MigrationName for WithoutRowid {
    fn name(&self) -> &str {
        "m0230_without_rowid"
    }
}

#[sea_orm_migration::async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait is declared with the elided form
impl MigrationTrait for WithoutRowid {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() != sea_orm::DbBackend::Sqlite {
            return Ok(());
        }
        db.execute_unprepared("SAVEPOINT m0230_without_rowid")
            .await?;
        match without_rowid(db).await {
            Ok(()) => {
                db.execute_unprepared("RELEASE m0230_without_rowid").await?;
                Ok(())
            }
            Err(error) => {
                // Nothing of it stays: the next start tries again.
                let _ = db
                    .execute_unprepared("ROLLBACK TO m0230_without_rowid")
                    .await;
                let _ = db.execute_unprepared("RELEASE m0230_without_rowid").await;
                Err(error)
            }
        }
    }
}

/// Rebuilds each synced table `WITHOUT ROWID` (see [`WithoutRowid`]).
async fn without_rowid<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    let text = |sql: &str, name: &str| {
        sea_orm::Statement::from_sql_and_values(sea_orm::DbBackend::Sqlite, sql, [name.into()])
    };
    for table in storesync_shared::domain::tables::SYNCED {
        let name = table.name();
        let Some(found) = db
            .query_one(text(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                name,
            ))
            .await?
        else {
            return Err(DbErr::Migration(format!("table {name} is missing")));
        };
        let definition: String = found.try_get_by_index(0)?;
        if definition.to_ascii_uppercase().contains("WITHOUT ROWID") {
            continue;
        }
        let Some(columns) = definition.find('(').map(|at| &definition[at..]) else {
            return Err(DbErr::Migration(format!(
                "the definition of {name} has no columns: {definition}"
            )));
        };
        let mut indexes = Vec::new();
        for index in db
            .query_all(text(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                name,
            ))
            .await?
        {
            indexes.push(index.try_get_by_index::<String>(0)?);
        }
        let new = format!("{name}_m0230");
        db.execute_unprepared(&format!("CREATE TABLE \"{new}\" {columns} WITHOUT ROWID"))
            .await?;
        db.execute_unprepared(&format!("INSERT INTO \"{new}\" SELECT * FROM \"{name}\""))
            .await?;
        db.execute_unprepared(&format!("DROP TABLE \"{name}\""))
            .await?;
        db.execute_unprepared(&format!("ALTER TABLE \"{new}\" RENAME TO \"{name}\""))
            .await?;
        for index in indexes {
            db.execute_unprepared(&index).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    use sea_orm_migration::MigratorTrait;

    use super::Migrator;

    async fn strings(db: &sea_orm::DatabaseConnection, sql: &str) -> Vec<String> {
        db.query_all(Statement::from_string(DbBackend::Sqlite, sql))
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get_by_index::<String>(0).unwrap())
            .collect()
    }

    /// An empty satellite database in a directory of its own (kept while
    /// the directory is).
    async fn scratch() -> (tempfile::TempDir, sea_orm::DatabaseConnection) {
        let dir = tempfile::tempdir().unwrap();
        let url = storesync_shared::domain::db::sqlite_url(&dir.path().join("s.db"));
        let db = storesync_shared::domain::db::connect(&url, 1)
            .await
            .unwrap();
        (dir, db)
    }

    /// The integrity check's stock ledger finds a stock line's invoice lines
    /// by index, not by scanning every line for each stock line (SQLite
    /// makes no automatic index for the `WITHOUT ROWID` tables of m0230):
    /// on a 1,000,000-record store that scan took the check past minutes.
    #[tokio::test]
    async fn the_stock_ledger_finds_lines_by_index() {
        let (_dir, db) = scratch().await;
        Migrator::up(&db, None).await.unwrap();
        let ledger = storesync_shared::domain::integrity::ledger_statement(
            sea_orm::DbBackend::Sqlite,
            Some("s1"),
        );
        let plan = db
            .query_all(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Sqlite,
                format!("EXPLAIN QUERY PLAN {}", ledger.sql),
                ledger.values.map(|v| v.0).unwrap_or_default(),
            ))
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.try_get_by_index::<String>(3).unwrap())
            .collect::<Vec<_>>();
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH l USING INDEX invoice_line_stock_line")),
            "{plan:?}"
        );
        // Built again after a snapshot with the other store-data indexes.
        assert!(storesync_shared::domain::schema::store_data_indexes()
            .iter()
            .any(|(name, _)| name == "invoice_line_stock_line"));
    }

    /// A database from before m0230, holding rows, comes out of it with
    /// every synced table `WITHOUT ROWID`, the same rows, the same indexes
    /// and its unique codes still enforced; running it again changes nothing.
    #[tokio::test]
    async fn m0230_rebuilds_synced_tables_keeping_rows_and_indexes() {
        let (_dir, db) = scratch().await;
        let before = Migrator::migrations()
            .iter()
            .position(|m| m.name() == "m0230_without_rowid")
            .unwrap() as u32;
        Migrator::up(&db, Some(before)).await.unwrap();
        db.execute_unprepared(
            "INSERT INTO item (id, code, name, unit, default_pack_size, active, updated_at_ms) \
             VALUES ('i1', 'C1', 'one', 'tab', 10, 1, 5), ('i2', 'C2', 'two', 'tab', 20, 0, 6); \
             INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms) \
             VALUES ('v1', 's1', 'n1', 'INBOUND', 'NEW', 1, '', 2)",
        )
        .await
        .unwrap();
        let indexes =
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name";
        let indexes_before = strings(&db, indexes).await;
        let items_before = strings(&db, "SELECT id || code || name || default_pack_size || active || updated_at_ms FROM item ORDER BY id").await;
        let invoices_before = strings(
            &db,
            "SELECT id || store_id || kind || linked_invoice_id FROM invoice",
        )
        .await;

        // m0230 alone (m0231 adds an index).
        Migrator::up(&db, Some(1)).await.unwrap();
        for table in storesync_shared::domain::tables::SYNCED {
            let definition = strings(
                &db,
                &format!(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '{}'",
                    table.name()
                ),
            )
            .await;
            assert!(definition[0].ends_with("WITHOUT ROWID"), "{definition:?}");
        }
        assert_eq!(strings(&db, indexes).await, indexes_before);
        assert_eq!(strings(&db, "SELECT id || code || name || default_pack_size || active || updated_at_ms FROM item ORDER BY id").await, items_before);
        assert_eq!(
            strings(
                &db,
                "SELECT id || store_id || kind || linked_invoice_id FROM invoice"
            )
            .await,
            invoices_before
        );
        // The unique code is still unique.
        let taken = db
            .execute_unprepared(
                "INSERT INTO item (id, code, name, unit, default_pack_size, active, updated_at_ms) \
                 VALUES ('i3', 'C1', 'three', 'tab', 1, 1, 7)",
            )
            .await;
        assert!(taken.is_err());
        // Again (a start after a crash before the migration was recorded).
        super::without_rowid(&db).await.unwrap();
        assert_eq!(strings(&db, indexes).await, indexes_before);
        assert_eq!(
            strings(&db, "SELECT id FROM item ORDER BY id").await,
            ["i1", "i2"]
        );
    }
}
