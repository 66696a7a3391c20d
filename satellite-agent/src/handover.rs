//! `satellite-agent handover export|import`: moves a retired database's
//! unsent invoices to the database that syncs the site, instead of wiping it.
//!
//! A database that may no longer sync (replaced by another machine, or a
//! clone or restored copy that stopped, see `sync::apply::reconcile_upstream`)
//! still holds the invoices the master never acknowledged. `export` writes
//! every invoice its outbox still holds to a self-describing JSON file (with
//! its lines, ids and the store it belongs to) and marks the database halted
//! (`sync_state.halted`), so it can never push them itself later. `import`
//! creates each invoice again on the database that syncs, through the store's
//! normal path (`store_ops::create_invoice_with`): stock moves by the rules of
//! today's stock lines, a new invoice number and outbox entries are assigned,
//! and the invoice, line and new stock line ids are kept.
//!
//! # Invariant: nothing lost, nothing twice
//! An invoice is imported in one transaction with its outbox entries, or not
//! at all. An invoice whose id this database already has (it reached the
//! master before, or an earlier import brought it) is skipped, so importing
//! a file twice changes nothing; one the store's rules refuse (a stock line
//! it takes from is gone, or would go below zero) is reported by its id and
//! reason, and the others still go in.

use std::collections::HashSet;
use std::path::Path;

use sea_orm::{DatabaseConnection, EntityTrait};
use sea_orm_migration::MigratorTrait;
use serde::{Deserialize, Serialize};
use storesync_shared::domain::entities::invoice;
use storesync_shared::domain::store_ops::{self, GivenIds};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::{self as pb, sync_record::Record};

use crate::entities::sync_state;
use crate::{outbox, schema, store};

/// The file's `format`.
pub const FORMAT: &str = "storesync-handover/1";

/// A handover file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    pub format: String,
    /// Where the invoices come from.
    pub sync_id: u32,
    pub database_id: String,
    pub store_id: String,
    pub store_code: String,
    pub exported_at_ms: i64,
    /// The last upstream entry the master acknowledged from that database.
    pub upstream_acked_seq: i64,
    /// Invoices not acknowledged by the master, oldest first.
    pub invoices: Vec<Invoice>,
}

/// An invoice as it was created on the exporting database.
#[derive(Debug, Serialize, Deserialize)]
pub struct Invoice {
    pub id: String,
    /// `SUPPLIER_INVOICE`, `CUSTOMER_INVOICE` or `INVENTORY_ADJUSTMENT`.
    pub kind: String,
    pub name_id: String,
    pub reference: String,
    /// Its number and time there (a new number is given on import).
    pub invoice_number: i64,
    pub created_at_ms: i64,
    pub lines: Vec<Line>,
}

/// One line of an [`Invoice`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Line {
    pub id: String,
    pub item_id: String,
    /// Created by a goods-in line, taken from (or added to) by the others.
    pub stock_line_id: String,
    pub batch: String,
    pub expiry_date: String,
    pub pack_size: i32,
    pub number_of_packs: f64,
    pub cost_price_per_pack: f64,
    pub sell_price_per_pack: f64,
    /// The line created its stock line (goods in, or an adjustment that
    /// created one); import creates it again with the same id.
    pub creates_stock_line: bool,
}

/// What an import did, invoice by invoice.
#[derive(Debug, Default)]
pub struct Imported {
    pub created: Vec<String>,
    /// Already in this database (on the master before, or imported before).
    pub skipped: Vec<String>,
    /// Refused by the store's rules: invoice id and why.
    pub refused: Vec<(String, String)>,
}

/// Opens (and migrates) the database at `url` for a handover command.
pub async fn open(url: &str) -> Result<DatabaseConnection, String> {
    let db = storesync_shared::domain::db::connect(url, 1)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    schema::Migrator::up(&db, None)
        .await
        .map_err(|e| format!("cannot migrate the database: {e}"))?;
    Ok(db)
}

/// Every invoice the outbox of `db` still holds, and halts `db` for good.
pub async fn export(db: &DatabaseConnection, sync_id: u32) -> Result<Handover, String> {
    let txn = storesync_shared::domain::db::begin(db)
        .await
        .map_err(|e| e.to_string())?;
    let state = store::sync_state(&txn).await.map_err(|e| e.to_string())?;
    let entries = outbox::read_after(&txn, 0, u64::MAX >> 1)
        .await
        .map_err(|e| e.to_string())?;
    // Invoices touched by an unacknowledged entry, in outbox order.
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for entry in entries {
        let id = match entry.record.record {
            Some(Record::Invoice(invoice)) => invoice.id,
            Some(Record::InvoiceLine(line)) => line.invoice_id,
            _ => continue,
        };
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    let mut invoices = Vec::with_capacity(ids.len());
    for id in ids {
        let found = store_ops::get_invoice(&txn, &state.store_id, &id)
            .await
            .map_err(|e| format!("reading invoice {id}: {e}"))?;
        let mut creates = Vec::with_capacity(found.lines.len());
        for line in &found.lines {
            creates.push(match found.kind() {
                pb::InvoiceKind::SupplierInvoice => true,
                pb::InvoiceKind::InventoryAdjustment => {
                    created_by(&txn, &line.stock_line_id, &line.id).await?
                }
                _ => false,
            });
        }
        let mut creates = creates.into_iter();
        invoices.push(Invoice {
            kind: found.kind().as_str_name().to_owned(),
            id: found.id,
            name_id: found.name_id,
            reference: found.reference,
            invoice_number: found.invoice_number,
            created_at_ms: found.created_at_ms,
            lines: found
                .lines
                .into_iter()
                .map(|line| Line {
                    id: line.id,
                    item_id: line.item_id,
                    stock_line_id: line.stock_line_id,
                    batch: line.batch,
                    expiry_date: line.expiry_date,
                    pack_size: line.pack_size,
                    number_of_packs: line.number_of_packs,
                    cost_price_per_pack: line.cost_price_per_pack,
                    sell_price_per_pack: line.sell_price_per_pack,
                    creates_stock_line: creates.next().unwrap_or(false),
                })
                .collect(),
        });
    }
    let handover = Handover {
        format: FORMAT.to_owned(),
        sync_id,
        database_id: state.database_id.clone(),
        store_id: state.store_id.clone(),
        store_code: state.store_code.clone(),
        exported_at_ms: now_ms(),
        upstream_acked_seq: state.upstream_acked_seq,
        invoices,
    };
    // Its invoices now travel in the file: this database must never push
    // them itself (they would arrive a second time, with stale stock).
    if state.halted.is_empty() {
        sync_state::Entity::update_many()
            .col_expr(
                sync_state::Column::Halted,
                sea_orm::sea_query::Expr::value(format!(
                    "this database handed its {} unsent invoice(s) over (satellite-agent handover export) and no longer syncs",
                    handover.invoices.len()
                )),
            )
            .exec(&txn)
            .await
            .map_err(|e| e.to_string())?;
    }
    txn.commit().await.map_err(|e| e.to_string())?;
    Ok(handover)
}

/// Whether invoice line `line_id` created stock line `stock_line_id`: the
/// line that creates a stock line is the first to name it.
async fn created_by(
    db: &sea_orm::DatabaseTransaction,
    stock_line_id: &str,
    line_id: &str,
) -> Result<bool, String> {
    use sea_orm::{ColumnTrait, QueryFilter};
    use storesync_shared::domain::entities::invoice_line;
    let lines = invoice_line::Entity::find()
        .filter(invoice_line::Column::StockLineId.eq(stock_line_id))
        .all(db)
        .await
        .map_err(|e| e.to_string())?;
    let invoices = invoice::Entity::find()
        .filter(invoice::Column::Id.is_in(lines.iter().map(|l| l.invoice_id.clone())))
        .all(db)
        .await
        .map_err(|e| e.to_string())?;
    let created_at = |invoice_id: &str| {
        invoices
            .iter()
            .find(|i| i.id == invoice_id)
            .map_or(i64::MAX, |i| i.created_at_ms)
    };
    let first = lines
        .iter()
        .min_by_key(|line| (created_at(&line.invoice_id), line.id.clone()));
    Ok(first.is_some_and(|line| line.id == line_id))
}

/// Creates each invoice of `handover` again in `db` (see the module docs).
pub async fn import(db: &DatabaseConnection, handover: &Handover) -> Result<Imported, String> {
    if handover.format != FORMAT {
        return Err(format!(
            "format: {:?} is not a handover file of this version ({FORMAT})",
            handover.format
        ));
    }
    let state = store::sync_state(db).await.map_err(|e| e.to_string())?;
    if !state.initialised {
        return Err("this database is not initialised yet: let it sync with the master first (adopt it with AdminService.AdoptDatabase if it is refused)".into());
    }
    if !state.halted.is_empty() {
        return Err(format!(
            "this database does not sync ({}); import into the database that syncs the site",
            state.halted
        ));
    }
    if state.store_id != handover.store_id {
        return Err(format!(
            "store_id: the file holds invoices of store {} ({}), this database hosts store {} ({})",
            handover.store_code, handover.store_id, state.store_code, state.store_id
        ));
    }
    let mut done = Imported::default();
    for invoice in &handover.invoices {
        match import_one(db, &state.store_id, invoice).await {
            Ok(true) => done.created.push(invoice.id.clone()),
            Ok(false) => done.skipped.push(invoice.id.clone()),
            Err(why) => done.refused.push((invoice.id.clone(), why)),
        }
    }
    Ok(done)
}

/// One invoice in one transaction with its outbox entries; false: already here.
async fn import_one(
    db: &DatabaseConnection,
    store_id: &str,
    found: &Invoice,
) -> Result<bool, String> {
    let txn = storesync_shared::domain::db::begin(db)
        .await
        .map_err(|e| e.to_string())?;
    if invoice::Entity::find_by_id(found.id.clone())
        .one(&txn)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(false);
    }
    let kind = pb::InvoiceKind::from_str_name(&found.kind)
        .ok_or_else(|| format!("kind: {:?} is not an invoice kind", found.kind))?;
    let request = pb::CreateInvoiceRequest {
        invoice: Some(pb::Invoice {
            kind: kind as i32,
            name_id: found.name_id.clone(),
            reference: found.reference.clone(),
            lines: found
                .lines
                .iter()
                .map(|line| pb::InvoiceLine {
                    item_id: line.item_id.clone(),
                    // Goods in creates its stock line (with the id given below).
                    stock_line_id: if line.creates_stock_line {
                        String::new()
                    } else {
                        line.stock_line_id.clone()
                    },
                    batch: line.batch.clone(),
                    expiry_date: line.expiry_date.clone(),
                    pack_size: line.pack_size,
                    // Stored as the stock moved (goods out negative); asked as packs.
                    number_of_packs: if kind == pb::InvoiceKind::CustomerInvoice {
                        -line.number_of_packs
                    } else {
                        line.number_of_packs
                    },
                    cost_price_per_pack: line.cost_price_per_pack,
                    sell_price_per_pack: line.sell_price_per_pack,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let given = GivenIds {
        invoice_id: found.id.clone(),
        line_ids: found.lines.iter().map(|l| l.id.clone()).collect(),
        stock_line_ids: found
            .lines
            .iter()
            .map(|l| l.stock_line_id.clone())
            .collect(),
    };
    let (_, records) = store_ops::create_invoice_with(&txn, store_id, request, Some(&given))
        .await
        .map_err(|e| e.to_string())?;
    outbox::append(&txn, &records)
        .await
        .map_err(|e| e.to_string())?;
    txn.commit().await.map_err(|e| e.to_string())?;
    Ok(true)
}

/// Writes `handover` to `path` (refusing to overwrite a file).
pub fn write_file(path: &Path, handover: &Handover) -> Result<(), String> {
    let text = serde_json::to_string_pretty(handover).map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads a handover file.
pub fn read_file(path: &Path) -> Result<Handover, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a handover file: {e}", path.display()))
}
