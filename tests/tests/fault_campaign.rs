//! A seeded fault campaign: a master (PostgreSQL when TEST_DATABASE_URL is set)
//! and three satellites (two streaming, one on a short interval) behind TCP
//! proxies; a random workload of store operations, transfers (created and
//! shipped from a satellite to another, or from the master's own store to a
//! satellite; pending inbound shipments received, sometimes one line short),
//! requisitions (a satellite requests items from another store and sends
//! the request; the supplying store ships against its open response, or
//! finalises it) and master-data changes and deletes, interleaved with random faults: `kill -9` of the master or of a
//! satellite, links cut mid-stream, satellites paused (SIGSTOP/SIGCONT), PostgreSQL restarted,
//! power cuts (every satellite, and a SQLite master, keeps its database on the
//! lazy filesystem of `storesync_tests::lazyfs`, which drops what was not
//! fsynced), and once per campaign a satellite's database deleted. Each
//! round some satellites sit behind a slow, lossy link (64 kbit/s, 300 ms,
//! cut about every 6 s), and a site's life goes on: a site disabled for a
//! moment and enabled again, a site given new sync credentials of its own
//! (the satellite restarted with them).
//!
//! Backups are taken during the rounds (a satellite's SQLite files copied
//! after a `kill -9`; the master's database with `pg_dump`, or a SQLite
//! master's file with its `-wal` and `-shm` copied while it is stopped). At the
//! end of a round, once quiet, one of these may follow, done as the README's
//! Reliability section tells an operator to:
//!
//! - **a site restored from its old copy** (files put back while it is
//!   stopped). If the site wrote entries after the copy, or its database was
//!   replaced since, the copy must stop by itself (refused, or halted); then it
//!   is exported (`satellite-agent handover export`), the site given a new
//!   database, adopted (`AdoptDatabase`) and the export imported there. A
//!   copy of a site that wrote nothing since must simply keep syncing;
//! - **a replacement machine** for a satellite that went offline holding
//!   unsent invoices: the new, empty database is refused until adopted, the
//!   old one started again is refused, and its entries are handed over;
//! - **the master restored from its backup**: `pg_restore` in place
//!   (`--clean`) or into a fresh database the master is pointed at, or the
//!   SQLite files copied back; the master restarted. Transfers and
//!   requisitions between satellites made after the backup come back with
//!   the sites' re-push (`docs/TRANSFERS.md`, "Across a master restore").
//!   Not from a backup older than a shipment from the master's own store
//!   (`master_shipped_since_backup`): that store's data lives on the master
//!   only, so the restore loses the outbound for good while the receiving
//!   site keeps its inbound shipment. Databases
//!   adopted after the backup are adopted again (the restore forgot the
//!   adoption), and sync credentials set after it are set again;
//! - **a site removed and added again** (Sync ID 5, whose store holds no
//!   data: a removal is refused otherwise): its old database is refused
//!   plainly, a new one initialises as the new store. The master backups
//!   taken before it are dropped (they know the old store only).
//!
//! # What the checker expects
//! After every round, once quiet: each satellite's store data equals the
//! master's copy, record by record; master data is the same everywhere; every
//! invoice a satellite acknowledged to its client is on the master exactly once
//! (a restored master gets the sites' store data back by their re-push, and a
//! handover brings a retired database's unsent invoices); no deleted item
//! is on the master or a site; every scratch item the test knows to exist is
//! on the master; every stock line's packs equal the sum of its invoice lines;
//! and no site is stuck: each is initialised, its outbox drained, its database
//! not halted, and it is connected (streaming) or has synced since the check
//! began (interval). A transfer's outbound line counts against its stock line
//! once shipped, an inbound line's received packs for the stock line its
//! receipt created.
//!
//! **Stock is conserved** by every transfer, in the master's view: the packs
//! that left A's stock (the shipped outbound's lines) equal the packs in
//! transit (inbound not yet received) plus the packs B received plus the
//! recorded discrepancy (shipped - received); each shipped outbound has
//! exactly one inbound shipment and one `transfer` record whose stores and
//! figures are those of the lines, and no inbound or record lacks its
//! shipped outbound.
//!
//! **The product's own integrity check** (`VerifySites`, report-only, with a
//! wait, through `storesync_tests::verify`) runs for every site at the end of
//! every round, once it has quiesced (links at full speed, every check above
//! passed), and must agree with a record-by-record comparison of the site's
//! store data and the master's copy, read right after it, both ways: every
//! differing row named (none missed), and nothing named that the comparison
//! does not find (none invented). The check is a request the site's session
//! runs (the interval-mode site stays connected for it; a check cut by a
//! session's end runs again at the next), so it must end EQUAL or DIFFERENT;
//! `NOT_SETTLED` (data still moving) is asked again, at most 5 times.
//!
//! `STORESYNC_CAMPAIGN_SEED` replays a campaign; `STORESYNC_CAMPAIGN_ROUNDS`
//! lengthens it (CI runs 2 rounds); `STORESYNC_CAMPAIGN_BACKEND=sqlite` runs the
//! master on SQLite even when TEST_DATABASE_URL is set. A failure prints the seed.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use storesync_shared::domain::entities::{
    invoice, invoice_line, item, requisition, requisition_line, stock_line, transfer,
};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, database_id, goods_in,
    goods_out, store_data, store_of, wait_master_data_equal, Master, Satellite, StoreData,
};
use storesync_tests::lazyfs::{CutReport, LazyFs};
use storesync_tests::proxy::{Proxy, Throttle};
use storesync_tests::{backends, eventually, verify, Backend, TestDb};

const QUIET: Duration = Duration::from_secs(90);
/// The Sync ID of the empty site that is removed and added again.
const READDED: u32 = 5;
const CALL: Duration = Duration::from_secs(10);

/// The campaign's last steps, said again when it fails: the failure's message
/// alone does not say what the campaign had just done.
static TRAIL: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// Records (and prints) what the campaign does next.
fn trail(what: String) {
    eprintln!("campaign: {what}");
    let mut trail = TRAIL.lock().unwrap();
    if trail.len() == 12 {
        trail.pop_front();
    }
    trail.push_back(what);
}

/// What a step of a round does, by the choice drawn for it.
fn step_name(choice: u32) -> &'static str {
    match choice {
        0..=4 => "a store operation",
        5 | 6 => "master data changed",
        7 => "a satellite killed",
        8 => "a link cut",
        9 => "a satellite paused",
        12 => "a power cut",
        13 => "a satellite backup",
        14 => "a master backup",
        15 => "a site disabled and enabled",
        16 => "new sync credentials",
        17 => "a transfer shipped",
        18 => "a shipment received",
        19 => "a requisition sent",
        20 => "a requisition answered",
        _ => "the master killed",
    }
}

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
    /// Copies of a satellite's files taken, and put back.
    satellite_backups: usize,
    satellite_restores: usize,
    /// Restored copies that stopped (refused or halted) and were handed over.
    restored_copies_stopped: usize,
    /// Replacement machines adopted while the old one held unsent invoices.
    replacements: usize,
    /// Invoices moved by `satellite-agent handover import` (imported, skipped).
    handed_over: usize,
    handover_skipped: usize,
    master_backups: usize,
    master_restores_in_place: usize,
    master_restores_fresh_database: usize,
    master_restores_sqlite_copy: usize,
    /// Databases adopted again after a master restore forgot their adoption.
    readoptions: usize,
    /// Rounds a satellite spent behind a slow, lossy link.
    throttled_links: usize,
    /// Sites disabled (and enabled again), sites given new sync credentials
    /// (the satellite restarted with them), sites removed and added again.
    disables: usize,
    password_changes: usize,
    readded_sites: usize,
    /// Transfers shipped (from a satellite, from the master's own store),
    /// inbound shipments received (of which short), transfer calls refused.
    transfers_from_satellites: usize,
    transfers_from_master: usize,
    transfers_received: usize,
    transfers_received_short: usize,
    transfers_refused: usize,
    /// Requests created and sent, shipments supplying a response, responses
    /// finalised.
    requisitions_sent: usize,
    requisitions_supplied: usize,
    requisitions_finalised: usize,
    /// Master restores from a backup older than a transfer or a request
    /// between satellites.
    master_restores_across_moves: usize,
    /// Runs of the product's integrity check that agreed with the
    /// record-by-record comparison, and those asked again as NOT_SETTLED.
    integrity_checks: usize,
    integrity_not_settled: usize,
}

/// A copy of a satellite's SQLite files, and what it held.
struct SiteBackup {
    dir: tempfile::TempDir,
    database_id: String,
    upstream_last_seq: u64,
}

/// A backup of the master, and the scratch items that existed when it was taken.
struct MasterBackup {
    dir: tempfile::TempDir,
    scratch: Vec<pb::Item>,
    /// The database that owned each Sync ID then.
    owners: HashMap<u32, String>,
}

const SQLITE_SUFFIXES: [&str; 3] = ["", "-wal", "-shm"];

fn sqlite_path(db: &TestDb) -> &Path {
    let TestDb::Sqlite { path, .. } = db else {
        panic!("a SQLite database")
    };
    path
}

/// Copies the SQLite files of `from` (its process stopped) into `dir`.
fn copy_sqlite_out(from: &Path, dir: &Path) {
    for suffix in SQLITE_SUFFIXES {
        let source = PathBuf::from(format!("{}{suffix}", from.display()));
        if source.exists() {
            std::fs::copy(&source, dir.join(format!("copy{suffix}"))).unwrap();
        }
    }
}

/// Puts the files copied by [`copy_sqlite_out`] back at `to` (its process
/// stopped), replacing what is there, and fsyncs them as an operator's
/// `cp && sync` would (they may sit on the power-cut filesystem).
fn copy_sqlite_back(dir: &Path, to: &Path) {
    for suffix in SQLITE_SUFFIXES {
        let target = PathBuf::from(format!("{}{suffix}", to.display()));
        let _ = std::fs::remove_file(&target);
        let copy = dir.join(format!("copy{suffix}"));
        if copy.exists() {
            std::fs::copy(&copy, &target).unwrap();
            std::fs::File::open(&target).unwrap().sync_all().unwrap();
        }
    }
}

/// (database_id, upstream_last_seq) of a copied satellite database.
async fn copied_identity(dir: &Path) -> (String, u64) {
    use sea_orm::{ConnectionTrait, Statement};
    // Read a throwaway copy: opening the copy itself could checkpoint it.
    let probe = tempfile::tempdir().unwrap();
    for suffix in SQLITE_SUFFIXES {
        let copy = dir.join(format!("copy{suffix}"));
        if copy.exists() {
            std::fs::copy(&copy, probe.path().join(format!("probe.db{suffix}"))).unwrap();
        }
    }
    let url = format!(
        "sqlite://{}?mode=rwc",
        probe.path().join("probe.db").display()
    );
    let conn = storesync_shared::domain::db::connect(&url, 1)
        .await
        .unwrap();
    let row = conn
        .query_one(Statement::from_string(
            conn.get_database_backend(),
            "SELECT database_id, upstream_last_seq FROM sync_state WHERE id = 1",
        ))
        .await
        .unwrap()
        .expect("the sync_state row");
    let id: String = row.try_get_by_index(0).unwrap();
    let last: i64 = row.try_get_by_index(1).unwrap();
    let _ = conn.close().await;
    (id, u64::try_from(last).unwrap_or(0))
}

fn run(command: &mut Command, seed: u64) {
    let status = command.status().unwrap();
    assert!(status.success(), "seed {seed}: {command:?} failed");
}

/// Waits until `satellite` reports an error containing one of `needles`.
async fn wait_refused(satellite: &Satellite, needles: &[&str], seed: u64) -> String {
    eventually(
        QUIET,
        &format!(
            "seed {seed}: satellite {} to be refused or stop",
            satellite.sync_id
        ),
        || async {
            let error = satellite.status().await.last_error;
            needles
                .iter()
                .any(|needle| error.contains(needle))
                .then_some(error)
        },
    )
    .await
}

/// `satellite-agent handover export` on `old` (stopped by this): the
/// directory holding the file, and the file.
fn export(old: &mut Satellite, seed: u64) -> (tempfile::TempDir, String) {
    old.process.kill();
    let dir = tempfile::tempdir().unwrap();
    let file = dir
        .path()
        .join("handover.json")
        .to_str()
        .unwrap()
        .to_owned();
    let (exported, text) = old.command(&["handover", "export", "--out", &file]);
    assert!(exported, "seed {seed}: handover export: {text}");
    (dir, file)
}

/// `satellite-agent handover import` on `new`; returns (imported, skipped).
fn import(new: &Satellite, file: &str, seed: u64) -> (usize, usize) {
    let (imported, report) = new.command(&["handover", "import", file]);
    assert!(
        imported,
        "seed {seed}: handover import refused something: {report}"
    );
    let count = |start: &str| report.lines().filter(|l| l.starts_with(start)).count();
    (count("imported invoice "), count("skipped invoice "))
}

/// A new database for a Sync ID: refused until the operator adopts it, then
/// initialised. Returns its identity.
async fn adopt_new(master: &Master, new: &Satellite, seed: u64) -> String {
    wait_refused(new, &["belongs to satellite database"], seed).await;
    let id = database_id(&new.db).await;
    master.adopt(new.sync_id, &id).await;
    new.wait_initialised(QUIET).await;
    id
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
    // Run as a task of its own so that a failure's message is said again
    // last, after the backtrace and the logs of the teardown that bury it.
    let Err(failure) = tokio::spawn(campaign(seed, rounds)).await else {
        return;
    };
    let Ok(panic) = failure.try_into_panic() else {
        panic!("seed {seed}: the campaign was cancelled");
    };
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(a panic without a message)");
    let last: Vec<String> = TRAIL.lock().unwrap().iter().cloned().collect();
    eprintln!(
        "*** fault campaign FAILED: {message}\n*** its last steps: {}\n*** replay: STORESYNC_CAMPAIGN_SEED={seed} STORESYNC_CAMPAIGN_ROUNDS={rounds}",
        last.join("; ")
    );
    std::panic::resume_unwind(panic);
}

/// The campaign itself (see the module's docs).
async fn campaign(seed: u64, rounds: usize) {
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
    let mut master_db = match &master_lazy {
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
    // The master's own store (Sync ID 1) holds stock it ships to satellites.
    goods_in(
        &mut master.store().await,
        &supplier,
        &trade_items,
        500.0,
        "WAREHOUSE",
    )
    .await;
    // The store of each Sync ID of the campaign (a store keeps its id
    // across a new database; the re-added site's store is left out).
    let mut store_ids: HashMap<u32, String> = HashMap::new();
    for sync_id in [1, 2, 3, 4] {
        store_ids.insert(sync_id, store_of(&db, sync_id).await.id);
    }
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
    let mut database_ids = Vec::new();
    for satellite in &satellites {
        satellite.wait_initialised(QUIET).await;
        database_ids.push(database_id(&satellite.db).await);
    }
    // A site whose store holds no data, which the operator removes and adds
    // again (a removal is refused while a store holds data): the old
    // database is refused plainly and a new one initialises as the new store.
    master.add_site(READDED).await;
    let readded_proxy = Proxy::start(master.process.addr).await;
    let mut readded = Satellite::start(&readded_proxy.url(), READDED, "streaming", &[]);
    readded.wait_initialised(QUIET).await;
    // Sites given their own sync credentials (set again after a master
    // restore, which forgot them).
    let mut own_credentials: HashMap<u32, (String, String)> = HashMap::new();

    let mut tally = Tally::default();
    let mut acknowledged: HashMap<u32, HashSet<String>> = HashMap::new();
    let mut deleted_items: HashSet<String> = HashSet::new();
    let mut scratch: Vec<pb::Item> = Vec::new();
    // Every scratch item ever created, and those whose delete went unanswered.
    let mut all_created: HashSet<String> = HashSet::new();
    let mut unanswered_deletes: HashSet<String> = HashSet::new();
    let mut site_backups: Vec<Option<SiteBackup>> = vec![None, None, None];
    let mut master_backup: Option<MasterBackup> = None;
    let wipe_round = rng.gen_range(0..rounds);
    // Whether the master's own store shipped since the last master backup.
    // Its data lives on the master only: a restore from such a backup loses
    // the outbound for good, while the receiving site keeps its inbound
    // shipment (no site can push the outbound back). Transfers between
    // satellites come back with their sites' re-push.
    let mut master_shipped_since_backup = false;
    // Shipments, requests sent and supplies between satellites since the
    // last master backup: what a restore from it must get back.
    let mut moves_since_backup = 0usize;
    // Sent requests acknowledged to their client, by requesting Sync ID.
    let mut requests_sent: HashMap<u32, HashSet<String>> = HashMap::new();

    for round in 0..rounds {
        // Some satellites sit behind a slow, lossy link this round: 64 kbit/s,
        // 300 ms, cut about every 6 s (the proxy's seeded schedule).
        for (n, proxy) in proxies.iter().chain([&readded_proxy]).enumerate() {
            let throttle = rng.gen_bool(0.3).then(|| {
                Throttle::link(64, Duration::from_millis(300))
                    .cut_every(Duration::from_secs(6), seed ^ (round as u64 * 7 + n as u64))
            });
            tally.throttled_links += usize::from(throttle.is_some());
            proxy.set_throttle(throttle);
            proxy.cut_all();
        }
        for step in 0..20 {
            let choice = rng.gen_range(0..21);
            trail(format!("round {round} step {step}: {}", step_name(choice)));
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
                            Ok(stored) => {
                                let stored = stored.into_inner().item.unwrap();
                                all_created.insert(stored.id.clone());
                                scratch.push(stored);
                            }
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
                            Err(status) => {
                                unanswered(status);
                                unanswered_deletes.insert(scratch.swap_remove(index).id);
                            }
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
                13 => {
                    // A copy of a satellite's files, taken after a kill -9 (kept
                    // off the power-cut filesystem), for a restore later.
                    let n = rng.gen_range(0..satellites.len());
                    satellites[n].process.kill();
                    let dir = tempfile::tempdir().unwrap();
                    copy_sqlite_out(sqlite_path(&satellites[n].db), dir.path());
                    satellites[n].start_again();
                    let (database_id, upstream_last_seq) = copied_identity(dir.path()).await;
                    site_backups[n] = Some(SiteBackup {
                        dir,
                        database_id,
                        upstream_last_seq,
                    });
                    tally.satellite_backups += 1;
                }
                14 => {
                    // A backup of the master: pg_dump while it runs, or a
                    // SQLite master's files copied while it is stopped.
                    let dir = tempfile::tempdir().unwrap();
                    if backend == Backend::Sqlite {
                        master.process.kill();
                        let _ = db.close().await;
                        copy_sqlite_out(sqlite_path(&master_db), dir.path());
                        master.start_again();
                        db = master_db.connect().await;
                    } else {
                        run(
                            Command::new("pg_dump")
                                .args(["-Fc", "-f"])
                                .arg(dir.path().join("master.dump"))
                                .arg(master_db.url()),
                            seed,
                        );
                    }
                    let owners = satellites
                        .iter()
                        .zip(&database_ids)
                        .map(|(s, id)| (s.sync_id, id.clone()))
                        .collect();
                    master_shipped_since_backup = false;
                    moves_since_backup = 0;
                    master_backup = Some(MasterBackup {
                        dir,
                        scratch: scratch.clone(),
                        owners,
                    });
                    tally.master_backups += 1;
                }
                15 => {
                    // A site disabled for a moment: its session ends, its
                    // store queues what it writes; enabled, it sends it.
                    let sync_id = satellites[rng.gen_range(0..satellites.len())].sync_id;
                    let toggle = |enabled| pb::Site {
                        sync_id,
                        enabled,
                        ..Default::default()
                    };
                    if master.update_site(toggle(false)).await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2000))).await;
                        // Enabling must not be lost: the master may be restarting.
                        eventually(QUIET, "the site to be enabled again", || async {
                            master.update_site(toggle(true)).await.ok()
                        })
                        .await;
                        tally.disables += 1;
                    }
                }
                16 => {
                    // A site given new sync credentials of its own, and the
                    // satellite restarted with them (its old session ends).
                    let n = rng.gen_range(0..satellites.len());
                    let sync_id = satellites[n].sync_id;
                    let credentials = (
                        format!("site{sync_id}"),
                        format!("site{sync_id}-password-r{round}s{step}"),
                    );
                    let site = pb::Site {
                        sync_id,
                        enabled: true,
                        sync_user_name: credentials.0.clone(),
                        sync_password: credentials.1.clone(),
                        ..Default::default()
                    };
                    if master.update_site(site).await.is_ok() {
                        satellites[n].restart_with(&[
                            ("STORESYNC_SYNC_USER", &credentials.0),
                            ("STORESYNC_SYNC_PASSWORD", &credentials.1),
                        ]);
                        own_credentials.insert(sync_id, credentials);
                        tally.password_changes += 1;
                    }
                }
                17 => {
                    // A transfer between two stores of the campaign, created and
                    // shipped: satellite -> satellite, or the master's own store
                    // -> a satellite. A refusal (no stock left) or a call cut by a
                    // fault leaves at most a draft, which changes no total.
                    let from = rng.gen_range(0..=satellites.len());
                    let mut to = rng.gen_range(0..satellites.len());
                    if from == to + 1 {
                        to = (to + 1) % satellites.len();
                    }
                    let to_store = store_ids[&satellites[to].sync_id].clone();
                    let (mut store, from_sync_id) = if from == 0 {
                        (master.store().await, 1)
                    } else {
                        (
                            satellites[from - 1].store().await,
                            satellites[from - 1].sync_id,
                        )
                    };
                    let reference = format!("TR{round}S{step}");
                    let outcome = tokio::time::timeout(CALL, async {
                        let stock = store
                            .list_stock(pb::ListStockRequest {
                                in_stock_only: true,
                                page_size: 100,
                                ..Default::default()
                            })
                            .await?
                            .into_inner()
                            .stock_lines;
                        let mut lines = Vec::new();
                        for _ in 0..rng.gen_range(1..3) {
                            if stock.is_empty() {
                                break;
                            }
                            let line = &stock[rng.gen_range(0..stock.len())];
                            if lines
                                .iter()
                                .any(|l: &pb::InvoiceLine| l.stock_line_id == line.id)
                            {
                                continue;
                            }
                            let packs = line.available_number_of_packs.min(5.0).floor();
                            if packs >= 1.0 {
                                lines.push(pb::InvoiceLine {
                                    stock_line_id: line.id.clone(),
                                    number_of_packs: packs,
                                    sell_price_per_pack: 2.0,
                                    ..Default::default()
                                });
                            }
                        }
                        if lines.is_empty() {
                            return Ok(None);
                        }
                        let draft = store
                            .create_transfer(pb::CreateTransferRequest {
                                requisition_id: String::new(),
                                to_store_id: to_store,
                                reference,
                                lines,
                            })
                            .await?
                            .into_inner();
                        store
                            .ship_transfer(pb::ShipTransferRequest { id: draft.id })
                            .await
                            .map(|shipped| Some(shipped.into_inner().id))
                    })
                    .await;
                    match outcome {
                        Ok(Ok(Some(id))) => {
                            if from == 0 {
                                master_shipped_since_backup = true;
                                // The master's own store: its data is the
                                // master's, which a master restore may set back.
                                tally.transfers_from_master += 1;
                            } else {
                                tally.transfers_from_satellites += 1;
                                moves_since_backup += 1;
                                acknowledged.entry(from_sync_id).or_default().insert(id);
                            }
                        }
                        Ok(Err(status)) => {
                            // FAILED_PRECONDITION: the stock went (a goods out,
                            // another transfer). The master's own store answers
                            // UNAVAILABLE while the master's database restarts.
                            assert!(
                                status.code() == tonic::Code::FailedPrecondition
                                    || (from == 0 && status.code() == tonic::Code::Unavailable),
                                "seed {seed}: transfer from Sync ID {from_sync_id}: {status:?}"
                            );
                            tally.transfers_refused += 1;
                        }
                        Ok(Ok(None)) | Err(_) => {}
                    }
                }
                18 => {
                    // A satellite receives one of its pending inbound shipments,
                    // sometimes one line short.
                    let n = rng.gen_range(0..satellites.len());
                    let mut store = satellites[n].store().await;
                    let short = rng.gen_bool(0.4);
                    let pick = rng.gen_range(0..1000usize);
                    let outcome = tokio::time::timeout(CALL, async {
                        let pending: Vec<pb::Invoice> = store
                            .list_transfers(pb::ListTransfersRequest {
                                direction: pb::TransferDirection::Inbound as i32,
                                ..Default::default()
                            })
                            .await?
                            .into_inner()
                            .transfers
                            .into_iter()
                            .filter_map(|entry| entry.invoice)
                            .filter(|invoice| invoice.status() == pb::InvoiceStatus::Shipped)
                            .collect();
                        if pending.is_empty() {
                            return Ok(None);
                        }
                        let chosen = &pending[pick % pending.len()];
                        let full = store
                            .get_invoice(pb::GetInvoiceRequest {
                                id: chosen.id.clone(),
                            })
                            .await?
                            .into_inner();
                        let lines = match full.lines.first().filter(|_| short) {
                            Some(line) => vec![pb::ReceivedLine {
                                line_id: line.id.clone(),
                                received_number_of_packs: (line.number_of_packs - 1.0).max(0.0),
                            }],
                            None => Vec::new(),
                        };
                        store
                            .receive_transfer(pb::ReceiveTransferRequest {
                                id: chosen.id.clone(),
                                lines,
                            })
                            .await
                            .map(|received| Some(received.into_inner().id))
                    })
                    .await;
                    match outcome {
                        Ok(Ok(Some(id))) => {
                            tally.transfers_received += 1;
                            tally.transfers_received_short += usize::from(short);
                            acknowledged
                                .entry(satellites[n].sync_id)
                                .or_default()
                                .insert(id);
                        }
                        Ok(Err(status)) => panic!(
                            "seed {seed}: receiving at satellite {}: {status:?}",
                            satellites[n].sync_id
                        ),
                        Ok(Ok(None)) | Err(_) => {}
                    }
                }
                19 => {
                    // A satellite requests one or two items from another
                    // store of the campaign (a satellite, or the master's
                    // own store) and sends the request.
                    let n = rng.gen_range(0..satellites.len());
                    let mut supplier_n = rng.gen_range(0..satellites.len());
                    if supplier_n == n {
                        supplier_n = satellites.len();
                    }
                    let supplier_sync_id = satellites.get(supplier_n).map_or(1, |s| s.sync_id);
                    let supplier_store = store_ids[&supplier_sync_id].clone();
                    let lines: Vec<pb::RequisitionLineInput> = (0..rng.gen_range(1..3))
                        .map(|_| pb::RequisitionLineInput {
                            item_id: trade_items[rng.gen_range(0..trade_items.len())].id.clone(),
                            requested_quantity: f64::from(rng.gen_range(1..8) * 10),
                        })
                        .collect();
                    // Two lines of one item are one line.
                    let mut seen = HashSet::new();
                    let lines: Vec<_> = lines
                        .into_iter()
                        .filter(|line| seen.insert(line.item_id.clone()))
                        .collect();
                    let mut store = satellites[n].store().await;
                    let reference = format!("RQ{round}S{step}");
                    let outcome = tokio::time::timeout(CALL, async {
                        let draft = store
                            .create_requisition(pb::CreateRequisitionRequest {
                                supplier_store_id: supplier_store,
                                reference,
                                lines,
                            })
                            .await?
                            .into_inner();
                        store
                            .send_requisition(pb::SendRequisitionRequest { id: draft.id })
                            .await
                            .map(|sent| sent.into_inner().id)
                    })
                    .await;
                    match outcome {
                        Ok(Ok(id)) => {
                            tally.requisitions_sent += 1;
                            moves_since_backup += 1;
                            requests_sent
                                .entry(satellites[n].sync_id)
                                .or_default()
                                .insert(id);
                        }
                        Ok(Err(status)) => panic!(
                            "seed {seed}: requisition at satellite {}: {status:?}",
                            satellites[n].sync_id
                        ),
                        Err(_) => {}
                    }
                }
                20 => {
                    // A supplying store answers one of its open responses:
                    // ships what it has of the items requested (a transfer
                    // linked to the response), or finalises it.
                    let supplier_n = rng.gen_range(0..=satellites.len());
                    let (mut store, from_sync_id) = match satellites.get(supplier_n) {
                        Some(satellite) => (satellite.store().await, satellite.sync_id),
                        None => (master.store().await, 1),
                    };
                    let finalise = rng.gen_bool(0.3);
                    let pick = rng.gen_range(0..1000usize);
                    let outcome = tokio::time::timeout(CALL, async {
                        let open: Vec<pb::Requisition> = store
                            .list_requisitions(pb::ListRequisitionsRequest {
                                page_size: 1000,
                                kind: pb::RequisitionKind::Response as i32,
                                status: pb::RequisitionStatus::RequisitionSent as i32,
                                ..Default::default()
                            })
                            .await?
                            .into_inner()
                            .requisitions;
                        if open.is_empty() {
                            return Ok(None);
                        }
                        let response = &open[pick % open.len()];
                        if finalise {
                            store
                                .finalise_requisition(pb::FinaliseRequisitionRequest {
                                    id: response.id.clone(),
                                })
                                .await?;
                            return Ok(Some(None));
                        }
                        let wanted: HashSet<&str> =
                            response.lines.iter().map(|l| l.item_id.as_str()).collect();
                        let stock = store
                            .list_stock(pb::ListStockRequest {
                                in_stock_only: true,
                                page_size: 100,
                                ..Default::default()
                            })
                            .await?
                            .into_inner()
                            .stock_lines;
                        let lines: Vec<pb::InvoiceLine> = stock
                            .iter()
                            .filter(|line| wanted.contains(line.item_id.as_str()))
                            .filter(|line| line.available_number_of_packs >= 1.0)
                            .take(2)
                            .map(|line| pb::InvoiceLine {
                                stock_line_id: line.id.clone(),
                                number_of_packs: line.available_number_of_packs.min(3.0).floor(),
                                sell_price_per_pack: 2.0,
                                ..Default::default()
                            })
                            .collect();
                        if lines.is_empty() {
                            return Ok(None);
                        }
                        let draft = store
                            .create_transfer(pb::CreateTransferRequest {
                                requisition_id: response.id.clone(),
                                to_store_id: response.other_store_id.clone(),
                                reference: format!("SUPPLY-{}", response.requisition_number),
                                lines,
                            })
                            .await?
                            .into_inner();
                        store
                            .ship_transfer(pb::ShipTransferRequest { id: draft.id })
                            .await
                            .map(|shipped| Some(Some(shipped.into_inner().id)))
                    })
                    .await;
                    match outcome {
                        Ok(Ok(Some(Some(id)))) => {
                            tally.requisitions_supplied += 1;
                            if from_sync_id == 1 {
                                master_shipped_since_backup = true;
                                tally.transfers_from_master += 1;
                            } else {
                                tally.transfers_from_satellites += 1;
                                moves_since_backup += 1;
                                acknowledged.entry(from_sync_id).or_default().insert(id);
                            }
                        }
                        Ok(Ok(Some(None))) => tally.requisitions_finalised += 1,
                        Ok(Err(status)) => {
                            // FAILED_PRECONDITION: the stock went, or the
                            // response was finalised meanwhile. The master's
                            // own store answers UNAVAILABLE while its
                            // database restarts.
                            assert!(
                                status.code() == tonic::Code::FailedPrecondition
                                    || (from_sync_id == 1
                                        && status.code() == tonic::Code::Unavailable),
                                "seed {seed}: supplying a requisition at Sync ID {from_sync_id}: {status:?}"
                            );
                            tally.transfers_refused += 1;
                        }
                        Ok(Ok(None)) | Err(_) => {}
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

        // Quiet: everything reaches everywhere (slow links too); then the checks.
        trail(format!("round {round}: quiet, checked"));
        let expect = Expected {
            acknowledged: &acknowledged,
            requests_sent: &requests_sent,
            deleted_items: &deleted_items,
            scratch: &scratch,
        };
        check(&db, &satellites, &expect, seed).await;
        wait_master_data_equal(&db, &readded, QUIET).await;
        // The operator-scale faults below run on full-speed links.
        for proxy in proxies.iter().chain([&readded_proxy]) {
            proxy.set_throttle(None);
            proxy.cut_all();
        }
        if round == wipe_round {
            let n = rng.gen_range(0..satellites.len());
            trail(format!(
                "round {round}: Sync ID {} given a new disk",
                satellites[n].sync_id
            ));
            satellites[n].replace_disk(&master).await;
            database_ids[n] = database_id(&satellites[n].db).await;
            tally.wipes += 1;
            satellites[n].wait_initialised(QUIET).await;
            check(&db, &satellites, &expect, seed).await;
        }
        // At most one operator-scale fault per round, once quiet.
        if rng.gen_bool(0.4) {
            let kind = rng.gen_range(0..4);
            trail(format!(
                "round {round}: operator-scale fault {kind} ({})",
                [
                    "a satellite restored from its backup, if it has one",
                    "a replacement machine",
                    "the master restored from its backup, if nothing shipped since",
                    "the empty site removed and added again",
                ][kind]
            ));
            let restorable: Vec<usize> = (0..satellites.len())
                .filter(|n| site_backups[*n].is_some())
                .collect();
            if kind == 3 {
                // The empty site removed and added again: its old database is
                // refused plainly; a new one initialises as the new store.
                readded.process.terminate(Duration::from_secs(10));
                master
                    .remove_site(READDED)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: remove the empty site: {e:?}"));
                let store = master.add_site(READDED).await.store.unwrap();
                readded.start_again();
                wait_refused(&readded, &["added again"], seed).await;
                readded.process.kill();
                let new = readded.start_replacement(TestDb::new(Backend::Sqlite));
                let status = new.wait_initialised(QUIET).await;
                assert_eq!(
                    status.store.map(|s| s.id),
                    Some(store.id),
                    "seed {seed}: the new database hosts the new store"
                );
                readded = new;
                // A master backup from before knows the old store only:
                // the operator takes a new one.
                master_backup = None;
                tally.readded_sites += 1;
            } else if kind == 0 && !restorable.is_empty() {
                // A site restored from its old copy, while it is stopped.
                let n = restorable[rng.gen_range(0..restorable.len())];
                let backup = site_backups[n].take().unwrap();
                let current_last = satellites[n].status().await.upstream_last_seq;
                let must_stop = backup.database_id != database_ids[n]
                    || current_last > backup.upstream_last_seq;
                satellites[n].process.kill();
                copy_sqlite_back(backup.dir.path(), sqlite_path(&satellites[n].db));
                satellites[n].start_again();
                tally.satellite_restores += 1;
                eprintln!(
                    "seed {seed}: satellite {} restored from its copy (database {}, last entry {} of {current_last}); must stop: {must_stop}",
                    satellites[n].sync_id, backup.database_id, backup.upstream_last_seq
                );
                if must_stop {
                    wait_refused(
                        &satellites[n],
                        &[
                            "older copy",
                            "another history",
                            "belongs to satellite database",
                        ],
                        seed,
                    )
                    .await;
                    // The operator: export the copy's unsent invoices, give the
                    // site a new database, adopt it, import them there.
                    let file = export(&mut satellites[n], seed);
                    let new = satellites[n]
                        .start_replacement(TestDb::sqlite_in(satellite_lazies[n].path()));
                    let id = adopt_new(&master, &new, seed).await;
                    drop(std::mem::replace(&mut satellites[n], new));
                    database_ids[n] = id;
                    let (imported, skipped) = import(&satellites[n], &file.1, seed);
                    tally.restored_copies_stopped += 1;
                    tally.handed_over += imported;
                    tally.handover_skipped += skipped;
                }
            } else if let Some(backup) = master_backup
                .as_ref()
                .filter(|_| kind == 2 && !master_shipped_since_backup)
            {
                // The master restored from its backup, then restarted.
                tally.master_restores_across_moves += usize::from(moves_since_backup > 0);
                eprintln!(
                    "seed {seed}: the master restored from a backup older than {moves_since_backup} transfers and requests between satellites"
                );
                master.process.kill();
                let _ = db.close().await;
                let dump = backup.dir.path().join("master.dump");
                if backend == Backend::Sqlite {
                    copy_sqlite_back(backup.dir.path(), sqlite_path(&master_db));
                    master.start_again();
                    tally.master_restores_sqlite_copy += 1;
                } else if rng.gen_bool(0.5) {
                    run(
                        Command::new("pg_restore")
                            .args(["--clean", "--if-exists", "--no-owner", "-d"])
                            .arg(master_db.url())
                            .arg(&dump),
                        seed,
                    );
                    master.start_again();
                    tally.master_restores_in_place += 1;
                } else {
                    let fresh = TestDb::new(Backend::Postgres);
                    run(
                        Command::new("pg_restore")
                            .args(["--no-owner", "-d"])
                            .arg(fresh.url())
                            .arg(&dump),
                        seed,
                    );
                    master = Master::start(&fresh, &[]);
                    for proxy in proxies.iter().chain([&readded_proxy]) {
                        proxy.set_target(master.process.addr);
                    }
                    master_db = fresh;
                    tally.master_restores_fresh_database += 1;
                }
                db = master_db.connect().await;
                eprintln!("seed {seed}: master restored from its backup");
                // The restore forgot adoptions made after the backup: adopt again.
                for (satellite, id) in satellites.iter().zip(&database_ids) {
                    if backup.owners.get(&satellite.sync_id) != Some(id) {
                        master.adopt(satellite.sync_id, id).await;
                        tally.readoptions += 1;
                    }
                }
                // The restore forgot sync credentials set after the backup:
                // set them again.
                for (sync_id, (user, password)) in &own_credentials {
                    let site = pb::Site {
                        sync_id: *sync_id,
                        enabled: true,
                        sync_user_name: user.clone(),
                        sync_password: password.clone(),
                        ..Default::default()
                    };
                    if let Err(status) = master.update_site(site.clone()).await {
                        panic!("setting the sync credentials of Sync ID {sync_id} again after the restore: {status:?}");
                    }
                }
                // Master data is the backup's from now on.
                scratch = backup.scratch.clone();
                let kept: HashSet<&String> = scratch.iter().map(|i| &i.id).collect();
                deleted_items = all_created
                    .iter()
                    .filter(|id| !kept.contains(id) && !unanswered_deletes.contains(*id))
                    .cloned()
                    .collect();
            } else {
                // A replacement machine while the old one holds unsent invoices.
                let n = rng.gen_range(0..satellites.len());
                proxies[n].refuse(true);
                proxies[n].cut_all();
                let mut store = satellites[n].store().await;
                let item = trade_items[rng.gen_range(0..trade_items.len())].clone();
                let received = goods_in(&mut store, &supplier, &[item], 5.0, "offline").await;
                let out = goods_out(&mut store, &customer, &received.stock_lines[0], 2.0)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: goods out offline: {e:?}"));
                let offline = [received.invoice.unwrap().id, out.invoice.unwrap().id];
                acknowledged
                    .entry(satellites[n].sync_id)
                    .or_default()
                    .extend(offline.iter().cloned());
                let backlog = satellites[n].status().await.upstream_backlog;
                assert!(
                    backlog >= 2,
                    "seed {seed}: the offline writes are unsent: {backlog}"
                );
                satellites[n].process.kill();
                proxies[n].refuse(false);
                let new =
                    satellites[n].start_replacement(TestDb::sqlite_in(satellite_lazies[n].path()));
                let id = adopt_new(&master, &new, seed).await;
                let mut old = std::mem::replace(&mut satellites[n], new);
                database_ids[n] = id;
                // The old machine comes back: refused, it keeps its invoices.
                old.start_again();
                wait_refused(&old, &["belongs to satellite database"], seed).await;
                let file = export(&mut old, seed);
                drop(old);
                let (imported, skipped) = import(&satellites[n], &file.1, seed);
                assert!(
                    imported >= offline.len(),
                    "seed {seed}: the offline invoices are handed over ({imported} imported)"
                );
                tally.replacements += 1;
                tally.handed_over += imported;
                tally.handover_skipped += skipped;
            }
            let expect = Expected {
                acknowledged: &acknowledged,
                requests_sent: &requests_sent,
                deleted_items: &deleted_items,
                scratch: &scratch,
            };
            check(&db, &satellites, &expect, seed).await;
            wait_master_data_equal(&db, &readded, QUIET).await;
        }
        integrity_check_agrees(&master, &db, &satellites, &readded, seed, &mut tally).await;
        eprintln!("round {round} of seed {seed} checked: {tally:?}");
    }
    eprintln!("*** fault campaign seed {seed}: {rounds} rounds, {tally:?}, failures found: 0 ***");
}

/// What the checker expects (see the module's docs).
struct Expected<'a> {
    acknowledged: &'a HashMap<u32, HashSet<String>>,
    /// Requests whose sending was acknowledged, by requesting Sync ID.
    requests_sent: &'a HashMap<u32, HashSet<String>>,
    deleted_items: &'a HashSet<String>,
    /// Scratch items known to exist on the master.
    scratch: &'a [pb::Item],
}

async fn check(
    db: &sea_orm::DatabaseConnection,
    satellites: &[Satellite],
    expect: &Expected<'_>,
    seed: u64,
) {
    let Expected {
        acknowledged,
        requests_sent,
        deleted_items,
        scratch,
    } = *expect;
    no_site_stuck(satellites, seed).await;
    // A site that drained last may have shipped a transfer: the master's new
    // inbound shipment still travels to its store's site. Every store copy
    // is compared once it has had the time to arrive.
    for satellite in satellites {
        wait_store_copy_equal(db, satellite, seed).await;
    }
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
    for expected in scratch {
        assert!(
            item::Entity::find_by_id(expected.id.clone())
                .one(db)
                .await
                .unwrap()
                .is_some(),
            "seed {seed}: item {} ({}) is missing on the master",
            expected.id,
            expected.code
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
    // Stock is what its invoice lines say: packs in minus packs out, each
    // once. A transfer's outbound line takes its packs once SHIPPED (a draft
    // only reserves); an inbound line adds the packs received, once RECEIVED,
    // to the stock line the receipt created.
    let invoices: HashMap<String, invoice::Model> = invoice::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    let lines = invoice_line::Entity::find().all(db).await.unwrap();
    let mut moved: HashMap<String, f64> = HashMap::new();
    for line in &lines {
        let of = invoices.get(&line.invoice_id);
        let packs = match of.map(|i| (i.kind.as_str(), i.status.as_str())) {
            Some(("OUTBOUND_SHIPMENT", "SHIPPED")) => -line.number_of_packs,
            Some(("OUTBOUND_SHIPMENT", _)) => 0.0,
            Some(("INBOUND_SHIPMENT", "RECEIVED")) => line.received_number_of_packs,
            Some(("INBOUND_SHIPMENT", _)) => 0.0,
            _ => line.number_of_packs,
        };
        *moved.entry(line.stock_line_id.clone()).or_default() += packs;
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
    stock_conserved(db, &invoices, &lines, seed).await;
    requisitions_agree(db, satellites, requests_sent, seed).await;
}

/// Requisitions converged and agree on both sides: each satellite's
/// requisitions and their lines are the master's copies, record by record;
/// every request whose sending was acknowledged is on the master once, SENT;
/// each sent request has exactly one response, in the store it asked, with
/// the same items and quantities, and each response answers a sent request
/// (a draft has none); and the units supplied, as each end derives them from
/// the shipments it holds (the requester's inbound, the supplier's shipped
/// outbound), are the same at both ends.
async fn requisitions_agree(
    db: &sea_orm::DatabaseConnection,
    satellites: &[Satellite],
    requests_sent: &HashMap<u32, HashSet<String>>,
    seed: u64,
) {
    use storesync_shared::domain::requisitions::supplied;
    // A response created when its requester drained last still travels to
    // its supplier's site: each site is compared once it has had the time.
    for satellite in satellites {
        let Some(store) = satellite.status().await.store else {
            continue;
        };
        eventually(
            QUIET,
            &format!(
                "seed {seed}: satellite {}'s requisitions to equal the master's copies",
                satellite.sync_id
            ),
            || async {
                let of_store = || {
                    requisition::Entity::find()
                        .filter(requisition::Column::StoreId.eq(store.id.as_str()))
                };
                let conn = satellite.db.connect().await;
                let mut theirs = of_store().all(&conn).await.unwrap();
                let _ = conn.close().await;
                let mut ours = of_store().all(db).await.unwrap();
                theirs.sort_by(|a, b| a.id.cmp(&b.id));
                ours.sort_by(|a, b| a.id.cmp(&b.id));
                (ours == theirs).then_some(())
            },
        )
        .await;
    }
    let mut all = requisition::Entity::find().all(db).await.unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let mut all_lines = requisition_line::Entity::find().all(db).await.unwrap();
    all_lines.sort_by(|a, b| a.id.cmp(&b.id));
    // Each store's own database: a satellite's, or the master's for its own store.
    let mut local: HashMap<String, sea_orm::DatabaseConnection> = HashMap::new();
    for satellite in satellites {
        let Some(store) = satellite.status().await.store else {
            continue;
        };
        let conn = satellite.db.connect().await;
        let mut theirs = requisition::Entity::find()
            .filter(requisition::Column::StoreId.eq(store.id.as_str()))
            .all(&conn)
            .await
            .unwrap();
        theirs.sort_by(|a, b| a.id.cmp(&b.id));
        let ours: Vec<&requisition::Model> =
            all.iter().filter(|r| r.store_id == store.id).collect();
        assert_eq!(
            ours,
            theirs.iter().collect::<Vec<_>>(),
            "seed {seed}: satellite {}'s requisitions differ from the master's copies",
            satellite.sync_id
        );
        let mut their_lines = requisition_line::Entity::find()
            .filter(requisition_line::Column::StoreId.eq(store.id.as_str()))
            .all(&conn)
            .await
            .unwrap();
        their_lines.sort_by(|a, b| a.id.cmp(&b.id));
        let our_lines: Vec<&requisition_line::Model> = all_lines
            .iter()
            .filter(|l| l.store_id == store.id)
            .collect();
        assert_eq!(
            our_lines,
            their_lines.iter().collect::<Vec<_>>(),
            "seed {seed}: satellite {}'s requisition lines differ from the master's copies",
            satellite.sync_id
        );
        local.insert(store.id, conn);
    }
    let by_id: HashMap<&str, &requisition::Model> =
        all.iter().map(|r| (r.id.as_str(), r)).collect();
    for (sync_id, ids) in requests_sent {
        for id in ids {
            assert!(
                by_id
                    .get(id.as_str())
                    .is_some_and(|r| r.kind == "REQUEST" && r.status == "REQUISITION_SENT"),
                "seed {seed}: sent request {id} of Sync ID {sync_id} is not on the master as sent"
            );
        }
    }
    let items_of = |requisition_id: &str| -> HashMap<String, f64> {
        all_lines
            .iter()
            .filter(|l| l.requisition_id == requisition_id)
            .map(|l| (l.item_id.clone(), l.requested_quantity))
            .collect()
    };
    let mut responses_of: HashMap<&str, Vec<&requisition::Model>> = HashMap::new();
    for response in all.iter().filter(|r| r.kind == "RESPONSE") {
        let request = by_id.get(response.linked_requisition_id.as_str());
        assert!(
            request.is_some_and(|q| q.kind == "REQUEST"
                && q.status == "REQUISITION_SENT"
                && q.store_id == response.other_store_id
                && q.other_store_id == response.store_id),
            "seed {seed}: response {} answers no sent request of its store ({:?})",
            response.id,
            request
        );
        responses_of
            .entry(response.linked_requisition_id.as_str())
            .or_default()
            .push(response);
    }
    for request in all.iter().filter(|r| r.kind == "REQUEST") {
        let responses = responses_of
            .get(request.id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if request.status != "REQUISITION_SENT" {
            assert!(
                responses.is_empty(),
                "seed {seed}: {} request {} has a response",
                request.status,
                request.id
            );
            continue;
        }
        assert_eq!(
            responses.len(),
            1,
            "seed {seed}: sent request {} has {} responses",
            request.id,
            responses.len()
        );
        let response = responses[0];
        assert_eq!(
            items_of(&request.id),
            items_of(&response.id),
            "seed {seed}: request {} and its response {} ask different items or quantities",
            request.id,
            response.id
        );
        let at_requester = supplied(
            local.get(&request.store_id).unwrap_or(db),
            &request.store_id,
            std::slice::from_ref(&request.id),
        )
        .await
        .unwrap();
        let at_supplier = supplied(
            local.get(&response.store_id).unwrap_or(db),
            &response.store_id,
            std::slice::from_ref(&response.id),
        )
        .await
        .unwrap();
        let by_item = |units: HashMap<(String, String), f64>| -> Vec<(String, i64)> {
            let mut out: Vec<(String, i64)> = units
                .into_iter()
                .map(|((_, item), units)| (item, (units * 1000.0).round() as i64))
                .collect();
            out.sort();
            out
        };
        assert_eq!(
            by_item(at_requester),
            by_item(at_supplier),
            "seed {seed}: request {} (store {}) and response {} (store {}) disagree on what was supplied",
            request.id,
            request.store_id,
            response.id,
            response.store_id
        );
    }
    for (_, conn) in local {
        // Closed now: a power cut unmounts the satellite's filesystem.
        let _ = conn.close().await;
    }
}

/// Stock is conserved by every transfer, in the master's view: the packs that
/// left A's stock (the SHIPPED outbound's lines) equal the packs in transit
/// (the inbound not yet received) plus the packs B received plus the
/// recorded discrepancy (shipped - received); each shipped outbound has
/// exactly one inbound shipment and one transfer record, whose figures are
/// those of the lines; no inbound shipment or transfer record lacks its
/// shipped outbound.
async fn stock_conserved(
    db: &sea_orm::DatabaseConnection,
    invoices: &HashMap<String, invoice::Model>,
    lines: &[invoice_line::Model],
    seed: u64,
) {
    let mut line_packs: HashMap<&str, (f64, f64)> = HashMap::new();
    for line in lines {
        let sums = line_packs.entry(line.invoice_id.as_str()).or_default();
        sums.0 += line.number_of_packs;
        sums.1 += line.received_number_of_packs;
    }
    let records: HashMap<String, transfer::Model> = transfer::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    let mut inbound_of: HashMap<&str, Vec<&invoice::Model>> = HashMap::new();
    for inbound in invoices.values().filter(|i| i.kind == "INBOUND_SHIPMENT") {
        let outbound = invoices.get(&inbound.linked_invoice_id);
        assert!(
            outbound.is_some_and(|o| o.kind == "OUTBOUND_SHIPMENT" && o.status == "SHIPPED"),
            "seed {seed}: inbound shipment {} has no shipped outbound ({})",
            inbound.id,
            inbound.linked_invoice_id
        );
        inbound_of
            .entry(inbound.linked_invoice_id.as_str())
            .or_default()
            .push(inbound);
    }
    let near = |a: f64, b: f64| (a - b).abs() < 1e-6;
    for outbound in invoices
        .values()
        .filter(|i| i.kind == "OUTBOUND_SHIPMENT" && i.status == "SHIPPED")
    {
        let id = outbound.id.as_str();
        let inbound = inbound_of.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            inbound.len(),
            1,
            "seed {seed}: shipped outbound {id} has {} inbound shipments",
            inbound.len()
        );
        let inbound = inbound[0];
        let record = records
            .get(id)
            .unwrap_or_else(|| panic!("seed {seed}: shipped outbound {id} has no transfer record"));
        assert_eq!(
            (
                record.from_store_id.as_str(),
                record.to_store_id.as_str(),
                record.inbound_invoice_id.as_str()
            ),
            (
                outbound.store_id.as_str(),
                inbound.store_id.as_str(),
                inbound.id.as_str()
            ),
            "seed {seed}: transfer {id}: stores and inbound of the record"
        );
        let left = line_packs.get(id).map_or(0.0, |p| p.0);
        let sent = line_packs
            .get(inbound.id.as_str())
            .copied()
            .unwrap_or_default();
        assert!(
            near(record.packs_shipped, left) && near(sent.0, left),
            "seed {seed}: transfer {id}: {left} packs left A's stock, the record says {} shipped, the inbound lists {}",
            record.packs_shipped,
            sent.0
        );
        let (in_transit, received, discrepancy) = if inbound.status == "RECEIVED" {
            assert!(
                record.received_at_ms > 0 && near(record.packs_received, sent.1),
                "seed {seed}: transfer {id}: B received {} packs, the record says {} (received at {})",
                sent.1,
                record.packs_received,
                record.received_at_ms
            );
            (0.0, sent.1, -record.discrepancy)
        } else {
            assert!(
                record.received_at_ms == 0 && near(record.discrepancy, 0.0),
                "seed {seed}: transfer {id}: in transit, but the record says received: {record:?}"
            );
            (sent.0, 0.0, 0.0)
        };
        assert!(
            near(left, in_transit + received + discrepancy),
            "seed {seed}: transfer {id}: {left} packs left A's stock but {in_transit} are in transit, {received} received and the discrepancy is {discrepancy}"
        );
    }
    for id in records.keys() {
        assert!(
            invoices
                .get(id)
                .is_some_and(|o| o.kind == "OUTBOUND_SHIPMENT" && o.status == "SHIPPED"),
            "seed {seed}: transfer record {id} has no shipped outbound"
        );
    }
}

/// The product's own integrity check (`VerifySites`, report-only, waiting
/// for the result) agrees with the record-by-record comparison, for every
/// site, both ways: each store row that differs between the master's copy
/// and the site (read once the check has answered) is named by the check,
/// each store row the check names differs, and the check names something
/// exactly when the comparison finds a difference. Called at the end of a
/// round, once it has quiesced: a check that does not end EQUAL or
/// DIFFERENT is a failure, except NOT_SETTLED, asked again at most 5 times.
async fn integrity_check_agrees(
    master: &Master,
    db: &sea_orm::DatabaseConnection,
    satellites: &[Satellite],
    readded: &Satellite,
    seed: u64,
    tally: &mut Tally,
) {
    const WAIT: Duration = Duration::from_secs(120);
    for satellite in satellites.iter().chain([readded]) {
        let sync_id = satellite.sync_id;
        let mut result = None;
        for _ in 0..5 {
            let answer = verify::check_waiting(master, sync_id, true, WAIT).await;
            match answer.outcome() {
                pb::VerifyOutcome::Equal | pb::VerifyOutcome::Different => {
                    result = Some(answer);
                    break;
                }
                pb::VerifyOutcome::NotSettled => {
                    eprintln!(
                        "seed {seed}: the check of Sync ID {sync_id} did not settle ({}); again",
                        answer.message
                    );
                    tally.integrity_not_settled += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => panic!(
                    "seed {seed}: the check of Sync ID {sync_id} ended {other:?} after the round quiesced: {}",
                    answer.message
                ),
            }
        }
        let result = result.unwrap_or_else(|| {
            panic!("seed {seed}: the check of Sync ID {sync_id} did not settle in 5 attempts")
        });
        tally.integrity_checks += 1;
        let named = verify::named(&result);
        let named_ids: HashSet<String> = named.iter().map(|(_, id, _)| id.clone()).collect();
        let named_store: HashSet<String> = named
            .iter()
            .filter(|(table, _, _)| {
                matches!(
                    table,
                    pb::Table::StockLine | pb::Table::Invoice | pb::Table::InvoiceLine
                )
            })
            .map(|(_, id, _)| id.clone())
            .collect();
        let store_id = satellite
            .status()
            .await
            .store
            .expect("satellite reports its store")
            .id;
        let local = satellite.db.connect().await;
        let theirs = store_data(&local, &store_id).await;
        let _ = local.close().await;
        let ours = store_data(db, &store_id).await;
        let differing = differing_ids(&ours, &theirs);
        assert!(
            differing.is_subset(&named_ids),
            "seed {seed}: site {sync_id}: the check missed {:?} (it named {named:?})",
            differing.difference(&named_ids).collect::<Vec<_>>()
        );
        assert!(
            named_store.is_subset(&differing),
            "seed {seed}: site {sync_id}: the check named {:?}, equal in the comparison",
            named_store.difference(&differing).collect::<Vec<_>>()
        );
        assert_eq!(
            named.is_empty(),
            differing.is_empty(),
            "seed {seed}: site {sync_id}: the check named {named:?}, the comparison finds {differing:?}"
        );
    }
}

/// The ids of the store rows that differ between two reads of one store's
/// data (on one side only, or different).
fn differing_ids(a: &StoreData, b: &StoreData) -> HashSet<String> {
    fn by_id<T: PartialEq>(a: &[T], b: &[T], id: impl Fn(&T) -> &str, out: &mut HashSet<String>) {
        let left: HashMap<&str, &T> = a.iter().map(|r| (id(r), r)).collect();
        let right: HashMap<&str, &T> = b.iter().map(|r| (id(r), r)).collect();
        for (key, row) in &left {
            if right.get(key) != Some(row) {
                out.insert((*key).to_owned());
            }
        }
        for key in right.keys() {
            if !left.contains_key(key) {
                out.insert((*key).to_owned());
            }
        }
    }
    let mut out = HashSet::new();
    by_id(&a.stock_lines, &b.stock_lines, |r| &r.id, &mut out);
    by_id(&a.invoices, &b.invoices, |r| &r.id, &mut out);
    by_id(&a.invoice_lines, &b.invoice_lines, |r| &r.id, &mut out);
    out
}

/// Waits (at most [`QUIET`]) until `satellite`'s store data equals the
/// master's copy; the record-by-record assertion follows in [`check`].
async fn wait_store_copy_equal(db: &sea_orm::DatabaseConnection, satellite: &Satellite, seed: u64) {
    let Some(store) = satellite.status().await.store else {
        return;
    };
    eventually(
        QUIET,
        &format!(
            "seed {seed}: satellite {}'s store data to equal the master's copy",
            satellite.sync_id
        ),
        || async {
            let local = satellite.db.connect().await;
            let theirs = store_data(&local, &store.id).await;
            let _ = local.close().await;
            (store_data(db, &store.id).await == theirs).then_some(())
        },
    )
    .await;
}

/// No site stuck: every satellite is initialised, has drained its outbox,
/// runs on a database that is not halted, and is connected (streaming) or has
/// synced since this check began (interval).
async fn no_site_stuck(satellites: &[Satellite], seed: u64) {
    let began = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let began = i64::try_from(began).unwrap();
    for satellite in satellites {
        satellite.wait_drained(QUIET).await;
        let halted = satellite.halted().await;
        assert!(
            halted.is_empty(),
            "seed {seed}: satellite {} runs on a halted database: {halted}",
            satellite.sync_id
        );
        eventually(
            QUIET,
            &format!(
                "seed {seed}: satellite {} to be connected",
                satellite.sync_id
            ),
            || async {
                let status = satellite.status().await;
                let synced = if status.mode == pb::SyncMode::Interval as i32 {
                    status.last_sync_at_ms >= began
                } else {
                    status.state == pb::ConnectionState::Connected as i32
                };
                (status.initialised && synced).then_some(())
            },
        )
        .await;
    }
}
