//! Issue 13, point 2: the change log is not pruned under a site whose
//! snapshot is in progress, and the reader never skips a gap.
//!
//! A satellite is frozen (SIGSTOP) in the middle of its initialisation
//! snapshot, cut into one-record batches so that it takes a while; meanwhile
//! items are changed, deleted and created on the master, another satellite
//! acknowledges them and the change log is pruned every second. Once it runs
//! again and finishes its snapshot it must hold exactly the master's master
//! data: the changes made during its snapshot come from the log after the
//! snapshot's cursor, so they must still be there.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{create_items, wait_master_data_equal, Master, Satellite};
use storesync_tests::{backends, eventually, TestDb};

const LIMIT: Duration = Duration::from_secs(60);

async fn one_i64(db: &DatabaseConnection, sql: &str) -> Option<i64> {
    db.query_one(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .unwrap()
    .and_then(|row| row.try_get_by_index::<Option<i64>>(0).unwrap())
}

fn signal(process: &storesync_tests::Process, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_mid_snapshot_holds_the_change_log_it_will_read() {
    for backend in backends("a_site_mid_snapshot_holds_the_change_log_it_will_read") {
        let master_db = TestDb::new(backend);
        let slow = [
            ("STORESYNC_CHANGELOG_PRUNE_SECONDS", "1"),
            ("STORESYNC_DOWNSTREAM_BATCH_RECORDS", "1"),
            // Long enough that neither side gives up on the frozen session.
            ("STORESYNC_HEARTBEAT_SECONDS", "10"),
        ];
        let master = Master::start(&master_db, &slow);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let caught_up = Satellite::start(&master.url(), 2, "streaming", &[]);
        caught_up.wait_initialised(LIMIT).await;
        let items = create_items(&master, "HOLD", 400).await;
        wait_master_data_equal(&db, &caught_up, LIMIT).await;
        let head_before = one_i64(&db, "SELECT MAX(seq) FROM change_log")
            .await
            .unwrap();

        // Site 3 starts its snapshot of 400+ one-record batches; freeze it.
        let mut slow_site = Satellite::start(
            &master.url(),
            3,
            "streaming",
            &[("STORESYNC_HEARTBEAT_SECONDS", "10")],
        );
        eventually(LIMIT, "site 3's snapshot to start", || async {
            (one_i64(
                &db,
                "SELECT init_records_done FROM site_status WHERE sync_id = 3 AND initialising",
            )
            .await
            .is_some())
            .then_some(())
        })
        .await;
        signal(&slow_site.process, "-STOP");
        let sat_db = slow_site.db.connect().await;
        let initialised = one_i64(
            &sat_db,
            "SELECT CAST(initialised AS BIGINT) FROM sync_state",
        )
        .await
        .unwrap();
        assert_eq!(
            initialised, 0,
            "site 3 must be frozen mid-snapshot for this test to mean anything"
        );
        drop(sat_db);

        // Changes while it is frozen: renamed, deleted, created.
        let mut client = master.master_data().await;
        let mut renamed = items[0].clone();
        renamed.name = "Renamed while site 3 was initialising".into();
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
        create_items(&master, "LATE", 2).await;
        wait_master_data_equal(&db, &caught_up, LIMIT).await;
        // The prune has run since site 2 acknowledged everything: what came
        // before site 3's snapshot is gone.
        eventually(LIMIT, "the change log to be pruned", || async {
            let left = one_i64(
                &db,
                &format!("SELECT COUNT(*) FROM change_log WHERE seq < {head_before}"),
            )
            .await
            .unwrap_or(0);
            (left == 0).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;

        signal(&slow_site.process, "-CONT");
        slow_site.wait_initialised(LIMIT).await;
        wait_master_data_equal(&db, &slow_site, LIMIT).await;
        // And it keeps following the log afterwards.
        create_items(&master, "AFTER", 1).await;
        wait_master_data_equal(&db, &slow_site, LIMIT).await;
        wait_master_data_equal(&db, &caught_up, LIMIT).await;
        slow_site.process.kill();
    }
}

/// A satellite whose cursor the change log no longer holds (pruned while it
/// was away, by an older master or by hand) is re-synchronised for master
/// data, keeping its store data, instead of being refused or left skipping.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_behind_the_retained_log_is_resynchronised_not_refused() {
    for backend in backends("a_site_behind_the_retained_log_is_resynchronised_not_refused") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        let items = create_items(&master, "AWAY", 3).await;
        let (supplier, _) = storesync_tests::cluster::create_trading_partners(&master, "P").await;
        let mut away = Satellite::start(&master.url(), 2, "streaming", &[]);
        away.wait_initialised(LIMIT).await;
        let mut store = away.store().await;
        storesync_tests::cluster::goods_in(&mut store, &supplier, &items[..1], 3.0, "kept").await;
        let before = storesync_tests::cluster::assert_store_copies_equal(&db, &away, LIMIT).await;
        away.process.terminate(Duration::from_secs(10));

        // While it is away: changes, and the log loses all but its last entry.
        let mut client = master.master_data().await;
        client
            .delete_item(pb::DeleteItemRequest {
                id: items[2].id.clone(),
            })
            .await
            .unwrap();
        create_items(&master, "WHILE", 2).await;
        let head = one_i64(&db, "SELECT MAX(seq) FROM change_log")
            .await
            .unwrap();
        storesync_tests::master::execute(
            &db,
            &format!("DELETE FROM change_log WHERE seq < {head}"),
        )
        .await;

        away.start_again();
        wait_master_data_equal(&db, &away, LIMIT).await;
        let after = storesync_tests::cluster::assert_store_copies_equal(&db, &away, LIMIT).await;
        assert_eq!(after, before, "its store data is kept");
        let status = away.status().await;
        assert!(
            status.last_error.is_empty(),
            "no refusal: {}",
            status.last_error
        );
        away.process.kill();
    }
}
