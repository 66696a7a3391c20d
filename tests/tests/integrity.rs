//! The integrity check end to end, with the real binaries: faults made
//! behind the product's back (a row changed, deleted and inserted directly in
//! a satellite's SQLite file, an item changed directly in the master's
//! database, a stock total corrupted) are each named by one check (table, id,
//! which side); report-only changes nothing; the repair restores equality
//! (the harness's own record-by-record comparison agrees) and a second check
//! finds nothing to repair, while the corrupted stock line stays reported by
//! the stock ledger check (it is never silently "fixed").
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, goods_out,
    master_data, store_data, store_of, wait_master_data_equal, Master, Satellite, SYNC_PASSWORD,
    SYNC_USER,
};
use storesync_tests::frozen::v1 as old;
use storesync_tests::proxy::Proxy;
use storesync_tests::verify::{named, settled_check};
use storesync_tests::{backends, cli_output, eventually, Backend, TestDb};

const WAIT: Duration = Duration::from_secs(60);

/// Scheduled checks off: only the test's checks run.
const NO_SCHEDULE: (&str, &str) = ("STORESYNC_VERIFY_INTERVAL_MINUTES", "0");

async fn execute(db: &DatabaseConnection, sql: &str) {
    db.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Everything both sides hold for the site, to prove nothing changed.
async fn both_sides(
    master_db: &DatabaseConnection,
    satellite: &Satellite,
    store_id: &str,
) -> String {
    let satellite_db = satellite.db.connect().await;
    let picture = format!(
        "{:?}\n{:?}\n{:?}\n{:?}",
        store_data(master_db, store_id).await,
        master_data(master_db).await,
        store_data(&satellite_db, store_id).await,
        master_data(&satellite_db).await,
    );
    let _ = satellite_db.close().await;
    picture
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_check_names_each_fault_and_the_repair_restores_equality() {
    for backend in backends("one_check_names_each_fault_and_the_repair_restores_equality") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[NO_SCHEDULE]);
        master.add_site(2).await;
        let items = create_items(&master, "VER", 3).await;
        let (supplier, customer) = create_trading_partners(&master, "VER").await;
        let satellite = Satellite::start(&master.url(), 2, "streaming", &[]);
        satellite.wait_initialised(WAIT).await;
        let db = master_db.connect().await;
        wait_master_data_equal(&db, &satellite, WAIT).await;
        let mut store = satellite.store().await;
        let received = goods_in(&mut store, &supplier, &items, 10.0, "VER-IN").await;
        let sold = goods_out(&mut store, &customer, &received.stock_lines[0], 2.0)
            .await
            .unwrap();
        assert_store_copies_equal(&db, &satellite, WAIT).await;
        let store_id = store_of(&db, 2).await.id;

        // A site that matches: nothing differs, every row is compared.
        let clean = settled_check(&master, 2, false, WAIT).await;
        assert_eq!(clean.outcome(), pb::VerifyOutcome::Equal, "{clean:?}");
        assert!(clean.differences.is_empty());
        // 3 + the master's own items, names, the store, 3 stock lines, 2 invoices, 4 lines.
        assert!(clean.rows_compared >= 3 + 2 + 1 + 3 + 2 + 4, "{clean:?}");
        assert!(
            clean.site_ledger.is_empty() && clean.master_ledger.is_empty(),
            "{clean:#?}"
        );

        // The faults, behind the product's back.
        let invoice = received.invoice.clone().unwrap();
        let deleted_line = sold.invoice.clone().unwrap().lines[0].id.clone();
        let corrupted = received.stock_lines[1].id.clone();
        let stray_item = "5e1f0000-0000-4000-8000-0000000000a1";
        let stray_stock = "5e1f0000-0000-4000-8000-0000000000b2";
        let satellite_db = satellite.db.connect().await;
        execute(
            &satellite_db,
            &format!(
                "UPDATE invoice SET reference = 'edited by hand' WHERE id = '{}'",
                invoice.id
            ),
        )
        .await;
        execute(
            &satellite_db,
            &format!("DELETE FROM invoice_line WHERE id = '{deleted_line}'"),
        )
        .await;
        execute(
            &satellite_db,
            &format!(
                "INSERT INTO item (id, code, name, unit, default_pack_size, active, updated_at_ms) \
                 VALUES ('{stray_item}', 'STRAY1', 'Stray item', 'tab', 10, 1, 1)"
            ),
        )
        .await;
        execute(
            &satellite_db,
            &format!(
                "INSERT INTO stock_line (id, store_id, item_id, batch, expiry_date, pack_size, \
                 available_number_of_packs, total_number_of_packs, cost_price_per_pack, \
                 sell_price_per_pack, updated_at_ms) \
                 VALUES ('{stray_stock}', '{store_id}', '{}', 'FOUND', '', 1, 0, 0, 0, 0, 1)",
                items[2].id
            ),
        )
        .await;
        execute(
            &satellite_db,
            &format!("UPDATE stock_line SET total_number_of_packs = 999 WHERE id = '{corrupted}'"),
        )
        .await;
        let _ = satellite_db.close().await;
        execute(
            &db,
            &format!(
                "UPDATE item SET name = 'Renamed on the master' WHERE id = '{}'",
                items[0].id
            ),
        )
        .await;

        let expected: BTreeSet<_> = [
            (
                pb::Table::Invoice,
                invoice.id.clone(),
                pb::DifferenceSide::BothDiffer,
            ),
            (
                pb::Table::InvoiceLine,
                deleted_line.clone(),
                pb::DifferenceSide::MasterOnly,
            ),
            (
                pb::Table::Item,
                stray_item.to_owned(),
                pb::DifferenceSide::SiteOnly,
            ),
            (
                pb::Table::StockLine,
                stray_stock.to_owned(),
                pb::DifferenceSide::SiteOnly,
            ),
            (
                pb::Table::StockLine,
                corrupted.clone(),
                pb::DifferenceSide::BothDiffer,
            ),
            (
                pb::Table::Item,
                items[0].id.clone(),
                pb::DifferenceSide::BothDiffer,
            ),
        ]
        .into_iter()
        .collect();

        // Report-only: every fault named, nothing changed on either side.
        let before = both_sides(&db, &satellite, &store_id).await;
        let report = settled_check(&master, 2, true, WAIT).await;
        assert_eq!(report.outcome(), pb::VerifyOutcome::Different);
        assert_eq!(named(&report), expected, "{report:#?}");
        assert!(report.differences.iter().all(|d| d.repair.is_empty()));
        assert_eq!(report.rows_repaired, 0);
        assert!(
            report
                .site_ledger
                .iter()
                .any(|p| p.stock_line_id == corrupted
                    && p.total_packs == 999.0
                    && p.expected_total_packs == 10.0),
            "the site's ledger names the corrupted total: {:?}",
            report.site_ledger
        );
        assert!(
            report.master_ledger.is_empty(),
            "{:?}",
            report.master_ledger
        );
        assert_eq!(both_sides(&db, &satellite, &store_id).await, before);

        // The CLI names the same rows (JSON).
        let output = cli_output(
            "master-service",
            "STORESYNC_MASTER_BIN",
            &[
                "verify",
                "--site",
                "2",
                "--report-only",
                "--format",
                "json",
                "--address",
                &master.url(),
            ],
            &[],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let printed_ids: BTreeSet<String> = printed["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            printed_ids,
            expected.iter().map(|(_, id, _)| id.clone()).collect()
        );
        assert_eq!(printed["sites"][0]["outcome"], "DIFFERENT");

        // Repair: the same rows, each with what was done by its owner's rule.
        let repaired = settled_check(&master, 2, false, WAIT).await;
        assert_eq!(named(&repaired), expected, "{repaired:#?}");
        let action = |id: &str| {
            repaired
                .differences
                .iter()
                .find(|d| d.id == id)
                .map(|d| d.repair.clone())
                .unwrap()
        };
        assert_eq!(action(&invoice.id), "re-sent by the site");
        assert_eq!(action(&deleted_line), "sent to the site");
        assert_eq!(action(stray_item), "deleted at the site");
        assert_eq!(action(stray_stock), "re-sent by the site");
        assert_eq!(action(&corrupted), "re-sent by the site");
        assert_eq!(action(&items[0].id), "sent to the site");
        assert_eq!(repaired.rows_repaired, 6);

        // Equality, by the harness's own record-by-record comparison.
        let local = assert_store_copies_equal(&db, &satellite, WAIT).await;
        assert!(local.invoice_lines.iter().any(|l| l.id == deleted_line));
        assert!(local.stock_lines.iter().any(|l| l.id == stray_stock));
        assert!(local
            .invoices
            .iter()
            .any(|i| i.id == invoice.id && i.reference == "edited by hand"));
        wait_master_data_equal(&db, &satellite, WAIT).await;
        let (site_items, _) = master_data(&satellite.db.connect().await).await;
        assert!(site_items.iter().all(|i| i.id != stray_item));
        assert!(site_items
            .iter()
            .any(|i| i.id == items[0].id && i.name == "Renamed on the master"));

        // A second check finds nothing; the ledger still names the corrupted
        // stock line, now on both sides (reported, never fixed).
        let second = settled_check(&master, 2, false, WAIT).await;
        assert_eq!(second.outcome(), pb::VerifyOutcome::Equal, "{second:#?}");
        assert!(second.differences.is_empty());
        assert_eq!(second.rows_repaired, 0);
        let ledger_ids = |problems: &[pb::LedgerProblem]| -> Vec<String> {
            problems.iter().map(|p| p.stock_line_id.clone()).collect()
        };
        assert_eq!(ledger_ids(&second.site_ledger), vec![corrupted.clone()]);
        assert_eq!(ledger_ids(&second.master_ledger), vec![corrupted.clone()]);

        // Visible: the site's status, and the audit of each repaired row.
        let status = master
            .reports()
            .await
            .sync_status(pb::SyncStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .sites
            .into_iter()
            .find(|s| s.sync_id == 2)
            .unwrap();
        assert_eq!(status.last_check_outcome, "EQUAL");
        assert!(status.last_check_at_ms >= second.finished_at_ms);
        assert_eq!(status.last_check_ledger_problems, 2);
        let audit = master
            .admin()
            .await
            .list_audit(pb::ListAuditRequest { limit: 1000 })
            .await
            .unwrap()
            .into_inner()
            .entries;
        let repairs: Vec<_> = audit
            .iter()
            .filter(|e| e.action == "integrity_repair")
            .collect();
        assert_eq!(repairs.len(), 6, "{repairs:#?}");
        assert!(
            repairs
                .iter()
                .any(|e| e.detail.contains(&items[0].id)
                    && e.detail.contains("Renamed on the master"))
        );
        let _ = db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_that_cannot_be_checked_say_why() {
    for backend in backends("sites_that_cannot_be_checked_say_why") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[NO_SCHEDULE]);
        master.add_site(2).await;
        master.add_site(3).await;
        let mut admin = master.admin().await;

        // Bad Sync IDs are refused naming the field.
        let status = admin
            .verify_sites(pb::VerifySitesRequest {
                sync_ids: vec![99],
                report_only: true,
                wait_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("sync_ids[0]"),
            "{}",
            status.message()
        );
        let status = admin
            .verify_sites(pb::VerifySitesRequest {
                sync_ids: vec![2, 5],
                report_only: true,
                wait_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(
            status.message().contains("sync_ids[1]"),
            "{}",
            status.message()
        );
        let status = admin
            .verify_sites(pb::VerifySitesRequest {
                sync_ids: vec![2],
                report_only: true,
                wait_seconds: 3601,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("wait_seconds"),
            "{}",
            status.message()
        );

        // A protocol version 1 satellite is connected but cannot answer.
        let channel = tonic::transport::Endpoint::from_shared(master.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.try_send(old::SatelliteMessage {
            message: Some(old::satellite_message::Message::Hello(old::Hello {
                protocol_version: 1,
                sync_id: 2,
                agent_version: "frozen-v1".into(),
                needs_initialisation: true,
                mode: old::SyncMode::Streaming as i32,
                ..Default::default()
            })),
        })
        .unwrap();
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            storesync_shared::kit::auth::basic_header(SYNC_USER, SYNC_PASSWORD)
                .parse()
                .unwrap(),
        );
        request
            .metadata_mut()
            .insert("x-sync-id", "2".parse().unwrap());
        let mut inbound = old::sync_service_client::SyncServiceClient::new(channel)
            .sync(request)
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert!(matches!(
            first.message,
            Some(old::master_message::Message::Welcome(_))
        ));

        // The session registers just after the Welcome: ask until it has.
        let results = storesync_tests::eventually(WAIT, "the version 1 session", || {
            let mut admin = admin.clone();
            async move {
                let sites = admin
                    .verify_sites(pb::VerifySitesRequest {
                        sync_ids: Vec::new(),
                        report_only: false,
                        wait_seconds: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .sites;
                (sites[0].outcome() != pb::VerifyOutcome::Queued).then_some(sites)
            }
        })
        .await;
        let outcomes: Vec<_> = results.iter().map(|r| (r.sync_id, r.outcome())).collect();
        assert_eq!(
            outcomes,
            vec![
                (2, pb::VerifyOutcome::CannotVerifyVersion),
                (3, pb::VerifyOutcome::Queued)
            ]
        );
        assert!(
            results[1].message.contains("next session"),
            "{}",
            results[1].message
        );
        assert!(
            results[0].message.contains("cannot verify: version"),
            "{}",
            results[0].message
        );

        // The version 1 satellite was sent nothing it does not know.
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(Some(message))) = tokio::time::timeout_at(until, inbound.message()).await {
            assert!(
                message.message.is_some(),
                "a message of a kind version 1 does not know"
            );
        }
        drop(tx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_mode_site_is_checked_on_schedule_during_its_session() {
    for backend in backends("an_interval_mode_site_is_checked_on_schedule_during_its_session") {
        let master_db = TestDb::new(backend);
        // Checks every minute; the harness's sync interval is one minute too.
        let master = Master::start(&master_db, &[("STORESYNC_VERIFY_INTERVAL_MINUTES", "1")]);
        master.add_site(2).await;
        create_items(&master, "INT", 2).await;
        let satellite = Satellite::start(&master.url(), 2, "interval", &[]);
        satellite.wait_initialised(WAIT).await;
        // A session after the initialising one runs the due check before
        // the satellite says Goodbye.
        let status = storesync_tests::eventually(
            Duration::from_secs(180),
            "a scheduled check of the interval-mode site",
            || async {
                let status = master
                    .reports()
                    .await
                    .sync_status(pb::SyncStatusRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .sites
                    .into_iter()
                    .find(|s| s.sync_id == 2)
                    .unwrap();
                (status.last_check_at_ms > 0).then_some(status)
            },
        )
        .await;
        assert_eq!(
            status.last_check_outcome, "EQUAL",
            "{}",
            status.last_check_message
        );
        assert!(status.last_check_rows_compared >= 2);
    }
}

/// A site's line of `SyncStatus`.
async fn site_status(master: &Master, sync_id: u32) -> pb::SiteSyncStatus {
    master
        .reports()
        .await
        .sync_status(pb::SyncStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .sites
        .into_iter()
        .find(|s| s.sync_id == sync_id)
        .unwrap()
}

/// Changes invoice `id`'s reference in `satellite`'s SQLite file, behind
/// the product's back.
async fn edit_invoice_at_site(satellite: &Satellite, id: &str, reference: &str) {
    let local = satellite.db.connect().await;
    execute(
        &local,
        &format!("UPDATE invoice SET reference = '{reference}' WHERE id = '{id}'"),
    )
    .await;
    let _ = local.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_mode_site_checked_on_demand_is_checked_at_its_next_session() {
    for backend in
        backends("an_interval_mode_site_checked_on_demand_is_checked_at_its_next_session")
    {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[NO_SCHEDULE]);
        master.add_site(2).await;
        let items = create_items(&master, "IVL", 2).await;
        let (supplier, _) = create_trading_partners(&master, "IVL").await;
        let mut satellite = Satellite::start(
            &master.url(),
            2,
            "interval",
            &[("STORESYNC_SYNC_INTERVAL_SECONDS", "2")],
        );
        satellite.wait_initialised(WAIT).await;
        let db = master_db.connect().await;
        let received = goods_in(&mut satellite.store().await, &supplier, &items, 4.0, "IVL").await;
        let invoice = received.invoice.unwrap().id;
        assert_store_copies_equal(&db, &satellite, WAIT).await;

        // The site is away: the check is queued, and SyncStatus shows it.
        satellite.process.kill();
        edit_invoice_at_site(&satellite, &invoice, "edited while away").await;
        let queued = check_waiting_none(&master, 2, false).await;
        assert_eq!(queued.outcome(), pb::VerifyOutcome::Queued, "{queued:?}");
        assert!(
            queued.message.contains("next session"),
            "{}",
            queued.message
        );
        let status = site_status(&master, 2).await;
        assert!(status.check_queued_at_ms > 0, "{status:?}");
        assert_eq!(status.check_attempts, 0);

        // Back: its next session stays until the check has run; the
        // difference is named and repaired by the site's version.
        satellite.start_again();
        let status = eventually(
            Duration::from_secs(90),
            "the queued check to run at the site's next session",
            || async {
                let status = site_status(&master, 2).await;
                (status.check_queued_at_ms == 0 && status.last_check_at_ms >= queued.started_at_ms)
                    .then_some(status)
            },
        )
        .await;
        assert_eq!(
            (
                status.last_check_outcome.as_str(),
                status.last_check_rows_differing,
                status.last_check_rows_repaired
            ),
            ("DIFFERENT", 1, 1),
            "{}",
            status.last_check_message
        );
        let local = assert_store_copies_equal(&db, &satellite, WAIT).await;
        assert!(local
            .invoices
            .iter()
            .any(|i| i.id == invoice && i.reference == "edited while away"));

        // Asked with a wait while it syncs every 2 s: the result comes back.
        edit_invoice_at_site(&satellite, &invoice, "edited again").await;
        let report = settled_check(&master, 2, true, Duration::from_secs(120)).await;
        assert_eq!(report.outcome(), pb::VerifyOutcome::Different, "{report:?}");
        assert_eq!(
            named(&report),
            [(
                pb::Table::Invoice,
                invoice.clone(),
                pb::DifferenceSide::BothDiffer
            )]
            .into_iter()
            .collect()
        );
        let repaired = settled_check(&master, 2, false, Duration::from_secs(120)).await;
        assert_eq!(repaired.rows_repaired, 1, "{repaired:?}");
        assert_store_copies_equal(&db, &satellite, WAIT).await;
        let clean = settled_check(&master, 2, true, Duration::from_secs(120)).await;
        assert_eq!(clean.outcome(), pb::VerifyOutcome::Equal, "{clean:?}");
        let _ = db.close().await;
    }
}

/// `VerifySites` for `sync_id` without waiting.
async fn check_waiting_none(
    master: &Master,
    sync_id: u32,
    report_only: bool,
) -> pb::SiteVerification {
    master
        .admin()
        .await
        .verify_sites(pb::VerifySitesRequest {
            sync_ids: vec![sync_id],
            report_only,
            wait_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .sites
        .pop()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_asked_of_a_replica_without_the_session_is_run_by_the_other() {
    if !backends("a_check_asked_of_a_replica_without_the_session_is_run_by_the_other")
        .contains(&Backend::Postgres)
    {
        eprintln!("*** SKIPPED `a_check_asked_of_a_replica_without_the_session_is_run_by_the_other`: several master replicas need PostgreSQL (set TEST_DATABASE_URL) ***");
        return;
    }
    let master_db = TestDb::new(Backend::Postgres);
    let m1 = Master::start(&master_db, &[NO_SCHEDULE]);
    let m2 = Master::start(&master_db, &[NO_SCHEDULE]);
    m1.add_site(2).await;
    let items = create_items(&m1, "REP", 2).await;
    let (supplier, _) = create_trading_partners(&m1, "REP").await;
    let satellite = Satellite::start(&m1.url(), 2, "streaming", &[]);
    satellite.wait_initialised(WAIT).await;
    let db = master_db.connect().await;
    let received = goods_in(&mut satellite.store().await, &supplier, &items, 4.0, "REP").await;
    let invoice = received.invoice.unwrap().id;
    assert_store_copies_equal(&db, &satellite, WAIT).await;
    edit_invoice_at_site(&satellite, &invoice, "edited behind replica 1").await;

    // Replica 2 does not hold the session: without a wait it queues the check.
    let queued = check_waiting_none(&m2, 2, true).await;
    assert_eq!(queued.outcome(), pb::VerifyOutcome::Queued, "{queued:?}");
    // With a wait, replica 2 reads the result replica 1 wrote.
    let expected = [(
        pb::Table::Invoice,
        invoice.clone(),
        pb::DifferenceSide::BothDiffer,
    )]
    .into_iter()
    .collect();
    let report = settled_check(&m2, 2, true, WAIT).await;
    assert_eq!(named(&report), expected, "{report:?}");
    let repaired = settled_check(&m2, 2, false, WAIT).await;
    assert_eq!(named(&repaired), expected, "{repaired:?}");
    assert_eq!(repaired.rows_repaired, 1, "{repaired:?}");
    let local = assert_store_copies_equal(&db, &satellite, WAIT).await;
    assert!(local
        .invoices
        .iter()
        .any(|i| i.id == invoice && i.reference == "edited behind replica 1"));
    let clean = settled_check(&m2, 2, false, WAIT).await;
    assert_eq!(clean.outcome(), pb::VerifyOutcome::Equal, "{clean:?}");
    assert_eq!(site_status(&m1, 2).await.check_queued_at_ms, 0);
    let _ = db.close().await;
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_cut_by_a_link_cut_runs_again_at_the_next_session() {
    for backend in backends("a_check_cut_by_a_link_cut_runs_again_at_the_next_session") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[NO_SCHEDULE]);
        master.add_site(2).await;
        let items = create_items(&master, "CUT", 2).await;
        let (supplier, _) = create_trading_partners(&master, "CUT").await;
        let proxy = Proxy::start(master.process.addr).await;
        let satellite = Satellite::start(&proxy.url(), 2, "streaming", &[]);
        satellite.wait_initialised(WAIT).await;
        let db = master_db.connect().await;
        let received = goods_in(&mut satellite.store().await, &supplier, &items, 4.0, "CUT").await;
        let invoice = received.invoice.unwrap().id;
        assert_store_copies_equal(&db, &satellite, WAIT).await;
        edit_invoice_at_site(&satellite, &invoice, "edited before the cut").await;

        // The site stops answering; the check begins; the link is cut.
        let pid = satellite.process.child.id();
        signal(pid, "STOP");
        let mut admin = master.admin().await;
        let waiting = tokio::spawn({
            async move {
                admin
                    .verify_sites(pb::VerifySitesRequest {
                        sync_ids: vec![2],
                        report_only: true,
                        wait_seconds: 180,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .sites
                    .pop()
                    .unwrap()
            }
        });
        eventually(WAIT, "an attempt of the check to begin", || async {
            (site_status(&master, 2).await.check_attempts >= 1).then_some(())
        })
        .await;
        proxy.cut_all();
        eventually(WAIT, "the master to see the session end", || async {
            (!site_status(&master, 2).await.connected).then_some(())
        })
        .await;
        let status = site_status(&master, 2).await;
        assert!(
            status.check_queued_at_ms > 0 && status.check_attempts == 1,
            "the cut check stays requested: {status:?}"
        );

        // The site comes back: the check runs at its next session.
        signal(pid, "CONT");
        let result = tokio::time::timeout(Duration::from_secs(200), waiting)
            .await
            .expect("VerifySites answers within its wait")
            .unwrap();
        assert_eq!(result.outcome(), pb::VerifyOutcome::Different, "{result:?}");
        assert_eq!(
            named(&result),
            [(
                pb::Table::Invoice,
                invoice.clone(),
                pb::DifferenceSide::BothDiffer
            )]
            .into_iter()
            .collect()
        );
        assert_eq!(site_status(&master, 2).await.check_queued_at_ms, 0);
        let _ = db.close().await;
    }
}
