//! A store's side of requisitions: the request it prepares and sends to a
//! supplying store, the response (created by the master) it supplies from
//! and finalises, and what has been supplied against each line.
//!
//! Same transaction discipline as [`crate::domain::transfers`]: every read,
//! check and write in the caller's transaction, every changed row returned
//! as a [`SyncRecord`] for the outbox. The master's half (creating the
//! response) is in `master-service/src/transfers.rs`; how a row changes
//! hands is in `docs/TRANSFERS.md`.
//!
//! # Invariants
//! - **Who writes which status.** The requesting store's site writes DRAFT
//!   and SENT on its request; the master creates the response SENT; the
//!   supplying store's site writes FINALISED on its response. A sent request
//!   and a finalised response never change again; a response's lines never
//!   change.
//! - **Quantities are units** (packs x pack size). Stock on hand and average
//!   monthly consumption are the requesting store's, computed when a line is
//!   written and stored with it.
//! - **Supplied is derived, never stored**: at the supplier, the units of
//!   the SHIPPED outbound shipments whose `requisition_id` is the response;
//!   at the requester, the units of the inbound shipments whose
//!   `requisition_id` is the request (the master sets it when it creates
//!   them). Both count the same shipped lines.

use std::collections::{BTreeMap, HashMap, HashSet};

use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Statement};

use crate::domain::convert::{kind_to_str, requisition_kind_to_str, requisition_status_to_str};
use crate::domain::entities::{item, requisition, requisition_line};
use crate::domain::error::{Error, Result};
use crate::domain::store_ops::{self, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::domain::transfers::check_destination;
use crate::domain::validate;
use crate::proto::v1 as pb;
use crate::proto::v1::{sync_record, RecordRef, SyncRecord, Table};

/// Most lines one requisition may have.
pub const MAX_REQUISITION_LINES: usize = 1000;

/// The consumption window of the average monthly consumption: 3 months of
/// 30 days.
const AMC_WINDOW_MS: i64 = 90 * 24 * 3600 * 1000;

fn status(status: pb::RequisitionStatus) -> &'static str {
    requisition_status_to_str(status)
}

fn kind(kind: pb::RequisitionKind) -> &'static str {
    requisition_kind_to_str(kind)
}

fn upsert_record(record: sync_record::Record) -> SyncRecord {
    SyncRecord {
        record: Some(record),
    }
}

/// Checked request lines, in request order.
fn check_lines(lines: &[pb::RequisitionLineInput]) -> Result<Vec<(String, f64)>> {
    if lines.is_empty() {
        return Err(Error::invalid("lines", "must hold at least one line"));
    }
    if lines.len() > MAX_REQUISITION_LINES {
        return Err(Error::invalid(
            "lines",
            format!(
                "has {} lines; at most {MAX_REQUISITION_LINES} are allowed",
                lines.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            let field = |name: &str| format!("lines[{index}].{name}");
            validate::uuid(&field("item_id"), &line.item_id)?;
            validate::quantity(&field("requested_quantity"), line.requested_quantity, 0.0)?;
            if line.requested_quantity <= 0.0 {
                return Err(Error::invalid(
                    &field("requested_quantity"),
                    "must be more than 0",
                ));
            }
            if !seen.insert(line.item_id.as_str()) {
                return Err(Error::invalid(
                    &field("item_id"),
                    format!("item {} is named twice", line.item_id),
                ));
            }
            Ok((line.item_id.clone(), line.requested_quantity))
        })
        .collect()
}

/// NOT_FOUND naming the first line whose item does not exist.
async fn check_items<C: ConnectionTrait>(txn: &C, lines: &[(String, f64)]) -> Result<()> {
    let ids: Vec<String> = lines.iter().map(|(id, _)| id.clone()).collect();
    let found: HashSet<String> = item::Entity::find()
        .select_only()
        .column(item::Column::Id)
        .filter(item::Column::Id.is_in(ids))
        .into_tuple::<String>()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    for (index, (id, _)) in lines.iter().enumerate() {
        if !found.contains(id) {
            return Err(Error::NotFound(format!(
                "lines[{index}].item_id: no item has id {id}"
            )));
        }
    }
    Ok(())
}

fn placeholders(backend: sea_orm::DbBackend, from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| match backend {
            sea_orm::DbBackend::Postgres => format!("${i}"),
            _ => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stock on hand and average monthly consumption (units) of `items` at
/// `store_id`, as of `now`.
pub async fn stock_and_consumption<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    items: &[String],
    now: i64,
) -> Result<HashMap<String, (f64, f64)>> {
    let mut out: HashMap<String, (f64, f64)> = items
        .iter()
        .map(|item| (item.clone(), (0.0, 0.0)))
        .collect();
    if items.is_empty() {
        return Ok(out);
    }
    let backend = txn.get_database_backend();
    let mut values: Vec<sea_orm::Value> = vec![store_id.into()];
    values.extend(items.iter().map(|id| sea_orm::Value::from(id.clone())));
    let on_hand = format!(
        "SELECT item_id, SUM(total_number_of_packs * pack_size) AS units FROM stock_line \
         WHERE store_id = {} AND item_id IN ({}) GROUP BY item_id",
        placeholders(backend, 1, 1),
        placeholders(backend, 2, items.len())
    );
    for row in txn
        .query_all(Statement::from_sql_and_values(
            backend,
            on_hand,
            values.clone(),
        ))
        .await?
    {
        let item: String = row.try_get("", "item_id")?;
        let units: Option<f64> = row.try_get("", "units")?;
        if let Some(entry) = out.get_mut(&item) {
            entry.0 = units.unwrap_or(0.0);
        }
    }
    // Units issued: customer invoices (finalised when created) and shipped
    // outbound shipments, over the window.
    let since = now - AMC_WINDOW_MS;
    let n = items.len();
    let issued = format!(
        "SELECT l.item_id, SUM(ABS(l.number_of_packs) * l.pack_size) AS units \
         FROM invoice_line l JOIN invoice i ON i.id = l.invoice_id \
         WHERE i.store_id = {} AND l.item_id IN ({}) AND ( \
           (i.kind = '{}' AND i.created_at_ms >= {}) OR \
           (i.kind = '{}' AND i.status = '{}' AND i.shipped_at_ms >= {})) \
         GROUP BY l.item_id",
        placeholders(backend, 1, 1),
        placeholders(backend, 2, n),
        kind_to_str(pb::InvoiceKind::CustomerInvoice),
        placeholders(backend, n + 2, 1),
        kind_to_str(pb::InvoiceKind::OutboundShipment),
        pb::InvoiceStatus::Shipped.as_str_name(),
        placeholders(backend, n + 3, 1),
    );
    values.push(since.into());
    values.push(since.into());
    for row in txn
        .query_all(Statement::from_sql_and_values(backend, issued, values))
        .await?
    {
        let item: String = row.try_get("", "item_id")?;
        let units: Option<f64> = row.try_get("", "units")?;
        if let Some(entry) = out.get_mut(&item) {
            entry.1 = units.unwrap_or(0.0) / 3.0;
        }
    }
    Ok(out)
}

/// A requisition of `store_id` of kind `want`, or NOT_FOUND.
async fn own<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    id: &str,
    want: pb::RequisitionKind,
) -> Result<requisition::Model> {
    validate::uuid("id", id)?;
    let what = match want {
        pb::RequisitionKind::Response => "response requisition",
        _ => "request requisition",
    };
    requisition::Entity::find_by_id(id.to_owned())
        .filter(requisition::Column::StoreId.eq(store_id))
        .filter(requisition::Column::Kind.eq(kind(want)))
        .one(txn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("id: no {what} {id} in this store")))
}

async fn lines_of<C: ConnectionTrait>(
    db: &C,
    requisition_ids: Vec<String>,
) -> Result<Vec<requisition_line::Model>> {
    if requisition_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut lines = requisition_line::Entity::find()
        .filter(requisition_line::Column::RequisitionId.is_in(requisition_ids))
        .all(db)
        .await?;
    lines.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    Ok(lines)
}

/// The lines of a request for `lines`, with this store's stock on hand and
/// consumption beside each.
async fn new_lines<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    requisition_id: &str,
    lines: Vec<(String, f64)>,
    now: i64,
) -> Result<Vec<requisition_line::Model>> {
    let items: Vec<String> = lines.iter().map(|(id, _)| id.clone()).collect();
    let figures = stock_and_consumption(txn, store_id, &items, now).await?;
    // Ids ascending in line order, so that reading back by id keeps the order.
    let mut ids: Vec<String> = (0..lines.len()).map(|_| validate::new_id()).collect();
    ids.sort_unstable();
    Ok(lines
        .into_iter()
        .zip(ids)
        .map(|((item_id, requested), id)| {
            let (on_hand, amc) = figures.get(&item_id).copied().unwrap_or((0.0, 0.0));
            requisition_line::Model {
                id,
                requisition_id: requisition_id.to_owned(),
                store_id: store_id.to_owned(),
                item_id,
                requested_quantity: requested,
                stock_on_hand: on_hand,
                average_monthly_consumption: amc,
            }
        })
        .collect())
}

async fn write_requisition<C: ConnectionTrait>(txn: &C, row: &requisition::Model) -> Result<()> {
    requisition::Entity::insert(requisition::ActiveModel::from(row.clone()))
        .on_conflict(
            OnConflict::column(requisition::Column::Id)
                .update_columns([
                    requisition::Column::Status,
                    requisition::Column::Reference,
                    requisition::Column::SentAtMs,
                    requisition::Column::FinalisedAtMs,
                ])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

async fn insert_lines<C: ConnectionTrait>(
    txn: &C,
    lines: &[requisition_line::Model],
) -> Result<()> {
    for chunk in lines.chunks(200) {
        requisition_line::Entity::insert_many(
            chunk
                .iter()
                .cloned()
                .map(requisition_line::ActiveModel::from)
                .collect::<Vec<_>>(),
        )
        .exec_without_returning(txn)
        .await?;
    }
    Ok(())
}

/// Highest requisition number of this store and kind, plus one.
async fn next_number<C: ConnectionTrait>(txn: &C, store_id: &str, of: &str) -> Result<i64> {
    let latest: Option<Option<i64>> = requisition::Entity::find()
        .select_only()
        .column_as(requisition::Column::RequisitionNumber.max(), "latest")
        .filter(requisition::Column::StoreId.eq(store_id))
        .filter(requisition::Column::Kind.eq(of))
        .into_tuple()
        .one(txn)
        .await?;
    Ok(latest.flatten().unwrap_or(0) + 1)
}

/// The number a new requisition of `store_id` and kind `of` takes (the
/// master uses it for the responses it creates).
pub async fn next_requisition_number<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    of: pb::RequisitionKind,
) -> Result<i64> {
    next_number(txn, store_id, kind(of)).await
}

fn answer(row: requisition::Model, lines: &[requisition_line::Model]) -> pb::Requisition {
    let mut answer: pb::Requisition = row.into();
    answer.lines = lines.iter().cloned().map(Into::into).collect();
    answer
}

fn records(
    row: &requisition::Model,
    deleted: &[requisition_line::Model],
    lines: &[requisition_line::Model],
) -> Vec<SyncRecord> {
    let mut out = vec![upsert_record(sync_record::Record::Requisition(
        row.clone().into(),
    ))];
    out.extend(deleted.iter().map(|line| {
        upsert_record(sync_record::Record::Deleted(RecordRef {
            table: Table::RequisitionLine as i32,
            id: line.id.clone(),
        }))
    }));
    out.extend(
        lines
            .iter()
            .cloned()
            .map(|line| upsert_record(sync_record::Record::RequisitionLine(line.into()))),
    );
    out
}

/// Creates a DRAFT request of `store_id` to a supplying store.
pub async fn create_requisition<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::CreateRequisitionRequest,
) -> Result<(pb::Requisition, Vec<SyncRecord>)> {
    validate::optional_text("reference", &request.reference, 256)?;
    let lines = check_lines(&request.lines)?;
    store_ops::lock_store(txn, store_id).await?;
    check_destination(
        txn,
        "supplier_store_id",
        store_id,
        &request.supplier_store_id,
    )
    .await?;
    check_items(txn, &lines).await?;
    let now = validate::now_ms();
    let of = kind(pb::RequisitionKind::Request);
    let row = requisition::Model {
        id: validate::new_id(),
        store_id: store_id.to_owned(),
        kind: of.to_owned(),
        status: status(pb::RequisitionStatus::RequisitionDraft).to_owned(),
        other_store_id: request.supplier_store_id.clone(),
        requisition_number: next_number(txn, store_id, of).await?,
        reference: request.reference.clone(),
        created_at_ms: now,
        sent_at_ms: 0,
        finalised_at_ms: 0,
        linked_requisition_id: String::new(),
    };
    let lines = new_lines(txn, store_id, &row.id, lines, now).await?;
    write_requisition(txn, &row).await?;
    insert_lines(txn, &lines).await?;
    let records = records(&row, &[], &lines);
    Ok((answer(row, &lines), records))
}

/// Replaces the reference and lines of a DRAFT request.
pub async fn update_requisition<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::UpdateRequisitionRequest,
) -> Result<(pb::Requisition, Vec<SyncRecord>)> {
    validate::optional_text("reference", &request.reference, 256)?;
    let lines = check_lines(&request.lines)?;
    store_ops::lock_store(txn, store_id).await?;
    let mut row = own(txn, store_id, &request.id, pb::RequisitionKind::Request).await?;
    draft(&row)?;
    check_items(txn, &lines).await?;
    let old = lines_of(txn, vec![row.id.clone()]).await?;
    let lines = new_lines(txn, store_id, &row.id, lines, validate::now_ms()).await?;
    row.reference = request.reference.clone();
    requisition_line::Entity::delete_many()
        .filter(requisition_line::Column::RequisitionId.eq(row.id.as_str()))
        .exec(txn)
        .await?;
    write_requisition(txn, &row).await?;
    insert_lines(txn, &lines).await?;
    let records = records(&row, &old, &lines);
    Ok((answer(row, &lines), records))
}

fn draft(row: &requisition::Model) -> Result<()> {
    if row.status != status(pb::RequisitionStatus::RequisitionDraft) {
        return Err(Error::FailedPrecondition(format!(
            "id: request requisition {} is {}, not REQUISITION_DRAFT; a sent request cannot change",
            row.id, row.status
        )));
    }
    Ok(())
}

/// Sends a DRAFT request: the master then creates the supplier's response.
pub async fn send_requisition<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::SendRequisitionRequest,
) -> Result<(pb::Requisition, Vec<SyncRecord>)> {
    store_ops::lock_store(txn, store_id).await?;
    let mut row = own(txn, store_id, &request.id, pb::RequisitionKind::Request).await?;
    draft(&row)?;
    // The supplier may have left the sync-with list since the draft.
    check_destination(txn, "supplier_store_id", store_id, &row.other_store_id).await?;
    let lines = lines_of(txn, vec![row.id.clone()]).await?;
    row.status = status(pb::RequisitionStatus::RequisitionSent).to_owned();
    row.sent_at_ms = validate::now_ms();
    write_requisition(txn, &row).await?;
    // The lines do not change: the requisition travels.
    let records = records(&row, &[], &[]);
    Ok((answer(row, &lines), records))
}

/// Finalises a response of `store_id`: supplying from it is done.
pub async fn finalise_requisition<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::FinaliseRequisitionRequest,
) -> Result<(pb::Requisition, Vec<SyncRecord>)> {
    store_ops::lock_store(txn, store_id).await?;
    let mut row = own(txn, store_id, &request.id, pb::RequisitionKind::Response).await?;
    if row.status != status(pb::RequisitionStatus::RequisitionSent) {
        return Err(Error::FailedPrecondition(format!(
            "id: response requisition {} is {}; only a REQUISITION_SENT one can be finalised",
            row.id, row.status
        )));
    }
    let lines = lines_of(txn, vec![row.id.clone()]).await?;
    row.status = status(pb::RequisitionStatus::RequisitionFinalised).to_owned();
    row.finalised_at_ms = validate::now_ms();
    write_requisition(txn, &row).await?;
    let records = records(&row, &[], &[]);
    let mut answer = answer(row, &lines);
    fill_supplied(txn, store_id, std::slice::from_mut(&mut answer)).await?;
    Ok((answer, records))
}

/// Checks that `requisition_id` is an open (SENT) response of `store_id`
/// requested by `to_store_id`: an outbound shipment to that store may
/// supply it.
pub async fn check_supplies<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    requisition_id: &str,
    to_store_id: &str,
) -> Result<()> {
    validate::uuid("requisition_id", requisition_id)?;
    let row = requisition::Entity::find_by_id(requisition_id.to_owned())
        .filter(requisition::Column::StoreId.eq(store_id))
        .filter(requisition::Column::Kind.eq(kind(pb::RequisitionKind::Response)))
        .one(txn)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "requisition_id: no response requisition {requisition_id} in this store"
            ))
        })?;
    if row.status != status(pb::RequisitionStatus::RequisitionSent) {
        return Err(Error::FailedPrecondition(format!(
            "requisition_id: response requisition {requisition_id} is {}; only an open (REQUISITION_SENT) one can be supplied",
            row.status
        )));
    }
    if row.other_store_id != to_store_id {
        return Err(Error::FailedPrecondition(format!(
            "requisition_id: response requisition {requisition_id} answers store {}, not to_store_id {to_store_id}",
            row.other_store_id
        )));
    }
    Ok(())
}

/// Units supplied per (requisition id, item id) at `store_id`: for a
/// response, its SHIPPED outbound shipments; for a request, its inbound
/// shipments (see the module invariants).
pub async fn supplied<C: ConnectionTrait>(
    db: &C,
    store_id: &str,
    requisition_ids: &[String],
) -> Result<HashMap<(String, String), f64>> {
    let mut out = HashMap::new();
    if requisition_ids.is_empty() {
        return Ok(out);
    }
    let backend = db.get_database_backend();
    let mut values: Vec<sea_orm::Value> = vec![store_id.into()];
    values.extend(
        requisition_ids
            .iter()
            .map(|id| sea_orm::Value::from(id.clone())),
    );
    let sql = format!(
        "SELECT i.requisition_id, l.item_id, SUM(l.number_of_packs * l.pack_size) AS units \
         FROM invoice i JOIN invoice_line l ON l.invoice_id = i.id \
         WHERE i.store_id = {} AND i.requisition_id IN ({}) \
           AND (i.kind = '{}' OR (i.kind = '{}' AND i.status = '{}')) \
         GROUP BY i.requisition_id, l.item_id",
        placeholders(backend, 1, 1),
        placeholders(backend, 2, requisition_ids.len()),
        kind_to_str(pb::InvoiceKind::InboundShipment),
        kind_to_str(pb::InvoiceKind::OutboundShipment),
        pb::InvoiceStatus::Shipped.as_str_name(),
    );
    for row in db
        .query_all(Statement::from_sql_and_values(backend, sql, values))
        .await?
    {
        let requisition: String = row.try_get("", "requisition_id")?;
        let item: String = row.try_get("", "item_id")?;
        let units: Option<f64> = row.try_get("", "units")?;
        out.insert((requisition, item), units.unwrap_or(0.0));
    }
    Ok(out)
}

async fn fill_supplied<C: ConnectionTrait>(
    db: &C,
    store_id: &str,
    answers: &mut [pb::Requisition],
) -> Result<()> {
    let ids: Vec<String> = answers.iter().map(|r| r.id.clone()).collect();
    let supplied = supplied(db, store_id, &ids).await?;
    for answer in answers {
        for line in &mut answer.lines {
            line.supplied_quantity = supplied
                .get(&(answer.id.clone(), line.item_id.clone()))
                .copied()
                .unwrap_or(0.0);
        }
    }
    Ok(())
}

/// This store's requisitions, newest first, with lines and units supplied.
/// The page token is `created_at_ms.id` of the last row.
pub async fn list_requisitions<C: ConnectionTrait>(
    db: &C,
    store_id: &str,
    request: &pb::ListRequisitionsRequest,
) -> Result<pb::ListRequisitionsResponse> {
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let mut query = requisition::Entity::find().filter(requisition::Column::StoreId.eq(store_id));
    match pb::RequisitionKind::try_from(request.kind) {
        Ok(pb::RequisitionKind::Unspecified) => {}
        Ok(of) => query = query.filter(requisition::Column::Kind.eq(kind(of))),
        Err(_) => {
            return Err(Error::invalid(
                "kind",
                format!("{} is not a requisition kind", request.kind),
            ))
        }
    }
    match pb::RequisitionStatus::try_from(request.status) {
        Ok(pb::RequisitionStatus::Unspecified) => {}
        Ok(want) => query = query.filter(requisition::Column::Status.eq(status(want))),
        Err(_) => {
            return Err(Error::invalid(
                "status",
                format!("{} is not a requisition status", request.status),
            ))
        }
    }
    let mut rows = store_ops::newest_first(
        query,
        &request.page_token,
        requisition::Column::CreatedAtMs,
        requisition::Column::Id,
        page_size,
    )?
    .all(db)
    .await?;
    let next_page_token = store_ops::next_token(&mut rows, page_size, |last| {
        format!("{}.{}", last.created_at_ms, last.id)
    });
    let mut lines: BTreeMap<String, Vec<requisition_line::Model>> = BTreeMap::new();
    for line in lines_of(db, rows.iter().map(|r| r.id.clone()).collect()).await? {
        lines
            .entry(line.requisition_id.clone())
            .or_default()
            .push(line);
    }
    let mut answers: Vec<pb::Requisition> = rows
        .into_iter()
        .map(|row| {
            let of = lines.remove(&row.id).unwrap_or_default();
            answer(row, &of)
        })
        .collect();
    fill_supplied(db, store_id, &mut answers).await?;
    Ok(pb::ListRequisitionsResponse {
        requisitions: answers,
        next_page_token,
    })
}
