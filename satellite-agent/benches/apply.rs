//! Applying downstream batches into a satellite's SQLite database.
//!
//! `cargo bench -p satellite-agent --bench apply` opens fresh databases the way
//! the satellite does (`db::connect` and the satellite's migrations) and feeds
//! them, through `sync::apply::apply_batch` as the sync task does:
//!
//! - (b) initialisation: a snapshot of 100,000 items, 50,000 names, the store
//!   and `BENCH_STORE_RECORDS` (default 1,000,000) store records (30 % stock
//!   lines, 10 % invoices, 60 % invoice lines), in id order, cut into batches
//!   the way the master's snapshot sender cuts them;
//! - (a) then, on that initialised database, 100,000 item and name changes in
//!   change-log batches: runs of items and names, updates of random existing
//!   records (so some ids repeat within a batch), new records, and code swaps.
//!
//! Batches are built one at a time between applies, like the satellite
//! decoding one message at a time; only `apply_batch` is timed. Each phase
//! prints records/s (median, min, max over `BENCH_RUNS`, default 3) and the
//! process's peak RSS during the phase (VmHWM, reset before it). No figure is
//! asserted anywhere. "per CPU-second" divides by the process's user and
//! system time in the phase (including building the batches), a steadier
//! figure than wall time on a machine shared with other work.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use storesync_shared::proto::v1 as pb;
use storesync_shared::proto::v1::sync_record::Record;

/// The master's default `downstream_batch_records` (BENCH_BATCH_RECORDS to try others).
fn batch_records() -> usize {
    std::env::var("BENCH_BATCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}
const ITEMS: u64 = 100_000;
const NAMES: u64 = 50_000;
const CHANGES: u64 = 100_000;
const STORE_ID: &str = "00000001-0000-4000-8000-000000000001";

/// A bijective scramble of `n`: stands in for random references.
fn mix(mut n: u64) -> u64 {
    n = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    n = (n ^ (n >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    n = (n ^ (n >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    n ^ (n >> 31)
}

/// A UUID-shaped id that sorts by `n`, as the master's keyset paging sends them.
fn id(kind: u16, n: u64) -> String {
    format!(
        "{:08x}-{kind:04x}-4000-8000-{:012x}",
        n,
        mix(n ^ u64::from(kind) << 40) & 0xffff_ffff_ffff
    )
}

const ITEM: u16 = 1;
const NAME: u16 = 2;
const STOCK: u16 = 3;
const INVOICE: u16 = 4;
const LINE: u16 = 5;

fn item(n: u64, code: String, version: i64) -> Record {
    Record::Item(pb::Item {
        id: id(ITEM, n),
        code,
        name: format!("Medicine {n} mg tablet"),
        unit: "tab".into(),
        default_pack_size: 100,
        active: true,
        updated_at_ms: version,
    })
}

fn name(n: u64, code: String, version: i64) -> Record {
    Record::Name(pb::Name {
        id: id(NAME, n),
        code,
        name: format!("Partner {n}"),
        is_customer: n % 2 == 0,
        is_supplier: n % 2 == 1,
        is_store: false,
        active: true,
        updated_at_ms: version,
    })
}

/// Store record `n` of `total`: stock lines, then invoices, then invoice lines.
fn store_record(n: u64, total: u64) -> Record {
    let stock = total * 3 / 10;
    let invoices = total / 10;
    let r = mix(n);
    if n < stock {
        Record::StockLine(pb::StockLine {
            id: id(STOCK, n),
            store_id: STORE_ID.into(),
            item_id: id(ITEM, r % ITEMS),
            batch: format!("B{n}"),
            expiry_date: format!("2027-{:02}-{:02}", 1 + r % 12, 1 + r % 28),
            pack_size: 100,
            available_number_of_packs: (r % 50) as f64,
            total_number_of_packs: (r % 50 + 10) as f64,
            cost_price_per_pack: 2.5,
            sell_price_per_pack: 4.0,
            updated_at_ms: 1_767_225_600_000,
        })
    } else if n < stock + invoices {
        let k = n - stock;
        Record::Invoice(pb::Invoice {
            id: id(INVOICE, k),
            store_id: STORE_ID.into(),
            name_id: id(NAME, r % NAMES),
            kind: (1 + k % 3) as i32,
            status: 3,
            invoice_number: k as i64 + 1,
            reference: format!("REF{k}"),
            created_at_ms: 1_767_225_600_000 + (k % 365) as i64 * 86_400_000,
            lines: Vec::new(),
            ..Default::default()
        })
    } else {
        let k = n - stock - invoices;
        Record::InvoiceLine(pb::InvoiceLine {
            id: id(LINE, k),
            invoice_id: id(INVOICE, r % invoices.max(1)),
            store_id: STORE_ID.into(),
            item_id: id(ITEM, r % ITEMS),
            stock_line_id: id(STOCK, r % stock.max(1)),
            batch: format!("B{k}"),
            expiry_date: "2027-06-30".into(),
            pack_size: 100,
            number_of_packs: (1 + r % 20) as f64,
            cost_price_per_pack: 2.5,
            sell_price_per_pack: 4.0,
            ..Default::default()
        })
    }
}

fn records(records: Vec<Record>) -> Vec<pb::SyncRecord> {
    records
        .into_iter()
        .map(|r| pb::SyncRecord { record: Some(r) })
        .collect()
}

fn store() -> pb::Store {
    pb::Store {
        id: STORE_ID.into(),
        code: "S1".into(),
        name: "Store 1".into(),
        sync_id: 2,
    }
}

async fn open(dir: &tempfile::TempDir) -> DatabaseConnection {
    let db = common::satellite_db(dir).await;
    // Extra settings to try, e.g. BENCH_PRAGMAS="cache_size=-16384;temp_store=memory"
    // (the pool has one connection, so they hold for every apply).
    for pragma in std::env::var("BENCH_PRAGMAS")
        .unwrap_or_default()
        .split(';')
    {
        if !pragma.trim().is_empty() {
            db.execute_unprepared(&format!("PRAGMA {pragma}"))
                .await
                .unwrap();
        }
    }
    db
}

/// Peak resident memory of this process since the last [`reset_peak_rss`].
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user and system, all threads) this process has used so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime is the
    // 12th and stime the 13th, in clock ticks (100 per second on Linux).
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux ≥ 4.0); ignored elsewhere.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// (b): the whole snapshot into an empty database; returns (records, time applying).
async fn initialise(db: &DatabaseConnection, store_records: u64) -> (u64, Duration) {
    // BENCH_DEFER_INDEXES=1: what building the store tables' secondary indexes
    // after the snapshot, instead of row by row, would gain (the rebuild is timed).
    let deferred: Vec<String> = if std::env::var("BENCH_DEFER_INDEXES").is_ok() {
        let rows = db
            .query_all(Statement::from_string(
                db.get_database_backend(),
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL \
                 AND tbl_name IN ('stock_line', 'invoice', 'invoice_line')",
            ))
            .await
            .unwrap();
        let mut sqls = Vec::new();
        for row in rows {
            let name: String = row.try_get("", "name").unwrap();
            sqls.push(row.try_get::<String>("", "sql").unwrap());
            db.execute_unprepared(&format!("DROP INDEX {name}"))
                .await
                .unwrap();
        }
        sqls
    } else {
        Vec::new()
    };
    let total = ITEMS + NAMES + 1 + store_records;
    let mut applying = Duration::ZERO;
    let mut sent = 0u64;
    let mut pending: Vec<Record> = Vec::with_capacity(batch_records());
    let all = (0..ITEMS)
        .map(|n| item(n, format!("I{n:06}"), 0))
        .chain((0..NAMES).map(|n| name(n, format!("N{n:06}"), 0)))
        .chain(std::iter::once_with(|| Record::Store(store())))
        .chain((0..store_records).map(|n| store_record(n, store_records)));
    let mut all = all.peekable();
    while let Some(record) = all.next() {
        pending.push(record);
        let last = all.peek().is_none();
        if pending.len() == batch_records() || last {
            sent += pending.len() as u64;
            let batch = pb::DownstreamBatch {
                records: records(std::mem::take(&mut pending)),
                end_cursor: if last { 1 } else { 0 },
                initialisation: Some(pb::InitialisationProgress {
                    records_done: sent,
                    records_total: total,
                    complete: last,
                    ..Default::default()
                }),
                trace_context: Default::default(),
                end_tag: 0,
                after_cursor: None,
            };
            let started = Instant::now();
            satellite_agent::sync::apply::apply_batch(db, batch, Some(&store()), 0, 0)
                .await
                .unwrap();
            applying += started.elapsed();
        }
    }
    let started = Instant::now();
    for sql in &deferred {
        db.execute_unprepared(sql).await.unwrap();
    }
    if !deferred.is_empty() {
        println!(
            "  rebuilt {} indexes in {:?}",
            deferred.len(),
            started.elapsed()
        );
    }
    applying += started.elapsed();
    (sent, applying)
}

/// (a): master-data changes after initialisation; returns (records, time applying).
async fn changes(db: &DatabaseConnection) -> (u64, Duration) {
    let mut applying = Duration::ZERO;
    let mut cursor = 1u64;
    let mut made = 0u64;
    let mut new_items = ITEMS;
    let mut new_names = NAMES;
    let mut step = 0u64;
    while made < CHANGES {
        let mut batch: Vec<Record> = Vec::with_capacity(batch_records());
        while batch.len() < batch_records() && made < CHANGES {
            step += 1;
            let r = mix(step);
            // Runs of 1 to 64 changes of one kind, as edits and imports come.
            let run = (1 + r % 64).min(batch_records() as u64 - batch.len() as u64);
            let items = r % 3 != 0;
            for k in 0..run {
                let r = mix(step << 8 | k);
                let version = (step << 8 | k) as i64;
                let record = match (items, r % 10) {
                    // A new record.
                    (true, 0) => {
                        new_items += 1;
                        item(new_items, format!("I{new_items:06}"), version)
                    }
                    (false, 0) => {
                        new_names += 1;
                        name(new_names, format!("N{new_names:06}"), version)
                    }
                    // An update of an existing one, code unchanged.
                    (true, _) => {
                        let n = r % ITEMS;
                        item(n, format!("I{n:06}"), version)
                    }
                    (false, _) => {
                        let n = r % NAMES;
                        name(n, format!("N{n:06}"), version)
                    }
                };
                batch.push(record);
            }
            made += run;
            if r % 50 == 0 && batch.len() + 6 <= batch_records() {
                // Two items trade codes: one steps aside, the other takes its
                // code, the first takes the other's (its id repeats).
                let (a, b) = (r % 1000, r % 1000 + 1000);
                let (code_a, code_b) = (format!("I{a:06}"), format!("I{b:06}"));
                batch.push(item(b, format!("T{step}"), step as i64));
                batch.push(item(a, code_b.clone(), step as i64));
                batch.push(item(b, code_a.clone(), step as i64));
                // And back, so every item keeps its code for the next swap.
                batch.push(item(a, format!("T{step}"), step as i64));
                batch.push(item(b, code_b, step as i64));
                batch.push(item(a, code_a, step as i64));
                made += 6;
            }
        }
        cursor += 1;
        let batch = pb::DownstreamBatch {
            records: records(batch),
            end_cursor: cursor,
            initialisation: None,
            trace_context: Default::default(),
            end_tag: 0,
            after_cursor: Some(cursor - 1),
        };
        let started = Instant::now();
        satellite_agent::sync::apply::apply_batch(db, batch, Some(&store()), 0, 0)
            .await
            .unwrap();
        applying += started.elapsed();
    }
    (made, applying)
}

fn report(
    label: &str,
    records: u64,
    mut samples: Vec<Duration>,
    mut cpu: Vec<Duration>,
    peak_kib: u64,
) {
    samples.sort();
    cpu.sort();
    let rate = |d: Duration| records as f64 / d.as_secs_f64();
    let runs = samples.len();
    println!(
        "{label:<44} median {:>7.0} rec/s ({:>6.2?})  min {:>7.0}  max {:>7.0}  per CPU-second {:>7.0}  (n={runs}, {records} records)  peak RSS {:.1} MiB",
        rate(samples[runs / 2]),
        samples[runs / 2],
        rate(samples[runs - 1]),
        rate(samples[0]),
        rate(cpu[runs / 2]),
        peak_kib as f64 / 1024.0,
    );
}

async fn count(db: &DatabaseConnection, table: &str) -> i64 {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

#[tokio::main]
async fn main() {
    let store_records: u64 = std::env::var("BENCH_STORE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!("idle: peak RSS {:.1} MiB", peak_rss_kib() as f64 / 1024.0);
    let (mut init_samples, mut init_cpu) = (Vec::new(), Vec::new());
    let (mut change_samples, mut change_cpu) = (Vec::new(), Vec::new());
    let (mut init_peak, mut change_peak) = (0, 0);
    let (mut init_records, mut change_records) = (0, 0);
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir).await;
        reset_peak_rss();
        let cpu_before = cpu_time();
        let (records, took) = initialise(&db, store_records).await;
        init_cpu.push(cpu_time() - cpu_before);
        init_peak = init_peak.max(peak_rss_kib());
        init_records = records;
        init_samples.push(took);
        assert_eq!(count(&db, "item").await, ITEMS as i64);
        assert_eq!(
            count(&db, "invoice_line").await,
            (store_records - store_records * 3 / 10 - store_records / 10) as i64
        );

        reset_peak_rss();
        let cpu_before = cpu_time();
        let (records, took) = changes(&db).await;
        change_cpu.push(cpu_time() - cpu_before);
        change_peak = change_peak.max(peak_rss_kib());
        change_records = records;
        change_samples.push(took);
        db.close().await.unwrap();
    }
    report(
        "(b) initialisation snapshot",
        init_records,
        init_samples,
        init_cpu,
        init_peak,
    );
    report(
        &format!("(a) item and name changes, {} per batch", batch_records()),
        change_records,
        change_samples,
        change_cpu,
        change_peak,
    );
}
