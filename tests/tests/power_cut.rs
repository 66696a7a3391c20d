//! Power cuts: the operating system loses whatever was not fsynced.
//!
//! The process under test keeps its SQLite files on the lazy filesystem of
//! `storesync_tests::lazyfs` (data written but not fsynced is dropped by a
//! cut). Each test lets the master acknowledge invoices, then kills the process
//! (SIGKILL), cuts the power and starts it again; once quiet, what was
//! acknowledged must be everywhere exactly once, with nothing duplicated and
//! no site stuck.
//!
//! Needs `/dev/fuse` and root (CI has both; see `.ci/run`).
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::time::Duration;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use storesync_shared::domain::entities::{invoice, invoice_line, stock_line};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, goods_out,
    wait_master_data_equal, Master, Satellite,
};
use storesync_tests::lazyfs::LazyFs;
use storesync_tests::{backends, Backend, TestDb};

const QUIET: Duration = Duration::from_secs(60);

fn read(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

#[test]
fn a_cut_keeps_what_was_fsynced_and_drops_what_was_not() {
    let mut lazy = LazyFs::mount().expect("mount the lazy filesystem (needs /dev/fuse and root)");
    let dir = lazy.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let synced = dir.join("synced");
    let unsynced = dir.join("unsynced");

    let mut file = std::fs::File::create(&synced).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_all().unwrap();
    file.write_all(b" and then lost").unwrap();
    let mut other = std::fs::File::create(&unsynced).unwrap();
    other.write_all(b"never synced").unwrap();
    drop(other);
    drop(file);
    // Before the cut every process sees every write.
    assert_eq!(read(&synced), b"durable and then lost");
    assert_eq!(read(&unsynced), b"never synced");

    let report = lazy.cut().expect("cut");
    assert_eq!(report.files_reverted, 2, "{report:?}");
    assert_eq!(
        read(&synced),
        b"durable",
        "fsynced bytes survive, later ones do not"
    );
    assert_eq!(
        read(&unsynced),
        b"",
        "a file never fsynced keeps its name (names are durable) and loses its data"
    );

    // A file rewritten in place and synced with fdatasync keeps the new bytes.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&synced)
        .unwrap();
    file.write_all(b"DURABLE, again").unwrap();
    file.sync_data().unwrap();
    drop(file);
    lazy.cut().expect("second cut");
    assert_eq!(read(&synced), b"DURABLE, again");
}

/// Each acknowledged invoice is on the master exactly once and still on the
/// satellite; no invoice number twice on either side; every stock line equals
/// the sum of its invoice lines on both sides; the store's copies are equal.
async fn check(
    master_db: &DatabaseConnection,
    satellite: &Satellite,
    acknowledged: &[String],
    what: &str,
) {
    wait_master_data_equal(master_db, satellite, QUIET).await;
    let store = assert_store_copies_equal(master_db, satellite, QUIET).await;
    let satellite_db = satellite.db.connect().await;
    for id in acknowledged {
        let on_master = invoice::Entity::find()
            .filter(invoice::Column::Id.eq(id.clone()))
            .all(master_db)
            .await
            .unwrap();
        assert_eq!(
            on_master.len(),
            1,
            "{what}: acknowledged invoice {id} is on the master {} times",
            on_master.len()
        );
        assert!(
            store.invoices.iter().any(|i| &i.id == id),
            "{what}: acknowledged invoice {id} is gone from the satellite"
        );
    }
    for (side, db) in [("master", master_db), ("satellite", &satellite_db)] {
        let mut numbers = HashSet::new();
        for invoice in invoice::Entity::find().all(db).await.unwrap() {
            assert!(
                numbers.insert((
                    invoice.store_id.clone(),
                    invoice.kind.clone(),
                    invoice.invoice_number
                )),
                "{what}: invoice number {} ({}) twice in store {} on the {side}",
                invoice.invoice_number,
                invoice.kind,
                invoice.store_id
            );
        }
        let mut moved: HashMap<String, f64> = HashMap::new();
        for line in invoice_line::Entity::find().all(db).await.unwrap() {
            *moved.entry(line.stock_line_id).or_default() += line.number_of_packs;
        }
        for stock in stock_line::Entity::find().all(db).await.unwrap() {
            let expected = moved.get(&stock.id).copied().unwrap_or(0.0);
            assert!(
                (stock.total_number_of_packs - expected).abs() < 1e-6,
                "{what}: on the {side}, stock line {} holds {} packs but its invoice lines add up to {expected}",
                stock.id,
                stock.total_number_of_packs
            );
        }
    }
    satellite_db.close().await.unwrap();
}

/// Waits until the satellite is initialised with nothing left to send; on
/// timeout says what the satellite last reported (a site stuck on a refusal).
async fn wait_settled(satellite: &Satellite, what: &str) {
    let deadline = tokio::time::Instant::now() + QUIET;
    loop {
        let status = satellite.status().await;
        if status.initialised && status.upstream_backlog == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: satellite {} not settled after {QUIET:?} (stuck?): last error {:?}, status {status:?}",
            satellite.sync_id,
            status.last_error
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Supplier invoices for every item, then one customer invoice from the first
/// stock line; returns the new invoices' ids.
async fn trade(
    satellite: &Satellite,
    supplier: &pb::Name,
    customer: &pb::Name,
    items: &[pb::Item],
    reference: &str,
    count: usize,
) -> Vec<String> {
    let mut store = satellite.store().await;
    let mut ids = Vec::new();
    for n in 0..count {
        let response = goods_in(
            &mut store,
            supplier,
            items,
            10.0,
            &format!("{reference}{n}"),
        )
        .await;
        ids.push(response.invoice.unwrap().id);
    }
    let line = store
        .list_stock(pb::ListStockRequest {
            in_stock_only: true,
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .stock_lines
        .into_iter()
        .next()
        .expect("stock after goods in");
    let response = goods_out(&mut store, customer, &line, 3.0).await.unwrap();
    ids.push(response.invoice.unwrap().id);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_satellite_that_loses_power_after_the_ack_loses_and_duplicates_nothing() {
    for backend in
        backends("a_satellite_that_loses_power_after_the_ack_loses_and_duplicates_nothing")
    {
        satellite_power_cut(backend).await;
    }
}

async fn satellite_power_cut(backend: Backend) {
    let what = format!("satellite power cut, master on {backend:?}");
    let mut lazy = LazyFs::mount().expect("mount the lazy filesystem (needs /dev/fuse and root)");
    let master_db = TestDb::new(backend);
    let master = Master::start(&master_db, &[]);
    master.add_site(2).await;
    let items = create_items(&master, "PCS", 3).await;
    let (supplier, customer) = create_trading_partners(&master, "PCS").await;
    let mut satellite = Satellite::start_on(
        TestDb::sqlite_in(lazy.path()),
        &master.url(),
        2,
        "streaming",
        &[],
    );
    satellite.wait_initialised(QUIET).await;

    // Yesterday's work, then a clean stop (SQLite checkpoints on close): on
    // disk for sure, whatever the synchronous setting.
    let mut acknowledged = trade(&satellite, &supplier, &customer, &items, "yesterday", 2).await;
    wait_settled(&satellite, &what).await;
    let stopped = satellite.process.terminate(Duration::from_secs(30));
    assert!(
        stopped.is_some_and(|s| s.success()),
        "{what}: clean stop: {stopped:?}"
    );
    satellite.start_again();
    satellite.wait_initialised(QUIET).await;

    acknowledged.extend(trade(&satellite, &supplier, &customer, &items, "before", 3).await);
    // The master has acknowledged every one of them.
    wait_settled(&satellite, &what).await;

    satellite.process.kill();
    let report = lazy.cut().expect("power cut");
    eprintln!("{what}: the cut dropped {report:?}");
    satellite.start_again();
    satellite.wait_initialised(QUIET).await;
    // New work after the restart: numbering and outbox sequence go on from
    // where they were.
    acknowledged.extend(trade(&satellite, &supplier, &customer, &items, "after", 2).await);
    wait_settled(&satellite, &what).await;

    let db = master_db.connect().await;
    check(&db, &satellite, &acknowledged, &what).await;
    // The satellite's own files are on the lazy filesystem: stop it first.
    satellite.process.kill();
    drop(satellite);
    drop(lazy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sqlite_master_that_loses_power_after_the_ack_leaves_no_site_stuck() {
    let what = "master power cut (SQLite)";
    let mut lazy = LazyFs::mount().expect("mount the lazy filesystem (needs /dev/fuse and root)");
    let master_db = TestDb::sqlite_in(lazy.path());
    let mut master = Master::start(&master_db, &[]);
    master.add_site(2).await;
    let items = create_items(&master, "PCM", 3).await;
    let (supplier, customer) = create_trading_partners(&master, "PCM").await;
    let satellite = Satellite::start(&master.url(), 2, "streaming", &[]);
    satellite.wait_initialised(QUIET).await;

    // Yesterday's work, then a clean stop (SQLite checkpoints on close).
    let mut acknowledged = trade(&satellite, &supplier, &customer, &items, "yesterday", 2).await;
    wait_settled(&satellite, what).await;
    let stopped = master.process.terminate(Duration::from_secs(30));
    assert!(
        stopped.is_some_and(|s| s.success()),
        "{what}: clean stop: {stopped:?}"
    );
    master.start_again();
    wait_settled(&satellite, what).await;

    acknowledged.extend(trade(&satellite, &supplier, &customer, &items, "before", 3).await);
    wait_settled(&satellite, what).await;

    master.process.kill();
    let report = lazy.cut().expect("power cut");
    eprintln!("{what}: the cut dropped {report:?}");
    master.start_again();
    // The site reconnects by itself and carries on.
    wait_settled(&satellite, what).await;
    acknowledged.extend(trade(&satellite, &supplier, &customer, &items, "after", 2).await);
    wait_settled(&satellite, what).await;

    let db = master_db.connect().await;
    check(&db, &satellite, &acknowledged, what).await;
    db.close().await.unwrap();
    master.process.kill();
    drop(master_db);
    drop(lazy);
}
