//! A seeded fault campaign: a master (PostgreSQL when TEST_DATABASE_URL is set)
//! and three satellites (two streaming, one on a short interval) behind TCP
//! proxies; a random workload of store operations and master-data changes and
//! deletes, interleaved with random faults: `kill -9` of the master or of a
//! satellite, links cut mid-stream, satellites paused (SIGSTOP/SIGCONT), PostgreSQL restarted,
//! power cuts (every satellite, and a SQLite master, keeps its database on the
//! lazy filesystem of `storesync_tests::lazyfs`, which drops what was not
//! fsynced), and once per campaign a satellite's database deleted. After every round, once
//! quiet, the checker proves: each satellite's store data equals the master's
//! copy, record by record; master data is the same everywhere; every invoice a
//! satellite acknowledged is on the master exactly once; no deleted item came
//! back; every stock line's packs equal the sum of its invoice lines.
//!
//! `STORESYNC_CAMPAIGN_SEED` replays a campaign; `STORESYNC_CAMPAIGN_ROUNDS`
//! lengthens it (CI runs 2 rounds); `STORESYNC_CAMPAIGN_BACKEND=sqlite` runs the
//! master on SQLite even when TEST_DATABASE_URL is set. A failure prints the seed.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use storesync_shared::domain::entities::{invoice, invoice_line, item, stock_line};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, goods_out,
    wait_master_data_equal, Master, Satellite,
};
use storesync_tests::lazyfs::{CutReport, LazyFs};
use storesync_tests::proxy::Proxy;
use storesync_tests::{backends, Backend, TestDb};

const QUIET: Duration = Duration::from_secs(90);
const CALL: Duration = Duration::from_secs(10);

#[derive(Default, Debug)]
struct Tally {
    operations: usize,
    acknowledged: usize,
    refused: usize,
    master_kills: usize,
    satellite_kills: usize,
    link_cuts: usize,
    pauses: usize,
    wipes: usize,
    postgres_restarts: usize,
    satellite_power_cuts: usize,
    master_power_cuts: usize,
    /// Bytes the power cuts threw away (written, never fsynced).
    bytes_lost_in_cuts: u64,
}

/// Cuts the power of `lazy` (its processes already killed). Retries while a
/// file is still held open by a connection of this test that is closing.
async fn power_cut(lazy: &mut LazyFs, seed: u64) -> CutReport {
    for _ in 0..50 {
        match lazy.cut() {
            Ok(report) => return report,
            Err(error) => {
                eprintln!("power cut: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("seed {seed}: the lazy filesystem stayed busy for 10 s")
}

/// The local PostgreSQL cluster's version, when TEST_DATABASE_URL points at one.
fn local_cluster() -> Option<String> {
    let url = std::env::var("TEST_DATABASE_URL").ok()?;
    if !(url.contains("127.0.0.1") || url.contains("localhost")) {
        return None;
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .next()?
        .file_name();
    Some(version.to_string_lossy().into_owned())
}

fn pg_ctl(version: &str, action: &str) -> bool {
    Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", action])
        .status()
        .is_ok_and(|s| s.success())
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_fault_campaign_loses_nothing_and_lets_nothing_in() {
    let seed: u64 = std::env::var("STORESYNC_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize = std::env::var("STORESYNC_CAMPAIGN_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    eprintln!("*** fault campaign: seed {seed}, {rounds} rounds (replay: STORESYNC_CAMPAIGN_SEED={seed}) ***");
    let backend = match std::env::var("STORESYNC_CAMPAIGN_BACKEND").as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        _ => *backends("seeded_fault_campaign_loses_nothing_and_lets_nothing_in")
            .last()
            .unwrap(),
    };
    eprintln!("*** fault campaign: master on {backend:?} ***");
    let mut rng = StdRng::seed_from_u64(seed);

    let mount = || LazyFs::mount().expect("mount the lazy filesystem (needs /dev/fuse and root)");
    // Declared before the databases on it: dropped (unmounted) after them.
    let mut master_lazy = (backend == Backend::Sqlite).then(mount);
    let mut satellite_lazies: Vec<LazyFs> = (0..3).map(|_| mount()).collect();
    let master_db = match &master_lazy {
        Some(lazy) => TestDb::sqlite_in(lazy.path()),
        None => TestDb::new(backend),
    };
    let mut master = Master::start(&master_db, &[]);
    let mut db = master_db.connect().await;
    // PostgreSQL restarts join the faults when the master's database is a local
    // cluster this test may control (this test binary runs alone).
    let pg_cluster = (backend == Backend::Postgres).then(local_cluster).flatten();
    for sync_id in [2, 3, 4] {
        master.add_site(sync_id).await;
    }
    let trade_items = create_items(&master, "TRADE", 8).await;
    let (supplier, customer) = create_trading_partners(&master, "Q").await;
    let mut satellites = Vec::new();
    let mut proxies = Vec::new();
    for (sync_id, lazy) in [2u32, 3, 4].into_iter().zip(&satellite_lazies) {
        let proxy = Proxy::start(master.process.addr).await;
        let mode = if sync_id == 4 {
            "interval"
        } else {
            "streaming"
        };
        satellites.push(Satellite::start_on(
            TestDb::sqlite_in(lazy.path()),
            &proxy.url(),
            sync_id,
            mode,
            &[("STORESYNC_SYNC_INTERVAL_SECONDS", "2")],
        ));
        proxies.push(proxy);
    }
    for satellite in &satellites {
        satellite.wait_initialised(QUIET).await;
    }

    let mut tally = Tally::default();
    let mut acknowledged: HashMap<u32, HashSet<String>> = HashMap::new();
    let mut deleted_items: HashSet<String> = HashSet::new();
    let mut scratch: Vec<pb::Item> = Vec::new();
    let wipe_round = rng.gen_range(0..rounds);

    for round in 0..rounds {
        for step in 0..20 {
            let choice = rng.gen_range(0..13);
            match choice {
                0..=4 => {
                    // A store operation at a random satellite.
                    let n = rng.gen_range(0..satellites.len());
                    let satellite = &satellites[n];
                    tally.operations += 1;
                    let mut store = satellite.store().await;
                    let outcome = if rng.gen_bool(0.6) {
                        let count = rng.gen_range(1..4);
                        let chosen: Vec<pb::Item> = (0..count)
                            .map(|_| trade_items[rng.gen_range(0..trade_items.len())].clone())
                            .collect();
                        let packs = f64::from(rng.gen_range(1..20));
                        let reference = format!("R{round}S{step}");
                        tokio::time::timeout(CALL, async {
                            goods_in(&mut store, &supplier, &chosen, packs, &reference).await
                        })
                        .await
                        .ok()
                        .map(Ok)
                    } else {
                        let lines = tokio::time::timeout(
                            CALL,
                            store.list_stock(pb::ListStockRequest {
                                in_stock_only: true,
                                page_size: 100,
                                ..Default::default()
                            }),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(|r| r.into_inner().stock_lines)
                        .unwrap_or_default();
                        if lines.is_empty() {
                            None
                        } else {
                            let line = lines[rng.gen_range(0..lines.len())].clone();
                            let packs = f64::from(rng.gen_range(1..6));
                            tokio::time::timeout(
                                CALL,
                                goods_out(&mut store, &customer, &line, packs),
                            )
                            .await
                            .ok()
                        }
                    };
                    match outcome {
                        Some(Ok(response)) => {
                            tally.acknowledged += 1;
                            let id = response.invoice.unwrap().id;
                            acknowledged
                                .entry(satellite.sync_id)
                                .or_default()
                                .insert(id);
                        }
                        Some(Err(status)) => {
                            assert_eq!(
                                status.code(),
                                tonic::Code::FailedPrecondition,
                                "seed {seed}: unexpected refusal {status:?}"
                            );
                            tally.refused += 1;
                        }
                        None => {}
                    }
                }
                5 | 6 => {
                    // Master data: a new scratch item, a change, or a delete. A call the
                    // master cannot answer (its database just restarted) is not
                    // acknowledged, so nothing is expected of it.
                    let mut client = master.master_data().await;
                    let unanswered = |status: tonic::Status| {
                        assert_eq!(
                            status.code(),
                            tonic::Code::Unavailable,
                            "seed {seed}: {status:?}"
                        );
                    };
                    if scratch.is_empty() || rng.gen_bool(0.4) {
                        let item = pb::Item {
                            code: format!("SCR{round}-{step}"),
                            name: format!("Scratch item of round {round} step {step}"),
                            unit: "tab".into(),
                            default_pack_size: 10,
                            active: true,
                            ..Default::default()
                        };
                        match client
                            .upsert_item(pb::UpsertItemRequest { item: Some(item) })
                            .await
                        {
                            Ok(stored) => scratch.push(stored.into_inner().item.unwrap()),
                            Err(status) => unanswered(status),
                        }
                    } else if rng.gen_bool(0.5) {
                        let mut changed = scratch[rng.gen_range(0..scratch.len())].clone();
                        changed.name = format!("Changed in round {round} step {step}");
                        changed.active = rng.gen_bool(0.5);
                        match client
                            .upsert_item(pb::UpsertItemRequest {
                                item: Some(changed),
                            })
                            .await
                        {
                            Ok(stored) => {
                                let stored = stored.into_inner().item.unwrap();
                                if let Some(slot) = scratch.iter_mut().find(|i| i.id == stored.id) {
                                    *slot = stored;
                                }
                            }
                            Err(status) => unanswered(status),
                        }
                    } else {
                        let index = rng.gen_range(0..scratch.len());
                        match client
                            .delete_item(pb::DeleteItemRequest {
                                id: scratch[index].id.clone(),
                            })
                            .await
                        {
                            Ok(_) => {
                                deleted_items.insert(scratch.swap_remove(index).id);
                            }
                            Err(status) => unanswered(status),
                        }
                    }
                }
                7 => {
                    let n = rng.gen_range(0..satellites.len());
                    satellites[n].restart_after_kill();
                    tally.satellite_kills += 1;
                }
                8 => {
                    // Cut at a random byte offset of what flows next (mid-message), or at once.
                    let proxy = &proxies[rng.gen_range(0..proxies.len())];
                    if rng.gen_bool(0.5) {
                        proxy.cut_after(rng.gen_range(1..20_000));
                    } else {
                        proxy.cut_all();
                    }
                    tally.link_cuts += 1;
                }
                9 => {
                    let n = rng.gen_range(0..satellites.len());
                    let pid = satellites[n].process.child.id();
                    signal(pid, "STOP");
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
                    signal(pid, "CONT");
                    tally.pauses += 1;
                }
                12 => {
                    // Power cut: the process dies and what it wrote but did
                    // not fsync is gone. A SQLite master's, or a satellite's.
                    if let (Some(lazy), true) = (master_lazy.as_mut(), rng.gen_bool(0.3)) {
                        master.process.kill();
                        let _ = db.close().await;
                        let report = power_cut(lazy, seed).await;
                        master.start_again();
                        db = master_db.connect().await;
                        tally.master_power_cuts += 1;
                        tally.bytes_lost_in_cuts += report.bytes_lost;
                    } else {
                        let n = rng.gen_range(0..satellites.len());
                        satellites[n].process.kill();
                        let report = power_cut(&mut satellite_lazies[n], seed).await;
                        satellites[n].start_again();
                        tally.satellite_power_cuts += 1;
                        tally.bytes_lost_in_cuts += report.bytes_lost;
                    }
                }
                10 if pg_cluster.is_some() && rng.gen_bool(0.25) => {
                    // PostgreSQL itself goes away and comes back under the master.
                    let version = pg_cluster.as_deref().unwrap_or_default();
                    assert!(
                        pg_ctl(version, "restart"),
                        "seed {seed}: pg_ctlcluster restart"
                    );
                    db = master_db.connect().await;
                    tally.postgres_restarts += 1;
                }
                _ => {
                    master.restart_after_kill();
                    tally.master_kills += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
        }

        // Quiet: everything reaches everywhere; then the checks.
        check(&db, &satellites, &acknowledged, &deleted_items, seed).await;
        if round == wipe_round {
            let n = rng.gen_range(0..satellites.len());
            satellites[n].replace_disk(&master).await;
            tally.wipes += 1;
            satellites[n].wait_initialised(QUIET).await;
            check(&db, &satellites, &acknowledged, &deleted_items, seed).await;
        }
        eprintln!("round {round} of seed {seed} checked: {tally:?}");
    }
    eprintln!("*** fault campaign seed {seed}: {rounds} rounds, {tally:?}, failures found: 0 ***");
}

async fn check(
    db: &sea_orm::DatabaseConnection,
    satellites: &[Satellite],
    acknowledged: &HashMap<u32, HashSet<String>>,
    deleted_items: &HashSet<String>,
    seed: u64,
) {
    for satellite in satellites {
        wait_master_data_equal(db, satellite, QUIET).await;
        assert_store_copies_equal(db, satellite, QUIET).await;
        let local = satellite.db.connect().await;
        for id in deleted_items {
            assert!(
                item::Entity::find_by_id(id.clone())
                    .one(&local)
                    .await
                    .unwrap()
                    .is_none(),
                "seed {seed}: deleted item {id} is back on satellite {}",
                satellite.sync_id
            );
        }
        // Closed now: a power cut unmounts the satellite's filesystem.
        let _ = local.close().await;
    }
    for id in deleted_items {
        assert!(
            item::Entity::find_by_id(id.clone())
                .one(db)
                .await
                .unwrap()
                .is_none(),
            "seed {seed}: deleted item {id} is back on the master"
        );
    }
    for (sync_id, ids) in acknowledged {
        for id in ids {
            let found = invoice::Entity::find()
                .filter(invoice::Column::Id.eq(id.clone()))
                .all(db)
                .await
                .unwrap();
            assert_eq!(found.len(), 1, "seed {seed}: acknowledged invoice {id} of site {sync_id} is on the master {} times", found.len());
        }
    }
    // Stock is what its invoice lines say: packs in minus packs out, each once.
    let lines = invoice_line::Entity::find().all(db).await.unwrap();
    let mut moved: HashMap<String, f64> = HashMap::new();
    for line in lines {
        *moved.entry(line.stock_line_id).or_default() += line.number_of_packs;
    }
    for stock in stock_line::Entity::find().all(db).await.unwrap() {
        let expected = moved.get(&stock.id).copied().unwrap_or(0.0);
        assert!(
            (stock.total_number_of_packs - expected).abs() < 1e-6,
            "seed {seed}: stock line {} holds {} packs but its invoice lines add up to {expected}",
            stock.id,
            stock.total_number_of_packs
        );
    }
}
