//! The sync stream end to end: real master and satellite binaries, on a
//! SQLite master and (with TEST_DATABASE_URL) a PostgreSQL master.
//!
//! Each scenario ends by comparing full record sets: every satellite's store
//! data against the master's copy of that store, and master data everywhere.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, goods_out,
    store_data, store_of, wait_master_data_equal, Master, Satellite,
};
use storesync_tests::proxy::Proxy;
use storesync_tests::{backends, eventually, TestDb};

const LIMIT: Duration = Duration::from_secs(60);

/// Scenario 1: items and names created, changed and deleted on the master
/// reach every satellite; invoices on each satellite reach the master's copy of
/// that store only; the master's own store works too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_data_fans_out_and_store_data_comes_back() {
    for backend in backends("master_data_fans_out_and_store_data_comes_back") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        for sync_id in [2, 3, 4] {
            master.add_site(sync_id).await;
        }
        let items = create_items(&master, "AMOX", 12).await;
        let (supplier, customer) = create_trading_partners(&master, "P").await;
        let satellites: Vec<Satellite> = [2, 3, 4]
            .into_iter()
            .map(|id| Satellite::start(&master.url(), id, "streaming", &[]))
            .collect();
        for satellite in &satellites {
            let status = satellite.wait_initialised(LIMIT).await;
            assert_eq!(
                status.store.as_ref().unwrap().code,
                format!("S{}", satellite.sync_id)
            );
            wait_master_data_equal(&db, satellite, LIMIT).await;
        }

        // Change, add and delete master data while the satellites are connected.
        let mut client = master.master_data().await;
        let mut renamed = items[0].clone();
        renamed.name = "Amoxicillin 500 mg capsule".into();
        renamed.active = false;
        client
            .upsert_item(pb::UpsertItemRequest {
                item: Some(renamed),
            })
            .await
            .unwrap();
        client
            .delete_item(pb::DeleteItemRequest {
                id: items[1].id.clone(),
            })
            .await
            .unwrap();
        let extra = create_items(&master, "PARA", 2).await;
        for satellite in &satellites {
            wait_master_data_equal(&db, satellite, LIMIT).await;
            let local = satellite
                .master_data()
                .await
                .get_item(pb::GetItemRequest {
                    id: items[1].id.clone(),
                })
                .await;
            assert_eq!(
                local.unwrap_err().code(),
                tonic::Code::NotFound,
                "a deleted item is gone on the satellite"
            );
        }

        // Each satellite trades; the master's copy of its store matches, and only its store.
        for (n, satellite) in satellites.iter().enumerate() {
            let mut store = satellite.store().await;
            let received = goods_in(
                &mut store,
                &supplier,
                &[items[2].clone(), extra[0].clone()],
                10.0 + n as f64,
                "GRN",
            )
            .await;
            let line = received.stock_lines.first().unwrap();
            goods_out(&mut store, &customer, line, 3.0).await.unwrap();
        }
        let mut rows_seen = 0;
        for satellite in &satellites {
            let local = assert_store_copies_equal(&db, satellite, LIMIT).await;
            assert_eq!(local.invoices.len(), 2);
            assert_eq!(local.stock_lines.len(), 2);
            rows_seen += local.stock_lines.len();
            let store = store_of(&db, satellite.sync_id).await;
            assert!(local.stock_lines.iter().all(|l| l.store_id == store.id));
        }

        // The operator's view: every site connected, its records counted, nothing pending.
        let sites = eventually(LIMIT, "SyncStatus to show every site caught up", || async {
            let sites = master
                .reports()
                .await
                .sync_status(pb::SyncStatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .sites;
            sites
                .iter()
                .all(|s| s.connected && s.downstream_pending == 0)
                .then_some(sites)
        })
        .await;
        assert_eq!(
            sites.iter().map(|s| s.sync_id).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        for site in &sites {
            assert_eq!(site.mode, pb::SyncMode::Streaming as i32);
            assert!(site.ever_connected && site.last_sync_at_ms > 0 && !site.initialising);
            assert!(
                site.upstream_records_received >= 6,
                "site {}: {} records received",
                site.sync_id,
                site.upstream_records_received
            );
            assert_eq!(
                site.upstream_acked_seq, site.upstream_records_received,
                "site {}",
                site.sync_id
            );
            assert!(
                site.last_error.is_empty(),
                "site {}: {}",
                site.sync_id,
                site.last_error
            );
        }

        // The master's own store (Sync ID 1).
        let mut own = master.store().await;
        let received = goods_in(&mut own, &supplier, &[items[3].clone()], 5.0, "MASTER-GRN").await;
        let own_store = store_of(&db, 1).await;
        let own_data = store_data(&db, &own_store.id).await;
        assert_eq!(own_data.stock_lines.len(), 1);
        assert_eq!(own_data.stock_lines[0].id, received.stock_lines[0].id);
        for satellite in &satellites {
            let local = store_data(&satellite.db.connect().await, &own_store.id).await;
            assert!(
                local.stock_lines.is_empty(),
                "the master's own store data stays on the master"
            );
        }
        let all_lines = storesync_shared::domain::entities::stock_line::Entity::find()
            .count(&db)
            .await
            .unwrap();
        assert_eq!(
            all_lines as usize,
            rows_seen + 1,
            "the master holds every store's data and nothing else"
        );
    }
}

use sea_orm::{EntityTrait, PaginatorTrait};

/// Builds a backlog of `invoices` supplier invoices of `lines` lines each.
async fn build_backlog(
    satellite: &Satellite,
    supplier: &pb::Name,
    items: &[pb::Item],
    invoices: usize,
) {
    let mut store = satellite.store().await;
    for n in 0..invoices {
        let chosen: Vec<pb::Item> = items
            .iter()
            .cycle()
            .skip(n % items.len())
            .take(5)
            .cloned()
            .collect();
        goods_in(
            &mut store,
            supplier,
            &chosen,
            1.0 + (n % 7) as f64,
            &format!("INV{n}"),
        )
        .await;
    }
}

/// Scenario 2a: `kill -9` of a satellite while it pushes a large backlog, twice,
/// then restart: the master's copy equals the satellite's, record by record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn satellite_killed_during_upstream_backlog_loses_and_repeats_nothing() {
    for backend in backends("satellite_killed_during_upstream_backlog_loses_and_repeats_nothing") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        let items = create_items(&master, "IBU", 20).await;
        let (supplier, _) = create_trading_partners(&master, "K").await;
        let proxy = Proxy::start(master.process.addr).await;
        let small_batches = [("STORESYNC_UPSTREAM_BATCH_RECORDS", "40")];
        let mut satellite = Satellite::start(&proxy.url(), 2, "streaming", &small_batches);
        satellite.wait_initialised(LIMIT).await;

        // Link down: the backlog piles up in the outbox.
        proxy.refuse(true);
        proxy.cut_all();
        build_backlog(&satellite, &supplier, &items, 250).await;
        let backlog = satellite.status().await.upstream_backlog;
        assert!(
            backlog >= 250 * 11,
            "expected a large backlog, have {backlog}"
        );

        for round in 0..2 {
            proxy.refuse(false);
            satellite.process.kill();
            satellite.start_again();
            tokio::time::sleep(Duration::from_millis(150 + 100 * round)).await;
            satellite.process.kill();
            let acked = master_site_acked(&db, 2).await;
            eprintln!(
                "round {round}: killed the satellite with the master at upstream sequence {acked}"
            );
            satellite.start_again();
        }
        assert_store_copies_equal(&db, &satellite, LIMIT).await;
    }
}

async fn master_site_acked(db: &sea_orm::DatabaseConnection, sync_id: i32) -> i64 {
    use master_site::*;
    site_acked(db, sync_id).await
}

mod master_site {
    use sea_orm::{ConnectionTrait, Statement};
    pub async fn site_acked(db: &sea_orm::DatabaseConnection, sync_id: i32) -> i64 {
        let row = db
            .query_one(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT upstream_acked_seq FROM site WHERE sync_id = {sync_id}"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get("", "upstream_acked_seq").unwrap()
    }
    pub async fn site_connected(db: &sea_orm::DatabaseConnection, sync_id: i32) -> bool {
        let row = db
            .query_one(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT connected FROM site_status WHERE sync_id = {sync_id}"),
            ))
            .await
            .unwrap();
        row.map(|r| r.try_get::<bool>("", "connected").unwrap())
            .unwrap_or(false)
    }
}

/// Scenario 2b: `kill -9` of the master during a large downstream and upstream
/// transfer, then restart: nothing lost, nothing duplicated, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_killed_during_transfer_loses_and_repeats_nothing() {
    for backend in backends("master_killed_during_transfer_loses_and_repeats_nothing") {
        let master_db = TestDb::new(backend);
        let mut master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "MET", 10).await;
        let (supplier, _) = create_trading_partners(&master, "M").await;
        let proxy = Proxy::start(master.process.addr).await;
        let satellites: Vec<Satellite> = [2, 3]
            .into_iter()
            .map(|id| {
                Satellite::start(
                    &proxy.url(),
                    id,
                    "streaming",
                    &[("STORESYNC_UPSTREAM_BATCH_RECORDS", "10")],
                )
            })
            .collect();
        for satellite in &satellites {
            satellite.wait_initialised(LIMIT).await;
        }
        // Both directions pile up while the link is down.
        proxy.refuse(true);
        proxy.cut_all();
        for satellite in &satellites {
            build_backlog(satellite, &supplier, &items, 120).await;
        }
        let more_items = create_items(&master, "DOWN", 400).await;
        assert_eq!(more_items.len(), 400);

        proxy.refuse(false);
        // Kill the master as soon as the first upstream batch has committed:
        // both directions are then mid-transfer.
        let deadline = tokio::time::Instant::now() + LIMIT;
        while master_site_acked(&db, 2).await + master_site_acked(&db, 3).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no upstream batch committed in {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        master.process.kill();
        eprintln!(
            "killed the master at upstream sequence {} / {} (of about {} each)",
            master_site_acked(&db, 2).await,
            master_site_acked(&db, 3).await,
            120 * 11
        );
        master.start_again();
        proxy.set_target(master.process.addr);

        for satellite in &satellites {
            wait_master_data_equal(&db, satellite, LIMIT).await;
            assert_store_copies_equal(&db, satellite, LIMIT).await;
        }
    }
}

/// Scenario 3: links cut at chosen byte offsets, mid-message, in both
/// directions: every cut resumes with nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_cut_mid_batch_resumes_exactly_once() {
    for backend in backends("link_cut_mid_batch_resumes_exactly_once") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        let items = create_items(&master, "CUT", 10).await;
        let (supplier, _) = create_trading_partners(&master, "C").await;
        let proxy = Proxy::start(master.process.addr).await;
        let satellite = Satellite::start(
            &proxy.url(),
            2,
            "streaming",
            &[("STORESYNC_UPSTREAM_BATCH_RECORDS", "100")],
        );
        satellite.wait_initialised(LIMIT).await;
        proxy.refuse(true);
        proxy.cut_all();
        build_backlog(&satellite, &supplier, &items, 150).await;
        let more = create_items(&master, "CUTD", 150).await;
        assert_eq!(more.len(), 150);
        proxy.refuse(false);

        // Cut at several offsets: inside the HTTP/2 preface, inside a Hello,
        // inside batches.
        let mut cuts = 0;
        for offset in [60u64, 700, 5_000, 23_456, 61_000, 150_001] {
            proxy.cut_after(offset);
            let before = proxy.cuts();
            let cut = tokio::time::timeout(Duration::from_secs(10), async {
                while proxy.cuts() == before {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            if cut.is_ok() {
                cuts += 1;
            } else {
                proxy.cut_after(u64::MAX);
            }
        }
        eprintln!("{cuts} links cut mid-stream");
        assert!(
            cuts >= 3,
            "the proxy should have cut the link at least three times, cut {cuts}"
        );
        wait_master_data_equal(&db, &satellite, LIMIT).await;
        assert_store_copies_equal(&db, &satellite, LIMIT).await;
    }
}

/// Scenario 5: a satellite that lost its disk, once the operator adopts its
/// new database, re-initialises with its store's data from the master; its
/// new writes reach the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn satellite_with_a_lost_disk_reinitialises_and_its_new_writes_arrive() {
    for backend in backends("satellite_with_a_lost_disk_reinitialises_and_its_new_writes_arrive") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(5).await;
        let items = create_items(&master, "RE", 6).await;
        let (supplier, customer) = create_trading_partners(&master, "R").await;
        let mut satellite = Satellite::start(&master.url(), 5, "streaming", &[]);
        satellite.wait_initialised(LIMIT).await;
        build_backlog(&satellite, &supplier, &items, 10).await;
        let before = assert_store_copies_equal(&db, &satellite, LIMIT).await;
        let acked_before = master_site_acked(&db, 5).await;

        satellite.replace_disk(&master).await;
        let status = satellite.wait_initialised(LIMIT).await;
        assert_eq!(
            status.upstream_last_seq as i64, acked_before,
            "the new outbox continues after the master's sequence"
        );
        let restored = store_data(&satellite.db.connect().await, &status.store.unwrap().id).await;
        assert_eq!(
            restored, before,
            "the re-initialised satellite has its store's data back, record by record"
        );
        wait_master_data_equal(&db, &satellite, LIMIT).await;

        let mut store = satellite.store().await;
        let line = before.stock_lines[0].clone();
        goods_out(&mut store, &customer, &line.into(), 1.0)
            .await
            .unwrap();
        let after = assert_store_copies_equal(&db, &satellite, LIMIT).await;
        assert_eq!(
            after.invoices.len(),
            before.invoices.len() + 1,
            "the write after re-initialisation reached the master"
        );
        assert!(master_site_acked(&db, 5).await > acked_before);
    }
}

/// Scenario 6: several master-data writers at once while satellites stream:
/// no change is missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_master_data_writers_miss_nothing() {
    for backend in backends("concurrent_master_data_writers_miss_nothing") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let satellites = streaming_satellites(&master, &[2, 3]).await;
        let mut writers = Vec::new();
        for w in 0..6 {
            let client = master.master_data().await;
            writers.push(tokio::spawn(async move {
                let mut client = client;
                for n in 0..40 {
                    let item = pb::Item {
                        code: format!("W{w}-{n:03}"),
                        name: format!("Writer {w} item {n}"),
                        unit: "cap".into(),
                        default_pack_size: 30,
                        active: true,
                        ..Default::default()
                    };
                    let stored = client
                        .upsert_item(pb::UpsertItemRequest { item: Some(item) })
                        .await
                        .unwrap()
                        .into_inner()
                        .item
                        .unwrap();
                    if n % 5 == 0 {
                        let mut changed = stored.clone();
                        changed.default_pack_size = 60;
                        client
                            .upsert_item(pb::UpsertItemRequest {
                                item: Some(changed),
                            })
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let (items, _) = storesync_tests::cluster::master_data(&db).await;
        assert_eq!(items.len(), 240);
        for satellite in &satellites {
            wait_master_data_equal(&db, satellite, LIMIT).await;
        }
    }
}

/// Scenario 7: interval mode exchanges everything within one interval and
/// holds no connection in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interval_mode_syncs_each_interval_and_disconnects_between() {
    for backend in backends("interval_mode_syncs_each_interval_and_disconnects_between") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(7).await;
        let items = create_items(&master, "INT", 3).await;
        let (supplier, _) = create_trading_partners(&master, "I").await;
        let interval = [("STORESYNC_SYNC_INTERVAL_SECONDS", "3")];
        let satellite = Satellite::start(&master.url(), 7, "interval", &interval);
        satellite.wait_initialised(LIMIT).await;
        wait_master_data_equal(&db, &satellite, LIMIT).await;

        // Between sessions: no connection on either side. The master records
        // a session's end once its stream has closed, a moment after the
        // satellite starts waiting: both are awaited, within a bound.
        eventually(
            Duration::from_secs(10),
            "the satellite to wait between sessions and the master to hold no session",
            || async {
                (satellite.status().await.state == pb::ConnectionState::Waiting as i32
                    && !master_site::site_connected(&db, 7).await)
                    .then_some(())
            },
        )
        .await;

        // Changes both ways arrive within about one interval.
        let started = std::time::Instant::now();
        let extra = create_items(&master, "INTB", 1).await;
        assert_eq!(extra.len(), 1, "an item created between sessions");
        goods_in(
            &mut satellite.store().await,
            &supplier,
            &[items[0].clone(), items[1].clone()],
            4.0,
            "INTERVAL",
        )
        .await;
        wait_master_data_equal(&db, &satellite, Duration::from_secs(15)).await;
        assert_store_copies_equal(&db, &satellite, Duration::from_secs(15)).await;
        let took = started.elapsed();
        eprintln!("interval exchange took {took:?} with a 3 s interval");
        assert!(
            took < Duration::from_secs(12),
            "changes took {took:?}, more than a few intervals"
        );
    }
}

/// Sites initialising together share the master's snapshot batch slots
/// (`STORESYNC_SNAPSHOT_BATCHES_IN_FLIGHT`); a session waiting for a slot
/// gives back the slots of its batches acknowledged meanwhile. With one slot
/// and snapshots of several batches, two sites starting at once both
/// initialise (before, a session held the slot of its acknowledged batch
/// while it waited for the next one, and no snapshot ever moved again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sites_initialising_together_share_one_snapshot_slot() {
    let master_db = TestDb::new(storesync_tests::Backend::Sqlite);
    let master = Master::start(
        &master_db,
        &[
            ("STORESYNC_SNAPSHOT_BATCHES_IN_FLIGHT", "1"),
            ("STORESYNC_DOWNSTREAM_BATCH_RECORDS", "10"),
        ],
    );
    let db = master_db.connect().await;
    for sync_id in [2, 3] {
        master.add_site(sync_id).await;
    }
    // Six snapshot batches or more for each site.
    create_items(&master, "SLOT", 60).await;
    for satellite in &streaming_satellites(&master, &[2, 3]).await {
        wait_master_data_equal(&db, satellite, LIMIT).await;
    }
}

/// Streaming satellites of `sync_ids`, started together, each initialised.
async fn streaming_satellites(master: &Master, sync_ids: &[u32]) -> Vec<Satellite> {
    let satellites: Vec<Satellite> = sync_ids
        .iter()
        .map(|&id| Satellite::start(&master.url(), id, "streaming", &[]))
        .collect();
    for satellite in &satellites {
        satellite.wait_initialised(LIMIT).await;
    }
    satellites
}
