//! Slow and flaky links: real master and satellite binaries talking through
//! the test proxy, on a SQLite master and (with TEST_DATABASE_URL) a
//! PostgreSQL master.
//!
//! - a snapshot cut at about 90 % continues from there: the bytes moved in
//!   all are close to one snapshot, not one and nine tenths; so does a
//!   master-data resync;
//! - over 64 kbit/s with 300 ms latency and a cut every few seconds, a new
//!   satellite initialises a whole store and then stays in sync under a
//!   trickle of writes both ways, streaming and in interval mode. It prints
//!   how long initialisation took, how many bytes the cuts cost, and what
//!   of (the proxy's [`storesync_tests::proxy::DownTally`]: messages cut
//!   short, records delivered twice, reconnection, worse compression).
//!   `STORESYNC_SLOW_LINK_RECORDS` sets the store's size (CI: 2,000 stock
//!   lines; the README's figure: 20,000), and
//!   `STORESYNC_SLOW_LINK_COMPRESSION` the satellites' compression
//!   (`deflate`, one stream per session, by default; `gzip` for comparison).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, database_id, goods_in,
    store_of, wait_master_data_equal, Master, Satellite, SYNC_PASSWORD, SYNC_USER,
};
use storesync_tests::proxy::{Proxy, Throttle};
use storesync_tests::raw::{hello, open, stock_line};
use storesync_tests::{backends, eventually, TestDb};

/// Pushes `count` stock lines of site `sync_id`'s store (over `items`)
/// through a raw session, as a first satellite would have, and waits for
/// their acknowledgement.
async fn push_store_data(
    master: &Master,
    sync_id: u32,
    store_id: &str,
    items: &[pb::Item],
    count: usize,
) {
    let mut session = open(
        &master.url(),
        &sync_id.to_string(),
        SYNC_USER,
        SYNC_PASSWORD,
        hello(sync_id),
    )
    .await
    .unwrap();
    let mut seq = 1u64;
    let records: Vec<_> = (0..count)
        .map(|n| stock_line(store_id, &items[n % items.len()].id))
        .collect();
    for chunk in records.chunks(2000) {
        session.push(seq, chunk.to_vec()).await;
        seq += chunk.len() as u64;
    }
    let last = seq - 1;
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let message = session.inbound.message().await.unwrap().unwrap();
            if let Some(pb::master_message::Message::UpstreamAck(ack)) = message.message {
                if ack.acked_seq == last {
                    return;
                }
            }
        }
    })
    .await
    .expect("the master acknowledges the store data");
}

/// A satellite whose database the master is told to adopt (the raw session
/// that pushed the store data owned the Sync ID before it).
async fn adopted_satellite(
    master: &Master,
    url: &str,
    sync_id: u32,
    mode: &str,
    extra: &[(&str, &str)],
) -> Satellite {
    let satellite = Satellite::start(url, sync_id, mode, extra);
    let id = eventually(
        Duration::from_secs(30),
        "the satellite's database to exist",
        || async {
            let id = database_id(&satellite.db).await;
            (!id.is_empty()).then_some(id)
        },
    )
    .await;
    master.adopt(sync_id, &id).await;
    satellite
}

/// A snapshot cut at about 90 % of its bytes resumes where it stopped:
/// the second initialisation, cut once, moves little more than the first,
/// uncut one. (Before resumable snapshots it started again from zero:
/// about 1.9 times the bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_cut_at_ninety_percent_resumes_instead_of_restarting() {
    for backend in backends("a_snapshot_cut_at_ninety_percent_resumes_instead_of_restarting") {
        let master_db = TestDb::new(backend);
        // Small batches, so that a cut loses at most a window of them.
        let master = Master::start(&master_db, &[("STORESYNC_DOWNSTREAM_BATCH_RECORDS", "400")]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        let items = create_items(&master, "RES", 20).await;
        let store_id = store_of(&db, 2).await.id;
        push_store_data(&master, 2, &store_id, &items, 8000).await;

        let proxy = Proxy::start(master.process.addr).await;
        let mut satellite = adopted_satellite(&master, &proxy.url(), 2, "streaming", &[]).await;
        satellite.wait_initialised(Duration::from_secs(90)).await;
        let (_, whole) = proxy.bytes();
        eprintln!("an uncut initialisation moved {whole} bytes to the satellite");

        // The disk is lost; the new one initialises again and is cut at ~90 %.
        satellite.process.kill();
        proxy.cut_after(whole * 9 / 10);
        satellite.replace_disk(&master).await;
        satellite.wait_initialised(Duration::from_secs(90)).await;
        assert_eq!(proxy.cuts(), 1, "the link was cut once, mid-snapshot");
        let (_, total) = proxy.bytes();
        let second = total - whole;
        let resent = second.saturating_sub(whole);
        eprintln!(
            "cut at 90 %: the second initialisation moved {second} bytes, {resent} more than an uncut one ({:.0} %)",
            resent as f64 * 100.0 / whole as f64
        );
        assert!(
            resent < whole / 4,
            "a snapshot cut at 90 % resent {resent} of {whole} bytes: it started again instead of resuming"
        );
        assert_store_copies_equal(&db, &satellite, Duration::from_secs(60)).await;
        wait_master_data_equal(&db, &satellite, Duration::from_secs(60)).await;
    }
}

/// `sync_state.changelog_epoch` of a satellite's database.
async fn satellite_epoch(satellite: &Satellite) -> String {
    use sea_orm::{ConnectionTrait, Statement};
    let conn = satellite.db.connect().await;
    let row = conn
        .query_one(Statement::from_string(
            conn.get_database_backend(),
            "SELECT changelog_epoch FROM sync_state WHERE id = 1",
        ))
        .await
        .unwrap()
        .unwrap();
    let epoch: String = row.try_get_by_index(0).unwrap();
    let _ = conn.close().await;
    epoch
}

/// Stops the satellite and makes its master data look as if of another
/// change-log epoch (a master restored from a backup says the same), so
/// that its next session re-synchronises master data; starts it again and
/// waits until the resync has completed. Returns the bytes the master sent
/// meanwhile.
async fn resync_master_data(satellite: &mut Satellite, proxy: &Proxy) -> u64 {
    satellite.process.terminate(Duration::from_secs(10));
    let conn = satellite.db.connect().await;
    storesync_tests::master::execute(
        &conn,
        "UPDATE sync_state SET changelog_epoch = 'an-older-epoch' WHERE id = 1",
    )
    .await;
    let _ = conn.close().await;
    let (_, before) = proxy.bytes();
    satellite.start_again();
    eventually(
        Duration::from_secs(120),
        "the master-data resync to complete",
        || async { (satellite_epoch(satellite).await != "an-older-epoch").then_some(()) },
    )
    .await;
    let (_, after) = proxy.bytes();
    after - before
}

/// A master-data resync (after a master restore, or a log pruned past the
/// site) cut at about 90 % of its bytes resumes where it stopped, as an
/// initialisation does: the cut resync moves little more than an uncut one,
/// and the site ends with exactly the master's master data and its store
/// data kept. (Before, every cut started the resync again from zero.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_data_resync_cut_at_ninety_percent_resumes_instead_of_restarting() {
    for backend in
        backends("a_master_data_resync_cut_at_ninety_percent_resumes_instead_of_restarting")
    {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[("STORESYNC_DOWNSTREAM_BATCH_RECORDS", "100")]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        let items = create_items(&master, "RSY", 1500).await;
        let store_id = store_of(&db, 2).await.id;
        push_store_data(&master, 2, &store_id, &items, 200).await;

        let proxy = Proxy::start(master.process.addr).await;
        let mut satellite = adopted_satellite(&master, &proxy.url(), 2, "streaming", &[]).await;
        satellite.wait_initialised(Duration::from_secs(90)).await;
        let store_before =
            assert_store_copies_equal(&db, &satellite, Duration::from_secs(60)).await;

        let whole = resync_master_data(&mut satellite, &proxy).await;
        eprintln!("an uncut master-data resync moved {whole} bytes to the satellite");
        wait_master_data_equal(&db, &satellite, Duration::from_secs(60)).await;

        // While it is away again, master data changes (an item no stock line
        // names is deleted); its resync is cut at ~90 %.
        let mut client = master.master_data().await;
        client
            .delete_item(pb::DeleteItemRequest {
                id: items[1499].id.clone(),
            })
            .await
            .unwrap();
        create_items(&master, "RSYNEW", 3).await;
        proxy.cut_after(whole * 9 / 10);
        let second = resync_master_data(&mut satellite, &proxy).await;
        assert_eq!(proxy.cuts(), 1, "the link was cut once, mid-resync");
        let resent = second.saturating_sub(whole);
        eprintln!(
            "cut at 90 %: the second resync moved {second} bytes, {resent} more than an uncut one ({:.0} %)",
            resent as f64 * 100.0 / whole as f64
        );
        assert!(
            resent < whole / 4,
            "a resync cut at 90 % resent {resent} of {whole} bytes: it started again instead of resuming"
        );
        wait_master_data_equal(&db, &satellite, Duration::from_secs(60)).await;
        let store_after = assert_store_copies_equal(&db, &satellite, Duration::from_secs(60)).await;
        assert_eq!(store_after, store_before, "the store's data is kept");
        satellite.process.kill();
    }
}

/// Records of the slow-link store (see the module doc).
fn slow_link_records() -> usize {
    std::env::var("STORESYNC_SLOW_LINK_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// The satellites' `STORESYNC_SYNC_COMPRESSION` (see the module doc).
fn slow_link_compression() -> &'static str {
    match std::env::var("STORESYNC_SLOW_LINK_COMPRESSION").as_deref() {
        Ok("gzip") => "gzip",
        Ok("none") => "none",
        _ => "deflate",
    }
}

/// 64 kbit/s, 300 ms, a cut about every 6 s: a new satellite initialises a
/// whole store, then keeps in sync both ways, streaming then interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_site_initialises_and_keeps_in_sync_over_a_slow_link_that_is_cut_every_few_seconds() {
    for backend in backends(
        "a_new_site_initialises_and_keeps_in_sync_over_a_slow_link_that_is_cut_every_few_seconds",
    ) {
        let records = slow_link_records();
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        let items = create_items(&master, "SLOW", 50).await;
        let (supplier, _) = create_trading_partners(&master, "SL").await;
        let store_id = store_of(&db, 2).await.id;
        push_store_data(&master, 2, &store_id, &items, records).await;
        // The interval-mode site of the end, set up while all is quiet.
        master.add_site(3).await;
        let interval_store = store_of(&db, 3).await.id;
        push_store_data(&master, 3, &interval_store, &items, records / 4).await;

        // What one uncut initialisation moves, for the bytes the cuts cost.
        let baseline_proxy = Proxy::start(master.process.addr).await;
        let compression = slow_link_compression();
        let gzip = [("STORESYNC_SYNC_COMPRESSION", compression)];
        let mut baseline =
            adopted_satellite(&master, &baseline_proxy.url(), 2, "streaming", &gzip).await;
        baseline.wait_initialised(Duration::from_secs(120)).await;
        let (_, whole) = baseline_proxy.bytes();
        baseline.process.kill();
        // The same over the slow link, uncut: its batches are sized to the
        // link (about 1 s each); gzip compresses each message alone, so it
        // moves more than the fast link's large batches without any cut
        // (deflate's one stream per session much less).
        let uncut_proxy = Proxy::start_throttled(
            master.process.addr,
            Throttle::link(64, Duration::from_millis(300)),
        )
        .await;
        let uncut = adopted_satellite(&master, &uncut_proxy.url(), 2, "streaming", &gzip).await;
        uncut
            .wait_initialised(Duration::from_secs(60 + records as u64 / 10))
            .await;
        let (_, uncut_slow) = uncut_proxy.bytes();
        drop(uncut);

        let link =
            Throttle::link(64, Duration::from_millis(300)).cut_every(Duration::from_secs(6), 14);
        let proxy = Proxy::start_throttled(master.process.addr, link).await;
        let mut env: Vec<(&str, &str)> = gzip.to_vec();
        env.push(("STORESYNC_SYNC_INTERVAL_SECONDS", "3"));
        let started = Instant::now();
        let satellite = adopted_satellite(&master, &proxy.url(), 2, "streaming", &env).await;
        let limit = Duration::from_secs(60 + records as u64 / 10);
        satellite.wait_initialised(limit).await;
        let took = started.elapsed();
        let (_, moved) = proxy.bytes();
        let resent = moved.saturating_sub(whole);
        eprintln!(
            "slow link ({records} store records, {compression}): initialised in {took:.1?} over {} cuts; \
             {moved} bytes down, an uncut initialisation {whole}: {resent} bytes resent ({:.1} %)",
            proxy.scheduled_cuts(),
            resent as f64 * 100.0 / whole as f64
        );
        eprintln!(
            "  of which link-sized batches without any cut: {} bytes (uncut over the slow link: {uncut_slow}); \
             the cuts: {} bytes, {} a cut",
            uncut_slow.saturating_sub(whole),
            moved.saturating_sub(uncut_slow),
            moved.saturating_sub(uncut_slow) / proxy.scheduled_cuts().max(1)
        );
        // What the cuts cost is made of: the bytes each direction's reader
        // saw, by kind, against the same link uncut.
        let (cut, plain) = (proxy.down_tally(), uncut_proxy.down_tally());
        let per_record = plain.batch_bytes as f64 / plain.batch_records.max(1) as f64;
        let overhead =
            |t: &storesync_tests::proxy::DownTally| t.http2_bytes + t.other_message_bytes;
        eprintln!(
            "  split: records resent {} bytes (messages cut short {} bytes, {} records delivered twice); \
             reconnect overhead {} bytes (HTTP/2 {} and handshake/heartbeats/acks {} over {} links, uncut {} and {} over {} links); \
             batches compressed worse {} bytes ({} over {} records, uncut {} over {})",
            cut.cut_short_bytes + (cut.records_twice as f64 * per_record) as u64,
            cut.cut_short_bytes,
            cut.records_twice,
            overhead(&cut).saturating_sub(overhead(&plain)),
            cut.http2_bytes,
            cut.other_message_bytes,
            cut.links,
            plain.http2_bytes,
            plain.other_message_bytes,
            plain.links,
            cut.batch_bytes.saturating_sub(plain.batch_bytes),
            cut.batch_bytes,
            cut.batch_records,
            plain.batch_bytes,
            plain.batch_records,
        );
        assert_eq!(
            plain.total(),
            uncut_slow,
            "the reader accounts for every byte of the uncut link"
        );
        assert!(
            proxy.scheduled_cuts() >= 1,
            "the link was cut during initialisation"
        );
        assert!(
            resent < whole / 3,
            "the cuts cost {resent} of {whole} bytes: the snapshot restarted"
        );
        assert_store_copies_equal(&db, &satellite, Duration::from_secs(120)).await;
        wait_master_data_equal(&db, &satellite, Duration::from_secs(120)).await;

        // A trickle both ways, still over the cut link.
        for round in 0..3 {
            create_items(&master, &format!("TRK{round}"), 1).await;
            goods_in(
                &mut satellite.store().await,
                &supplier,
                &items[..2],
                3.0,
                &format!("TRICKLE{round}"),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        wait_master_data_equal(&db, &satellite, Duration::from_secs(120)).await;
        assert_store_copies_equal(&db, &satellite, Duration::from_secs(120)).await;
        eprintln!("streaming over the slow link: in sync after the trickle");

        // Interval mode over the same link: a second site with a smaller
        // store initialises and then exchanges a trickle each interval.
        let started = Instant::now();
        let interval = adopted_satellite(&master, &proxy.url(), 3, "interval", &env).await;
        interval.wait_initialised(limit).await;
        eprintln!(
            "interval mode over the slow link: {} store records initialised in {:.1?}",
            records / 4,
            started.elapsed()
        );
        for round in 0..3 {
            create_items(&master, &format!("ITRK{round}"), 1).await;
            goods_in(
                &mut interval.store().await,
                &supplier,
                &items[..2],
                2.0,
                &format!("ITRICKLE{round}"),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        wait_master_data_equal(&db, &interval, Duration::from_secs(120)).await;
        assert_store_copies_equal(&db, &interval, Duration::from_secs(120)).await;
        assert_store_copies_equal(&db, &satellite, Duration::from_secs(120)).await;
        eprintln!("interval mode over the slow link: in sync after the trickle");
    }
}
