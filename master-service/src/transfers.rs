//! The master's half of transfers and requisitions: it creates the
//! receiving store's inbound shipment when an outbound shipment is shipped,
//! keeps the `transfer` record, creates the supplying store's response when
//! a request is sent ([`follow_requisitions`]), and refuses a site's writes
//! of what only it creates. How a row changes hands is told in
//! `docs/TRANSFERS.md`.
//!
//! # Invariant: one inbound shipment per outbound, created once
//! [`follow`] runs in the transaction that stores the shipped outbound (the
//! sending site's upstream batch, or the master's own store's write), so the
//! outbound and its inbound commit together or not at all. The inbound's id
//! is a function of the outbound's ([`inbound_id`]: UUIDv5), its lines' of
//! the outbound lines', and every row is inserted with `ON CONFLICT DO
//! NOTHING`: a replayed or resent batch, a master killed between the apply
//! and the send (the change-log entries commit with the rows), a site that
//! re-initialises (it gets its inbound in the snapshot, same id), can never
//! create a second one. The change-log entries handing it over are written
//! only by the insert that created it.
//!
//! # Invariant: one response per request, created once
//! The same construction: [`follow_requisitions`] runs in the transaction
//! that stores the SENT request, the response's id is UUIDv5 of the
//! request's ([`response_id`], a namespace of its own) and its lines' of
//! the request lines', every row is inserted `ON CONFLICT DO NOTHING`, and
//! only the insert that created the response writes its change-log entries.
//!
//! # Invariant: across a master restore, the master holds only what it derives
//! A site's copy of an inbound shipment (a response) the master does not
//! hold is written only as an update of the row [`follow`]
//! ([`follow_requisitions`]) creates from the outbound (the request): while
//! the master does not hold that outbound shipped (request sent) from the
//! other store to this one, [`set_aside`] leaves a copy with the derived id
//! out of the batch (applied without it, so the site is not stuck), and any
//! other copy is refused. Re-created, the row is handed over again, and the
//! site, which holds it, sends its copy back (`satellite-agent`
//! `sync::repush::push_back`). A shipment naming a requisition the master
//! does not hold at all is held (`UNAVAILABLE`, retried) until the request
//! is back. See `docs/TRANSFERS.md`, "Across a master restore".
//!
//! # Ownership
//! - The outbound shipment and its lines: the sending store's site, always.
//! - The inbound shipment and its lines: the master creates them (status
//!   SHIPPED) and hands them to the receiving store's site through change-log
//!   entries aimed at that store; from then on that site alone writes them
//!   (it receives them). The master refuses ([`check_site_rows`],
//!   PERMISSION_DENIED naming the record) a site that creates an inbound
//!   shipment or a line of one, deletes one, or changes what links it to the
//!   outbound (`linked_invoice_id`, kind, the shipped packs, the item). On
//!   PostgreSQL a line moved off an inbound shipment onto an invoice that is
//!   not one is refused by the upsert itself (`invoice_line`'s
//!   `UpdateGuard`), so only the lines sent on an inbound shipment are read
//!   back; SQLite reads back every line sent.
//! - A request and its lines: the requesting store's site, always. A
//!   response and its lines: the master creates them and hands them to the
//!   supplying store's site, which alone writes them from then on (it
//!   finalises the response). The master refuses
//!   ([`check_site_rows`], PERMISSION_DENIED naming the record) a site that
//!   creates a response or a line of one, deletes one, changes what links a
//!   response to its request or a shipment to a requisition, or requests
//!   from itself or from a store outside the sync-with list.
//! - The `transfer` record: the master only (created with the inbound,
//!   updated when the receiving site acknowledges the handover and when it
//!   receives), sent to both stores' sites.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use sha1::{Digest, Sha1};
use storesync_shared::domain::convert::kind_to_str;
use storesync_shared::domain::entities::{
    invoice, invoice_line, requisition, requisition_line, store, transfer,
};
use storesync_shared::domain::tables::write::{one_of, Backend};
use storesync_shared::domain::tables::{Row, SyncTable};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::domain::{requisitions, store_ops};
use storesync_shared::proto::v1::{self as pb, sync_record, SyncRecord, Table};
use storesync_shared::{Error, Result};

use crate::changelog;
use crate::entities::change_log;
use crate::sites::MASTER_SYNC_ID;

/// The namespace of inbound shipment ids (a UUID of its own, so that no
/// other use of UUIDv5 over the same ids can collide with them).
const INBOUND_NAMESPACE: uuid::Uuid = uuid::uuid!("6f1d3c1e-2b7a-4c55-9e0b-7d2f4a9c1b31");

/// UUIDv5 of `name` in the inbound namespace.
fn uuid_v5(name: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(INBOUND_NAMESPACE.as_bytes());
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The id of the inbound shipment created for outbound shipment `outbound_id`.
pub fn inbound_id(outbound_id: &str) -> String {
    uuid_v5(outbound_id)
}

/// The id of the inbound line created for outbound line `outbound_line_id`.
pub fn inbound_line_id(outbound_line_id: &str) -> String {
    uuid_v5(outbound_line_id)
}

fn record(record: sync_record::Record) -> SyncRecord {
    SyncRecord {
        record: Some(record),
    }
}

/// Whether [`follow`] acts on an invoice written with this kind and status
/// (their stored spellings): a shipped outbound shipment or a received
/// inbound one. Callers pass `follow` only those, so that a batch of other
/// invoices reads nothing back.
pub fn followed(kind: &str, status: &str) -> bool {
    matches!(
        (kind, status),
        ("OUTBOUND_SHIPMENT", "SHIPPED") | ("INBOUND_SHIPMENT", "RECEIVED")
    )
}

/// A site's invoices one transaction has upserted so far, for the checks
/// and the follow-up after them ([`Invoices::note`] them as they pass
/// [`check_site_rows`]).
#[derive(Debug, Default)]
pub struct Invoices {
    /// Upserted with another kind than an inbound shipment's: none of them
    /// is one now (the invoice check refuses changing an inbound
    /// shipment's kind and creating one), so a line naming one needs no
    /// look-up of its invoice.
    not_inbound: HashSet<String>,
    /// Those [`follow`] acts on.
    followed: Vec<String>,
}

impl Invoices {
    /// Takes note of `upserts` of `table` (anything but invoices is ignored).
    pub fn note(&mut self, table: &dyn SyncTable, upserts: &[Row]) {
        if table.table() != Table::Invoice {
            return;
        }
        let (kind, status) = (table.column_index("kind"), table.column_index("status"));
        let inbound_kind = kind_to_str(pb::InvoiceKind::InboundShipment);
        for row in upserts {
            let text = |index: Option<usize>| index.and_then(|i| row.text(i)).unwrap_or_default();
            if text(kind) != inbound_kind {
                self.not_inbound.insert(row.id().to_owned());
            }
            if followed(text(kind), text(status)) {
                self.followed.push(row.id().to_owned());
            }
        }
    }

    /// The invoices to pass [`follow`].
    pub fn followed(&self) -> &[String] {
        &self.followed
    }
}

/// Acts on invoices just written in `txn` (by a site's batch or the
/// master's own store): a SHIPPED outbound gets its inbound, a RECEIVED
/// inbound updates its transfer. The change-log entries this makes go to
/// `log`, for the caller to append as its transaction's last statement.
/// Invoices [`followed`] says nothing of are read and left alone.
pub async fn follow<C: ConnectionTrait>(
    txn: &C,
    invoice_ids: &[String],
    log: &mut changelog::Pending,
) -> Result<()> {
    if invoice_ids.is_empty() {
        return Ok(());
    }
    let found = invoice::Entity::find()
        .filter(one_of(
            txn,
            invoice::Column::Id,
            invoice_ids.iter().cloned(),
        ))
        .filter(invoice::Column::Kind.is_in([
            kind_to_str(pb::InvoiceKind::OutboundShipment),
            kind_to_str(pb::InvoiceKind::InboundShipment),
        ]))
        .all(txn)
        .await?;
    for row in found {
        match (row.kind.as_str(), row.status.as_str()) {
            ("OUTBOUND_SHIPMENT", "SHIPPED") => hand_over(txn, &row, log).await?,
            ("INBOUND_SHIPMENT", "RECEIVED") => record_receipt(txn, &row, log).await?,
            _ => {}
        }
    }
    Ok(())
}

/// Sync IDs of stores, by store id.
async fn sync_ids<C: ConnectionTrait>(txn: &C, ids: &[&str]) -> Result<HashMap<String, i32>> {
    Ok(store::Entity::find()
        .filter(one_of(
            txn,
            store::Column::Id,
            ids.iter().map(|id| (*id).to_owned()),
        ))
        .all(txn)
        .await?
        .into_iter()
        .map(|s| (s.id, s.sync_id))
        .collect())
}

/// Logs `records` for each of `stores` that a satellite hosts (the
/// master's own store has no site to send to).
fn log_for(log: &mut changelog::Pending, stores: &[(&str, i32)], records: &[SyncRecord]) {
    for (store_id, sync_id) in stores {
        if u32::try_from(*sync_id).ok() != Some(MASTER_SYNC_ID) {
            log.for_store(store_id, records);
        }
    }
}

/// Creates the inbound shipment and transfer record of a shipped outbound,
/// unless they exist (see the module invariant).
async fn hand_over<C: ConnectionTrait>(
    txn: &C,
    outbound: &invoice::Model,
    log: &mut changelog::Pending,
) -> Result<()> {
    if transfer::Entity::find_by_id(outbound.id.clone())
        .one(txn)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let stores = sync_ids(txn, &[&outbound.store_id, &outbound.name_id]).await?;
    let (Some(&from_sync), Some(&to_sync)) = (
        stores.get(&outbound.store_id),
        stores.get(&outbound.name_id),
    ) else {
        return Err(Error::FailedPrecondition(format!(
            "invoice {}: outbound shipment to {}, which is not a store of the sync-with list",
            outbound.id, outbound.name_id
        )));
    };
    let to_store = outbound.name_id.as_str();
    // The receiving store's invoice numbers, as its own writes take them.
    store_ops::lock_store(txn, to_store).await?;
    let mut lines = invoice_line::Entity::find()
        .filter(invoice_line::Column::InvoiceId.eq(outbound.id.as_str()))
        .all(txn)
        .await?;
    lines.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let kind = kind_to_str(pb::InvoiceKind::InboundShipment);
    let now = now_ms();
    // An outbound supplying a response: the inbound names the request.
    let answers = answered_request(txn, &outbound.requisition_id).await?;
    let inbound = invoice::Model {
        id: inbound_id(&outbound.id),
        store_id: to_store.to_owned(),
        name_id: outbound.store_id.clone(),
        kind: kind.to_owned(),
        status: pb::InvoiceStatus::Shipped.as_str_name().to_owned(),
        invoice_number: store_ops::next_invoice_number(txn, to_store, kind).await?,
        reference: outbound.reference.clone(),
        created_at_ms: store_ops::creation_time(txn, to_store).await?,
        linked_invoice_id: outbound.id.clone(),
        shipped_at_ms: outbound.shipped_at_ms,
        received_at_ms: 0,
        requisition_id: answers,
    };
    let created = invoice::Entity::insert(invoice::ActiveModel::from(inbound.clone()))
        .on_conflict(
            OnConflict::column(invoice::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    if created == 0 {
        return Ok(());
    }
    let inbound_lines: Vec<invoice_line::Model> = lines
        .iter()
        .map(|line| invoice_line::Model {
            id: inbound_line_id(&line.id),
            invoice_id: inbound.id.clone(),
            store_id: to_store.to_owned(),
            item_id: line.item_id.clone(),
            // Set on receipt: the stock line the received packs become.
            stock_line_id: String::new(),
            batch: line.batch.clone(),
            expiry_date: line.expiry_date.clone(),
            pack_size: line.pack_size,
            number_of_packs: line.number_of_packs,
            // What the receiving store pays: the sender's price.
            cost_price_per_pack: line.sell_price_per_pack,
            sell_price_per_pack: line.sell_price_per_pack,
            received_number_of_packs: 0.0,
        })
        .collect();
    // One statement per 500 lines (SQLite binds at most 32,766 values).
    for chunk in inbound_lines.chunks(500) {
        invoice_line::Entity::insert_many(
            chunk
                .iter()
                .map(|line| invoice_line::ActiveModel::from(line.clone())),
        )
        .on_conflict(
            OnConflict::column(invoice_line::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    }
    let to_is_master = u32::try_from(to_sync).ok() == Some(MASTER_SYNC_ID);
    let record_row = transfer::Model {
        id: outbound.id.clone(),
        from_store_id: outbound.store_id.clone(),
        to_store_id: to_store.to_owned(),
        inbound_invoice_id: inbound.id.clone(),
        shipped_at_ms: outbound.shipped_at_ms,
        // The master hosts the receiving store: delivered as it is created.
        delivered_at_ms: if to_is_master { now } else { 0 },
        received_at_ms: 0,
        packs_shipped: lines.iter().map(|l| l.number_of_packs).sum(),
        packs_received: 0.0,
        discrepancy: 0.0,
    };
    transfer::Entity::insert(transfer::ActiveModel::from(record_row.clone()))
        .on_conflict(
            OnConflict::column(transfer::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    // The receiving site gets its inbound shipment (the handover) and the
    // transfer record; the sending site the transfer record.
    let mut handover = vec![record(sync_record::Record::Invoice(inbound.into()))];
    handover.extend(
        inbound_lines
            .into_iter()
            .map(|line| record(sync_record::Record::InvoiceLine(line.into()))),
    );
    let transfer_record = record(sync_record::Record::Transfer(record_row.into()));
    handover.push(transfer_record.clone());
    log_for(log, &[(to_store, to_sync)], &handover);
    log_for(log, &[(&outbound.store_id, from_sync)], &[transfer_record]);
    tracing::info!(
        outbound = %outbound.id,
        from = %outbound.store_id,
        to = %to_store,
        "transfer: inbound shipment created"
    );
    Ok(())
}

/// Records a received inbound's packs on its transfer (once).
async fn record_receipt<C: ConnectionTrait>(
    txn: &C,
    inbound: &invoice::Model,
    log: &mut changelog::Pending,
) -> Result<()> {
    let Some(mut row) = transfer::Entity::find()
        .filter(transfer::Column::InboundInvoiceId.eq(inbound.id.as_str()))
        .one(txn)
        .await?
    else {
        return Err(Error::Internal(format!(
            "inbound shipment {} has no transfer record",
            inbound.id
        )));
    };
    if row.received_at_ms != 0 {
        return Ok(());
    }
    let received: f64 = invoice_line::Entity::find()
        .filter(invoice_line::Column::InvoiceId.eq(inbound.id.as_str()))
        .all(txn)
        .await?
        .iter()
        .map(|line| line.received_number_of_packs)
        .sum();
    row.received_at_ms = inbound.received_at_ms.max(1);
    row.packs_received = received;
    row.discrepancy = received - row.packs_shipped;
    if row.delivered_at_ms == 0 {
        // Received, so delivered: its site had it.
        row.delivered_at_ms = row.received_at_ms;
    }
    save(txn, row, log).await
}

/// Writes a changed transfer record and logs it for both stores' sites.
async fn save<C: ConnectionTrait>(
    txn: &C,
    row: transfer::Model,
    log: &mut changelog::Pending,
) -> Result<()> {
    transfer::Entity::update_many()
        .col_expr(
            transfer::Column::DeliveredAtMs,
            Expr::value(row.delivered_at_ms),
        )
        .col_expr(
            transfer::Column::ReceivedAtMs,
            Expr::value(row.received_at_ms),
        )
        .col_expr(
            transfer::Column::PacksReceived,
            Expr::value(row.packs_received),
        )
        .col_expr(transfer::Column::Discrepancy, Expr::value(row.discrepancy))
        .filter(transfer::Column::Id.eq(row.id.as_str()))
        .exec(txn)
        .await?;
    let stores = sync_ids(txn, &[&row.from_store_id, &row.to_store_id]).await?;
    let targets: Vec<(&str, i32)> = [row.from_store_id.as_str(), row.to_store_id.as_str()]
        .into_iter()
        .filter_map(|id| stores.get(id).map(|sync| (id, *sync)))
        .collect();
    let entry = record(sync_record::Record::Transfer(row.clone().into()));
    log_for(log, &targets, &[entry]);
    Ok(())
}

/// The receiving store's site has acknowledged the change log up to
/// `cursor`: every transfer to `store_id` whose handover entry is at or
/// below it (or already pruned, which only happens once every site has
/// acknowledged it) is delivered. Returns the last change-log sequence
/// appended.
pub async fn delivered<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    cursor: u64,
) -> Result<Option<u64>> {
    let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
    let waiting = transfer::Entity::find()
        .filter(transfer::Column::ToStoreId.eq(store_id))
        .filter(transfer::Column::DeliveredAtMs.eq(0))
        .all(txn)
        .await?;
    // Inbound shipments whose handover is still past the cursor: one
    // look-up per 500 transfers waiting, not one per transfer.
    let mut unsent: HashSet<String> = HashSet::new();
    for chunk in waiting.chunks(500) {
        let ids = chunk.iter().map(|row| row.inbound_invoice_id.clone());
        unsent.extend(
            change_log::Entity::find()
                .select_only()
                .column(change_log::Column::RecordId)
                .filter(change_log::Column::StoreId.eq(store_id))
                .filter(change_log::Column::TableName.eq(Table::Invoice.as_str_name()))
                .filter(change_log::Column::Seq.gt(cursor))
                .filter(one_of(txn, change_log::Column::RecordId, ids))
                .into_tuple::<String>()
                .all(txn)
                .await?,
        );
    }
    let mut log = changelog::Pending::default();
    for mut row in waiting {
        if unsent.contains(&row.inbound_invoice_id) {
            continue;
        }
        row.delivered_at_ms = now_ms();
        save(txn, row, &mut log).await?;
    }
    log.append(txn).await
}

/// Why a site's rows of `table` touch what only the master writes in a
/// transfer: the first such row's id and the reason.
pub struct Refusal {
    pub id: String,
    pub why: String,
    /// The refused row is about a requisition (its response or link), not
    /// an inbound shipment.
    pub requisition: bool,
    /// Not refused for good: the row is a site's copy of what the master
    /// creates, and what backs it (the outbound shipment, the request, the
    /// response a shipment supplies) has not reached the master yet, as
    /// after a restore from an older backup until the other store's site
    /// re-pushes it. The batch is held: the site sends it again later.
    pub held: bool,
}

/// Checks a site's upserts and deletes of `table` (of its store
/// `store_id`) against the inbound shipments the master created; see the
/// module's ownership rules. `invoices`: what the same transaction upserted
/// of the site's invoices before.
pub async fn check_site_rows<C: ConnectionTrait>(
    txn: &C,
    table: &dyn SyncTable,
    upserts: &[Row],
    deletes: &[String],
    invoices: &Invoices,
) -> Result<Option<Refusal>> {
    let text = |row: &Row, column: &str| {
        table
            .column_index(column)
            .and_then(|i| row.text(i))
            .unwrap_or_default()
            .to_owned()
    };
    let double =
        |row: &Row, column: &str| match table.column_index(column).and_then(|i| row.0.get(i)) {
            Some(sea_orm::Value::Double(Some(value))) => *value,
            _ => f64::NAN,
        };
    if let Some(refusal) = check_requisition_rows(txn, table, upserts, deletes).await? {
        return Ok(Some(refusal));
    }
    let inbound_kind = kind_to_str(pb::InvoiceKind::InboundShipment);
    // Only rows about inbound shipments are read back: the check costs a
    // primary-key probe per row sent, and returns (almost) nothing for the
    // store data of every other kind.
    match table.table() {
        Table::Invoice => {
            let ids: Vec<String> = upserts
                .iter()
                .map(|row| row.id().to_owned())
                .chain(deletes.iter().cloned())
                .collect();
            let existing: HashMap<String, invoice::Model> = inbound_invoices(txn, ids).await?;
            for row in upserts {
                let kind = text(row, "kind");
                match existing.get(row.id()) {
                    Some(before) => {
                        if kind != inbound_kind {
                            return refuse(row.id(), "changes the kind of an inbound shipment");
                        }
                        if text(row, "linked_invoice_id") != before.linked_invoice_id {
                            return refuse(
                                row.id(),
                                "changes linked_invoice_id of an inbound shipment",
                            );
                        }
                        if text(row, "requisition_id") != before.requisition_id {
                            return refuse(
                                row.id(),
                                "changes requisition_id of an inbound shipment",
                            );
                        }
                    }
                    None if kind == inbound_kind => {
                        return refuse(row.id(), "creates an inbound shipment");
                    }
                    None => {}
                }
            }
            if let Some(id) = deletes.iter().find(|id| existing.contains_key(*id)) {
                return refuse(id, "deletes an inbound shipment");
            }
        }
        Table::InvoiceLine => {
            // Inbound shipments the lines sent name (each once; not those
            // this transaction wrote as another kind).
            let invoice_column = table.column_index("invoice_id");
            fn text_at(row: &Row, index: Option<usize>) -> &str {
                index.and_then(|i| row.text(i)).unwrap_or_default()
            }
            let invoice_of = |row| text_at(row, invoice_column);
            let named: HashSet<&str> = upserts
                .iter()
                .map(invoice_of)
                .filter(|id| !invoices.not_inbound.contains(*id))
                .collect();
            let inbound =
                inbound_invoices(txn, named.into_iter().map(str::to_owned).collect()).await?;
            // The lines sent that may be lines of an inbound shipment
            // already, to read back. On PostgreSQL only those naming one: a
            // line moved off an inbound shipment, the one change to such a
            // line that names none, is left unwritten by the upsert itself
            // (`invoice_line`'s `UpdateGuard`), so the lines of every other
            // invoice cost no look-up. SQLite has no such guard: every line.
            let every_line = Backend::of(txn) == Backend::Portable;
            let ids: Vec<String> = upserts
                .iter()
                .filter(|row| every_line || inbound.contains_key(invoice_of(row)))
                .map(|row| row.id().to_owned())
                .chain(deletes.iter().cloned())
                .collect();
            // Lines sent that are already lines of an inbound shipment: the
            // lines by key, then their invoices by key (a subquery on the
            // invoice's kind would let the planner scan every invoice).
            let lines: Vec<invoice_line::Model> = if ids.is_empty() {
                Vec::new()
            } else {
                invoice_line::Entity::find()
                    .filter(one_of(txn, invoice_line::Column::Id, ids))
                    .all(txn)
                    .await?
            };
            let of_lines = inbound_invoices(
                txn,
                lines.iter().map(|line| line.invoice_id.clone()).collect(),
            )
            .await?;
            let existing: HashMap<String, invoice_line::Model> = lines
                .into_iter()
                .filter(|line| of_lines.contains_key(&line.invoice_id))
                .map(|line| (line.id.clone(), line))
                .collect();
            for row in upserts {
                let before = existing.get(row.id());
                if before.is_none() && !inbound.contains_key(invoice_of(row)) {
                    continue;
                }
                let Some(before) = before else {
                    return refuse(row.id(), "adds a line to an inbound shipment");
                };
                if text(row, "invoice_id") != before.invoice_id
                    || text(row, "item_id") != before.item_id
                    || (double(row, "number_of_packs") - before.number_of_packs).abs() > 1e-9
                {
                    return refuse(
                        row.id(),
                        "changes the shipped packs, item or shipment of an inbound line",
                    );
                }
            }
            if let Some(id) = deletes.iter().find(|id| existing.contains_key(*id)) {
                return refuse(id, "deletes a line of an inbound shipment");
            }
        }
        _ => {}
    }
    Ok(None)
}

fn refuse(id: &str, why: &str) -> Result<Option<Refusal>> {
    Ok(Some(Refusal {
        id: id.to_owned(),
        why: why.to_owned(),
        requisition: false,
        held: false,
    }))
}

fn refuse_requisition(id: &str, why: String) -> Result<Option<Refusal>> {
    Ok(Some(Refusal {
        id: id.to_owned(),
        why,
        requisition: true,
        held: false,
    }))
}

/// A batch held until what backs one of its rows reaches the master.
fn hold(id: &str, why: String, requisition: bool) -> Result<Option<Refusal>> {
    Ok(Some(Refusal {
        id: id.to_owned(),
        why,
        requisition,
        held: true,
    }))
}

/// What a site's copy derives from (an outbound shipment, a request), by
/// id: its store, the store it goes to, and whether it was shipped (sent).
type Backing = HashMap<String, (String, String, bool)>;

/// Rows of `table` in a site's batch that are the site's copies of what
/// the master creates and no longer holds, nor can derive yet: an inbound
/// shipment whose outbound shipment the master does not hold as shipped
/// from the other store to this one, a response whose request it does not
/// hold as sent from the other store to this one. That happens only after
/// the master was restored from a backup older than the shipment (the
/// request). Such a row is taken out of `upserts` and not written: the
/// master re-creates it, with the same id, when the other store's site
/// pushes the outbound (the request) again, and hands it to this site,
/// which then sends its copy back as an update of it (see
/// `docs/TRANSFERS.md`, "Across a master restore"). Only a row whose id is
/// the one the master derives from its link ([`inbound_id`],
/// [`response_id`]) is set aside; any other row the master does not hold is
/// left for [`check_site_rows`] to refuse. Returns the ids set aside.
pub async fn set_aside<C: ConnectionTrait>(
    txn: &C,
    table: &dyn SyncTable,
    upserts: &mut Vec<Row>,
) -> Result<Vec<String>> {
    let text = |row: &Row, column: &str| {
        table
            .column_index(column)
            .and_then(|i| row.text(i))
            .unwrap_or_default()
            .to_owned()
    };
    // (row id, its link, its store, the other store) of derived rows.
    let (kind, link, other, derive): (&str, &str, &str, fn(&str) -> String) = match table.table() {
        Table::Invoice => (
            kind_to_str(pb::InvoiceKind::InboundShipment),
            "linked_invoice_id",
            "name_id",
            inbound_id,
        ),
        Table::Requisition => (
            pb::RequisitionKind::Response.as_str_name(),
            "linked_requisition_id",
            "other_store_id",
            response_id,
        ),
        _ => return Ok(Vec::new()),
    };
    let derived: Vec<(String, String, String, String)> = upserts
        .iter()
        .filter(|row| text(row, "kind") == kind)
        .map(|row| {
            (
                row.id().to_owned(),
                text(row, link),
                text(row, "store_id"),
                text(row, other),
            )
        })
        .filter(|(id, linked, _, _)| !linked.is_empty() && derive(linked) == *id)
        .collect();
    if derived.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = derived.iter().map(|d| d.0.clone()).collect();
    let links: Vec<String> = derived.iter().map(|d| d.1.clone()).collect();
    // Backed: the master holds the row itself, or what it derives it from.
    let (held, backing): (HashSet<String>, Backing) = if table.table() == Table::Invoice {
        let held = invoice::Entity::find()
            .filter(one_of(txn, invoice::Column::Id, ids))
            .all(txn)
            .await?
            .into_iter()
            .map(|row| row.id)
            .collect();
        let backing = invoice::Entity::find()
            .filter(one_of(txn, invoice::Column::Id, links))
            .filter(invoice::Column::Kind.eq(kind_to_str(pb::InvoiceKind::OutboundShipment)))
            .all(txn)
            .await?
            .into_iter()
            .map(|row| {
                let shipped = row.status == pb::InvoiceStatus::Shipped.as_str_name();
                (row.id, (row.store_id, row.name_id, shipped))
            })
            .collect();
        (held, backing)
    } else {
        let held = requisition::Entity::find()
            .filter(one_of(txn, requisition::Column::Id, ids))
            .all(txn)
            .await?
            .into_iter()
            .map(|row| row.id)
            .collect();
        let backing = requisition::Entity::find()
            .filter(one_of(txn, requisition::Column::Id, links))
            .filter(requisition::Column::Kind.eq(pb::RequisitionKind::Request.as_str_name()))
            .all(txn)
            .await?
            .into_iter()
            .map(|row| {
                let sent = row.status == pb::RequisitionStatus::RequisitionSent.as_str_name();
                (row.id, (row.store_id, row.other_store_id, sent))
            })
            .collect();
        (held, backing)
    };
    let aside: HashSet<String> = derived
        .into_iter()
        .filter(|(id, linked, store, other)| {
            if held.contains(id) {
                return false;
            }
            match backing.get(linked) {
                // Shipped (sent): the master created the row with it, so a
                // copy it does not hold is a forgery, refused by
                // `check_site_rows`.
                Some((_, _, true)) => false,
                // Held unshipped (unsent) from the other store to this one:
                // its sending site's re-push is on its way. Between other
                // stores: a forgery, refused.
                Some((from, to, false)) => from == other && to == store,
                // Not held at all: a copy the master cannot check yet, or
                // a forgery. Set aside either way, never written.
                None => true,
            }
        })
        .map(|d| d.0)
        .collect();
    if aside.is_empty() {
        return Ok(Vec::new());
    }
    upserts.retain(|row| !aside.contains(row.id()));
    let mut aside: Vec<String> = aside.into_iter().collect();
    aside.sort_unstable();
    Ok(aside)
}

/// The inbound shipments among invoices `ids`.
async fn inbound_invoices<C: ConnectionTrait>(
    txn: &C,
    ids: Vec<String>,
) -> Result<HashMap<String, invoice::Model>> {
    // Each id once: a batch's lines name their few invoices many times over.
    let ids: std::collections::BTreeSet<String> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(invoice::Entity::find()
        .filter(one_of(txn, invoice::Column::Id, ids))
        .filter(invoice::Column::Kind.eq(kind_to_str(pb::InvoiceKind::InboundShipment)))
        .all(txn)
        .await?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect())
}

/// The namespace of response requisition ids (distinct from the inbound
/// namespace: a request and an outbound never share a derived id).
const REQUISITION_NAMESPACE: uuid::Uuid = uuid::uuid!("3b8e2f47-91c6-4d0a-b5e3-0c7a6d1f9e24");

/// The id of the response the master creates for request `request_id`.
pub fn response_id(request_id: &str) -> String {
    uuid_v5_in(REQUISITION_NAMESPACE, request_id)
}

/// The id of the response line created for request line `request_line_id`.
pub fn response_line_id(request_line_id: &str) -> String {
    uuid_v5_in(REQUISITION_NAMESPACE, request_line_id)
}

fn uuid_v5_in(namespace: uuid::Uuid, name: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(namespace.as_bytes());
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The request a response answers (empty when `response_id` is empty or
/// names no response): what an inbound shipment supplying it links to.
async fn answered_request<C: ConnectionTrait>(txn: &C, response_id: &str) -> Result<String> {
    if response_id.is_empty() {
        return Ok(String::new());
    }
    Ok(requisition::Entity::find_by_id(response_id.to_owned())
        .filter(requisition::Column::Kind.eq(pb::RequisitionKind::Response.as_str_name()))
        .one(txn)
        .await?
        .map(|row| row.linked_requisition_id)
        .unwrap_or_default())
}

/// Acts on requisitions just written in `txn` (by a site's batch or the
/// master's own store): a SENT request gets its response, created once
/// (see the module invariant; the same keys and `ON CONFLICT DO NOTHING`
/// as an inbound shipment). The change-log entries this makes go to `log`,
/// for the caller to append as its transaction's last statement.
pub async fn follow_requisitions<C: ConnectionTrait>(
    txn: &C,
    requisition_ids: &[String],
    log: &mut changelog::Pending,
) -> Result<()> {
    if requisition_ids.is_empty() {
        return Ok(());
    }
    let sent = requisition::Entity::find()
        .filter(one_of(
            txn,
            requisition::Column::Id,
            requisition_ids.iter().cloned(),
        ))
        .filter(requisition::Column::Kind.eq(pb::RequisitionKind::Request.as_str_name()))
        .filter(
            requisition::Column::Status.eq(pb::RequisitionStatus::RequisitionSent.as_str_name()),
        )
        .all(txn)
        .await?;
    for request in sent {
        create_response(txn, &request, log).await?;
    }
    Ok(())
}

/// Creates the supplying store's response to a sent request, unless it exists.
async fn create_response<C: ConnectionTrait>(
    txn: &C,
    request: &requisition::Model,
    log: &mut changelog::Pending,
) -> Result<()> {
    let supplier = request.other_store_id.as_str();
    let stores = sync_ids(txn, &[supplier]).await?;
    let Some(&supplier_sync) = stores.get(supplier) else {
        return Err(Error::FailedPrecondition(format!(
            "requisition {}: requested from {supplier}, which is not a store of the sync-with list",
            request.id
        )));
    };
    // The supplier's requisition numbers, as its own writes take them.
    store_ops::lock_store(txn, supplier).await?;
    let response = requisition::Model {
        id: response_id(&request.id),
        store_id: supplier.to_owned(),
        kind: pb::RequisitionKind::Response.as_str_name().to_owned(),
        status: pb::RequisitionStatus::RequisitionSent
            .as_str_name()
            .to_owned(),
        other_store_id: request.store_id.clone(),
        requisition_number: requisitions::next_requisition_number(
            txn,
            supplier,
            pb::RequisitionKind::Response,
        )
        .await?,
        reference: request.reference.clone(),
        created_at_ms: now_ms(),
        sent_at_ms: request.sent_at_ms,
        finalised_at_ms: 0,
        linked_requisition_id: request.id.clone(),
    };
    let created = requisition::Entity::insert(requisition::ActiveModel::from(response.clone()))
        .on_conflict(
            OnConflict::column(requisition::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    if created == 0 {
        return Ok(());
    }
    let mut lines = requisition_line::Entity::find()
        .filter(requisition_line::Column::RequisitionId.eq(request.id.as_str()))
        .all(txn)
        .await?;
    lines.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let response_lines: Vec<requisition_line::Model> = lines
        .into_iter()
        .map(|line| requisition_line::Model {
            id: response_line_id(&line.id),
            requisition_id: response.id.clone(),
            store_id: supplier.to_owned(),
            ..line
        })
        .collect();
    for line in &response_lines {
        requisition_line::Entity::insert(requisition_line::ActiveModel::from(line.clone()))
            .on_conflict(
                OnConflict::column(requisition_line::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
    }
    let mut handover = vec![record(sync_record::Record::Requisition(
        response.clone().into(),
    ))];
    handover.extend(
        response_lines
            .into_iter()
            .map(|line| record(sync_record::Record::RequisitionLine(line.into()))),
    );
    log_for(log, &[(supplier, supplier_sync)], &handover);
    tracing::info!(
        request = %request.id,
        response = %response.id,
        from = %request.store_id,
        to = %supplier,
        "requisition: response created"
    );
    Ok(())
}

/// The requisition half of [`check_site_rows`]: a site may write its
/// requests and finalise its responses, never create a response or a line
/// of one, delete one, change what links a response to its request, change
/// the store a sent request asks, request from itself or from a store
/// outside the sync-with list, or link a shipment to a requisition other
/// than an open response of its store to the receiving store.
async fn check_requisition_rows<C: ConnectionTrait>(
    txn: &C,
    table: &dyn SyncTable,
    upserts: &[Row],
    deletes: &[String],
) -> Result<Option<Refusal>> {
    let text = |row: &Row, column: &str| {
        table
            .column_index(column)
            .and_then(|i| row.text(i))
            .unwrap_or_default()
            .to_owned()
    };
    let double =
        |row: &Row, column: &str| match table.column_index(column).and_then(|i| row.0.get(i)) {
            Some(sea_orm::Value::Double(Some(value))) => *value,
            _ => f64::NAN,
        };
    let response_kind = pb::RequisitionKind::Response.as_str_name();
    let request_kind = pb::RequisitionKind::Request.as_str_name();
    match table.table() {
        Table::Requisition => {
            let ids: Vec<String> = upserts
                .iter()
                .map(|row| row.id().to_owned())
                .chain(deletes.iter().cloned())
                .collect();
            let existing: HashMap<String, requisition::Model> = requisition::Entity::find()
                .filter(one_of(txn, requisition::Column::Id, ids))
                .all(txn)
                .await?
                .into_iter()
                .map(|row| (row.id.clone(), row))
                .collect();
            let asked: Vec<String> = upserts
                .iter()
                .filter(|row| !existing.contains_key(row.id()))
                .map(|row| text(row, "other_store_id"))
                .collect();
            let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
            let stores = sync_ids(txn, &asked).await?;
            for row in upserts {
                let kind = text(row, "kind");
                match existing.get(row.id()) {
                    Some(before) => {
                        if kind != before.kind
                            || text(row, "other_store_id") != before.other_store_id
                            || text(row, "linked_requisition_id") != before.linked_requisition_id
                        {
                            let what = if before.kind == response_kind {
                                "changes the link of a response requisition (kind, other_store_id or linked_requisition_id)"
                            } else {
                                "changes the kind, supplier or link of a request requisition"
                            };
                            return refuse_requisition(row.id(), what.into());
                        }
                    }
                    None if kind == response_kind => {
                        return refuse_requisition(
                            row.id(),
                            "creates a response requisition".into(),
                        );
                    }
                    None => {
                        let other = text(row, "other_store_id");
                        if kind == request_kind && !text(row, "linked_requisition_id").is_empty() {
                            return refuse_requisition(
                                row.id(),
                                "creates a request requisition with a linked_requisition_id".into(),
                            );
                        }
                        if other == text(row, "store_id") {
                            return refuse_requisition(
                                row.id(),
                                "requests from its own store".into(),
                            );
                        }
                        if !stores.contains_key(&other) {
                            return refuse_requisition(
                                row.id(),
                                format!(
                                    "requests from {other}, which is not a store of the sync-with list"
                                ),
                            );
                        }
                    }
                }
            }
            for id in deletes {
                if let Some(before) = existing.get(id) {
                    if before.kind == response_kind
                        || before.status != pb::RequisitionStatus::RequisitionDraft.as_str_name()
                    {
                        return refuse_requisition(
                            id,
                            format!("deletes a {} {} requisition", before.status, before.kind),
                        );
                    }
                }
            }
        }
        Table::RequisitionLine => {
            let ids: Vec<String> = upserts
                .iter()
                .map(|row| row.id().to_owned())
                .chain(deletes.iter().cloned())
                .collect();
            let responses = || {
                sea_orm::sea_query::Query::select()
                    .column(requisition::Column::Id)
                    .from(requisition::Entity)
                    .and_where(requisition::Column::Kind.eq(response_kind))
                    .to_owned()
            };
            let existing: HashMap<String, requisition_line::Model> = if ids.is_empty() {
                HashMap::new()
            } else {
                requisition_line::Entity::find()
                    .filter(one_of(txn, requisition_line::Column::Id, ids))
                    .filter(requisition_line::Column::RequisitionId.in_subquery(responses()))
                    .all(txn)
                    .await?
                    .into_iter()
                    .map(|line| (line.id.clone(), line))
                    .collect()
            };
            let named: Vec<String> = upserts
                .iter()
                .map(|row| text(row, "requisition_id"))
                .collect();
            let named_responses: HashSet<String> = if named.is_empty() {
                HashSet::new()
            } else {
                requisition::Entity::find()
                    .filter(one_of(txn, requisition::Column::Id, named))
                    .filter(requisition::Column::Kind.eq(response_kind))
                    .all(txn)
                    .await?
                    .into_iter()
                    .map(|row| row.id)
                    .collect()
            };
            for row in upserts {
                match existing.get(row.id()) {
                    None if named_responses.contains(&text(row, "requisition_id")) => {
                        return refuse_requisition(
                            row.id(),
                            "adds a line to a response requisition".into(),
                        );
                    }
                    Some(before)
                        if text(row, "requisition_id") != before.requisition_id
                            || text(row, "item_id") != before.item_id
                            || (double(row, "requested_quantity") - before.requested_quantity)
                                .abs()
                                > 1e-9 =>
                    {
                        return refuse_requisition(
                            row.id(),
                            "changes the item, quantity or requisition of a response line".into(),
                        );
                    }
                    _ => {}
                }
            }
            if let Some(id) = deletes.iter().find(|id| existing.contains_key(*id)) {
                return refuse_requisition(id, "deletes a line of a response requisition".into());
            }
        }
        Table::Invoice => {
            // Only rows carrying a requisition link, and shipments already
            // linked, are read back.
            let linking: Vec<&Row> = upserts
                .iter()
                .filter(|row| !text(row, "requisition_id").is_empty())
                .collect();
            let ids: Vec<String> = upserts.iter().map(|row| row.id().to_owned()).collect();
            let before: HashMap<String, invoice::Model> = if ids.is_empty() {
                HashMap::new()
            } else {
                invoice::Entity::find()
                    .filter(one_of(txn, invoice::Column::Id, ids))
                    .filter(
                        sea_orm::Condition::any()
                            .add(invoice::Column::RequisitionId.ne(""))
                            .add(one_of(
                                txn,
                                invoice::Column::Id,
                                linking.iter().map(|row| row.id().to_owned()),
                            )),
                    )
                    .all(txn)
                    .await?
                    .into_iter()
                    .map(|row| (row.id.clone(), row))
                    .collect()
            };
            for row in upserts {
                if let Some(before) = before.get(row.id()) {
                    if text(row, "requisition_id") != before.requisition_id {
                        return refuse_requisition(
                            row.id(),
                            "changes the requisition_id of a shipment".into(),
                        );
                    }
                }
            }
            let named: Vec<String> = linking
                .iter()
                .filter(|row| !before.contains_key(row.id()))
                .map(|row| text(row, "requisition_id"))
                .collect();
            // Every requisition named, of any kind: one the master does not
            // hold at all holds the batch (see below).
            let requisitions: HashMap<String, requisition::Model> = if named.is_empty() {
                HashMap::new()
            } else {
                requisition::Entity::find()
                    .filter(one_of(txn, requisition::Column::Id, named))
                    .all(txn)
                    .await?
                    .into_iter()
                    .map(|row| (row.id.clone(), row))
                    .collect()
            };
            let outbound_kind = kind_to_str(pb::InvoiceKind::OutboundShipment);
            for row in linking.iter().filter(|row| !before.contains_key(row.id())) {
                let requisition_id = text(row, "requisition_id");
                let is_outbound = text(row, "kind") == outbound_kind;
                if is_outbound && !requisitions.contains_key(&requisition_id) {
                    // A response the master lost in a restore from an older
                    // backup comes back when the requesting site re-pushes
                    // its request; a forged id stays held, never let in.
                    return hold(
                        row.id(),
                        format!(
                            "supplies requisition {requisition_id}, which the master does not hold (restored from an older backup?): held until the requesting store's site sends its request"
                        ),
                        true,
                    );
                }
                let fits = is_outbound
                    && requisitions.get(&requisition_id).is_some_and(|response| {
                        response.kind == response_kind
                            && response.store_id == text(row, "store_id")
                            && response.other_store_id == text(row, "name_id")
                    });
                if !fits {
                    return refuse_requisition(
                        row.id(),
                        format!(
                            "links a shipment to requisition {requisition_id}, which is not a response of its store to the receiving store"
                        ),
                    );
                }
            }
        }
        _ => {}
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_ids_are_version_5_and_a_function_of_the_outbound_id() {
        let outbound = "0190f1c2-7a4e-7000-8000-000000000001";
        let id = inbound_id(outbound);
        assert_eq!(id, inbound_id(outbound));
        assert_ne!(id, inbound_id("0190f1c2-7a4e-7000-8000-000000000002"));
        let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 5);
        storesync_shared::domain::validate::uuid("id", &id).expect("canonical");
    }
}
