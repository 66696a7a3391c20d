//! The store's rules, straight against the database (no gRPC): on SQLite, and
//! on PostgreSQL when `TEST_DATABASE_URL` is set (a fresh database per test).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, Statement};
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTrait, SchemaManager};
use storesync_shared::domain::entities::{invoice, invoice_line, item, name, stock_line};
use storesync_shared::proto::v1::{self as pb, sync_record::Record, SyncRecord};
use storesync_shared::{domain::store_ops, Error};
use tonic::Code;

struct CommonOnly;
impl MigratorTrait for CommonOnly {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = storesync_shared::domain::schema::common_migrations();
        migrations.push(Box::new(TransferTables));
        migrations
    }
}

/// The common transfer columns and table, as each binary's migration adds them.
struct TransferTables;
impl MigrationName for TransferTables {
    fn name(&self) -> &str {
        "m0110_transfers"
    }
}
#[sea_orm_migration::async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)] // the trait is declared with the elided form
impl MigrationTrait for TransferTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        storesync_shared::domain::schema::run_script(
            manager.get_connection(),
            storesync_shared::domain::schema::TRANSFER_TABLES,
        )
        .await?;
        // And the requisition link and tables (m0111/m0211).
        storesync_shared::domain::schema::run_script(
            manager.get_connection(),
            storesync_shared::domain::schema::REQUISITION_TABLES,
        )
        .await
    }
}

/// A migrated database with a store's master data: an active item, an
/// inactive one, a supplier, a customer.
struct Fixture {
    db: DatabaseConnection,
    /// Server URL and database name to drop afterwards (PostgreSQL).
    postgres: Option<(String, String)>,
    item: String,
    inactive_item: String,
    supplier: String,
    customer: String,
}

const STORE: &str = "5e1f0000-0000-4000-8000-000000000001";
const OTHER_STORE: &str = "5e1f0000-0000-4000-8000-000000000002";

fn backends(test: &str) -> Vec<&'static str> {
    if std::env::var("TEST_DATABASE_URL").is_ok() {
        vec!["sqlite", "postgres"]
    } else {
        eprintln!(
            "\n*** SKIPPED: the PostgreSQL variant of `{test}`: TEST_DATABASE_URL is not set ***\n"
        );
        vec!["sqlite"]
    }
}

impl Fixture {
    async fn new(backend: &str) -> Self {
        let (url, postgres) = if backend == "postgres" {
            let server = std::env::var("TEST_DATABASE_URL").unwrap();
            let name = format!("storesync_ops_{}", uuid::Uuid::new_v4().simple());
            let admin = storesync_shared::domain::db::connect(&server, 1)
                .await
                .unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            admin.close().await.unwrap();
            let base = server.rsplit_once('/').unwrap().0;
            (format!("{base}/{name}"), Some((server, name)))
        } else {
            ("sqlite::memory:".to_owned(), None)
        };
        let db = storesync_shared::domain::db::connect(&url, 4)
            .await
            .unwrap();
        CommonOnly::up(&db, None).await.unwrap();
        let item_row = |id: &str, code: &str, active: bool| {
            item::ActiveModel::from(item::Model {
                id: id.into(),
                code: code.into(),
                name: format!("{code} name"),
                unit: "tab".into(),
                default_pack_size: 10,
                active,
                updated_at_ms: 1,
            })
        };
        let name_row = |id: &str, code: &str, customer: bool, supplier: bool| {
            name::ActiveModel::from(name::Model {
                id: id.into(),
                code: code.into(),
                name: code.into(),
                is_customer: customer,
                is_supplier: supplier,
                is_store: false,
                active: true,
                updated_at_ms: 1,
            })
        };
        let fixture = Self {
            db,
            postgres,
            item: "17e40000-0000-4000-8000-00000000000a".into(),
            inactive_item: "17e40000-0000-4000-8000-00000000000b".into(),
            supplier: "0a4e0000-0000-4000-8000-00000000000a".into(),
            customer: "0a4e0000-0000-4000-8000-00000000000b".into(),
        };
        item::Entity::insert_many([
            item_row(&fixture.item, "AMOX250", true),
            item_row(&fixture.inactive_item, "OLD1", false),
        ])
        .exec(&fixture.db)
        .await
        .unwrap();
        name::Entity::insert_many([
            name_row(&fixture.supplier, "SUP", false, true),
            name_row(&fixture.customer, "CUST", true, false),
        ])
        .exec(&fixture.db)
        .await
        .unwrap();
        fixture
    }

    async fn finish(self) {
        self.db.close().await.unwrap();
        if let Some((server, name)) = self.postgres {
            let admin = storesync_shared::domain::db::connect(&server, 1)
                .await
                .unwrap();
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .unwrap();
        }
    }

    /// Runs `create_invoice` in its own transaction, committed only on success.
    async fn create(
        &self,
        store: &str,
        invoice: pb::Invoice,
    ) -> Result<(pb::CreateInvoiceResponse, Vec<SyncRecord>), Error> {
        let txn = storesync_shared::domain::db::begin(&self.db).await.unwrap();
        let request = pb::CreateInvoiceRequest {
            invoice: Some(invoice),
        };
        let result = store_ops::create_invoice(&txn, store, request).await;
        if result.is_ok() {
            txn.commit().await.unwrap();
        } else {
            txn.rollback().await.unwrap();
        }
        result
    }

    /// Goods in of `packs` packs of the item; returns the new stock line's id.
    async fn receive(&self, packs: f64, expiry: &str) -> String {
        let (response, _) = self
            .create(
                STORE,
                invoice(
                    pb::InvoiceKind::SupplierInvoice,
                    &self.supplier,
                    vec![goods_in(&self.item, packs, expiry)],
                ),
            )
            .await
            .unwrap();
        response.stock_lines[0].id.clone()
    }

    async fn stock_line(&self, id: &str) -> stock_line::Model {
        stock_line::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .unwrap()
            .unwrap()
    }

    async fn count(&self, table: &str) -> i64 {
        let backend = self.db.get_database_backend();
        let row = self
            .db
            .query_one(Statement::from_string(
                backend,
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get("", "n").unwrap()
    }
}

fn invoice(kind: pb::InvoiceKind, name_id: &str, lines: Vec<pb::InvoiceLine>) -> pb::Invoice {
    pb::Invoice {
        kind: kind as i32,
        name_id: name_id.into(),
        reference: "delivery 42".into(),
        lines,
        ..Default::default()
    }
}

fn goods_in(item_id: &str, packs: f64, expiry: &str) -> pb::InvoiceLine {
    pb::InvoiceLine {
        item_id: item_id.into(),
        batch: "B1".into(),
        expiry_date: expiry.into(),
        pack_size: 10,
        number_of_packs: packs,
        cost_price_per_pack: 2.5,
        ..Default::default()
    }
}

fn take(stock_line_id: &str, packs: f64) -> pb::InvoiceLine {
    pb::InvoiceLine {
        stock_line_id: stock_line_id.into(),
        number_of_packs: packs,
        sell_price_per_pack: 4.0,
        ..Default::default()
    }
}

fn assert_error(result: Result<impl std::fmt::Debug, Error>, code: Code, needles: &[&str]) {
    let error = result.expect_err("the call is refused");
    assert_eq!(error.code(), code, "{error}");
    for needle in needles {
        assert!(
            error.to_string().contains(needle),
            "{error:?} should mention {needle:?}"
        );
    }
}

#[tokio::test]
async fn goods_in_creates_stock_lines_and_the_records_are_the_rows() {
    for backend in backends("goods_in_creates_stock_lines_and_the_records_are_the_rows") {
        let fx = Fixture::new(backend).await;
        let (response, records) = fx
            .create(
                STORE,
                invoice(
                    pb::InvoiceKind::SupplierInvoice,
                    &fx.supplier,
                    vec![
                        goods_in(&fx.item, 10.0, "2027-03-31"),
                        goods_in(&fx.item, 5.0, ""),
                        goods_in(&fx.item, 1.5, "2026-12-31"),
                    ],
                ),
            )
            .await
            .unwrap();
        let stored = response.invoice.clone().unwrap();
        assert_eq!(stored.invoice_number, 1);
        assert_eq!(stored.status(), pb::InvoiceStatus::Finalised);
        assert_eq!(response.stock_lines.len(), 3);
        let packs: Vec<f64> = stored.lines.iter().map(|l| l.number_of_packs).collect();
        assert_eq!(packs, [10.0, 5.0, 1.5], "lines keep their order");
        for (line, stock) in stored.lines.iter().zip(&response.stock_lines) {
            assert_eq!(line.stock_line_id, stock.id);
            assert_eq!(stock.available_number_of_packs, line.number_of_packs);
            assert_eq!(stock.total_number_of_packs, line.number_of_packs);
            assert_eq!(stock.store_id, STORE);
        }

        // The records for the outbox are exactly the rows now in the database.
        let mut from_records: BTreeMap<String, Record> = BTreeMap::new();
        for record in records {
            let record = record.record.unwrap();
            let id = match &record {
                Record::StockLine(r) => r.id.clone(),
                Record::Invoice(r) => {
                    assert!(r.lines.is_empty(), "invoice records carry no nested lines");
                    r.id.clone()
                }
                Record::InvoiceLine(r) => r.id.clone(),
                other => panic!("unexpected record {other:?}"),
            };
            from_records.insert(id, record);
        }
        let mut from_rows: BTreeMap<String, Record> = BTreeMap::new();
        for row in stock_line::Entity::find().all(&fx.db).await.unwrap() {
            from_rows.insert(row.id.clone(), Record::StockLine(row.into()));
        }
        for row in invoice::Entity::find().all(&fx.db).await.unwrap() {
            from_rows.insert(row.id.clone(), Record::Invoice(row.into()));
        }
        for row in invoice_line::Entity::find().all(&fx.db).await.unwrap() {
            from_rows.insert(row.id.clone(), Record::InvoiceLine(row.into()));
        }
        assert_eq!(from_records, from_rows);
        assert_eq!(from_rows.len(), 7);

        // Numbers go up per store and kind.
        fx.receive(1.0, "").await;
        let third = fx
            .create(
                STORE,
                invoice(
                    pb::InvoiceKind::SupplierInvoice,
                    &fx.supplier,
                    vec![goods_in(&fx.item, 1.0, "")],
                ),
            )
            .await
            .unwrap();
        assert_eq!(third.0.invoice.unwrap().invoice_number, 3);
        let other = fx
            .create(
                OTHER_STORE,
                invoice(
                    pb::InvoiceKind::SupplierInvoice,
                    &fx.supplier,
                    vec![goods_in(&fx.item, 1.0, "")],
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            other.0.invoice.unwrap().invoice_number,
            1,
            "another store counts alone"
        );
        let line = response.stock_lines[0].id.clone();
        let out = fx
            .create(
                STORE,
                invoice(
                    pb::InvoiceKind::CustomerInvoice,
                    &fx.customer,
                    vec![take(&line, 1.0)],
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            out.0.invoice.unwrap().invoice_number,
            1,
            "each kind counts alone"
        );

        // What GetInvoice answers is what CreateInvoice answered.
        let read = store_ops::get_invoice(&fx.db, STORE, &stored.id)
            .await
            .unwrap();
        assert_eq!(read, stored);
        fx.finish().await;
    }
}

#[tokio::test]
async fn goods_out_below_zero_is_refused_and_changes_nothing() {
    for backend in backends("goods_out_below_zero_is_refused_and_changes_nothing") {
        let fx = Fixture::new(backend).await;
        let line = fx.receive(10.0, "2027-01-31").await;
        let before = (fx.count("invoice").await, fx.count("invoice_line").await);

        // 6 + 5 on one stock line: each fits alone, together they do not.
        let refused = fx
            .create(
                STORE,
                invoice(
                    pb::InvoiceKind::CustomerInvoice,
                    &fx.customer,
                    vec![take(&line, 6.0), take(&line, 5.0)],
                ),
            )
            .await;
        assert_error(
            refused,
            Code::FailedPrecondition,
            &["invoice.lines[1]", &line, "10 packs available"],
        );
        assert_eq!(
            (fx.count("invoice").await, fx.count("invoice_line").await),
            before
        );
        assert_eq!(fx.stock_line(&line).await.available_number_of_packs, 10.0);

        // 6 + 4 fits exactly.
        let (response, records) = fx
            .create(
                STORE,
                invoice(
                    pb::InvoiceKind::CustomerInvoice,
                    &fx.customer,
                    vec![take(&line, 6.0), take(&line, 4.0)],
                ),
            )
            .await
            .unwrap();
        let after = fx.stock_line(&line).await;
        assert_eq!(after.available_number_of_packs, 0.0);
        assert_eq!(after.total_number_of_packs, 0.0);
        assert_eq!(response.stock_lines.len(), 1, "one stock line changed");
        assert_eq!(response.stock_lines[0], pb::StockLine::from(after));
        assert_eq!(records.len(), 1 + 1 + 2, "stock line, invoice, two lines");
        let lines = &response.invoice.unwrap().lines;
        assert_eq!(
            lines[0].item_id, fx.item,
            "goods-out lines carry the stock line's item"
        );
        assert_eq!(lines[0].batch, "B1");

        // Nothing left: one more pack is refused.
        let refused = fx
            .create(
                STORE,
                invoice(
                    pb::InvoiceKind::CustomerInvoice,
                    &fx.customer,
                    vec![take(&line, 1.0)],
                ),
            )
            .await;
        assert_error(
            refused,
            Code::FailedPrecondition,
            &["invoice.lines[0]", &line],
        );
        fx.finish().await;
    }
}

#[tokio::test]
async fn adjustments_add_and_take_but_never_below_zero() {
    for backend in backends("adjustments_add_and_take_but_never_below_zero") {
        let fx = Fixture::new(backend).await;
        let line = fx.receive(10.0, "2027-01-31").await;
        let adjust = |lines| invoice(pb::InvoiceKind::InventoryAdjustment, "", lines);

        fx.create(STORE, adjust(vec![take(&line, 3.0)]))
            .await
            .unwrap();
        assert_eq!(fx.stock_line(&line).await.total_number_of_packs, 13.0);
        fx.create(STORE, adjust(vec![take(&line, -12.5)]))
            .await
            .unwrap();
        assert_eq!(fx.stock_line(&line).await.available_number_of_packs, 0.5);
        let refused = fx.create(STORE, adjust(vec![take(&line, -1.0)])).await;
        assert_error(
            refused,
            Code::FailedPrecondition,
            &["invoice.lines[0]", &line],
        );
        assert_eq!(fx.stock_line(&line).await.available_number_of_packs, 0.5);
        let zero = fx.create(STORE, adjust(vec![take(&line, 0.0)])).await;
        assert_error(
            zero,
            Code::InvalidArgument,
            &["invoice.lines[0].number_of_packs"],
        );

        // A line without a stock line is found stock: goods in.
        let (found, _) = fx
            .create(STORE, adjust(vec![goods_in(&fx.item, 4.0, "2028-01-01")]))
            .await
            .unwrap();
        assert_eq!(found.stock_lines.len(), 1);
        assert_eq!(found.stock_lines[0].total_number_of_packs, 4.0);
        let numbers: Vec<i64> = store_ops::list_invoices(
            &fx.db,
            STORE,
            &pb::ListInvoicesRequest {
                kind: pb::InvoiceKind::InventoryAdjustment as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .invoices
        .iter()
        .map(|i| i.invoice_number)
        .collect();
        assert_eq!(
            numbers,
            [3, 2, 1],
            "newest first; refused ones took no number"
        );
        fx.finish().await;
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_or_record() {
    for backend in backends("bad_input_is_refused_naming_the_field_or_record") {
        let fx = Fixture::new(backend).await;
        let line = fx.receive(10.0, "").await;
        let supplier = |lines| invoice(pb::InvoiceKind::SupplierInvoice, &fx.supplier, lines);
        let ok = || goods_in(&fx.item, 1.0, "2027-01-01");

        let nan = fx
            .create(
                STORE,
                supplier(vec![ok(), ok(), goods_in(&fx.item, f64::NAN, "")]),
            )
            .await;
        assert_error(
            nan,
            Code::InvalidArgument,
            &["invoice.lines[2].number_of_packs"],
        );
        let huge = fx
            .create(STORE, supplier(vec![goods_in(&fx.item, 2e9, "")]))
            .await;
        assert_error(
            huge,
            Code::InvalidArgument,
            &["invoice.lines[0].number_of_packs"],
        );
        let negative = fx
            .create(STORE, supplier(vec![ok(), goods_in(&fx.item, -1.0, "")]))
            .await;
        assert_error(
            negative,
            Code::InvalidArgument,
            &["invoice.lines[1].number_of_packs"],
        );
        let date = fx
            .create(STORE, supplier(vec![goods_in(&fx.item, 1.0, "2027-02-30")]))
            .await;
        assert_error(
            date,
            Code::InvalidArgument,
            &["invoice.lines[0].expiry_date"],
        );
        let bad_id = fx
            .create(STORE, supplier(vec![goods_in("nope", 1.0, "")]))
            .await;
        assert_error(bad_id, Code::InvalidArgument, &["invoice.lines[0].item_id"]);
        let no_kind = fx
            .create(
                STORE,
                invoice(pb::InvoiceKind::Unspecified, &fx.supplier, vec![ok()]),
            )
            .await;
        assert_error(no_kind, Code::InvalidArgument, &["invoice.kind"]);
        let no_lines = fx.create(STORE, supplier(vec![])).await;
        assert_error(no_lines, Code::InvalidArgument, &["invoice.lines"]);
        let no_stock_line = fx
            .create(
                STORE,
                invoice(
                    pb::InvoiceKind::CustomerInvoice,
                    &fx.customer,
                    vec![take("", 1.0)],
                ),
            )
            .await;
        assert_error(
            no_stock_line,
            Code::InvalidArgument,
            &["invoice.lines[0].stock_line_id"],
        );

        let unknown_item = "17e40000-0000-4000-8000-0000000000ff";
        let missing = fx
            .create(STORE, supplier(vec![ok(), goods_in(unknown_item, 1.0, "")]))
            .await;
        assert_error(
            missing,
            Code::NotFound,
            &["invoice.lines[1].item_id", unknown_item],
        );
        let unknown_name = "0a4e0000-0000-4000-8000-0000000000ff";
        let missing = fx
            .create(
                STORE,
                invoice(pb::InvoiceKind::SupplierInvoice, unknown_name, vec![ok()]),
            )
            .await;
        assert_error(missing, Code::NotFound, &["invoice.name_id", unknown_name]);
        let elsewhere = fx
            .create(
                OTHER_STORE,
                invoice(
                    pb::InvoiceKind::CustomerInvoice,
                    &fx.customer,
                    vec![take(&line, 1.0)],
                ),
            )
            .await;
        assert_error(
            elsewhere,
            Code::NotFound,
            &["invoice.lines[0].stock_line_id", &line],
        );

        let inactive = fx
            .create(STORE, supplier(vec![goods_in(&fx.inactive_item, 1.0, "")]))
            .await;
        assert_error(
            inactive,
            Code::FailedPrecondition,
            &["invoice.lines[0].item_id", "OLD1", "inactive"],
        );
        let not_supplier = fx
            .create(
                STORE,
                invoice(pb::InvoiceKind::SupplierInvoice, &fx.customer, vec![ok()]),
            )
            .await;
        assert_error(
            not_supplier,
            Code::FailedPrecondition,
            &["invoice.name_id", "CUST", "not a supplier"],
        );

        assert_eq!(
            fx.count("invoice").await,
            1,
            "only the first goods in was applied"
        );
        assert_eq!(fx.count("stock_line").await, 1);
        fx.finish().await;
    }
}

#[tokio::test]
async fn stock_reads_aggregate_page_and_filter() {
    for backend in backends("stock_reads_aggregate_page_and_filter") {
        let fx = Fixture::new(backend).await;
        let first = fx.receive(10.0, "2027-06-30").await;
        fx.receive(2.0, "2027-01-31").await;
        fx.receive(3.0, "").await;
        let empty = fx.receive(1.0, "2026-01-31").await;
        fx.create(
            STORE,
            invoice(
                pb::InvoiceKind::CustomerInvoice,
                &fx.customer,
                vec![take(&empty, 1.0), take(&first, 4.0)],
            ),
        )
        .await
        .unwrap();
        // Another store's stock is never counted here.
        fx.create(
            OTHER_STORE,
            invoice(
                pb::InvoiceKind::SupplierInvoice,
                &fx.supplier,
                vec![goods_in(&fx.item, 100.0, "2026-02-01")],
            ),
        )
        .await
        .unwrap();

        let on_hand = store_ops::stock_on_hand(&fx.db, STORE, "").await.unwrap();
        assert_eq!(
            on_hand.rows,
            [pb::StoreStockOnHandRow {
                item_id: fx.item.clone(),
                item_code: "AMOX250".into(),
                item_name: "AMOX250 name".into(),
                packs_on_hand: 11.0,
                units_on_hand: 110.0,
                batches: 3,
                earliest_expiry: "2027-01-31".into(),
            }]
        );
        assert!(
            store_ops::stock_on_hand(&fx.db, STORE, "amox")
                .await
                .unwrap()
                .rows
                .is_empty(),
            "prefix is case-sensitive"
        );
        assert_eq!(
            store_ops::stock_on_hand(&fx.db, STORE, "AMOX")
                .await
                .unwrap()
                .rows
                .len(),
            1
        );

        let expiring = store_ops::expiring_stock(&fx.db, STORE, "2027-03-01")
            .await
            .unwrap();
        let dates: Vec<_> = expiring
            .stock_lines
            .iter()
            .map(|l| l.expiry_date.as_str())
            .collect();
        assert_eq!(
            dates,
            ["2027-01-31"],
            "empty lines and undated batches are left out"
        );
        assert_error(
            store_ops::expiring_stock(&fx.db, STORE, "soon").await,
            Code::InvalidArgument,
            &["before"],
        );

        // Paging walks every line exactly once.
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = store_ops::list_stock(
                &fx.db,
                STORE,
                &pb::ListStockRequest {
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            seen.extend(page.stock_lines.into_iter().map(|l| l.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), 4);
        let in_stock = store_ops::list_stock(
            &fx.db,
            STORE,
            &pb::ListStockRequest {
                in_stock_only: true,
                item_id: fx.item.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(in_stock.stock_lines.len(), 3);

        let page = store_ops::list_invoices(
            &fx.db,
            STORE,
            &pb::ListInvoicesRequest {
                page_size: 4,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(page.invoices.len(), 4);
        let rest = store_ops::list_invoices(
            &fx.db,
            STORE,
            &pb::ListInvoicesRequest {
                page_size: 4,
                page_token: page.next_page_token,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(rest.invoices.len(), 1);
        assert!(rest.next_page_token.is_empty());
        assert_error(
            store_ops::list_invoices(
                &fx.db,
                STORE,
                &pb::ListInvoicesRequest {
                    page_token: "x".into(),
                    ..Default::default()
                },
            )
            .await,
            Code::InvalidArgument,
            &["page_token"],
        );
        fx.finish().await;
    }
}

#[tokio::test]
async fn concurrent_goods_out_never_oversells_nor_repeats_a_number() {
    for backend in backends("concurrent_goods_out_never_oversells_nor_repeats_a_number") {
        let fx = Fixture::new(backend).await;
        let line = fx.receive(10.0, "").await;
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let db = fx.db.clone();
                let request = pb::CreateInvoiceRequest {
                    invoice: Some(invoice(
                        pb::InvoiceKind::CustomerInvoice,
                        &fx.customer,
                        vec![take(&line, 2.0)],
                    )),
                };
                tokio::spawn(async move {
                    let txn = storesync_shared::domain::db::begin(&db).await.unwrap();
                    let result = store_ops::create_invoice(&txn, STORE, request).await;
                    match result {
                        Ok((response, _)) => {
                            txn.commit().await.unwrap();
                            Some(response.invoice.unwrap().invoice_number)
                        }
                        Err(error) => {
                            assert_eq!(error.code(), Code::FailedPrecondition, "{error}");
                            None
                        }
                    }
                })
            })
            .collect();
        let mut numbers = Vec::new();
        for task in tasks {
            numbers.extend(task.await.unwrap());
        }
        numbers.sort_unstable();
        assert_eq!(
            numbers,
            [1, 2, 3, 4, 5],
            "five of two packs fit in ten, numbered once each"
        );
        assert_eq!(fx.stock_line(&line).await.available_number_of_packs, 0.0);
        fx.finish().await;
    }
}

/// Runs a transfer operation in its own transaction, committed only on success.
async fn in_txn<T, F>(fx: &Fixture, op: F) -> Result<T, Error>
where
    F: for<'t> FnOnce(
        &'t sea_orm::DatabaseTransaction,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, Error>> + Send + 't>,
    >,
{
    let txn = storesync_shared::domain::db::begin(&fx.db).await.unwrap();
    let result = op(&txn).await;
    if result.is_ok() {
        txn.commit().await.unwrap();
    } else {
        txn.rollback().await.unwrap();
    }
    result
}

fn transfer_line(stock_line_id: &str, packs: f64) -> pb::InvoiceLine {
    pb::InvoiceLine {
        stock_line_id: stock_line_id.into(),
        number_of_packs: packs,
        sell_price_per_pack: 2.0,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_transfer_reserves_moves_its_reservation_ships_and_is_received_once() {
    use storesync_shared::domain::transfers;
    for backend in backends("a_transfer_reserves_moves_its_reservation_ships_and_is_received_once")
    {
        let fx = Fixture::new(backend).await;
        name::Entity::insert(name::ActiveModel::from(name::Model {
            id: OTHER_STORE.into(),
            code: "OTHER".into(),
            name: "Other store".into(),
            is_customer: false,
            is_supplier: false,
            is_store: true,
            active: true,
            updated_at_ms: 1,
        }))
        .exec(&fx.db)
        .await
        .unwrap();
        let stock = fx.receive(10.0, "2028-01-31").await;
        let packs =
            |line: stock_line::Model| (line.available_number_of_packs, line.total_number_of_packs);

        // Two lines on one stock line add up; more than is left is refused
        // and changes nothing.
        let request = |lines| pb::CreateTransferRequest {
            requisition_id: String::new(),
            to_store_id: OTHER_STORE.into(),
            reference: "T1".into(),
            lines,
        };
        let first = request(vec![transfer_line(&stock, 3.0), transfer_line(&stock, 4.0)]);
        let (draft, _) = in_txn(&fx, |t| {
            Box::pin(transfers::create_transfer(t, STORE, first))
        })
        .await
        .unwrap();
        assert_eq!(packs(fx.stock_line(&stock).await), (3.0, 10.0));
        let greedy = request(vec![transfer_line(&stock, 4.0)]);
        let refused = in_txn(&fx, |t| {
            Box::pin(transfers::create_transfer(t, STORE, greedy))
        })
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
        assert_eq!(packs(fx.stock_line(&stock).await), (3.0, 10.0));

        // An edit releases the old lines before reserving the new ones, and
        // sends the old lines' deletes.
        let edit = pb::UpdateTransferRequest {
            id: draft.id.clone(),
            reference: "T1b".into(),
            lines: vec![transfer_line(&stock, 9.0)],
        };
        let (_, records) = in_txn(&fx, |t| {
            Box::pin(transfers::update_transfer(t, STORE, edit))
        })
        .await
        .unwrap();
        assert_eq!(packs(fx.stock_line(&stock).await), (1.0, 10.0));
        let deletes = records
            .iter()
            .filter(|r| matches!(r.record, Some(Record::Deleted(_))))
            .count();
        assert_eq!(deletes, 2);

        // Shipped: the stock leaves; no second ship, no edit.
        let ship = pb::ShipTransferRequest {
            id: draft.id.clone(),
        };
        let (shipped, _) = in_txn(&fx, |t| {
            Box::pin(transfers::ship_transfer(t, STORE, ship.clone()))
        })
        .await
        .unwrap();
        assert_eq!(shipped.status(), pb::InvoiceStatus::Shipped);
        assert_eq!(packs(fx.stock_line(&stock).await), (1.0, 1.0));
        let again = in_txn(&fx, |t| {
            Box::pin(transfers::ship_transfer(t, STORE, ship.clone()))
        })
        .await
        .unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition, "{again}");
        assert_eq!(packs(fx.stock_line(&stock).await), (1.0, 1.0));

        // An inbound shipment as the master creates it, received one short.
        let inbound_id = "1b0d0000-0000-5000-8000-000000000001";
        let inbound_line = "1b0d0000-0000-5000-8000-000000000002";
        fx.db
            .execute_unprepared(&format!(
                "INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, \
                 created_at_ms, linked_invoice_id, shipped_at_ms, received_at_ms) VALUES ('{inbound_id}', \
                 '{STORE}', '{OTHER_STORE}', 'INBOUND_SHIPMENT', 'SHIPPED', 1, '', 1, '{}', 1, 0)",
                draft.id
            ))
            .await
            .unwrap();
        fx.db
            .execute_unprepared(&format!(
                "INSERT INTO invoice_line (id, invoice_id, store_id, item_id, stock_line_id, batch, \
                 expiry_date, pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack, \
                 received_number_of_packs) VALUES ('{inbound_line}', '{inbound_id}', '{STORE}', '{}', \
                 '', 'B1', '2028-01-31', 10, 5, 2, 2, 0)",
                fx.item
            ))
            .await
            .unwrap();
        let receive = |lines: Vec<pb::ReceivedLine>| pb::ReceiveTransferRequest {
            id: inbound_id.into(),
            lines,
        };
        let got = |packs: f64| pb::ReceivedLine {
            line_id: inbound_line.into(),
            received_number_of_packs: packs,
        };
        for (bad, needle) in [
            (vec![got(1.0), got(2.0)], "named twice"),
            (vec![got(-1.0)], "lines[0].received_number_of_packs"),
            (
                vec![pb::ReceivedLine {
                    line_id: stock.clone(),
                    received_number_of_packs: 1.0,
                }],
                "is not a line of inbound shipment",
            ),
        ] {
            let request = receive(bad);
            let error = in_txn(&fx, |t| {
                Box::pin(transfers::receive_transfer(t, STORE, request))
            })
            .await
            .unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{error}");
            assert!(error.to_string().contains(needle), "{error}");
        }
        let outbound_as_inbound = pb::ReceiveTransferRequest {
            id: draft.id.clone(),
            lines: Vec::new(),
        };
        let error = in_txn(&fx, |t| {
            Box::pin(transfers::receive_transfer(t, STORE, outbound_as_inbound))
        })
        .await
        .unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{error}");
        let lines_before = stock_line::Entity::find().all(&fx.db).await.unwrap().len();
        assert_eq!(lines_before, 1, "refused receipts made no stock");

        let ok = receive(vec![got(4.0)]);
        let (received, records) =
            in_txn(&fx, |t| Box::pin(transfers::receive_transfer(t, STORE, ok)))
                .await
                .unwrap();
        assert_eq!(received.status(), pb::InvoiceStatus::Received);
        assert_eq!(received.lines[0].received_number_of_packs, 4.0);
        let new_stock = fx.stock_line(&received.lines[0].stock_line_id).await;
        assert_eq!(packs(new_stock.clone()), (4.0, 4.0));
        assert_eq!(new_stock.cost_price_per_pack, 2.0);
        assert_eq!(records.len(), 3, "stock line, invoice, line");
        let twice = receive(Vec::new());
        let error = in_txn(&fx, |t| {
            Box::pin(transfers::receive_transfer(t, STORE, twice))
        })
        .await
        .unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition, "{error}");
        fx.finish().await;
    }
}
