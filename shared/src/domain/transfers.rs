//! A store's side of transfers between the network's stores: the outbound
//! shipment it prepares and ships, the inbound shipment it receives.
//!
//! Used by `StoreService` on every site, like [`crate::domain::store_ops`]
//! (same transaction discipline: every read, check and write in the
//! caller's transaction, every changed row returned as a [`SyncRecord`] for
//! the outbox). The master's half (creating the inbound shipment, the
//! `transfer` record) is in `master-service/src/transfers.rs`; how a row
//! changes hands is in `docs/TRANSFERS.md`.
//!
//! # Invariants
//! - **Stock.** A DRAFT outbound's lines hold reservations: for each stock
//!   line, `available = total - packs reserved by drafts` moves with every
//!   create and edit, checked like any other take (never below zero,
//!   several lines on one stock line add up). Shipping takes the packs from
//!   `total`; `available` already lacks them. Receiving creates one stock
//!   line per line with packs received.
//! - **Who writes which status.** The sending store's site writes DRAFT and
//!   SHIPPED on its outbound; the master creates the inbound SHIPPED; the
//!   receiving store's site writes RECEIVED on its inbound. A shipped
//!   outbound and a received inbound never change again.
//! - **Writes of one store are serialised** by the store lock of
//!   [`store_ops::lock_store`] (PostgreSQL), SQLite having one writer.

use std::collections::{BTreeMap, HashMap, HashSet};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crate::domain::convert::kind_to_str;
use crate::domain::entities::{invoice, invoice_line, name, stock_line, transfer};
use crate::domain::error::{Error, Result};
use crate::domain::store_ops::{self, DEFAULT_PAGE_SIZE, MAX_INVOICE_LINES, MAX_PAGE_SIZE};
use crate::domain::validate;
use crate::proto::v1 as pb;
use crate::proto::v1::{sync_record, RecordRef, SyncRecord, Table};

/// Stock arithmetic tolerance, as in `store_ops`.
const EPSILON: f64 = 1e-9;

fn status_str(status: pb::InvoiceStatus) -> &'static str {
    status.as_str_name()
}

fn upsert_record(record: sync_record::Record) -> SyncRecord {
    SyncRecord {
        record: Some(record),
    }
}

/// One checked request line of an outbound shipment.
struct OutLine {
    stock_line_id: String,
    packs: f64,
    sell: f64,
}

fn check_lines(lines: &[pb::InvoiceLine]) -> Result<Vec<OutLine>> {
    if lines.is_empty() {
        return Err(Error::invalid("lines", "must hold at least one line"));
    }
    if lines.len() > MAX_INVOICE_LINES {
        return Err(Error::invalid(
            "lines",
            format!(
                "has {} lines; at most {MAX_INVOICE_LINES} are allowed",
                lines.len()
            ),
        ));
    }
    lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            let field = |name: &str| format!("lines[{index}].{name}");
            validate::uuid(&field("stock_line_id"), &line.stock_line_id)?;
            validate::quantity(&field("number_of_packs"), line.number_of_packs, 0.0)?;
            if line.number_of_packs <= 0.0 {
                return Err(Error::invalid(
                    &field("number_of_packs"),
                    "must be more than 0",
                ));
            }
            validate::quantity(&field("sell_price_per_pack"), line.sell_price_per_pack, 0.0)?;
            Ok(OutLine {
                stock_line_id: line.stock_line_id.clone(),
                packs: line.number_of_packs,
                sell: line.sell_price_per_pack,
            })
        })
        .collect()
}

/// The destination must be another store of the network that is in the
/// sync-with list. A store's name has the store's id and follows its site:
/// it is created with the site, and deactivated (or deleted) when the site
/// is removed, so an active store name is a store of the list.
pub(crate) async fn check_destination<C: ConnectionTrait>(
    txn: &C,
    field: &str,
    store_id: &str,
    to_store_id: &str,
) -> Result<()> {
    validate::uuid(field, to_store_id)?;
    if to_store_id == store_id {
        let verb = if field == "to_store_id" {
            "ship to"
        } else {
            "request from"
        };
        return Err(Error::FailedPrecondition(format!(
            "{field}: a store cannot {verb} itself"
        )));
    }
    let found = name::Entity::find_by_id(to_store_id.to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{field}: no store has id {to_store_id}")))?;
    if !found.is_store {
        return Err(Error::FailedPrecondition(format!(
            "{field}: {} ({to_store_id}) is not a store of the network",
            found.code
        )));
    }
    if !found.active {
        return Err(Error::FailedPrecondition(format!(
            "{field}: store {} ({to_store_id}) is not in the sync-with list",
            found.code
        )));
    }
    Ok(())
}

/// An outbound shipment of `store_id` in `want` status, or why not.
async fn outbound<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    id: &str,
    want: pb::InvoiceStatus,
) -> Result<invoice::Model> {
    validate::uuid("id", id)?;
    let found = invoice::Entity::find_by_id(id.to_owned())
        .filter(invoice::Column::StoreId.eq(store_id))
        .filter(invoice::Column::Kind.eq(kind_to_str(pb::InvoiceKind::OutboundShipment)))
        .one(txn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("id: no outbound shipment {id} in this store")))?;
    if found.status != status_str(want) {
        return Err(Error::FailedPrecondition(format!(
            "id: outbound shipment {id} is {}, not {}; a shipped outbound cannot change",
            found.status,
            status_str(want)
        )));
    }
    Ok(found)
}

async fn lines_of<C: ConnectionTrait>(
    txn: &C,
    invoice_id: &str,
) -> Result<Vec<invoice_line::Model>> {
    let mut lines = invoice_line::Entity::find()
        .filter(invoice_line::Column::InvoiceId.eq(invoice_id))
        .all(txn)
        .await?;
    lines.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    Ok(lines)
}

/// Stock lines of `store_id` with these ids.
async fn stock_lines<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    ids: impl IntoIterator<Item = String>,
) -> Result<BTreeMap<String, stock_line::Model>> {
    let ids: Vec<String> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    // By key only, the store checked here (see `store_ops::create_invoice_with`:
    // SQLite would otherwise read every stock line of the store).
    Ok(stock_line::Entity::find()
        .filter(stock_line::Column::Id.is_in(ids))
        .all(txn)
        .await?
        .into_iter()
        .filter(|line| line.store_id == store_id)
        .map(|line| (line.id.clone(), line))
        .collect())
}

async fn write_stock<C: ConnectionTrait>(txn: &C, line: &stock_line::Model) -> Result<()> {
    stock_line::Entity::update_many()
        .col_expr(
            stock_line::Column::AvailableNumberOfPacks,
            Expr::value(line.available_number_of_packs),
        )
        .col_expr(
            stock_line::Column::TotalNumberOfPacks,
            Expr::value(line.total_number_of_packs),
        )
        .col_expr(
            stock_line::Column::UpdatedAtMs,
            Expr::value(line.updated_at_ms),
        )
        .filter(stock_line::Column::Id.eq(line.id.as_str()))
        .exec(txn)
        .await?;
    Ok(())
}

async fn write_invoice<C: ConnectionTrait>(txn: &C, row: &invoice::Model) -> Result<()> {
    invoice::Entity::insert(invoice::ActiveModel::from(row.clone()))
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(invoice::Column::Id)
                .update_columns([
                    invoice::Column::Status,
                    invoice::Column::Reference,
                    invoice::Column::ShippedAtMs,
                    invoice::Column::ReceivedAtMs,
                ])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// Reserves `lines` on `stock` (already released of the old lines, if
/// any) and returns the invoice lines; FAILED_PRECONDITION names the stock
/// line that lacks packs.
fn reserve(
    store_id: &str,
    invoice_id: &str,
    lines: Vec<OutLine>,
    stock: &mut BTreeMap<String, stock_line::Model>,
    now: i64,
) -> Result<Vec<invoice_line::Model>> {
    let mut ids: Vec<String> = (0..lines.len()).map(|_| validate::new_id()).collect();
    ids.sort_unstable();
    let mut taken: HashMap<String, f64> = HashMap::new();
    let mut out = Vec::with_capacity(lines.len());
    for (index, (line, id)) in lines.into_iter().zip(ids).enumerate() {
        let current = stock.get_mut(&line.stock_line_id).ok_or_else(|| {
            Error::NotFound(format!(
                "lines[{index}].stock_line_id: stock line {} does not exist in this store",
                line.stock_line_id
            ))
        })?;
        let available = current
            .available_number_of_packs
            .min(current.total_number_of_packs);
        if available - line.packs < -EPSILON {
            let before = taken.get(&line.stock_line_id).copied().unwrap_or(0.0);
            return Err(Error::FailedPrecondition(format!(
                "lines[{index}]: stock line {} (batch {:?}) has {} packs available{}; this line takes {} and would leave it below zero",
                line.stock_line_id,
                current.batch,
                available + before,
                if before > EPSILON {
                    format!(", of which earlier lines of this shipment take {before}")
                } else {
                    String::new()
                },
                line.packs
            )));
        }
        *taken.entry(line.stock_line_id.clone()).or_insert(0.0) += line.packs;
        current.available_number_of_packs =
            (current.available_number_of_packs - line.packs).max(0.0);
        current.updated_at_ms = now;
        out.push(invoice_line::Model {
            id,
            invoice_id: invoice_id.to_owned(),
            store_id: store_id.to_owned(),
            item_id: current.item_id.clone(),
            stock_line_id: line.stock_line_id,
            batch: current.batch.clone(),
            expiry_date: current.expiry_date.clone(),
            pack_size: current.pack_size,
            number_of_packs: line.packs,
            cost_price_per_pack: current.cost_price_per_pack,
            sell_price_per_pack: line.sell,
            received_number_of_packs: 0.0,
        });
    }
    Ok(out)
}

fn answer(row: invoice::Model, lines: &[invoice_line::Model]) -> pb::Invoice {
    let mut answer: pb::Invoice = row.into();
    answer.lines = lines.iter().cloned().map(Into::into).collect();
    answer
}

/// Records of a write: stock lines, the invoice, lines deleted, lines written.
fn records(
    stock: impl IntoIterator<Item = stock_line::Model>,
    row: &invoice::Model,
    deleted_lines: &[invoice_line::Model],
    lines: &[invoice_line::Model],
) -> Vec<SyncRecord> {
    let mut out: Vec<SyncRecord> = stock
        .into_iter()
        .map(|line| upsert_record(sync_record::Record::StockLine(line.into())))
        .collect();
    out.push(upsert_record(sync_record::Record::Invoice(
        row.clone().into(),
    )));
    out.extend(deleted_lines.iter().map(|line| {
        upsert_record(sync_record::Record::Deleted(RecordRef {
            table: Table::InvoiceLine as i32,
            id: line.id.clone(),
        }))
    }));
    out.extend(
        lines
            .iter()
            .cloned()
            .map(|line| upsert_record(sync_record::Record::InvoiceLine(line.into()))),
    );
    out
}

/// Creates a DRAFT outbound shipment of `store_id`, reserving its packs.
pub async fn create_transfer<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::CreateTransferRequest,
) -> Result<(pb::Invoice, Vec<SyncRecord>)> {
    validate::optional_text("reference", &request.reference, 256)?;
    let lines = check_lines(&request.lines)?;
    store_ops::lock_store(txn, store_id).await?;
    check_destination(txn, "to_store_id", store_id, &request.to_store_id).await?;
    if !request.requisition_id.is_empty() {
        crate::domain::requisitions::check_supplies(
            txn,
            store_id,
            &request.requisition_id,
            &request.to_store_id,
        )
        .await?;
    }
    let mut stock =
        stock_lines(txn, store_id, lines.iter().map(|l| l.stock_line_id.clone())).await?;
    let now = store_ops::creation_time(txn, store_id).await?;
    let kind = kind_to_str(pb::InvoiceKind::OutboundShipment);
    let row = invoice::Model {
        id: validate::new_id(),
        store_id: store_id.to_owned(),
        name_id: request.to_store_id.clone(),
        kind: kind.to_owned(),
        status: status_str(pb::InvoiceStatus::Draft).to_owned(),
        invoice_number: store_ops::next_invoice_number(txn, store_id, kind).await?,
        reference: request.reference.clone(),
        created_at_ms: now,
        linked_invoice_id: String::new(),
        shipped_at_ms: 0,
        received_at_ms: 0,
        requisition_id: request.requisition_id.clone(),
    };
    let new_lines = reserve(store_id, &row.id, lines, &mut stock, now)?;
    write_invoice(txn, &row).await?;
    insert_lines(txn, &new_lines).await?;
    let touched = touched(&stock, &new_lines, &[]);
    for line in &touched {
        write_stock(txn, line).await?;
    }
    let records = records(touched, &row, &[], &new_lines);
    Ok((answer(row, &new_lines), records))
}

/// The stock lines `lines` (new and old) name, as they now are.
fn touched(
    stock: &BTreeMap<String, stock_line::Model>,
    lines: &[invoice_line::Model],
    old: &[invoice_line::Model],
) -> Vec<stock_line::Model> {
    let ids: HashSet<&str> = lines
        .iter()
        .chain(old)
        .map(|line| line.stock_line_id.as_str())
        .collect();
    stock
        .values()
        .filter(|line| ids.contains(line.id.as_str()))
        .cloned()
        .collect()
}

async fn insert_lines<C: ConnectionTrait>(txn: &C, lines: &[invoice_line::Model]) -> Result<()> {
    for chunk in lines.chunks(200) {
        invoice_line::Entity::insert_many(
            chunk
                .iter()
                .cloned()
                .map(invoice_line::ActiveModel::from)
                .collect::<Vec<_>>(),
        )
        .exec_without_returning(txn)
        .await?;
    }
    Ok(())
}

/// Replaces the reference and lines of a DRAFT outbound shipment.
pub async fn update_transfer<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::UpdateTransferRequest,
) -> Result<(pb::Invoice, Vec<SyncRecord>)> {
    validate::optional_text("reference", &request.reference, 256)?;
    let lines = check_lines(&request.lines)?;
    store_ops::lock_store(txn, store_id).await?;
    let mut row = outbound(txn, store_id, &request.id, pb::InvoiceStatus::Draft).await?;
    let old = lines_of(txn, &row.id).await?;
    let mut stock = stock_lines(
        txn,
        store_id,
        old.iter()
            .map(|l| l.stock_line_id.clone())
            .chain(lines.iter().map(|l| l.stock_line_id.clone())),
    )
    .await?;
    let now = validate::now_ms();
    // Release the old reservations first: the new lines may take them again.
    for line in &old {
        if let Some(current) = stock.get_mut(&line.stock_line_id) {
            current.available_number_of_packs += line.number_of_packs;
            current.updated_at_ms = now;
        }
    }
    let new_lines = reserve(store_id, &row.id, lines, &mut stock, now)?;
    row.reference = request.reference.clone();
    invoice_line::Entity::delete_many()
        .filter(invoice_line::Column::InvoiceId.eq(row.id.as_str()))
        .exec(txn)
        .await?;
    write_invoice(txn, &row).await?;
    insert_lines(txn, &new_lines).await?;
    let touched = touched(&stock, &new_lines, &old);
    for line in &touched {
        write_stock(txn, line).await?;
    }
    let records = records(touched, &row, &old, &new_lines);
    Ok((answer(row, &new_lines), records))
}

/// Ships a DRAFT outbound shipment: its packs leave the stock.
pub async fn ship_transfer<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::ShipTransferRequest,
) -> Result<(pb::Invoice, Vec<SyncRecord>)> {
    store_ops::lock_store(txn, store_id).await?;
    let mut row = outbound(txn, store_id, &request.id, pb::InvoiceStatus::Draft).await?;
    let lines = lines_of(txn, &row.id).await?;
    let mut stock =
        stock_lines(txn, store_id, lines.iter().map(|l| l.stock_line_id.clone())).await?;
    let now = validate::now_ms();
    for line in &lines {
        let current = stock.get_mut(&line.stock_line_id).ok_or_else(|| {
            Error::Internal(format!(
                "stock line {} of outbound line {} is missing",
                line.stock_line_id, line.id
            ))
        })?;
        // The reservation already took the packs from `available`.
        current.total_number_of_packs =
            (current.total_number_of_packs - line.number_of_packs).max(0.0);
        current.available_number_of_packs = current
            .available_number_of_packs
            .min(current.total_number_of_packs);
        current.updated_at_ms = now;
    }
    row.status = status_str(pb::InvoiceStatus::Shipped).to_owned();
    row.shipped_at_ms = now;
    write_invoice(txn, &row).await?;
    let touched = touched(&stock, &lines, &[]);
    for line in &touched {
        write_stock(txn, line).await?;
    }
    // The lines do not change: the invoice and the stock travel.
    let records = records(touched, &row, &[], &[]);
    Ok((answer(row, &lines), records))
}

/// Receives an inbound shipment of `store_id`: its received packs become stock.
pub async fn receive_transfer<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::ReceiveTransferRequest,
) -> Result<(pb::Invoice, Vec<SyncRecord>)> {
    validate::uuid("id", &request.id)?;
    let mut received: HashMap<&str, f64> = HashMap::new();
    for (index, line) in request.lines.iter().enumerate() {
        let field = |name: &str| format!("lines[{index}].{name}");
        validate::uuid(&field("line_id"), &line.line_id)?;
        validate::quantity(
            &field("received_number_of_packs"),
            line.received_number_of_packs,
            0.0,
        )?;
        if received
            .insert(line.line_id.as_str(), line.received_number_of_packs)
            .is_some()
        {
            return Err(Error::invalid(
                &field("line_id"),
                format!("line {} is named twice", line.line_id),
            ));
        }
    }
    store_ops::lock_store(txn, store_id).await?;
    let mut row = invoice::Entity::find_by_id(request.id.clone())
        .filter(invoice::Column::StoreId.eq(store_id))
        .filter(invoice::Column::Kind.eq(kind_to_str(pb::InvoiceKind::InboundShipment)))
        .one(txn)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "id: no inbound shipment {} in this store",
                request.id
            ))
        })?;
    if row.status != status_str(pb::InvoiceStatus::Shipped) {
        return Err(Error::FailedPrecondition(format!(
            "id: inbound shipment {} is {}; only a SHIPPED one can be received",
            row.id, row.status
        )));
    }
    let mut lines = lines_of(txn, &row.id).await?;
    let ours: HashSet<&str> = lines.iter().map(|l| l.id.as_str()).collect();
    for (index, line) in request.lines.iter().enumerate() {
        if !ours.contains(line.line_id.as_str()) {
            return Err(Error::invalid(
                &format!("lines[{index}].line_id"),
                format!(
                    "{} is not a line of inbound shipment {}",
                    line.line_id, row.id
                ),
            ));
        }
    }
    let now = validate::now_ms();
    let mut new_stock = Vec::new();
    for line in &mut lines {
        let packs = received
            .get(line.id.as_str())
            .copied()
            .unwrap_or(line.number_of_packs);
        line.received_number_of_packs = packs;
        if packs > 0.0 {
            let created = stock_line::Model {
                id: validate::new_id(),
                store_id: store_id.to_owned(),
                item_id: line.item_id.clone(),
                batch: line.batch.clone(),
                expiry_date: line.expiry_date.clone(),
                pack_size: line.pack_size,
                available_number_of_packs: packs,
                total_number_of_packs: packs,
                cost_price_per_pack: line.cost_price_per_pack,
                sell_price_per_pack: line.sell_price_per_pack,
                updated_at_ms: now,
            };
            line.stock_line_id = created.id.clone();
            new_stock.push(created);
        }
    }
    for chunk in new_stock.chunks(200) {
        stock_line::Entity::insert_many(
            chunk
                .iter()
                .cloned()
                .map(stock_line::ActiveModel::from)
                .collect::<Vec<_>>(),
        )
        .exec_without_returning(txn)
        .await?;
    }
    for line in &lines {
        invoice_line::Entity::update_many()
            .col_expr(
                invoice_line::Column::StockLineId,
                Expr::value(line.stock_line_id.clone()),
            )
            .col_expr(
                invoice_line::Column::ReceivedNumberOfPacks,
                Expr::value(line.received_number_of_packs),
            )
            .filter(invoice_line::Column::Id.eq(line.id.as_str()))
            .exec(txn)
            .await?;
    }
    row.status = status_str(pb::InvoiceStatus::Received).to_owned();
    row.received_at_ms = now;
    write_invoice(txn, &row).await?;
    let records = records(new_stock, &row, &[], &lines);
    Ok((answer(row, &lines), records))
}

/// This store's outbound and inbound shipments, newest first, with the
/// transfer records this site holds. The page token is as in
/// [`store_ops::list_invoices`].
pub async fn list_transfers<C: ConnectionTrait>(
    db: &C,
    store_id: &str,
    request: &pb::ListTransfersRequest,
) -> Result<pb::ListTransfersResponse> {
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let kinds: Vec<&str> = match pb::TransferDirection::try_from(request.direction) {
        Ok(pb::TransferDirection::Unspecified) => vec![
            kind_to_str(pb::InvoiceKind::OutboundShipment),
            kind_to_str(pb::InvoiceKind::InboundShipment),
        ],
        Ok(pb::TransferDirection::Outbound) => {
            vec![kind_to_str(pb::InvoiceKind::OutboundShipment)]
        }
        Ok(pb::TransferDirection::Inbound) => vec![kind_to_str(pb::InvoiceKind::InboundShipment)],
        Err(_) => {
            return Err(Error::invalid(
                "direction",
                format!("{} is not a transfer direction", request.direction),
            ))
        }
    };
    let mut query = invoice::Entity::find()
        .filter(invoice::Column::StoreId.eq(store_id))
        .filter(invoice::Column::Kind.is_in(kinds));
    match pb::InvoiceStatus::try_from(request.status) {
        Ok(pb::InvoiceStatus::Unspecified) => {}
        Ok(status) => query = query.filter(invoice::Column::Status.eq(status.as_str_name())),
        Err(_) => {
            return Err(Error::invalid(
                "status",
                format!("{} is not an invoice status", request.status),
            ))
        }
    }
    if !request.other_store_id.is_empty() {
        validate::uuid("other_store_id", &request.other_store_id)?;
        query = query.filter(invoice::Column::NameId.eq(request.other_store_id.as_str()));
    }
    let mut rows = store_ops::newest_first(
        query,
        &request.page_token,
        invoice::Column::CreatedAtMs,
        invoice::Column::Id,
        page_size,
    )?
    .all(db)
    .await?;
    let next_page_token = store_ops::next_token(&mut rows, page_size, |last| {
        format!("{}.{}", last.created_at_ms, last.id)
    });
    let ids: Vec<String> = rows.iter().map(|row| row.id.clone()).collect();
    let mut transfers: HashMap<String, transfer::Model> = HashMap::new();
    if !ids.is_empty() {
        for found in transfer::Entity::find()
            .filter(
                sea_orm::Condition::any()
                    .add(transfer::Column::Id.is_in(ids.clone()))
                    .add(transfer::Column::InboundInvoiceId.is_in(ids)),
            )
            .all(db)
            .await?
        {
            transfers.insert(found.id.clone(), found.clone());
            transfers.insert(found.inbound_invoice_id.clone(), found);
        }
    }
    Ok(pb::ListTransfersResponse {
        transfers: rows
            .into_iter()
            .map(|row| pb::TransferEntry {
                transfer: transfers.get(&row.id).cloned().map(Into::into),
                invoice: Some(row.into()),
            })
            .collect(),
        next_page_token,
    })
}
