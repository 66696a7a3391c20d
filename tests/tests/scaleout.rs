//! Several master replicas on one PostgreSQL (the real binaries): changes made
//! through either reach every satellite, a killed replica's satellites fail
//! over with nothing lost, and one Sync ID never has two live sessions.
//! PostgreSQL only: without TEST_DATABASE_URL these tests say SKIPPED.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in,
    wait_master_data_equal, Master, Satellite, SYNC_PASSWORD, SYNC_USER,
};
use storesync_tests::raw::{hello, open, stock_line, RawSession};
use storesync_tests::{backends, Backend, TestDb};

const LIMIT: Duration = Duration::from_secs(60);

fn postgres_only(test: &str) -> bool {
    let on = backends(test).contains(&Backend::Postgres);
    if !on {
        eprintln!("*** SKIPPED `{test}`: several master replicas need PostgreSQL (set TEST_DATABASE_URL) ***");
    }
    on
}

/// Two replicas, satellites spread over both: items changed through either
/// reach all satellites; each store's copy on the master is complete; both
/// replicas report the same sync status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_serve_one_network() {
    if !postgres_only("two_replicas_serve_one_network") {
        return;
    }
    let db = TestDb::new(Backend::Postgres);
    let m1 = Master::start(&db, &[]);
    let m2 = Master::start(&db, &[]);
    let conn = db.connect().await;
    for sync_id in [2, 3, 4] {
        m1.add_site(sync_id).await;
    }
    let early = create_items(&m2, "EARLY", 3).await;
    let (supplier, _) = create_trading_partners(&m1, "R").await;
    let both = format!("{},{}", m1.url(), m2.url());
    let satellites = [
        Satellite::start(&m1.url(), 2, "streaming", &[]),
        Satellite::start(&m2.url(), 3, "streaming", &[]),
        Satellite::start(&both, 4, "streaming", &[]),
    ];
    for satellite in &satellites {
        satellite.wait_initialised(LIMIT).await;
    }
    // Written through replica 2, read by a satellite of replica 1, and the other way.
    let started = std::time::Instant::now();
    let via_m2 = create_items(&m2, "VIAB", 5).await;
    wait_master_data_equal(&conn, &satellites[0], LIMIT).await;
    eprintln!(
        "a change through replica 2 reached a satellite of replica 1 in {:?}",
        started.elapsed()
    );
    let via_m1 = create_items(&m1, "VIAA", 5).await;
    let mut renamed = early[0].clone();
    renamed.name = "Renamed through replica 2".into();
    m2.master_data()
        .await
        .upsert_item(pb::UpsertItemRequest {
            item: Some(renamed),
        })
        .await
        .unwrap();
    for satellite in &satellites {
        wait_master_data_equal(&conn, satellite, LIMIT).await;
    }
    for (n, satellite) in satellites.iter().enumerate() {
        goods_in(
            &mut satellite.store().await,
            &supplier,
            &[via_m1[n].clone(), via_m2[n].clone()],
            3.0,
            "RX",
        )
        .await;
    }
    for satellite in &satellites {
        assert_store_copies_equal(&conn, satellite, LIMIT).await;
    }
    let view = |sites: Vec<pb::SiteSyncStatus>| {
        sites
            .into_iter()
            .map(|s| {
                (
                    s.sync_id,
                    s.connected,
                    s.upstream_acked_seq,
                    s.downstream_cursor,
                )
            })
            .collect::<Vec<_>>()
    };
    let from_m1 = view(
        m1.reports()
            .await
            .sync_status(pb::SyncStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .sites,
    );
    let from_m2 = view(
        m2.reports()
            .await
            .sync_status(pb::SyncStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .sites,
    );
    assert_eq!(from_m1, from_m2, "every replica gives the same sync status");
    assert!(
        from_m1
            .iter()
            .all(|(_, connected, acked, _)| *connected && *acked > 0),
        "{from_m1:?}"
    );
}

/// `kill -9` of a replica while its satellites push a backlog: they fail over
/// to the other replica and the master's copies are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn satellites_fail_over_when_a_replica_is_killed() {
    if !postgres_only("satellites_fail_over_when_a_replica_is_killed") {
        return;
    }
    let db = TestDb::new(Backend::Postgres);
    let mut m1 = Master::start(&db, &[]);
    let m2 = Master::start(&db, &[]);
    let conn = db.connect().await;
    m1.add_site(2).await;
    m1.add_site(3).await;
    let items = create_items(&m1, "FO", 10).await;
    let (supplier, _) = create_trading_partners(&m1, "F").await;
    let urls = format!("{},{}", m1.url(), m2.url());
    let small = [("STORESYNC_UPSTREAM_BATCH_RECORDS", "30")];
    let satellites = [
        Satellite::start(&urls, 2, "streaming", &small),
        Satellite::start(&urls, 3, "streaming", &small),
    ];
    for satellite in &satellites {
        satellite.wait_initialised(LIMIT).await;
    }
    let mut writers = Vec::new();
    for satellite in &satellites {
        let mut store = satellite.store().await;
        let (supplier, items) = (supplier.clone(), items.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..120 {
                let chosen: Vec<pb::Item> = items
                    .iter()
                    .cycle()
                    .skip(n % items.len())
                    .take(4)
                    .cloned()
                    .collect();
                goods_in(&mut store, &supplier, &chosen, 2.0, &format!("FO{n}")).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    m1.process.kill();
    eprintln!("killed replica 1 during the backlog");
    for writer in writers {
        writer.await.unwrap();
    }
    for satellite in &satellites {
        assert_store_copies_equal(&conn, satellite, LIMIT).await;
    }
}

/// Reads until an ack for `seq` (Ok) or the end of the stream (Err with its status).
async fn until_ack(session: &mut RawSession, seq: u64) -> Result<(), tonic::Status> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match session.inbound.message().await {
                Ok(Some(pb::MasterMessage {
                    message: Some(pb::master_message::Message::UpstreamAck(ack)),
                })) if ack.acked_seq >= seq => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(tonic::Status::cancelled("stream ended")),
                Err(status) => return Err(status),
            }
        }
    })
    .await
    .expect("an answer in time")
}

/// The same Sync ID connecting to both replicas at once: only the newer session
/// lives, the older is told so, and nothing is applied twice or by the loser.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_sync_id_has_one_live_session_across_replicas() {
    if !postgres_only("one_sync_id_has_one_live_session_across_replicas") {
        return;
    }
    let db = TestDb::new(Backend::Postgres);
    let m1 = Master::start(&db, &[]);
    let m2 = Master::start(&db, &[]);
    let conn = db.connect().await;
    let site = m1.add_site(2).await;
    let store_id = site.store.unwrap().id;
    let items = create_items(&m1, "ONE", 1).await;

    let mut older = open(&m1.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
        .await
        .unwrap();
    older
        .push(
            1,
            vec![
                stock_line(&store_id, &items[0].id),
                stock_line(&store_id, &items[0].id),
            ],
        )
        .await;
    until_ack(&mut older, 2).await.unwrap();

    // The same database, which has written two entries by now.
    let same_database = pb::Hello {
        upstream_last_seq: 2,
        ..hello(2)
    };
    let mut newer = open(&m2.url(), "2", SYNC_USER, SYNC_PASSWORD, same_database)
        .await
        .unwrap();
    assert_eq!(newer.welcome.upstream_acked_seq, 2);
    // The older session is ended by the other replica's claim…
    let ended = until_ack(&mut older, u64::MAX).await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Aborted, "{ended:?}");
    // …and the newer one carries on from the acknowledged sequence.
    newer
        .push(3, vec![stock_line(&store_id, &items[0].id)])
        .await;
    until_ack(&mut newer, 3).await.unwrap();
    // A resend of what the older session already delivered is skipped, not doubled.
    newer
        .push(
            1,
            vec![
                stock_line(&store_id, &items[0].id),
                stock_line(&store_id, &items[0].id),
                stock_line(&store_id, &items[0].id),
            ],
        )
        .await;
    until_ack(&mut newer, 3).await.unwrap();
    let lines = storesync_tests::cluster::store_data(&conn, &store_id)
        .await
        .stock_lines;
    assert_eq!(
        lines.len(),
        3,
        "each upstream sequence applied exactly once"
    );
}
