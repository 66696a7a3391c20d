//! Reports on stock moving between the network's stores: stock in transit,
//! open requisitions with what has been supplied, receipt discrepancies.
//!
//! They read the master's `transfer` records (written by the master only,
//! see `crate::transfers`) and the requisitions and shipments every store
//! syncs up. One statement per report (a second one per page for the
//! requisitions' lines and supplies), aggregation in the database; the
//! indexes they use are created by `m0111_requisitions`
//! (`transfer_in_transit`, `transfer_discrepancy`, `requisition_open`,
//! `requisition_linked`, `requisition_line_requisition`,
//! `invoice_requisition`).

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use storesync_shared::domain::store_ops::{next_token, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use storesync_shared::domain::validate::{self, now_ms};
use storesync_shared::proto::v1 as pb;

use super::query::{check_store_ids, decode_token, encode_token};
use crate::error::Result;

/// A statement's placeholders, numbered from the values already bound.
/// Values must be bound in the order their placeholders appear in the
/// statement: SQLite's `?` are positional.
struct Binds {
    backend: DbBackend,
    values: Vec<Value>,
}

impl Binds {
    fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            values: Vec::new(),
        }
    }

    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => "?".to_owned(),
        }
    }

    fn list(&mut self, ids: &[String]) -> String {
        ids.iter()
            .map(|id| self.bind(id.clone()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn statement(self, sql: String) -> Statement {
        Statement::from_sql_and_values(self.backend, sql, self.values)
    }
}

/// Shipped transfers not yet received, per store pair (see
/// `ReportService.StockInTransit`).
pub async fn stock_in_transit<C: ConnectionTrait>(
    db: &C,
    request: &pb::StockInTransitRequest,
) -> Result<pb::StockInTransitResponse> {
    check_store_ids(db, "store_ids", &request.store_ids).await?;
    let mut binds = Binds::new(db.get_database_backend());
    let mut filter = String::new();
    if !request.store_ids.is_empty() {
        let from = binds.list(&request.store_ids);
        let to = binds.list(&request.store_ids);
        filter = format!(" AND (t.from_store_id IN ({from}) OR t.to_store_id IN ({to}))");
    }
    let sql = format!(
        "SELECT t.from_store_id, f.code AS from_code, t.to_store_id, s.code AS to_code, \
           COUNT(*) AS transfers, SUM(t.packs_shipped) AS packs, \
           MIN(t.shipped_at_ms) AS oldest, \
           SUM(CASE WHEN t.delivered_at_ms > 0 THEN 1 ELSE 0 END) AS delivered \
         FROM transfer t \
         JOIN store f ON f.id = t.from_store_id \
         JOIN store s ON s.id = t.to_store_id \
         WHERE t.received_at_ms = 0{filter} \
         GROUP BY t.from_store_id, f.code, t.to_store_id, s.code \
         ORDER BY f.code, s.code"
    );
    let now = now_ms();
    let rows = db
        .query_all(binds.statement(sql))
        .await?
        .into_iter()
        .map(|row| -> Result<pb::StockInTransitRow> {
            let oldest: i64 = row.try_get("", "oldest")?;
            let transfers: i64 = row.try_get("", "transfers")?;
            let delivered: i64 = row.try_get("", "delivered")?;
            Ok(pb::StockInTransitRow {
                from_store_id: row.try_get("", "from_store_id")?,
                from_store_code: row.try_get("", "from_code")?,
                to_store_id: row.try_get("", "to_store_id")?,
                to_store_code: row.try_get("", "to_code")?,
                transfers: u64::try_from(transfers).unwrap_or(0),
                packs: row.try_get::<Option<f64>>("", "packs")?.unwrap_or(0.0),
                oldest_shipped_at_ms: oldest,
                oldest_age_ms: (now - oldest).max(0),
                delivered: u64::try_from(delivered).unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(pb::StockInTransitResponse { rows })
}

/// Sent requests whose response is not finalised, oldest first, with units
/// requested and supplied (see `ReportService.OpenRequisitions`).
pub async fn open_requisitions<C: ConnectionTrait>(
    db: &C,
    request: &pb::OpenRequisitionsRequest,
) -> Result<pb::OpenRequisitionsResponse> {
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let after = decode_token("req", &request.page_token, 2)?;
    check_store_ids(db, "store_ids", &request.store_ids).await?;
    let backend = db.get_database_backend();
    let mut binds = Binds::new(backend);
    // Bound in the order they appear in the statement (SQLite's `?`).
    let response_kind = binds.bind(pb::RequisitionKind::Response.as_str_name());
    let request_kind = binds.bind(pb::RequisitionKind::Request.as_str_name());
    let sent = binds.bind(pb::RequisitionStatus::RequisitionSent.as_str_name());
    let finalised = binds.bind(pb::RequisitionStatus::RequisitionFinalised.as_str_name());
    let mut filter = String::new();
    if !request.store_ids.is_empty() {
        let of = binds.list(&request.store_ids);
        let to = binds.list(&request.store_ids);
        filter.push_str(&format!(
            " AND (r.store_id IN ({of}) OR r.other_store_id IN ({to}))"
        ));
    }
    if let Some(key) = &after {
        let at: i64 = key[0].parse().map_err(|_| {
            crate::Error::invalid("page_token", "is not a token this server issued")
        })?;
        let at_a = binds.bind(at);
        let at_b = binds.bind(at);
        let id = binds.bind(key[1].clone());
        filter.push_str(&format!(
            " AND (r.sent_at_ms > {at_a} OR (r.sent_at_ms = {at_b} AND r.id > {id}))"
        ));
    }
    let limit = binds.bind(i64::try_from(page_size + 1).unwrap_or(i64::MAX));
    let sql = format!(
        "SELECT r.id, r.store_id, f.code AS from_code, r.other_store_id, s.code AS to_code, \
           r.requisition_number, r.sent_at_ms, COALESCE(p.id, '') AS response_id \
         FROM requisition r \
         JOIN store f ON f.id = r.store_id \
         JOIN store s ON s.id = r.other_store_id \
         LEFT JOIN requisition p ON p.linked_requisition_id = r.id AND p.kind = {response_kind} \
         WHERE r.kind = {request_kind} AND r.status = {sent} \
           AND (p.id IS NULL OR p.status <> {finalised}){filter} \
         ORDER BY r.sent_at_ms, r.id LIMIT {limit}"
    );
    let mut rows = db
        .query_all(binds.statement(sql))
        .await?
        .into_iter()
        .map(|row| -> Result<pb::OpenRequisitionRow> {
            Ok(pb::OpenRequisitionRow {
                requisition_id: row.try_get("", "id")?,
                requesting_store_id: row.try_get("", "store_id")?,
                requesting_store_code: row.try_get("", "from_code")?,
                supplying_store_id: row.try_get("", "other_store_id")?,
                supplying_store_code: row.try_get("", "to_code")?,
                requisition_number: row.try_get("", "requisition_number")?,
                sent_at_ms: row.try_get("", "sent_at_ms")?,
                response_id: row.try_get("", "response_id")?,
                lines: 0,
                units_requested: 0.0,
                units_supplied: 0.0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next_page_token = next_token(&mut rows, page_size, |last| {
        encode_token(
            "req",
            &[last.sent_at_ms.to_string(), last.requisition_id.clone()],
        )
    });
    if rows.is_empty() {
        return Ok(pb::OpenRequisitionsResponse {
            rows,
            next_page_token,
        });
    }
    // Lines and units requested, per request on the page.
    let ids: Vec<String> = rows.iter().map(|r| r.requisition_id.clone()).collect();
    let mut binds = Binds::new(backend);
    let list = binds.list(&ids);
    let sql = format!(
        "SELECT requisition_id, COUNT(*) AS lines, SUM(requested_quantity) AS units \
         FROM requisition_line WHERE requisition_id IN ({list}) GROUP BY requisition_id"
    );
    let mut requested: HashMap<String, (i64, f64)> = HashMap::new();
    for row in db.query_all(binds.statement(sql)).await? {
        requested.insert(
            row.try_get("", "requisition_id")?,
            (
                row.try_get("", "lines")?,
                row.try_get::<Option<f64>>("", "units")?.unwrap_or(0.0),
            ),
        );
    }
    // Units in shipped outbound shipments linked to each response.
    let responses: Vec<String> = rows
        .iter()
        .filter(|r| !r.response_id.is_empty())
        .map(|r| r.response_id.clone())
        .collect();
    let mut supplied: HashMap<String, f64> = HashMap::new();
    if !responses.is_empty() {
        let mut binds = Binds::new(backend);
        let list = binds.list(&responses);
        let outbound = binds.bind("OUTBOUND_SHIPMENT");
        let shipped = binds.bind(pb::InvoiceStatus::Shipped.as_str_name());
        let sql = format!(
            "SELECT i.requisition_id, SUM(l.number_of_packs * l.pack_size) AS units \
             FROM invoice i JOIN invoice_line l ON l.invoice_id = i.id \
             WHERE i.requisition_id IN ({list}) AND i.kind = {outbound} AND i.status = {shipped} \
             GROUP BY i.requisition_id"
        );
        for row in db.query_all(binds.statement(sql)).await? {
            supplied.insert(
                row.try_get("", "requisition_id")?,
                row.try_get::<Option<f64>>("", "units")?.unwrap_or(0.0),
            );
        }
    }
    for row in &mut rows {
        if let Some((lines, units)) = requested.get(&row.requisition_id) {
            row.lines = u32::try_from(*lines).unwrap_or(u32::MAX);
            row.units_requested = *units;
        }
        row.units_supplied = supplied.get(&row.response_id).copied().unwrap_or(0.0);
    }
    Ok(pb::OpenRequisitionsResponse {
        rows,
        next_page_token,
    })
}

/// Received transfers whose packs received differ from the packs shipped,
/// newest receipt first (see `ReportService.ReceiptDiscrepancies`).
pub async fn receipt_discrepancies<C: ConnectionTrait>(
    db: &C,
    request: &pb::ReceiptDiscrepanciesRequest,
) -> Result<pb::ReceiptDiscrepanciesResponse> {
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let after = decode_token("dis", &request.page_token, 2)?;
    check_store_ids(db, "store_ids", &request.store_ids).await?;
    let mut binds = Binds::new(db.get_database_backend());
    let mut filter = String::new();
    if !request.store_ids.is_empty() {
        let from = binds.list(&request.store_ids);
        let to = binds.list(&request.store_ids);
        filter.push_str(&format!(
            " AND (t.from_store_id IN ({from}) OR t.to_store_id IN ({to}))"
        ));
    }
    if let Some(key) = &after {
        let at: i64 = key[0].parse().map_err(|_| {
            crate::Error::invalid("page_token", "is not a token this server issued")
        })?;
        let at_a = binds.bind(at);
        let at_b = binds.bind(at);
        let id = binds.bind(key[1].clone());
        filter.push_str(&format!(
            " AND (t.received_at_ms < {at_a} OR (t.received_at_ms = {at_b} AND t.id < {id}))"
        ));
    }
    let limit = binds.bind(i64::try_from(page_size + 1).unwrap_or(i64::MAX));
    let sql = format!(
        "SELECT t.id, t.inbound_invoice_id, t.from_store_id, f.code AS from_code, \
           t.to_store_id, s.code AS to_code, t.shipped_at_ms, t.received_at_ms, \
           t.packs_shipped, t.packs_received, t.discrepancy \
         FROM transfer t \
         JOIN store f ON f.id = t.from_store_id \
         JOIN store s ON s.id = t.to_store_id \
         WHERE t.discrepancy <> 0 AND t.received_at_ms > 0{filter} \
         ORDER BY t.received_at_ms DESC, t.id DESC LIMIT {limit}"
    );
    let mut rows = db
        .query_all(binds.statement(sql))
        .await?
        .into_iter()
        .map(|row| -> Result<pb::ReceiptDiscrepancyRow> {
            Ok(pb::ReceiptDiscrepancyRow {
                transfer_id: row.try_get("", "id")?,
                inbound_invoice_id: row.try_get("", "inbound_invoice_id")?,
                from_store_id: row.try_get("", "from_store_id")?,
                from_store_code: row.try_get("", "from_code")?,
                to_store_id: row.try_get("", "to_store_id")?,
                to_store_code: row.try_get("", "to_code")?,
                shipped_at_ms: row.try_get("", "shipped_at_ms")?,
                received_at_ms: row.try_get("", "received_at_ms")?,
                packs_shipped: row.try_get("", "packs_shipped")?,
                packs_received: row.try_get("", "packs_received")?,
                discrepancy: row.try_get("", "discrepancy")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next_page_token = next_token(&mut rows, page_size, |last| {
        encode_token(
            "dis",
            &[last.received_at_ms.to_string(), last.transfer_id.clone()],
        )
    });
    Ok(pb::ReceiptDiscrepanciesResponse {
        rows,
        next_page_token,
    })
}
