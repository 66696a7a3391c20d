//! Reports on the benchmark data set: 1,000,000 store records (300,000 stock
//! lines, 100,000 invoices, 600,000 invoice lines) over 63 stores, 100,000
//! items and 50,000 names, in PostgreSQL.
//!
//! `TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p master-service --bench reports`
//! seeds a scratch database (dropped afterwards) with set-based SQL, runs each
//! report several times through the same functions `ReportService` calls, and
//! prints the median and the spread. No figure is asserted anywhere.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use master_service::report::{activity, movements, stock};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use sea_orm_migration::MigratorTrait;
use storesync_shared::proto::v1 as pb;

const SEED: &str = r#"
INSERT INTO store (id, code, name, sync_id)
  SELECT md5('store' || s)::uuid::text, 'S' || s, 'Store ' || s, s FROM generate_series(2, 64) s;
INSERT INTO site (sync_id, name, store_id, url, enabled, upstream_acked_seq, downstream_cursor, initialised, created_at_ms)
  SELECT s, 'Site ' || s, md5('store' || s)::uuid::text, 'http://site' || s || ':50052', true, 0, 0, true, 0 FROM generate_series(2, 64) s;
INSERT INTO item (id, code, name, unit, default_pack_size, active, updated_at_ms)
  SELECT md5('item' || g)::uuid::text, 'I' || lpad(g::text, 6, '0'), 'Medicine ' || g || ' mg tablet', 'tab', 100, true, 0
  FROM generate_series(1, 100000) g;
INSERT INTO name (id, code, name, is_customer, is_supplier, is_store, active, updated_at_ms)
  SELECT md5('name' || g)::uuid::text, 'N' || lpad(g::text, 6, '0'), 'Partner ' || g, g % 2 = 0, g % 2 = 1, false, true, 0
  FROM generate_series(1, 50000) g;
INSERT INTO stock_line (id, store_id, item_id, batch, expiry_date, pack_size, available_number_of_packs, total_number_of_packs, cost_price_per_pack, sell_price_per_pack, updated_at_ms)
  SELECT md5('stock' || g)::uuid::text, md5('store' || (2 + g % 63))::uuid::text, md5('item' || (1 + g % 100000))::uuid::text,
         'B' || g, to_char(date '2026-01-01' + (g % 1500), 'YYYY-MM-DD'), 100, g % 50, g % 50 + 10, 2.5, 4.0, 0
  FROM generate_series(1, 300000) g;
INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms)
  SELECT md5('invoice' || g)::uuid::text, md5('store' || (2 + g % 63))::uuid::text, md5('name' || (1 + g % 50000))::uuid::text,
         CASE g % 3 WHEN 0 THEN 'SUPPLIER_INVOICE' WHEN 1 THEN 'CUSTOMER_INVOICE' ELSE 'INVENTORY_ADJUSTMENT' END,
         'FINALISED', g, 'REF' || g, 1767225600000 + (g % 365) * 86400000::bigint
  FROM generate_series(1, 100000) g;
INSERT INTO invoice_line (id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack)
  SELECT md5('line' || g)::uuid::text, md5('invoice' || (1 + g % 100000))::uuid::text, md5('store' || (2 + (1 + g % 100000) % 63))::uuid::text,
         md5('item' || (1 + g % 100000))::uuid::text, md5('stock' || (1 + g % 300000))::uuid::text,
         'B' || g, '2027-06-30', 100, 1 + g % 20, 2.5, 4.0
  FROM generate_series(1, 600000) g;
ANALYZE
"#;

/// 100,000 transfers between the 63 stores (each an outbound and an inbound
/// shipment with one line, and the master's record): 80 % received, one in
/// 17 of those short by a pack, 75 % delivered; 10,000 requests (3 lines
/// each) with their responses, a third finalised, every tenth outbound
/// supplying one.
const TRANSFERS: &str = r#"
INSERT INTO requisition (id, store_id, kind, status, other_store_id, requisition_number, reference, created_at_ms, sent_at_ms, finalised_at_ms, linked_requisition_id)
  SELECT md5('req' || r)::uuid::text, md5('store' || (2 + (r + 1) % 63))::uuid::text, 'REQUEST', 'REQUISITION_SENT',
         md5('store' || (2 + r % 63))::uuid::text, r, 'RQ' || r, 1767225600000 + r * 1000::bigint, 1767225600000 + r * 1000::bigint, 0, ''
  FROM generate_series(1, 10000) r;
INSERT INTO requisition (id, store_id, kind, status, other_store_id, requisition_number, reference, created_at_ms, sent_at_ms, finalised_at_ms, linked_requisition_id)
  SELECT md5('resp' || r)::uuid::text, md5('store' || (2 + r % 63))::uuid::text, 'RESPONSE',
         CASE WHEN r % 3 = 0 THEN 'REQUISITION_FINALISED' ELSE 'REQUISITION_SENT' END,
         md5('store' || (2 + (r + 1) % 63))::uuid::text, r, 'RQ' || r, 1767225600000 + r * 1000::bigint, 1767225600000 + r * 1000::bigint,
         CASE WHEN r % 3 = 0 THEN 1767225600000 + r * 2000::bigint ELSE 0 END, md5('req' || r)::uuid::text
  FROM generate_series(1, 10000) r;
INSERT INTO requisition_line (id, requisition_id, store_id, item_id, requested_quantity, stock_on_hand, average_monthly_consumption)
  SELECT md5('rql' || g)::uuid::text, md5('req' || (1 + g % 10000))::uuid::text, md5('store' || (2 + (2 + g % 10000) % 63))::uuid::text,
         md5('item' || (1 + g % 100000))::uuid::text, 100 * (1 + g % 30), 50, 30
  FROM generate_series(1, 30000) g;
INSERT INTO requisition_line (id, requisition_id, store_id, item_id, requested_quantity, stock_on_hand, average_monthly_consumption)
  SELECT md5('rpl' || g)::uuid::text, md5('resp' || (1 + g % 10000))::uuid::text, md5('store' || (2 + (1 + g % 10000) % 63))::uuid::text,
         md5('item' || (1 + g % 100000))::uuid::text, 100 * (1 + g % 30), 50, 30
  FROM generate_series(1, 30000) g;
INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms, linked_invoice_id, shipped_at_ms, received_at_ms, requisition_id)
  SELECT md5('out' || g)::uuid::text, md5('store' || (2 + g % 63))::uuid::text, md5('store' || (2 + (g + 1) % 63))::uuid::text,
         'OUTBOUND_SHIPMENT', 'SHIPPED', g, 'TR' || g, 1767225600000 + g * 1000::bigint, '', 1767225600000 + g * 1000::bigint, 0,
         CASE WHEN g % 10 = 0 THEN md5('resp' || (g / 10))::uuid::text ELSE '' END
  FROM generate_series(1, 100000) g;
INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms, linked_invoice_id, shipped_at_ms, received_at_ms, requisition_id)
  SELECT md5('in' || g)::uuid::text, md5('store' || (2 + (g + 1) % 63))::uuid::text, md5('store' || (2 + g % 63))::uuid::text,
         'INBOUND_SHIPMENT', CASE WHEN g % 10 < 8 THEN 'RECEIVED' ELSE 'SHIPPED' END, g, 'TR' || g, 1767225600000 + g * 1000::bigint,
         md5('out' || g)::uuid::text, 1767225600000 + g * 1000::bigint,
         CASE WHEN g % 10 < 8 THEN 1767225600000 + g * 2000::bigint ELSE 0 END,
         CASE WHEN g % 10 = 0 THEN md5('req' || (g / 10))::uuid::text ELSE '' END
  FROM generate_series(1, 100000) g;
INSERT INTO invoice_line (id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack, received_number_of_packs)
  SELECT md5('outl' || g)::uuid::text, md5('out' || g)::uuid::text, md5('store' || (2 + g % 63))::uuid::text,
         md5('item' || (1 + g % 100000))::uuid::text, md5('stock' || (1 + g % 300000))::uuid::text,
         'T' || g, '2027-06-30', 100, 1 + g % 20, 2.5, 4.0, 0
  FROM generate_series(1, 100000) g;
INSERT INTO invoice_line (id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack, received_number_of_packs)
  SELECT md5('inl' || g)::uuid::text, md5('in' || g)::uuid::text, md5('store' || (2 + (g + 1) % 63))::uuid::text,
         md5('item' || (1 + g % 100000))::uuid::text, '', 'T' || g, '2027-06-30', 100, 1 + g % 20, 4.0, 4.0,
         CASE WHEN g % 10 >= 8 THEN 0 WHEN g % 17 = 0 THEN g % 20 ELSE 1 + g % 20 END
  FROM generate_series(1, 100000) g;
INSERT INTO transfer (id, from_store_id, to_store_id, inbound_invoice_id, shipped_at_ms, delivered_at_ms, received_at_ms, packs_shipped, packs_received, discrepancy)
  SELECT md5('out' || g)::uuid::text, md5('store' || (2 + g % 63))::uuid::text, md5('store' || (2 + (g + 1) % 63))::uuid::text,
         md5('in' || g)::uuid::text, 1767225600000 + g * 1000::bigint,
         CASE WHEN g % 4 = 0 AND g % 10 >= 8 THEN 0 ELSE 1767225600000 + g * 1500::bigint END,
         CASE WHEN g % 10 < 8 THEN 1767225600000 + g * 2000::bigint ELSE 0 END,
         1 + g % 20,
         CASE WHEN g % 10 >= 8 THEN 0 WHEN g % 17 = 0 THEN g % 20 ELSE 1 + g % 20 END,
         CASE WHEN g % 10 < 8 AND g % 17 = 0 THEN -1 ELSE 0 END
  FROM generate_series(1, 100000) g;
ANALYZE
"#;

async fn time<F, Fut, T>(label: &str, runs: usize, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut samples: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f().await;
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "{label:<58} median {:>9.1?}  min {:>9.1?}  max {:>9.1?}  (n={runs})",
        samples[runs / 2],
        samples[0],
        samples[runs - 1]
    );
}

#[tokio::main]
async fn main() {
    let Ok(server_url) = std::env::var("TEST_DATABASE_URL") else {
        println!(
            "SKIPPED the reports benchmark: TEST_DATABASE_URL is not set (it needs PostgreSQL)"
        );
        return;
    };
    let name = format!("storesync_bench_reports_{}", std::process::id());
    let admin = Database::connect(&server_url).await.unwrap();
    admin
        .execute(Statement::from_string(
            admin.get_database_backend(),
            format!("CREATE DATABASE {name}"),
        ))
        .await
        .unwrap();
    let url = match server_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TEST_DATABASE_URL needs a database name"),
    };
    let db: DatabaseConnection = storesync_shared::domain::db::connect(&url, 4)
        .await
        .unwrap();
    master_service::schema::Migrator::up(&db, None)
        .await
        .unwrap();
    let started = Instant::now();
    for statement in SEED.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        db.execute(Statement::from_string(
            db.get_database_backend(),
            statement.to_owned(),
        ))
        .await
        .unwrap();
    }
    println!(
        "seeded 1,000,000 store records, 100,000 items, 50,000 names, 63 stores in {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    for statement in TRANSFERS
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        db.execute(Statement::from_string(
            db.get_database_backend(),
            statement.to_owned(),
        ))
        .await
        .unwrap();
    }
    println!(
        "seeded 100,000 transfers (400,000 rows) and 10,000 requisitions with their responses (80,000 rows) in {:?}",
        started.elapsed()
    );

    const RUNS: usize = 5;
    let all = pb::StockOnHandRequest {
        page_size: 1000,
        ..Default::default()
    };
    let prefix = pb::StockOnHandRequest {
        item_code_prefix: "I0123".into(),
        page_size: 1000,
        ..Default::default()
    };
    let zero = pb::StockOnHandRequest {
        include_zero: true,
        page_size: 1000,
        ..Default::default()
    };
    let month = pb::StoreActivityRequest {
        from_date: "2026-03-01".into(),
        to_date: "2026-03-30".into(),
        ..Default::default()
    };
    let year_daily = pb::StoreActivityRequest {
        from_date: "2026-01-01".into(),
        to_date: "2026-12-31".into(),
        per_day: true,
        ..Default::default()
    };
    let expiring = pb::ExpiringStockRequest {
        before: "2026-04-01".into(),
        page_size: 1000,
        ..Default::default()
    };
    time("StockOnHand: first page of 1000, no filter", RUNS, || {
        stock::stock_on_hand(&db, &all)
    })
    .await;
    time(
        "StockOnHand: item code prefix I0123 (100 items)",
        RUNS,
        || stock::stock_on_hand(&db, &prefix),
    )
    .await;
    time(
        "StockOnHand: include_zero, first page of 1000",
        RUNS,
        || stock::stock_on_hand(&db, &zero),
    )
    .await;
    time("StoreActivity: 30 days, all stores", RUNS, || {
        activity::store_activity(&db, &month)
    })
    .await;
    time(
        "StoreActivity: a year, per day, all stores (first page)",
        RUNS,
        || activity::store_activity(&db, &year_daily),
    )
    .await;
    time(
        "ExpiringStock: before 2026-04-01, first page of 1000",
        RUNS,
        || stock::expiring_stock(&db, &expiring),
    )
    .await;
    let transit = pb::StockInTransitRequest::default();
    let open = pb::OpenRequisitionsRequest {
        page_size: 1000,
        ..Default::default()
    };
    let discrepancies = pb::ReceiptDiscrepanciesRequest {
        page_size: 1000,
        ..Default::default()
    };
    let store_2: String = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            "SELECT id FROM store WHERE code = 'S2'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "id")
        .unwrap();
    let one_store = pb::ReceiptDiscrepanciesRequest {
        store_ids: vec![store_2],
        page_size: 1000,
        ..Default::default()
    };
    time(
        "StockInTransit: 20,000 in transit, every pair",
        RUNS,
        || movements::stock_in_transit(&db, &transit),
    )
    .await;
    time(
        "OpenRequisitions: 6,667 open, first page of 1000",
        RUNS,
        || movements::open_requisitions(&db, &open),
    )
    .await;
    time(
        "ReceiptDiscrepancies: 3,765 short, first page of 1000",
        RUNS,
        || movements::receipt_discrepancies(&db, &discrepancies),
    )
    .await;
    time(
        "ReceiptDiscrepancies: one store, first page of 1000",
        RUNS,
        || movements::receipt_discrepancies(&db, &one_store),
    )
    .await;
    time("SyncStatus: 63 sites", RUNS, || {
        master_service::report::sync_status(&db, 45_000)
    })
    .await;

    db.close().await.unwrap();
    admin
        .execute(Statement::from_string(
            admin.get_database_backend(),
            format!("DROP DATABASE {name} WITH (FORCE)"),
        ))
        .await
        .unwrap();
}
