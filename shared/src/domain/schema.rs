//! The tables every site has: master data (items, names), stores, store data
//! (stock lines, invoices, invoice lines), operators, the audit trail, settings
//! and unlock tokens.
//!
//! Each binary builds its migrator from [`common_migrations`] plus its own
//! tables. Migrations are plain SQL that PostgreSQL and SQLite both accept;
//! [`sql`] fills in the few types that differ.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use sea_orm_migration::prelude::*;

/// Replaces `{blob}` and `{serial_pk}` with the backend's spelling.
pub fn sql(backend: DbBackend, text: &str) -> String {
    let (blob, serial) = match backend {
        DbBackend::Postgres => ("BYTEA", "BIGSERIAL PRIMARY KEY"),
        _ => ("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    };
    text.replace("{blob}", blob).replace("{serial_pk}", serial)
}

/// Runs each `;`-separated statement of `script` (after [`sql`]).
pub async fn run_script<C: ConnectionTrait>(db: &C, script: &str) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    for statement in sql(backend, script).split(';') {
        let statement = statement.trim();
        if !statement.is_empty() {
            db.execute(Statement::from_string(backend, statement.to_owned()))
                .await?;
        }
    }
    Ok(())
}

/// The migrations of the common tables, oldest first.
pub fn common_migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Script::boxed("m0001_common_tables", &[COMMON_TABLES])]
}

/// A migration that only runs fixed scripts, in order ([`run_script`]): most
/// of the master's and the satellite's migrations. One that must compute
/// something (a UUID, say) implements `MigrationTrait` itself.
pub struct Script {
    name: &'static str,
    scripts: &'static [&'static str],
}

impl Script {
    /// Migration `name` (its row in `seaql_migrations`: never rename one that
    /// has shipped) running `scripts`.
    pub fn boxed(name: &'static str, scripts: &'static [&'static str]) -> Box<dyn MigrationTrait> {
        Box::new(Self { name, scripts })
    }
}

impl MigrationName for Script {
    fn name(&self) -> &str {
        self.name
    }
}

#[sea_orm_migration::async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait is declared with the elided form
impl MigrationTrait for Script {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for script in self.scripts {
            run_script(manager.get_connection(), script).await?;
        }
        Ok(())
    }
}

/// The secondary indexes of the store-data tables (stock lines, invoices,
/// invoice lines) as `(name, CREATE INDEX IF NOT EXISTS …)`, taken from the
/// migration itself so there is one definition. A satellite loading a
/// snapshot drops them and builds them once at the end: building an index
/// over a million rows once is several times cheaper than keeping it up to
/// date row by row in random key order.
pub fn store_data_indexes() -> Vec<(String, String)> {
    [COMMON_TABLES, LEDGER_INDEX]
        .into_iter()
        .flat_map(str::lines)
        .map(str::trim)
        .filter_map(|line| {
            let rest = line.strip_prefix("CREATE INDEX ")?;
            let (name, on) = rest.split_once(" ON ")?;
            let table = on.split_whitespace().next()?;
            ["stock_line", "invoice", "invoice_line"]
                .contains(&table)
                .then(|| {
                    (
                        name.to_owned(),
                        format!(
                            "CREATE INDEX IF NOT EXISTS {name} ON {}",
                            on.trim_end_matches(';')
                        ),
                    )
                })
        })
        .collect()
}

/// Transfers between stores, on every site (the master's `m0110_transfers`,
/// the satellite's `m0210_transfers`): the link and status columns of
/// invoices and their lines, and the `transfer` table the master writes.
/// Columns are added at the end, in the entities' order.
pub const TRANSFER_TABLES: &str = r#"
ALTER TABLE invoice ADD COLUMN linked_invoice_id TEXT NOT NULL DEFAULT '';
ALTER TABLE invoice ADD COLUMN shipped_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invoice ADD COLUMN received_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invoice_line ADD COLUMN received_number_of_packs DOUBLE PRECISION NOT NULL DEFAULT 0;
CREATE TABLE transfer (
    id TEXT PRIMARY KEY,
    from_store_id TEXT NOT NULL,
    to_store_id TEXT NOT NULL,
    inbound_invoice_id TEXT NOT NULL UNIQUE,
    shipped_at_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    packs_shipped DOUBLE PRECISION NOT NULL,
    packs_received DOUBLE PRECISION NOT NULL,
    discrepancy DOUBLE PRECISION NOT NULL
);
CREATE INDEX transfer_from_store ON transfer (from_store_id);
CREATE INDEX transfer_to_store ON transfer (to_store_id, delivered_at_ms)
"#;

/// Requisitions between stores, on every site (the master's
/// `m0111_requisitions`, the satellite's `m0211_requisitions`): the
/// invoice's requisition link and the two requisition tables.
pub const REQUISITION_TABLES: &str = r#"
ALTER TABLE invoice ADD COLUMN requisition_id TEXT NOT NULL DEFAULT '';
CREATE INDEX invoice_requisition ON invoice (requisition_id) WHERE requisition_id <> '';
CREATE TABLE requisition (
    id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    other_store_id TEXT NOT NULL,
    requisition_number BIGINT NOT NULL,
    reference TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    sent_at_ms BIGINT NOT NULL,
    finalised_at_ms BIGINT NOT NULL,
    linked_requisition_id TEXT NOT NULL
);
CREATE INDEX requisition_store ON requisition (store_id, created_at_ms);
CREATE INDEX requisition_open ON requisition (kind, status);
CREATE INDEX requisition_linked ON requisition (linked_requisition_id) WHERE linked_requisition_id <> '';
CREATE TABLE requisition_line (
    id TEXT PRIMARY KEY,
    requisition_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    requested_quantity DOUBLE PRECISION NOT NULL,
    stock_on_hand DOUBLE PRECISION NOT NULL,
    average_monthly_consumption DOUBLE PRECISION NOT NULL
);
CREATE INDEX requisition_line_requisition ON requisition_line (requisition_id);
CREATE INDEX transfer_in_transit ON transfer (received_at_ms, from_store_id, to_store_id);
CREATE INDEX transfer_discrepancy ON transfer (received_at_ms) WHERE discrepancy <> 0
"#;

/// The invoice lines of a stock line, for the integrity check's stock
/// ledger (`integrity::ledger`, which joins every stock line of a store to
/// its lines). Without it that join scanned the invoice lines once per stock
/// line on a satellite: SQLite builds no automatic index for a join on a
/// `WITHOUT ROWID` table (m0230), and a store of 1,000,000 records took
/// minutes where it took seconds. The satellite's `m0231_ledger_index`; a
/// store-data index ([`store_data_indexes`]). The master needs none: its
/// tables keep their rowid on SQLite, and PostgreSQL hashes the join.
pub const LEDGER_INDEX: &str =
    "CREATE INDEX invoice_line_stock_line ON invoice_line (stock_line_id);";

/// The next invoice number of a store and kind is the highest plus one
/// (`store_ops::next_invoice_number`, on every invoice a store creates and
/// every inbound shipment the master creates): one index probe with this
/// index, a scan of the store's invoices without it. On every site (the
/// master's `m0112_invoice_numbers`, the satellite's `m0212_invoice_numbers`).
pub const INVOICE_NUMBER_INDEX: &str =
    "CREATE INDEX invoice_store_kind_number ON invoice (store_id, kind, invoice_number)";

// Identifiers are UUID text; dates are ISO text ('' for none) so that both
// backends compare them the same way; instants are milliseconds since the epoch.
// There are no foreign keys: records arrive from other sites in batches whose
// order inside a transaction is the sender's, and the rules (an item in use
// cannot be deleted) are checked in code with a message that names the record.
const COMMON_TABLES: &str = r#"
CREATE TABLE item (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    unit TEXT NOT NULL,
    default_pack_size INTEGER NOT NULL,
    active BOOLEAN NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE name (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    is_customer BOOLEAN NOT NULL,
    is_supplier BOOLEAN NOT NULL,
    is_store BOOLEAN NOT NULL,
    active BOOLEAN NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE store (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    sync_id INTEGER NOT NULL UNIQUE
);
CREATE TABLE stock_line (
    id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    batch TEXT NOT NULL,
    expiry_date TEXT NOT NULL,
    pack_size INTEGER NOT NULL,
    available_number_of_packs DOUBLE PRECISION NOT NULL,
    total_number_of_packs DOUBLE PRECISION NOT NULL,
    cost_price_per_pack DOUBLE PRECISION NOT NULL,
    sell_price_per_pack DOUBLE PRECISION NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX stock_line_store_item ON stock_line (store_id, item_id);
CREATE INDEX stock_line_item ON stock_line (item_id);
CREATE INDEX stock_line_expiry ON stock_line (expiry_date);
CREATE TABLE invoice (
    id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL,
    name_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    invoice_number BIGINT NOT NULL,
    reference TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX invoice_store_created ON invoice (store_id, created_at_ms);
CREATE INDEX invoice_name ON invoice (name_id);
CREATE TABLE invoice_line (
    id TEXT PRIMARY KEY,
    invoice_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    stock_line_id TEXT NOT NULL,
    batch TEXT NOT NULL,
    expiry_date TEXT NOT NULL,
    pack_size INTEGER NOT NULL,
    number_of_packs DOUBLE PRECISION NOT NULL,
    cost_price_per_pack DOUBLE PRECISION NOT NULL,
    sell_price_per_pack DOUBLE PRECISION NOT NULL
);
CREATE INDEX invoice_line_invoice ON invoice_line (invoice_id);
CREATE INDEX invoice_line_store_item ON invoice_line (store_id, item_id);
CREATE INDEX invoice_line_item ON invoice_line (item_id);
CREATE TABLE operator (
    user_name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE audit_log (
    id {serial_pk},
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE setting (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE unlock_token (
    token_hash TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
)
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn every_store_data_index_is_found() {
        let indexes = super::store_data_indexes();
        let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "stock_line_store_item",
                "stock_line_item",
                "stock_line_expiry",
                "invoice_store_created",
                "invoice_name",
                "invoice_line_invoice",
                "invoice_line_store_item",
                "invoice_line_item",
                "invoice_line_stock_line"
            ]
        );
        assert_eq!(
            indexes[0].1,
            "CREATE INDEX IF NOT EXISTS stock_line_store_item ON stock_line (store_id, item_id)"
        );
    }
}
