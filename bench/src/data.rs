//! The data the scenarios move: store-data backlogs written into a stopped
//! satellite's outbox, master-data changes committed on the master in bulk,
//! the large initialisation data set, and the same rows for `COPY`.

use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Set, Statement};
use storesync_shared::domain::entities::{invoice, invoice_line, item, name, stock_line};
use storesync_shared::domain::upsert;
use storesync_shared::proto::v1::{self as pb, sync_record::Record, SyncRecord, Table};

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Lines per goods-received invoice: each brings one invoice line and one stock line.
const LINES_PER_INVOICE: usize = 10;

/// A satellite's local writes: goods received, as its StoreService records them.
pub struct Backlog {
    pub stock_lines: Vec<pb::StockLine>,
    pub invoices: Vec<pb::Invoice>,
    pub invoice_lines: Vec<pb::InvoiceLine>,
    /// The outbox entries, in the order the satellite wrote them.
    pub records: Vec<SyncRecord>,
}

impl Backlog {
    /// Goods-received invoices for `store_id` until at least `records` records.
    pub fn goods_received(
        store_id: &str,
        supplier_id: &str,
        item_ids: &[String],
        records: usize,
    ) -> Self {
        let mut backlog = Self {
            stock_lines: Vec::new(),
            invoices: Vec::new(),
            invoice_lines: Vec::new(),
            records: Vec::with_capacity(records + 2 * LINES_PER_INVOICE + 1),
        };
        let now = storesync_shared::domain::validate::now_ms();
        let mut number = 0i64;
        while backlog.records.len() < records {
            number += 1;
            let invoice = pb::Invoice {
                id: new_id(),
                store_id: store_id.to_owned(),
                name_id: supplier_id.to_owned(),
                kind: pb::InvoiceKind::SupplierInvoice as i32,
                status: pb::InvoiceStatus::Finalised as i32,
                invoice_number: number,
                reference: format!("BENCH-{number}"),
                created_at_ms: now,
                lines: Vec::new(),
                ..Default::default()
            };
            backlog.records.push(SyncRecord {
                record: Some(Record::Invoice(invoice.clone())),
            });
            for n in 0..LINES_PER_INVOICE {
                let item_id = &item_ids[(number as usize * LINES_PER_INVOICE + n) % item_ids.len()];
                let batch = format!("B{number}-{n}");
                let stock = pb::StockLine {
                    id: new_id(),
                    store_id: store_id.to_owned(),
                    item_id: item_id.clone(),
                    batch: batch.clone(),
                    expiry_date: "2029-06-30".into(),
                    pack_size: 100,
                    available_number_of_packs: 20.0,
                    total_number_of_packs: 20.0,
                    cost_price_per_pack: 2.5,
                    sell_price_per_pack: 4.0,
                    updated_at_ms: now,
                };
                let line = pb::InvoiceLine {
                    id: new_id(),
                    invoice_id: invoice.id.clone(),
                    store_id: store_id.to_owned(),
                    item_id: item_id.clone(),
                    stock_line_id: stock.id.clone(),
                    batch,
                    expiry_date: "2029-06-30".into(),
                    pack_size: 100,
                    number_of_packs: 20.0,
                    cost_price_per_pack: 2.5,
                    sell_price_per_pack: 0.0,
                    ..Default::default()
                };
                backlog.records.push(SyncRecord {
                    record: Some(Record::StockLine(stock.clone())),
                });
                backlog.records.push(SyncRecord {
                    record: Some(Record::InvoiceLine(line.clone())),
                });
                backlog.stock_lines.push(stock);
                backlog.invoice_lines.push(line);
            }
            backlog.invoices.push(invoice);
        }
        backlog
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Writes the rows and their outbox entries into a (stopped) satellite's
    /// database in one transaction, as its StoreService would have; returns
    /// the outbox's last sequence, which the master must acknowledge.
    pub async fn write_to_satellite(&self, db: &DatabaseConnection) -> anyhow::Result<u64> {
        let txn = storesync_shared::domain::db::begin(db).await?;
        upsert::all::<stock_line::Entity, _>(
            &txn,
            self.stock_lines.iter().cloned().map(Into::into).collect(),
            |r| &r.id,
        )
        .await?;
        upsert::all::<invoice::Entity, _>(
            &txn,
            self.invoices.iter().cloned().map(Into::into).collect(),
            |r| &r.id,
        )
        .await?;
        upsert::all::<invoice_line::Entity, _>(
            &txn,
            self.invoice_lines.iter().cloned().map(Into::into).collect(),
            |r| &r.id,
        )
        .await?;
        let last = satellite_agent::outbox::append(&txn, &self.records).await?;
        txn.commit().await?;
        Ok(last)
    }

    /// Ships the stock of every `every`-th goods-received invoice on to
    /// `to_store_id` (5 of its 20 packs per line): a transfer created and
    /// then shipped through the store operations a satellite's StoreService
    /// runs (`storesync_shared::domain::transfers`), their records appended
    /// to the outbox in the same (stopped) satellite's database, as its
    /// StoreService would have. The outbound shipments and their lines join
    /// the backlog's rows (for `COPY`) and records. Returns the outbox's last
    /// sequence and the transfers shipped.
    pub async fn ship_transfers(
        &mut self,
        db: &DatabaseConnection,
        store_id: &str,
        to_store_id: &str,
        every: usize,
    ) -> anyhow::Result<(u64, usize)> {
        use storesync_shared::domain::transfers;
        let txn = storesync_shared::domain::db::begin(db).await?;
        let mut last = 0;
        let mut shipped = 0;
        let chosen: Vec<usize> = (0..self.invoices.len()).step_by(every.max(1)).collect();
        for index in chosen {
            let lines = self.invoice_lines
                [index * LINES_PER_INVOICE..(index + 1) * LINES_PER_INVOICE]
                .iter()
                .map(|line| pb::InvoiceLine {
                    stock_line_id: line.stock_line_id.clone(),
                    number_of_packs: 5.0,
                    sell_price_per_pack: 4.0,
                    ..Default::default()
                })
                .collect();
            let (draft, mut records) = transfers::create_transfer(
                &txn,
                store_id,
                pb::CreateTransferRequest {
                    to_store_id: to_store_id.to_owned(),
                    reference: format!("BENCH-T{index}"),
                    lines,
                    requisition_id: String::new(),
                },
            )
            .await?;
            let (outbound, more) = transfers::ship_transfer(
                &txn,
                store_id,
                pb::ShipTransferRequest {
                    id: draft.id.clone(),
                },
            )
            .await?;
            records.extend(more);
            last = satellite_agent::outbox::append(&txn, &records).await?;
            self.records.extend(records);
            let mut outbound = outbound;
            self.invoice_lines.append(&mut outbound.lines);
            self.invoices.push(outbound);
            shipped += 1;
        }
        txn.commit().await?;
        Ok((last, shipped))
    }

    /// The rows as `COPY … FROM STDIN` text, one buffer per table, for the
    /// scratch tables of [`copy_ceiling`].
    fn copy_text(&self) -> [(String, String); 3] {
        let mut stock = String::with_capacity(self.stock_lines.len() * 200);
        for s in &self.stock_lines {
            stock.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                s.id,
                s.store_id,
                s.item_id,
                s.batch,
                s.expiry_date,
                s.pack_size,
                s.available_number_of_packs,
                s.total_number_of_packs,
                s.cost_price_per_pack,
                s.sell_price_per_pack,
                s.updated_at_ms
            ));
        }
        let mut invoices = String::with_capacity(self.invoices.len() * 200);
        for i in &self.invoices {
            invoices.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                i.id,
                i.store_id,
                i.name_id,
                i.kind().as_str_name(),
                i.status().as_str_name(),
                i.invoice_number,
                i.reference,
                i.created_at_ms
            ));
        }
        let mut lines = String::with_capacity(self.invoice_lines.len() * 250);
        for l in &self.invoice_lines {
            lines.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                l.id,
                l.invoice_id,
                l.store_id,
                l.item_id,
                l.stock_line_id,
                l.batch,
                l.expiry_date,
                l.pack_size,
                l.number_of_packs,
                l.cost_price_per_pack,
                l.sell_price_per_pack
            ));
        }
        [
            (
                "COPY bench_copy_stock_line (id, store_id, item_id, batch, expiry_date, pack_size, available_number_of_packs, total_number_of_packs, cost_price_per_pack, sell_price_per_pack, updated_at_ms) FROM STDIN".into(),
                stock,
            ),
            (
                "COPY bench_copy_invoice (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms) FROM STDIN".into(),
                invoices,
            ),
            (
                "COPY bench_copy_invoice_line (id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack) FROM STDIN".into(),
                lines,
            ),
        ]
    }
}

/// Empty scratch tables shaped like the store tables (columns, keys, indexes).
pub async fn create_copy_tables(db: &DatabaseConnection) -> anyhow::Result<()> {
    for table in ["stock_line", "invoice", "invoice_line"] {
        for sql in [
            format!("DROP TABLE IF EXISTS bench_copy_{table}"),
            format!("CREATE TABLE bench_copy_{table} (LIKE {table} INCLUDING ALL)"),
        ] {
            db.execute(Statement::from_string(DbBackend::Postgres, sql))
                .await?;
        }
    }
    Ok(())
}

/// Loads every backlog into the scratch tables with `COPY`, one connection
/// per backlog at once (as the satellites send at once); returns the time taken.
pub async fn copy_ceiling(
    db: &DatabaseConnection,
    backlogs: &[&Backlog],
) -> anyhow::Result<std::time::Duration> {
    let pool = db.get_postgres_connection_pool().clone();
    let texts: Vec<[(String, String); 3]> = backlogs.iter().map(|b| b.copy_text()).collect();
    // As many at once as the pool has connections (a waiter would time out).
    let at_once = pool.options().get_max_connections().max(1) as usize;
    let started = std::time::Instant::now();
    let copies = texts.into_iter().map(|tables| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await?;
            for (statement, text) in tables {
                let mut copy = conn.copy_in_raw(&statement).await?;
                copy.send(text.into_bytes()).await?;
                copy.finish().await?;
            }
            anyhow::Ok(())
        }
    });
    use futures::StreamExt;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(copies)
        .buffer_unordered(at_once)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(started.elapsed())
}

/// Commits `count` new items and names (half each) on the master in one
/// transaction, with their change-log entries, and wakes the master's
/// streams the way another replica's commit would. Returns the new head.
pub async fn master_data_changes(
    db: &DatabaseConnection,
    prefix: &str,
    count: usize,
) -> anyhow::Result<u64> {
    use master_service::entities::change_log;
    let txn = storesync_shared::domain::db::begin(db).await?;
    let row = txn
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE counter SET value = value + $1 WHERE name = 'change_log' RETURNING value",
            [i64::try_from(count)?.into()],
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the change_log counter row is missing"))?;
    let head: i64 = row.try_get("", "value")?;
    let first = head - i64::try_from(count)? + 1;
    let now = storesync_shared::domain::validate::now_ms();
    let records = master_data_records(prefix, count, now);
    let mut items = Vec::new();
    let mut names = Vec::new();
    let mut log = Vec::with_capacity(count);
    for (offset, record) in records.into_iter().enumerate() {
        let (table, id) = match &record.record {
            Some(Record::Item(i)) => {
                items.push(item::Model::from(i.clone()));
                (Table::Item, i.id.clone())
            }
            Some(Record::Name(n)) => {
                names.push(name::Model::from(n.clone()));
                (Table::Name, n.id.clone())
            }
            _ => unreachable!("only items and names are generated"),
        };
        log.push(change_log::ActiveModel {
            seq: Set(first + offset as i64),
            table_name: Set(table.as_str_name().to_owned()),
            record_id: Set(id),
            deleted: Set(false),
            payload: Set(record.encode_to_vec()),
            changed_at_ms: Set(now),
            // 0: "no tag", which a satellite's Hello is never checked against.
            tag: Set(0),
            traceparent: Set(String::new()),
            // Master data: for every site.
            store_id: Set(None),
        });
    }
    upsert::all::<item::Entity, _>(&txn, items, |r| &r.id).await?;
    upsert::all::<name::Entity, _>(&txn, names, |r| &r.id).await?;
    let mut log = log.into_iter().peekable();
    while log.peek().is_some() {
        let chunk: Vec<_> = log.by_ref().take(1000).collect();
        change_log::Entity::insert_many(chunk)
            .exec_without_returning(&txn)
            .await?;
    }
    master_service::sync::cluster::notify(
        &txn,
        master_service::sync::cluster::CHANGES_CHANNEL,
        &head.to_string(),
    )
    .await?;
    txn.commit().await?;
    Ok(u64::try_from(head)?)
}

/// `count` new items and names, alternating, as the change log carries them.
pub fn master_data_records(prefix: &str, count: usize, now: i64) -> Vec<SyncRecord> {
    (0..count)
        .map(|n| {
            let record = if n % 2 == 0 {
                Record::Item(pb::Item {
                    id: new_id(),
                    code: format!("{prefix}I{n:07}"),
                    name: format!("Benchmark medicine {prefix} {n} 500 mg tablet"),
                    unit: "tab".into(),
                    default_pack_size: 100,
                    active: true,
                    updated_at_ms: now,
                })
            } else {
                Record::Name(pb::Name {
                    id: new_id(),
                    code: format!("{prefix}N{n:07}"),
                    name: format!("Benchmark partner {prefix} {n}"),
                    is_customer: n % 4 == 1,
                    is_supplier: n % 4 == 3,
                    is_store: false,
                    active: true,
                    updated_at_ms: now,
                })
            };
            SyncRecord {
                record: Some(record),
            }
        })
        .collect()
}

/// A record as a JSON document with the same fields, for the wire comparison.
pub fn as_json(record: &SyncRecord) -> serde_json::Value {
    use serde_json::json;
    match &record.record {
        Some(Record::Item(i)) => json!({"item": {
            "id": i.id, "code": i.code, "name": i.name, "unit": i.unit,
            "default_pack_size": i.default_pack_size, "active": i.active,
            "updated_at_ms": i.updated_at_ms}}),
        Some(Record::Name(n)) => json!({"name": {
            "id": n.id, "code": n.code, "name": n.name, "is_customer": n.is_customer,
            "is_supplier": n.is_supplier, "is_store": n.is_store, "active": n.active,
            "updated_at_ms": n.updated_at_ms}}),
        Some(Record::StockLine(s)) => json!({"stock_line": {
            "id": s.id, "store_id": s.store_id, "item_id": s.item_id, "batch": s.batch,
            "expiry_date": s.expiry_date, "pack_size": s.pack_size,
            "available_number_of_packs": s.available_number_of_packs,
            "total_number_of_packs": s.total_number_of_packs,
            "cost_price_per_pack": s.cost_price_per_pack,
            "sell_price_per_pack": s.sell_price_per_pack, "updated_at_ms": s.updated_at_ms}}),
        Some(Record::Invoice(i)) => json!({"invoice": {
            "id": i.id, "store_id": i.store_id, "name_id": i.name_id,
            "kind": i.kind().as_str_name(), "status": i.status().as_str_name(),
            "invoice_number": i.invoice_number, "reference": i.reference,
            "created_at_ms": i.created_at_ms}}),
        Some(Record::InvoiceLine(l)) => json!({"invoice_line": {
            "id": l.id, "invoice_id": l.invoice_id, "store_id": l.store_id,
            "item_id": l.item_id, "stock_line_id": l.stock_line_id, "batch": l.batch,
            "expiry_date": l.expiry_date, "pack_size": l.pack_size,
            "number_of_packs": l.number_of_packs,
            "cost_price_per_pack": l.cost_price_per_pack,
            "sell_price_per_pack": l.sell_price_per_pack}}),
        Some(Record::Store(s)) => json!({"store": {
            "id": s.id, "code": s.code, "name": s.name, "sync_id": s.sync_id}}),
        Some(Record::Transfer(t)) => json!({"transfer": {
            "id": t.id, "from_store_id": t.from_store_id, "to_store_id": t.to_store_id,
            "inbound_invoice_id": t.inbound_invoice_id, "shipped_at_ms": t.shipped_at_ms,
            "delivered_at_ms": t.delivered_at_ms, "received_at_ms": t.received_at_ms,
            "packs_shipped": t.packs_shipped, "packs_received": t.packs_received,
            "discrepancy": t.discrepancy}}),
        Some(Record::Requisition(r)) => json!({"requisition": {
            "id": r.id, "store_id": r.store_id, "kind": r.kind().as_str_name(),
            "status": r.status().as_str_name(), "other_store_id": r.other_store_id,
            "requisition_number": r.requisition_number, "reference": r.reference,
            "created_at_ms": r.created_at_ms, "sent_at_ms": r.sent_at_ms,
            "finalised_at_ms": r.finalised_at_ms,
            "linked_requisition_id": r.linked_requisition_id}}),
        Some(Record::RequisitionLine(l)) => json!({"requisition_line": {
            "id": l.id, "requisition_id": l.requisition_id, "store_id": l.store_id,
            "item_id": l.item_id, "requested_quantity": l.requested_quantity,
            "stock_on_hand": l.stock_on_hand,
            "average_monthly_consumption": l.average_monthly_consumption}}),
        Some(Record::Deleted(r)) => json!({"deleted": {
            "table": r.table().as_str_name(), "id": r.id}}),
        None => json!({}),
    }
}

/// The initialisation data set on the master: `records` store records for
/// `store_id` (30 % stock lines, 10 % invoices, 60 % invoice lines), and
/// `items` items and `names` names, made with set-based SQL.
pub async fn seed_store(
    db: &DatabaseConnection,
    store_id: &str,
    records: u64,
    items: u64,
    names: u64,
) -> anyhow::Result<()> {
    seed_master_data(db, items, names).await?;
    let stock = records * 3 / 10;
    let invoices = records / 10;
    let lines = records - stock - invoices;
    let sql = format!(
        r#"
INSERT INTO stock_line (id, store_id, item_id, batch, expiry_date, pack_size, available_number_of_packs, total_number_of_packs, cost_price_per_pack, sell_price_per_pack, updated_at_ms)
  SELECT md5('stock' || g)::uuid::text, '{store_id}', md5('item' || (1 + g % {items}))::uuid::text,
         'B' || g, to_char(date '2026-01-01' + (g % 1500), 'YYYY-MM-DD'), 100, g % 50, g % 50 + 10, 2.5, 4.0, 0
  FROM generate_series(1, {stock}) g;
INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms)
  SELECT md5('invoice' || g)::uuid::text, '{store_id}', md5('name' || (1 + g % {names}))::uuid::text,
         CASE g % 3 WHEN 0 THEN 'SUPPLIER_INVOICE' WHEN 1 THEN 'CUSTOMER_INVOICE' ELSE 'INVENTORY_ADJUSTMENT' END,
         'FINALISED', g, 'REF' || g, 1767225600000 + (g % 365) * 86400000::bigint
  FROM generate_series(1, {invoices}) g;
INSERT INTO invoice_line (id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack)
  SELECT md5('line' || g)::uuid::text, md5('invoice' || (1 + g % {invoices}))::uuid::text, '{store_id}',
         md5('item' || (1 + g % {items}))::uuid::text, md5('stock' || (1 + g % {stock}))::uuid::text,
         'B' || g, '2027-06-30', 100, 1 + g % 20, 2.5, 4.0
  FROM generate_series(1, {lines}) g;
ANALYZE
"#
    );
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        db.execute(Statement::from_string(
            DbBackend::Postgres,
            statement.to_owned(),
        ))
        .await?;
    }
    Ok(())
}

/// `items` items and `names` names on the master (the master data of the
/// initialisation data set), made with set-based SQL.
pub async fn seed_master_data(
    db: &DatabaseConnection,
    items: u64,
    names: u64,
) -> anyhow::Result<()> {
    let sql = format!(
        r#"
INSERT INTO item (id, code, name, unit, default_pack_size, active, updated_at_ms)
  SELECT md5('item' || g)::uuid::text, 'I' || lpad(g::text, 6, '0'), 'Medicine ' || g || ' mg tablet', 'tab', 100, true, 0
  FROM generate_series(1, {items}) g;
INSERT INTO name (id, code, name, is_customer, is_supplier, is_store, active, updated_at_ms)
  SELECT md5('name' || g)::uuid::text, 'N' || lpad(g::text, 6, '0'), 'Partner ' || g, g % 2 = 0, g % 2 = 1, false, true, 0
  FROM generate_series(1, {names}) g;
ANALYZE item;
ANALYZE name
"#
    );
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        db.execute(Statement::from_string(
            DbBackend::Postgres,
            statement.to_owned(),
        ))
        .await?;
    }
    Ok(())
}

/// Stock moving between two stores, for the reports on it: `transfers`
/// transfers from `from_store` to `to_store` (an outbound shipment with 2
/// lines at the first, its inbound shipment with 2 lines at the second, the
/// master's transfer record): 3 in 10 in transit, the rest received, 1 in
/// 100 of all received one pack short; and `transfers / 5` requisitions of the
/// second store from the first (3 lines each), every other one answered by a
/// response, 1 in 4 responses finalised, and 1 outbound shipment in 10
/// supplying a response. Made with set-based SQL, as [`seed_store`].
pub async fn seed_transfers(
    db: &DatabaseConnection,
    from_store: &str,
    to_store: &str,
    transfers: u64,
    items: u64,
) -> anyhow::Result<()> {
    let requests = (transfers / 5).max(1);
    let sql = format!(
        r#"
INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms, linked_invoice_id, shipped_at_ms, received_at_ms, requisition_id)
  SELECT md5('out' || g)::uuid::text, '{from_store}', '{to_store}', 'OUTBOUND_SHIPMENT', 'SHIPPED', 1000000 + g, 'T' || g,
         1767225600000 + (g % 365) * 86400000::bigint, '', 1767225600000 + (g % 365) * 86400000::bigint, 0,
         CASE WHEN g % 10 = 0 AND (g / 10) % 2 = 0 AND g / 10 <= {requests} THEN md5('resp' || (g / 10))::uuid::text ELSE '' END
  FROM generate_series(1, {transfers}) g;
INSERT INTO invoice_line (id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack)
  SELECT md5('outline' || g || '-' || k)::uuid::text, md5('out' || g)::uuid::text, '{from_store}',
         md5('item' || (1 + (g * 2 + k) % {items}))::uuid::text, md5('stock' || g)::uuid::text, 'T' || g, '2028-06-30', 100, 10, 2.5, 4.0
  FROM generate_series(1, {transfers}) g, generate_series(0, 1) k;
INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms, linked_invoice_id, shipped_at_ms, received_at_ms, requisition_id)
  SELECT md5('in' || g)::uuid::text, '{to_store}', '{from_store}', 'INBOUND_SHIPMENT',
         CASE WHEN g % 10 < 3 THEN 'SHIPPED' ELSE 'RECEIVED' END, 1000000 + g, 'T' || g,
         1767225600000 + (g % 365) * 86400000::bigint, md5('out' || g)::uuid::text, 1767225600000 + (g % 365) * 86400000::bigint,
         CASE WHEN g % 10 < 3 THEN 0 ELSE 1767225600000 + (g % 365 + 2) * 86400000::bigint END, ''
  FROM generate_series(1, {transfers}) g;
INSERT INTO invoice_line (id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack, received_number_of_packs)
  SELECT md5('inline' || g || '-' || k)::uuid::text, md5('in' || g)::uuid::text, '{to_store}',
         md5('item' || (1 + (g * 2 + k) % {items}))::uuid::text, '', 'T' || g, '2028-06-30', 100, 10, 4.0, 0,
         CASE WHEN g % 10 < 3 THEN 0 WHEN g % 100 = 55 AND k = 0 THEN 9 ELSE 10 END
  FROM generate_series(1, {transfers}) g, generate_series(0, 1) k;
INSERT INTO transfer (id, from_store_id, to_store_id, inbound_invoice_id, shipped_at_ms, delivered_at_ms, received_at_ms, packs_shipped, packs_received, discrepancy)
  SELECT md5('out' || g)::uuid::text, '{from_store}', '{to_store}', md5('in' || g)::uuid::text,
         1767225600000 + (g % 365) * 86400000::bigint, 1767225600000 + (g % 365) * 86400000::bigint + 60000,
         CASE WHEN g % 10 < 3 THEN 0 ELSE 1767225600000 + (g % 365 + 2) * 86400000::bigint END,
         20, CASE WHEN g % 10 < 3 THEN 0 WHEN g % 100 = 55 THEN 19 ELSE 20 END,
         CASE WHEN g % 10 < 3 THEN 0 WHEN g % 100 = 55 THEN -1 ELSE 0 END
  FROM generate_series(1, {transfers}) g;
INSERT INTO requisition (id, store_id, kind, status, other_store_id, requisition_number, reference, created_at_ms, sent_at_ms, finalised_at_ms, linked_requisition_id)
  SELECT md5('req' || g)::uuid::text, '{to_store}', 'REQUEST', 'REQUISITION_SENT', '{from_store}', g, 'R' || g,
         1767225600000 + (g % 365) * 86400000::bigint, 1767225600000 + (g % 365) * 86400000::bigint + 1000, 0, ''
  FROM generate_series(1, {requests}) g;
INSERT INTO requisition_line (id, requisition_id, store_id, item_id, requested_quantity, stock_on_hand, average_monthly_consumption)
  SELECT md5('reqline' || g || '-' || k)::uuid::text, md5('req' || g)::uuid::text, '{to_store}',
         md5('item' || (1 + (g * 3 + k) % {items}))::uuid::text, 1000, 200, 300
  FROM generate_series(1, {requests}) g, generate_series(0, 2) k;
INSERT INTO requisition (id, store_id, kind, status, other_store_id, requisition_number, reference, created_at_ms, sent_at_ms, finalised_at_ms, linked_requisition_id)
  SELECT md5('resp' || g)::uuid::text, '{from_store}', 'RESPONSE', CASE WHEN g % 8 = 0 THEN 'REQUISITION_FINALISED' ELSE 'REQUISITION_SENT' END,
         '{to_store}', g, 'R' || g, 1767225600000 + (g % 365) * 86400000::bigint, 1767225600000 + (g % 365) * 86400000::bigint + 1000,
         CASE WHEN g % 8 = 0 THEN 1767225600000 + (g % 365 + 3) * 86400000::bigint ELSE 0 END, md5('req' || g)::uuid::text
  FROM generate_series(2, {requests}, 2) g;
INSERT INTO requisition_line (id, requisition_id, store_id, item_id, requested_quantity, stock_on_hand, average_monthly_consumption)
  SELECT md5('respline' || g || '-' || k)::uuid::text, md5('resp' || g)::uuid::text, '{from_store}',
         md5('item' || (1 + (g * 3 + k) % {items}))::uuid::text, 1000, 200, 300
  FROM generate_series(2, {requests}, 2) g, generate_series(0, 2) k;
ANALYZE
"#
    );
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        db.execute(Statement::from_string(
            DbBackend::Postgres,
            statement.to_owned(),
        ))
        .await?;
    }
    Ok(())
}

/// Rows of `table` in `db` (every row, whatever its store).
pub async fn count_all(db: &DatabaseConnection, table: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("count of {table}"))?;
    Ok(row.try_get("", "n")?)
}

/// Rows of `table` for `store_id` in `db`.
pub async fn count_rows(
    db: &DatabaseConnection,
    table: &str,
    store_id: &str,
) -> anyhow::Result<i64> {
    let backend = db.get_database_backend();
    let placeholder = if backend == DbBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    let row = db
        .query_one(Statement::from_sql_and_values(
            backend,
            format!("SELECT COUNT(*) AS n FROM {table} WHERE store_id = {placeholder}"),
            [store_id.into()],
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("count of {table}"))?;
    Ok(row.try_get("", "n")?)
}

/// Every row count of a store's data, for checks after a scenario.
pub async fn store_counts(db: &DatabaseConnection, store_id: &str) -> anyhow::Result<[i64; 3]> {
    Ok([
        count_rows(db, "stock_line", store_id).await?,
        count_rows(db, "invoice", store_id).await?,
        count_rows(db, "invoice_line", store_id).await?,
    ])
}
