//! The master's own tables, on top of the common ones (`storesync_shared::domain::schema`):
//!
//! - `site`: the "sync with" list, and per site the sync positions that must
//!   move in the same transaction as the data they cover
//!   (`upstream_acked_seq` with each applied upstream batch; `downstream_cursor`
//!   as the site acknowledges).
//! - `site_status`: what operators see about each site's sessions (connected,
//!   mode, last sync, last error, backlog, initialisation progress). Kept apart
//!   from `site` so that status updates never contend with applying batches.
//! - `change_log`: every master-data change, in commit order (see `changelog`).
//! - `counter`: the change-log sequence, taken under a row lock (see `changelog`).
//! - `changelog_epoch` (m0102): one row, the change log's epoch and the
//!   physical identity of the database it was recorded in (see
//!   `changelog::ensure_epoch`); with it `change_log.tag` (a random number per
//!   entry) and `site.snapshot_cursor` (the cursor of a snapshot in progress,
//!   which holds retention; see `sync::retention`).
//! - `m0103_database_identity`: per site, the satellite database that owns the
//!   Sync ID (`site.database_id`, empty until the first one connects; changed
//!   by `AdminService.AdoptDatabase`) and the tag of its acknowledged upstream
//!   entry (`site.upstream_acked_tag`, moved with `upstream_acked_seq`).

use sea_orm_migration::prelude::*;
use storesync_shared::domain::schema::{
    common_migrations, Script, INVOICE_NUMBER_INDEX, REQUISITION_TABLES, TRANSFER_TABLES,
};

/// Runs every pending migration of the master.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = common_migrations();
        migrations.extend([
            Script::boxed("m0101_master_tables", &[MASTER_TABLES]),
            Script::boxed("m0102_changelog_epoch", &[CHANGELOG_EPOCH]),
            Script::boxed("m0103_database_identity", &[DATABASE_IDENTITY]),
            // `refusal`: the upstream batches the master refused, per site
            // (see `sync::refusals`), one row per batch and reason, with how
            // often it came.
            Script::boxed("m0104_refusals", &[REFUSALS]),
            // `site_status.protocol_version`: the protocol each site speaks,
            // for the operator planning upgrades (`SyncStatus`).
            Script::boxed("m0105_protocol_version", &[PROTOCOL_VERSION]),
            // `change_log.traceparent`: the trace of the write behind each
            // entry, so a downstream batch's span links to the writes it carries.
            Script::boxed("m0106_change_log_traceparent", &[CHANGE_TRACES]),
            // The common transfer columns and table (`TRANSFER_TABLES`) and the
            // change log's target store: an entry with a `store_id` (a store
            // row handed over to its site, a transfer record) is sent only to
            // the site hosting that store.
            Script::boxed("m0110_transfers", &[TRANSFER_TABLES, CHANGE_LOG_STORE]),
            // `integrity_check`: each site's integrity checks (see
            // `crate::integrity::record`).
            Script::boxed("m0120_integrity", &[crate::integrity::record::MIGRATION]),
            // The invoice's requisition link and the requisition tables.
            Script::boxed("m0111_requisitions", &[REQUISITION_TABLES]),
            // `integrity_request`: checks requested and their results, run by
            // whichever process holds the site's session.
            Script::boxed(
                "m0121_integrity_requests",
                &[crate::integrity::record::REQUESTS_MIGRATION],
            ),
            // The index that finds a store's next invoice number.
            Script::boxed("m0112_invoice_numbers", &[INVOICE_NUMBER_INDEX]),
        ]);
        migrations
    }
}

const PROTOCOL_VERSION: &str =
    "ALTER TABLE site_status ADD COLUMN protocol_version INTEGER NOT NULL DEFAULT 0";

const CHANGE_TRACES: &str =
    "ALTER TABLE change_log ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''";

const CHANGE_LOG_STORE: &str = "ALTER TABLE change_log ADD COLUMN store_id TEXT;
CREATE INDEX change_log_store_record ON change_log (store_id, record_id)";

/// Sites from before have no owner yet: their next database to connect becomes it.
const DATABASE_IDENTITY: &str = r#"
ALTER TABLE site ADD COLUMN database_id TEXT NOT NULL DEFAULT '';
ALTER TABLE site ADD COLUMN upstream_acked_tag BIGINT NOT NULL DEFAULT 0
"#;

const REFUSALS: &str = r#"
CREATE TABLE refusal (
    id {serial_pk},
    sync_id INTEGER NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    record_table INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    first_at_ms BIGINT NOT NULL,
    last_at_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL
);
CREATE UNIQUE INDEX refusal_batch ON refusal (sync_id, first_seq, last_seq, code, record_table, record_id);
CREATE INDEX refusal_latest ON refusal (last_at_ms, id)
"#;

const MASTER_TABLES: &str = r#"
CREATE TABLE site (
    sync_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    store_id TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    sync_user_name TEXT,
    sync_password_hash TEXT,
    upstream_acked_seq BIGINT NOT NULL DEFAULT 0,
    downstream_cursor BIGINT NOT NULL DEFAULT 0,
    initialised BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE site_status (
    sync_id INTEGER PRIMARY KEY,
    session_id TEXT,
    connected BOOLEAN NOT NULL DEFAULT FALSE,
    ever_connected BOOLEAN NOT NULL DEFAULT FALSE,
    heartbeat_at_ms BIGINT NOT NULL DEFAULT 0,
    mode TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '',
    last_sync_at_ms BIGINT NOT NULL DEFAULT 0,
    last_error_at_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    upstream_records_received BIGINT NOT NULL DEFAULT 0,
    upstream_backlog_reported BIGINT NOT NULL DEFAULT 0,
    initialising BOOLEAN NOT NULL DEFAULT FALSE,
    init_records_done BIGINT NOT NULL DEFAULT 0,
    init_records_total BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE change_log (
    seq BIGINT PRIMARY KEY,
    table_name TEXT NOT NULL,
    record_id TEXT NOT NULL,
    deleted BOOLEAN NOT NULL,
    payload {blob} NOT NULL,
    changed_at_ms BIGINT NOT NULL
);
CREATE INDEX change_log_record ON change_log (table_name, record_id);
CREATE TABLE counter (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counter (name, value) VALUES ('change_log', 0)
"#;

// Entries written before this migration keep tag 0, as do the cursors of
// satellites that applied them: they match. The epoch row is created at start
// (`changelog::ensure_epoch`), where a UUID can be made on either backend.
const CHANGELOG_EPOCH: &str = r#"
ALTER TABLE change_log ADD COLUMN tag BIGINT NOT NULL DEFAULT 0;
ALTER TABLE site ADD COLUMN snapshot_cursor BIGINT;
CREATE TABLE changelog_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch TEXT NOT NULL,
    db_identity TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL
)
"#;
