//! A site's whole life (issue 14, point 2): disabled and re-enabled, its own
//! or the shared sync password changed, removed while it uploads. Each ends
//! in the state the README describes, visible in the master's `SyncStatus`
//! (`site_status`) and in the satellite's status, with nothing lost.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, Master, Satellite,
    SYNC_PASSWORD, SYNC_USER,
};
use storesync_tests::proxy::{Proxy, Throttle};
use storesync_tests::raw::{hello, open, stock_line};
use storesync_tests::{backends, eventually, TestDb};

const LIMIT: Duration = Duration::from_secs(60);
/// How soon an operator's change must end a live session: well under the
/// time a satellite would take to notice by itself.
const PROMPTLY: Duration = Duration::from_secs(10);

/// `(connected, last_error, session_id)` of the site in the master's status.
async fn master_status(db: &DatabaseConnection, sync_id: u32) -> (bool, String, Option<String>) {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT connected, last_error, session_id FROM site_status WHERE sync_id = {sync_id}"
            ),
        ))
        .await
        .unwrap();
    row.map(|r| {
        (
            r.try_get_by_index::<bool>(0).unwrap(),
            r.try_get_by_index::<String>(1).unwrap(),
            r.try_get_by_index::<Option<String>>(2).unwrap(),
        )
    })
    .unwrap_or((false, String::new(), None))
}

/// An admin request with a fresh unlock token.
async fn unlocked<T>(master: &Master, message: T) -> tonic::Request<T> {
    let token = master.unlock().await;
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-unlock-token", token.parse().unwrap());
    request
}

/// UpdateSite as an operator would (empty fields keep their value).
async fn update_site(master: &Master, site: pb::Site) {
    let request = unlocked(
        master,
        pb::UpdateSiteRequest {
            site: Some(site),
            clear_own_credentials: false,
        },
    )
    .await;
    master.admin().await.update_site(request).await.unwrap();
}

fn enabled(sync_id: u32, enabled: bool) -> pb::Site {
    pb::Site {
        sync_id,
        enabled,
        ..Default::default()
    }
}

/// Waits until the satellite's last error contains `needle`.
async fn satellite_error(satellite: &Satellite, needle: &str, limit: Duration) -> String {
    eventually(
        limit,
        &format!("satellite {} to report {needle:?}", satellite.sync_id),
        || async {
            let error = satellite.status().await.last_error;
            error.contains(needle).then_some(error)
        },
    )
    .await
}

/// Waits until the master shows the site disconnected with `needle` in its last error.
async fn master_shows(db: &DatabaseConnection, sync_id: u32, needle: &str) -> String {
    eventually(
        LIMIT,
        &format!("site {sync_id} to show {needle:?}"),
        || async {
            let (connected, error, _) = master_status(db, sync_id).await;
            (!connected && error.contains(needle)).then_some(error)
        },
    )
    .await
}

/// Disabling a live site ends its session at once, with PERMISSION_DENIED
/// "disabled" on both sides; what the store wrote meanwhile arrives once it
/// is enabled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabling_a_site_ends_its_live_session_and_enabling_lets_it_back_in() {
    for backend in backends("disabling_a_site_ends_its_live_session_and_enabling_lets_it_back_in") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        let items = create_items(&master, "DIS", 2).await;
        let (supplier, _) = create_trading_partners(&master, "DS").await;
        let satellite = Satellite::start(&master.url(), 2, "streaming", &[]);
        satellite.wait_initialised(LIMIT).await;
        goods_in(
            &mut satellite.store().await,
            &supplier,
            &items,
            5.0,
            "before",
        )
        .await;
        satellite.wait_drained(LIMIT).await;
        assert!(master_status(&db, 2).await.0, "connected before");

        update_site(&master, enabled(2, false)).await;
        let error = satellite_error(&satellite, "disabled", PROMPTLY).await;
        assert!(error.contains("Sync ID 2"), "{error}");
        let shown = master_shows(&db, 2, "disabled").await;
        assert!(shown.contains("Sync ID 2"), "{shown}");
        // It stays out while disabled, and keeps what the store writes.
        goods_in(
            &mut satellite.store().await,
            &supplier,
            &items,
            7.0,
            "while",
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!master_status(&db, 2).await.0, "a disabled site stays out");
        assert!(satellite.status().await.upstream_backlog > 0);

        update_site(&master, enabled(2, true)).await;
        satellite.wait_drained(LIMIT).await;
        let copy = assert_store_copies_equal(&db, &satellite, LIMIT).await;
        assert_eq!(copy.invoices.len(), 2, "nothing lost");
        assert!(master_status(&db, 2).await.0, "connected again");
    }
}

/// Changing the shared sync password ends the sessions of the sites that
/// log in with it, not of a site with its own; changing that site's own
/// password ends only its session. Given the new password, each continues
/// with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_sync_password_ends_only_the_sessions_that_used_it() {
    for backend in backends("a_changed_sync_password_ends_only_the_sessions_that_used_it") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "PWD", 1).await;
        let (supplier, _) = create_trading_partners(&master, "PW").await;
        // Site 3 has its own credentials.
        update_site(
            &master,
            pb::Site {
                sync_id: 3,
                enabled: true,
                sync_user_name: "site3".into(),
                sync_password: "site3-password-1".into(),
                ..Default::default()
            },
        )
        .await;
        let mut shared = Satellite::start(&master.url(), 2, "streaming", &[]);
        let own_env = [
            ("STORESYNC_SYNC_USER", "site3"),
            ("STORESYNC_SYNC_PASSWORD", "site3-password-1"),
        ];
        let mut own = Satellite::start(&master.url(), 3, "streaming", &own_env);
        shared.wait_initialised(LIMIT).await;
        own.wait_initialised(LIMIT).await;
        let own_session = master_status(&db, 3).await.2;
        assert!(own_session.is_some());

        // The shared password changes: site 2 is out, site 3 stays.
        let request = unlocked(
            &master,
            pb::UpdatePreferencesRequest {
                preferences: Some(pb::Preferences {
                    sync_password: "shared-password-2".into(),
                    ..Default::default()
                }),
            },
        )
        .await;
        master
            .admin()
            .await
            .update_preferences(request)
            .await
            .unwrap();
        satellite_error(&shared, "credentials", PROMPTLY).await;
        master_shows(&db, 2, "credentials").await;
        goods_in(&mut shared.store().await, &supplier, &items, 3.0, "shared").await;
        let (connected, _, session) = master_status(&db, 3).await;
        assert!(
            connected && session == own_session,
            "a site with its own password keeps its session"
        );

        // Given the new password, site 2 continues with nothing lost.
        shared.process.kill();
        shared = Satellite::start_on(
            shared.db,
            &master.url(),
            2,
            "streaming",
            &[("STORESYNC_SYNC_PASSWORD", "shared-password-2")],
        );
        shared.wait_drained(LIMIT).await;
        assert_eq!(
            assert_store_copies_equal(&db, &shared, LIMIT)
                .await
                .invoices
                .len(),
            1
        );
        let shared_session = master_status(&db, 2).await.2;

        // Site 3's own password changes: only site 3 is out.
        update_site(
            &master,
            pb::Site {
                sync_id: 3,
                enabled: true,
                sync_password: "site3-password-2".into(),
                ..Default::default()
            },
        )
        .await;
        satellite_error(&own, "credentials", PROMPTLY).await;
        master_shows(&db, 3, "credentials").await;
        goods_in(&mut own.store().await, &supplier, &items, 4.0, "own").await;
        let (connected, _, session) = master_status(&db, 2).await;
        assert!(connected && session == shared_session, "site 2 unaffected");
        own.process.kill();
        own = Satellite::start_on(
            own.db,
            &master.url(),
            3,
            "streaming",
            &[
                ("STORESYNC_SYNC_USER", "site3"),
                ("STORESYNC_SYNC_PASSWORD", "site3-password-2"),
            ],
        );
        own.wait_drained(LIMIT).await;
        assert_eq!(
            assert_store_copies_equal(&db, &own, LIMIT)
                .await
                .invoices
                .len(),
            1
        );
    }
}

/// Records in the racing upstream batch: enough for its apply to take a while.
const BATCH: usize = 3000;

/// Rows of `store_id`'s stock lines on the master.
async fn stock_lines_of(db: &DatabaseConnection, store_id: &str) -> i64 {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) FROM stock_line WHERE store_id = '{store_id}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// RemoveSite races a large upstream batch of the site, many times: either
/// the removal is refused (the store holds the batch's data) or the batch is
/// refused (the site is gone); never a removed site whose store has data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_site_while_it_uploads_never_leaves_data_of_a_removed_site() {
    for backend in backends("removing_a_site_while_it_uploads_never_leaves_data_of_a_removed_site")
    {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        let items = create_items(&master, "RMV", 1).await;
        let (mut removed, mut refused) = (0, 0);
        for attempt in 0..12u32 {
            let sync_id = 2 + attempt;
            let site = master.add_site(sync_id).await;
            let store_id = site.store.unwrap().id;
            let mut session = open(
                &master.url(),
                &sync_id.to_string(),
                SYNC_USER,
                SYNC_PASSWORD,
                hello(sync_id),
            )
            .await
            .unwrap();
            let records: Vec<_> = (0..BATCH)
                .map(|_| stock_line(&store_id, &items[0].id))
                .collect();
            // Everything ready before the batch goes, so that the removal
            // reaches the master while the batch is being applied.
            let request = unlocked(&master, pb::RemoveSiteRequest { sync_id }).await;
            let mut admin = master.admin().await;
            session.push(1, records).await;
            tokio::time::sleep(Duration::from_millis(u64::from(attempt % 4) * 10)).await;
            let removal = admin.remove_site(request).await;
            // Let the session finish whatever it was doing.
            let _ = tokio::time::timeout(Duration::from_secs(20), async {
                while let Ok(Some(message)) = session.inbound.message().await {
                    if matches!(
                        message.message,
                        Some(pb::master_message::Message::UpstreamAck(_))
                            | Some(pb::master_message::Message::Error(_))
                    ) {
                        break;
                    }
                }
            })
            .await;
            match removal {
                Ok(_) => {
                    removed += 1;
                    assert_eq!(
                        stock_lines_of(&db, &store_id).await,
                        0,
                        "attempt {attempt}: site {sync_id} was removed but its store holds data"
                    );
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
                    assert!(
                        status.message().contains(&format!("{BATCH} stock line(s)")),
                        "{status:?}"
                    );
                    refused += 1;
                }
            }
        }
        eprintln!("{backend:?}: {removed} removed, {refused} refused");
        assert_eq!(removed + refused, 12);
    }
}

/// Interval mode closing right after initialisation: the satellite waits
/// for its last frames (the ack completing initialisation) to reach the
/// master, which then holds the site initialised at the satellite's cursor,
/// with nothing to resend, and no next session needed for that. Over a slow
/// link (64 kbit/s, 300 ms), where those frames are still on their way when
/// the satellite says Goodbye: a satellite that closed right after queueing
/// it left the master holding the site uninitialised.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interval_close_right_after_initialisation_leaves_the_site_initialised() {
    for backend in
        backends("an_interval_close_right_after_initialisation_leaves_the_site_initialised")
    {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        create_items(&master, "IVL", 50).await;
        let link = Proxy::start_throttled(
            master.process.addr,
            Throttle::link(64, Duration::from_millis(300)),
        )
        .await;
        // One session only: the next interval is far away.
        let satellite = Satellite::start(
            &link.url(),
            2,
            "interval",
            &[("STORESYNC_SYNC_INTERVAL_SECONDS", "600")],
        );
        satellite.wait_initialised(LIMIT).await;
        let status = eventually(
            LIMIT,
            "the satellite to wait for its next interval",
            || async {
                let status = satellite.status().await;
                (status.state == pb::ConnectionState::Waiting as i32).then_some(status)
            },
        )
        .await;
        let row = db
            .query_one(Statement::from_string(
                db.get_database_backend(),
                "SELECT initialised, downstream_cursor FROM site WHERE sync_id = 2",
            ))
            .await
            .unwrap()
            .unwrap();
        let initialised: bool = row.try_get_by_index(0).unwrap();
        let cursor: i64 = row.try_get_by_index(1).unwrap();
        assert!(initialised, "the master holds the site initialised");
        assert_eq!(
            u64::try_from(cursor).unwrap(),
            status.downstream_cursor,
            "nothing to resend"
        );
    }
}

/// A Sync ID removed and added again hosts a new store: the satellite that
/// kept its database (of the old store) is refused plainly, on both sides,
/// before it can claim the Sync ID; a new database initialises as the new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_added_again_refuses_the_old_stores_database_plainly() {
    for backend in backends("a_site_added_again_refuses_the_old_stores_database_plainly") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        let first = master.add_site(2).await.store.unwrap();
        create_items(&master, "READD", 2).await;
        let mut satellite = Satellite::start(&master.url(), 2, "streaming", &[]);
        satellite.wait_initialised(LIMIT).await;
        let stopped = satellite.process.terminate(Duration::from_secs(30));
        assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");

        let request = unlocked(&master, pb::RemoveSiteRequest { sync_id: 2 }).await;
        master.admin().await.remove_site(request).await.unwrap();
        let second = master.add_site(2).await.store.unwrap();
        assert_ne!(first.id, second.id, "a site added again hosts a new store");

        // The old store's database: refused, saying what happened and what to do.
        satellite.start_again();
        let said = satellite_error(&satellite, "added again", LIMIT).await;
        assert!(
            said.contains(&first.id)
                && said.contains(&second.id)
                && said.contains("new, empty database"),
            "{said}"
        );
        let shown = master_shows(&db, 2, "added again").await;
        assert!(shown.contains(&first.id), "{shown}");
        assert!(!satellite.status().await.last_error.is_empty());

        // A new database for the site initialises as the new store, no adoption needed.
        satellite.process.kill();
        let replacement =
            satellite.start_replacement(TestDb::new(storesync_tests::Backend::Sqlite));
        let status = replacement.wait_initialised(LIMIT).await;
        assert_eq!(status.store.map(|s| s.id), Some(second.id.clone()));
    }
}

/// Two master replicas on one PostgreSQL: disabling a site, or changing its
/// sync password, through replica A ends its live session held by replica B
/// (the change reaches B by `NOTIFY`, or at B's next re-check), with the
/// reason on both sides; enabled again, or given the new password, it
/// continues through B with nothing lost. PostgreSQL only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_replica_ends_the_session_another_replica_holds() {
    let test = "a_change_through_one_replica_ends_the_session_another_replica_holds";
    if !backends(test).contains(&storesync_tests::Backend::Postgres) {
        eprintln!(
            "*** SKIPPED `{test}`: two master replicas need PostgreSQL (set TEST_DATABASE_URL) ***"
        );
        return;
    }
    let master_db = TestDb::new(storesync_tests::Backend::Postgres);
    let replica_a = Master::start(&master_db, &[]);
    let replica_b = Master::start(&master_db, &[]);
    let db = master_db.connect().await;
    replica_a.add_site(2).await;
    let items = create_items(&replica_a, "TWO", 2).await;
    let (supplier, _) = create_trading_partners(&replica_a, "TW").await;
    // The satellite knows only replica B.
    let mut satellite = Satellite::start(&replica_b.url(), 2, "streaming", &[]);
    satellite.wait_initialised(LIMIT).await;
    assert!(master_status(&db, 2).await.0, "connected through replica B");

    // Disabled through A: B's session ends.
    update_site(&replica_a, enabled(2, false)).await;
    let error = satellite_error(&satellite, "disabled", PROMPTLY).await;
    assert!(error.contains("Sync ID 2"), "{error}");
    master_shows(&db, 2, "disabled").await;
    goods_in(
        &mut satellite.store().await,
        &supplier,
        &items,
        5.0,
        "while disabled",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!master_status(&db, 2).await.0, "a disabled site stays out");

    // Enabled through A: it is back through B and sends what it kept.
    update_site(&replica_a, enabled(2, true)).await;
    satellite.wait_drained(LIMIT).await;
    let (connected, _, first_session) = master_status(&db, 2).await;
    assert!(connected, "connected again through replica B");

    // Its own password set through A: B's session (shared credentials) ends.
    update_site(
        &replica_a,
        pb::Site {
            sync_id: 2,
            enabled: true,
            sync_user_name: "site2".into(),
            sync_password: "site2-password-1".into(),
            ..Default::default()
        },
    )
    .await;
    satellite_error(&satellite, "credentials", PROMPTLY).await;
    master_shows(&db, 2, "credentials").await;
    goods_in(
        &mut satellite.store().await,
        &supplier,
        &items,
        2.0,
        "after the password changed",
    )
    .await;
    satellite.process.kill();
    satellite = Satellite::start_on(
        satellite.db,
        &replica_b.url(),
        2,
        "streaming",
        &[
            ("STORESYNC_SYNC_USER", "site2"),
            ("STORESYNC_SYNC_PASSWORD", "site2-password-1"),
        ],
    );
    satellite.wait_drained(LIMIT).await;
    let (connected, _, session) = master_status(&db, 2).await;
    assert!(
        connected && session.is_some() && session != first_session,
        "a new session with the new password"
    );
    let copy = assert_store_copies_equal(&db, &satellite, LIMIT).await;
    assert_eq!(copy.invoices.len(), 2, "nothing lost");
    satellite.process.kill();
}
