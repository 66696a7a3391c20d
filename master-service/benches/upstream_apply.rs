//! Applying a satellite's upstream backlog on PostgreSQL, against `COPY`.
//!
//! `TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p master-service --bench upstream_apply`
//! creates a scratch database (dropped afterwards), generates a backlog of
//! 200,000 records as a satellite would send them (invoices, each followed by
//! its six lines and three stock lines, a few of which update a stock line sent
//! earlier, and an occasional deleted line), and applies it through
//! `apply_batch` in batches of 2,000 records. It then `COPY`s the same final
//! rows into scratch tables of the same shape (`LIKE … INCLUDING ALL`: columns,
//! primary key and indexes). Each run starts from empty tables; the figures are
//! the median, min and max over the runs. No figure is asserted anywhere.
//!
//! `BENCH_RECORDS` and `BENCH_RUNS` override the backlog size and run count.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use master_service::entities::site;
use master_service::sync::status::claim;
use master_service::sync::upstream::{apply_batch, SiteIdentity};
use rand::{Rng, SeedableRng};
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, Set, Statement};
use sea_orm_migration::MigratorTrait;
use storesync_shared::domain::entities::store;
use storesync_shared::proto::v1 as pb;

const STORE: &str = "2f1c7a4e-0000-4000-8000-0000000000a2";
const SYNC_ID: u32 = 2;
const SESSION: &str = "bench";
const BATCH_RECORDS: usize = 2000;
const STORE_TABLES: &[&str] = &["stock_line", "invoice", "invoice_line"];
/// The columns `COPY` fills, in the order of the texts it is sent; the
/// tables' later columns (transfers, receipts) keep their defaults.
const COPY_COLUMNS: &[&str] = &[
    "id, store_id, item_id, batch, expiry_date, pack_size, available_number_of_packs, \
     total_number_of_packs, cost_price_per_pack, sell_price_per_pack, updated_at_ms",
    "id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms",
    "id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, pack_size, \
     number_of_packs, cost_price_per_pack, sell_price_per_pack",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn uuid(rng: &mut rand::rngs::StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.gen())
        .into_uuid()
        .to_string()
}

fn record(record: pb::sync_record::Record) -> pb::SyncRecord {
    pb::SyncRecord {
        record: Some(record),
    }
}

/// A satellite's upstream log of about `count` records.
fn backlog(count: usize) -> Vec<pb::SyncRecord> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let items: Vec<String> = (0..1000).map(|_| uuid(&mut rng)).collect();
    let names: Vec<String> = (0..200).map(|_| uuid(&mut rng)).collect();
    let mut stock_lines: Vec<pb::StockLine> = Vec::new();
    let mut records = Vec::with_capacity(count + 16);
    let mut invoice_number = 0;
    while records.len() < count {
        invoice_number += 1;
        let invoice_id = uuid(&mut rng);
        records.push(record(pb::sync_record::Record::Invoice(pb::Invoice {
            id: invoice_id.clone(),
            store_id: STORE.into(),
            name_id: names[rng.gen_range(0..names.len())].clone(),
            kind: rng.gen_range(1..=3),
            status: 2,
            invoice_number,
            reference: format!("REF {invoice_number}"),
            created_at_ms: 1_767_225_600_000 + invoice_number * 60_000,
            lines: Vec::new(),
            ..Default::default()
        })));
        let mut line_ids = Vec::new();
        for _ in 0..6 {
            let id = uuid(&mut rng);
            line_ids.push(id.clone());
            records.push(record(pb::sync_record::Record::InvoiceLine(
                pb::InvoiceLine {
                    id,
                    invoice_id: invoice_id.clone(),
                    store_id: STORE.into(),
                    item_id: items[rng.gen_range(0..items.len())].clone(),
                    stock_line_id: uuid(&mut rng),
                    batch: format!("B{}", rng.gen_range(0..10_000)),
                    expiry_date: "2027-06-30".into(),
                    pack_size: 10,
                    number_of_packs: f64::from(rng.gen_range(1..20)),
                    cost_price_per_pack: 2.5,
                    sell_price_per_pack: 4.0,
                    ..Default::default()
                },
            )));
        }
        for _ in 0..3 {
            // One in ten stock line records updates a line sent recently (it
            // may repeat an id within one batch); the others are new lines.
            let line = if rng.gen_ratio(1, 10) && !stock_lines.is_empty() {
                let from = stock_lines.len().saturating_sub(300);
                let mut line = stock_lines[rng.gen_range(from..stock_lines.len())].clone();
                line.available_number_of_packs = f64::from(rng.gen_range(0..100));
                line.updated_at_ms += 1;
                line
            } else {
                let packs = f64::from(rng.gen_range(1..100));
                let line = pb::StockLine {
                    id: uuid(&mut rng),
                    store_id: STORE.into(),
                    item_id: items[rng.gen_range(0..items.len())].clone(),
                    batch: format!("B{}", rng.gen_range(0..10_000)),
                    expiry_date: "2027-06-30".into(),
                    pack_size: 10,
                    available_number_of_packs: packs,
                    total_number_of_packs: packs,
                    cost_price_per_pack: 2.5,
                    sell_price_per_pack: 4.0,
                    updated_at_ms: 1_767_225_600_000,
                };
                stock_lines.push(line.clone());
                line
            };
            records.push(record(pb::sync_record::Record::StockLine(line)));
        }
        if invoice_number % 50 == 0 {
            records.push(record(pb::sync_record::Record::Deleted(pb::RecordRef {
                table: pb::Table::InvoiceLine as i32,
                id: line_ids[0].clone(),
            })));
        }
    }
    records
}

fn batches(records: &[pb::SyncRecord]) -> Vec<pb::UpstreamBatch> {
    records
        .chunks(BATCH_RECORDS)
        .enumerate()
        .map(|(n, chunk)| {
            let first_seq = (n * BATCH_RECORDS) as u64 + 1;
            pb::UpstreamBatch {
                first_seq,
                last_seq: first_seq + chunk.len() as u64 - 1,
                records: chunk.to_vec(),
                trace_context: Default::default(),
                last_tag: 0,
            }
        })
        .collect()
}

/// The rows the backlog leaves behind, as `COPY` text per table.
fn copy_text(records: &[pb::SyncRecord]) -> (Vec<String>, usize) {
    let mut last: [HashMap<&str, Option<&pb::sync_record::Record>>; 3] = Default::default();
    let mut order: [Vec<&str>; 3] = Default::default();
    for r in records {
        let (table, id, row) = match r.record.as_ref().unwrap() {
            pb::sync_record::Record::StockLine(l) => (0, l.id.as_str(), r.record.as_ref()),
            pb::sync_record::Record::Invoice(i) => (1, i.id.as_str(), r.record.as_ref()),
            pb::sync_record::Record::InvoiceLine(l) => (2, l.id.as_str(), r.record.as_ref()),
            pb::sync_record::Record::Deleted(d) => (2, d.id.as_str(), None),
            _ => unreachable!(),
        };
        if last[table].insert(id, row).is_none() {
            order[table].push(id);
        }
    }
    let mut rows = 0;
    let texts = (0..3)
        .map(|table| {
            let mut text = String::new();
            for id in &order[table] {
                let Some(row) = last[table][id] else { continue };
                rows += 1;
                match row {
                    pb::sync_record::Record::StockLine(l) => writeln!(
                        text,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        l.id,
                        l.store_id,
                        l.item_id,
                        l.batch,
                        l.expiry_date,
                        l.pack_size,
                        l.available_number_of_packs,
                        l.total_number_of_packs,
                        l.cost_price_per_pack,
                        l.sell_price_per_pack,
                        l.updated_at_ms
                    ),
                    pb::sync_record::Record::Invoice(i) => writeln!(
                        text,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        i.id,
                        i.store_id,
                        i.name_id,
                        i.kind().as_str_name(),
                        i.status().as_str_name(),
                        i.invoice_number,
                        i.reference,
                        i.created_at_ms
                    ),
                    pb::sync_record::Record::InvoiceLine(l) => writeln!(
                        text,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
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
                    ),
                    _ => unreachable!(),
                }
                .unwrap();
            }
            text
        })
        .collect();
    (texts, rows)
}

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap();
}

async fn count(db: &DatabaseConnection, table: &str) -> i64 {
    db.query_one(Statement::from_string(
        db.get_database_backend(),
        format!("SELECT count(*) AS n FROM {table}"),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get("", "n")
    .unwrap()
}

async fn apply_all(db: &DatabaseConnection, batches: Vec<pb::UpstreamBatch>) -> Duration {
    exec(db, "TRUNCATE stock_line, invoice, invoice_line").await;
    exec(db, "UPDATE site SET upstream_acked_seq = 0").await;
    exec(db, "VACUUM ANALYZE stock_line, invoice, invoice_line").await;
    let identity = SiteIdentity {
        sync_id: SYNC_ID,
        store_id: STORE.into(),
    };
    let started = Instant::now();
    for batch in batches {
        apply_batch(db, &identity, SESSION, batch).await.unwrap();
    }
    started.elapsed()
}

async fn copy_all(db: &DatabaseConnection, texts: &[String]) -> Duration {
    exec(
        db,
        "TRUNCATE copy_stock_line, copy_invoice, copy_invoice_line",
    )
    .await;
    exec(
        db,
        "VACUUM ANALYZE copy_stock_line, copy_invoice, copy_invoice_line",
    )
    .await;
    let pool = db.get_postgres_connection_pool();
    let started = Instant::now();
    let mut txn = pool.begin().await.unwrap();
    for ((table, columns), text) in STORE_TABLES.iter().zip(COPY_COLUMNS).zip(texts) {
        let mut copy = txn
            .copy_in_raw(&format!("COPY copy_{table} ({columns}) FROM STDIN"))
            .await
            .unwrap();
        copy.send(text.as_bytes()).await.unwrap();
        copy.finish().await.unwrap();
    }
    txn.commit().await.unwrap();
    started.elapsed()
}

struct Spread {
    median: Duration,
    min: Duration,
    max: Duration,
}

fn spread(mut samples: Vec<Duration>) -> Spread {
    samples.sort();
    Spread {
        median: samples[samples.len() / 2],
        min: samples[0],
        max: samples[samples.len() - 1],
    }
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let Ok(server_url) = std::env::var("TEST_DATABASE_URL") else {
        println!("SKIPPED the upstream apply benchmark: TEST_DATABASE_URL is not set (it needs PostgreSQL)");
        return;
    };
    let record_count = env_usize("BENCH_RECORDS", 200_000);
    let runs = env_usize("BENCH_RUNS", 3).max(1);
    let name = format!("storesync_bench_upstream_{}", std::process::id());
    let admin = Database::connect(&server_url).await.unwrap();
    exec(&admin, &format!("CREATE DATABASE {name}")).await;
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
    store::ActiveModel {
        id: Set(STORE.into()),
        code: Set("S2".into()),
        name: Set("Store 2".into()),
        sync_id: Set(SYNC_ID as i32),
    }
    .insert(&db)
    .await
    .unwrap();
    site::ActiveModel {
        sync_id: Set(SYNC_ID as i32),
        name: Set("site 2".into()),
        store_id: Set(STORE.into()),
        url: Set("http://127.0.0.1:1".into()),
        enabled: Set(true),
        sync_user_name: Set(None),
        sync_password_hash: Set(None),
        upstream_acked_seq: Set(0),
        downstream_cursor: Set(0),
        initialised: Set(true),
        created_at_ms: Set(0),
        database_id: Set(String::new()),
        upstream_acked_tag: Set(0),
    }
    .insert(&db)
    .await
    .unwrap();
    claim(&db, SYNC_ID, SESSION, "streaming", "bench", 1, 0)
        .await
        .unwrap();
    for table in STORE_TABLES {
        exec(
            &db,
            &format!("CREATE TABLE copy_{table} (LIKE {table} INCLUDING ALL)"),
        )
        .await;
    }

    let records = backlog(record_count);
    let batches = batches(&records);
    let (texts, rows) = copy_text(&records);
    println!(
        "backlog: {} records in {} batches of up to {BATCH_RECORDS}; {rows} rows remain after repeats and deletes",
        records.len(),
        batches.len()
    );

    let mut applies = Vec::with_capacity(runs);
    let mut copies = Vec::with_capacity(runs);
    for run in 1..=runs {
        // A new pool for every run: statements prepared (and generic plans
        // cached) in a run that filled the tables are not carried into the
        // next, which starts from empty ones.
        let run_db = storesync_shared::domain::db::connect(&url, 4)
            .await
            .unwrap();
        let apply = apply_all(&run_db, batches.clone()).await;
        run_db.close().await.unwrap();
        let copy = copy_all(&db, &texts).await;
        let applied: i64 = {
            let mut n = 0;
            for table in STORE_TABLES {
                n += count(&db, table).await;
            }
            n
        };
        assert_eq!(applied as usize, rows, "apply left the rows COPY wrote");
        println!(
            "run {run}: apply {apply:.2?} ({:.0} records/s), COPY {copy:.2?} ({:.0} rows/s)",
            per_second(records.len(), apply),
            per_second(rows, copy)
        );
        applies.push(apply);
        copies.push(copy);
    }
    let apply = spread(applies);
    let copy = spread(copies);
    println!(
        "apply_batch: median {:>8.0} records/s  (min {:.0}, max {:.0})  n={runs}",
        per_second(records.len(), apply.median),
        per_second(records.len(), apply.max),
        per_second(records.len(), apply.min),
    );
    println!(
        "COPY:        median {:>8.0} rows/s     (min {:.0}, max {:.0})  n={runs}",
        per_second(rows, copy.median),
        per_second(rows, copy.max),
        per_second(rows, copy.min),
    );
    println!(
        "ratio (COPY time / apply time for the same final rows): median {:.2}",
        copy.median.as_secs_f64() / apply.median.as_secs_f64()
    );

    db.close().await.unwrap();
    exec(&admin, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
}
