//! Reports across every store, end to end: a master and three satellites
//! trade known invoices; every report's figures equal those computed here
//! from what was sent; each satellite sees its own store only; bad filters
//! answer INVALID_ARGUMENT naming the field; the operator commands print the
//! same numbers; SyncStatus follows killed satellites and a master outage.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, goods_out, Master,
    Satellite,
};
use storesync_tests::{backends, eventually, run_cli, TestDb};

const LIMIT: Duration = Duration::from_secs(60);
/// What `goods_in` and `goods_out` use.
const PACK_SIZE: f64 = 100.0;
const COST: f64 = 2.5;
const SELL: f64 = 4.0;
const EXPIRY: &str = "2029-06-30";

/// Packs received by satellite `k` (0-based) of each item it stocks, and
/// packs it then dispenses of its first item.
fn packs_in(k: usize) -> f64 {
    10.0 + 5.0 * k as f64
}
fn packs_out(k: usize) -> f64 {
    2.0 + k as f64
}

fn invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = result.expect_err("bad input must be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(field),
        "the message names {field}: {:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_report_equals_the_figures_of_the_invoices_sent() {
    for backend in backends("every_report_equals_the_figures_of_the_invoices_sent") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        for sync_id in [2, 3, 4] {
            master.add_site(sync_id).await;
        }
        // Four items; satellites stock the first three, nobody the fourth.
        let items = create_items(&master, "RPT", 4).await;
        let (supplier, customer) = create_trading_partners(&master, "R").await;
        let satellites: Vec<Satellite> = [2, 3, 4]
            .into_iter()
            .map(|id| Satellite::start(&master.url(), id, "streaming", &[]))
            .collect();

        // Expected figures, computed from what is sent: (item code, store code) -> packs.
        let mut packs: BTreeMap<(String, String), f64> = BTreeMap::new();
        let mut store_ids: BTreeMap<String, String> = BTreeMap::new();
        for (k, satellite) in satellites.iter().enumerate() {
            let status = satellite.wait_initialised(LIMIT).await;
            let store = status.store.unwrap();
            store_ids.insert(store.code.clone(), store.id.clone());
            let mut client = satellite.store().await;
            let received = goods_in(&mut client, &supplier, &items[..3], packs_in(k), "GRN").await;
            let first = received
                .stock_lines
                .iter()
                .find(|line| line.item_id == items[0].id)
                .unwrap();
            goods_out(&mut client, &customer, first, packs_out(k))
                .await
                .unwrap();
            for (n, item) in items[..3].iter().enumerate() {
                let left = packs_in(k) - if n == 0 { packs_out(k) } else { 0.0 };
                packs.insert((item.code.clone(), store.code.clone()), left);
            }
        }
        for satellite in &satellites {
            assert_store_copies_equal(&db, satellite, LIMIT).await;
        }
        let mut reports = master.reports().await;

        // StockOnHand: every item and store with stock, and totals per item.
        let answer = reports
            .stock_on_hand(pb::StockOnHandRequest::default())
            .await
            .unwrap()
            .into_inner();
        let got: BTreeMap<(String, String), f64> = answer
            .rows
            .iter()
            .map(|r| ((r.item_code.clone(), r.store_code.clone()), r.packs_on_hand))
            .collect();
        assert_eq!(got, packs, "packs on hand per item and store");
        for row in &answer.rows {
            assert_eq!(row.units_on_hand, row.packs_on_hand * PACK_SIZE);
            assert_eq!((row.batches, row.earliest_expiry.as_str()), (1, EXPIRY));
            assert_eq!(store_ids[&row.store_code], row.store_id);
        }
        for item in &items[..3] {
            let expected: f64 = packs
                .iter()
                .filter(|((code, _), _)| *code == item.code)
                .map(|(_, p)| p)
                .sum();
            let total = answer.totals.iter().find(|t| t.item_id == item.id).unwrap();
            assert_eq!(total.packs_on_hand, expected, "total of {}", item.code);
            assert_eq!(total.units_on_hand, expected * PACK_SIZE);
            assert_eq!(total.batches, 3);
        }

        // Pages of two rows add up to the same answer.
        let mut paged = Vec::new();
        let mut token = String::new();
        for _ in 0..20 {
            let page = reports
                .stock_on_hand(pb::StockOnHandRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.rows.len() <= 2);
            paged.extend(page.rows);
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(paged, answer.rows, "paging neither skips nor repeats");

        // One store, and zero rows on request: the unstocked item in every store.
        let s2 = store_ids["S2"].clone();
        let only_s2 = reports
            .stock_on_hand(pb::StockOnHandRequest {
                store_ids: vec![s2.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(only_s2.rows.len(), 3);
        assert!(only_s2.rows.iter().all(|r| r.store_id == s2));
        assert_eq!(only_s2.totals[0].packs_on_hand, packs_in(0) - packs_out(0));
        let zero = reports
            .stock_on_hand(pb::StockOnHandRequest {
                item_ids: vec![items[3].id.clone()],
                include_zero: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let stores: Vec<&str> = zero.rows.iter().map(|r| r.store_code.as_str()).collect();
        assert_eq!(
            stores,
            ["MASTER", "S2", "S3", "S4"],
            "every store, even without stock"
        );
        assert!(zero
            .rows
            .iter()
            .all(|r| r.packs_on_hand == 0.0 && r.batches == 0));
        let by_prefix = reports
            .stock_on_hand(pb::StockOnHandRequest {
                item_code_prefix: items[1].code.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_prefix.rows.len(), 3);

        // StoreActivity: one goods-in and one dispensing invoice per satellite.
        let today = chrono_today();
        let activity = reports
            .store_activity(pb::StoreActivityRequest {
                from_date: day_offset(&today, -1),
                to_date: day_offset(&today, 1),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut expected_activity = Vec::new();
        for k in 0..3 {
            let code = format!("S{}", k + 2);
            expected_activity.push((
                code.clone(),
                "CUSTOMER_INVOICE".to_owned(),
                1,
                1,
                packs_out(k) * PACK_SIZE,
                packs_out(k) * SELL,
            ));
            expected_activity.push((
                code,
                "SUPPLIER_INVOICE".to_owned(),
                1,
                3,
                3.0 * packs_in(k) * PACK_SIZE,
                3.0 * packs_in(k) * COST,
            ));
        }
        let got_activity: Vec<_> = activity
            .rows
            .iter()
            .map(|r| {
                (
                    r.store_code.clone(),
                    r.kind.clone(),
                    r.invoices,
                    r.lines,
                    r.units,
                    r.value,
                )
            })
            .collect();
        assert_eq!(got_activity, expected_activity);
        let per_day = reports
            .store_activity(pb::StoreActivityRequest {
                from_date: day_offset(&today, -1),
                to_date: day_offset(&today, 1),
                per_day: true,
                store_ids: vec![s2.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(per_day.rows.iter().map(|r| r.invoices).sum::<u64>(), 2);
        assert!(per_day
            .rows
            .iter()
            .all(|r| r.day.len() == 10 && r.store_id == s2));
        let empty = reports
            .store_activity(pb::StoreActivityRequest {
                from_date: "2020-01-01".into(),
                to_date: "2020-01-31".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(empty.rows.is_empty(), "nothing happened in 2020");

        // ExpiringStock: strictly before the date, with units and cost value.
        let expiring = reports
            .expiring_stock(pb::ExpiringStockRequest {
                before: "2030-01-01".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let got: BTreeMap<(String, String), (f64, f64)> = expiring
            .rows
            .iter()
            .map(|r| {
                (
                    (r.item_code.clone(), r.store_code.clone()),
                    (r.units, r.cost_value),
                )
            })
            .collect();
        let expected: BTreeMap<(String, String), (f64, f64)> = packs
            .iter()
            .map(|(key, p)| (key.clone(), (p * PACK_SIZE, p * COST)))
            .collect();
        assert_eq!(got, expected);
        assert!(expiring
            .rows
            .iter()
            .all(|r| r.expiry_date == EXPIRY && r.batch.starts_with("GRN")));
        let none = reports
            .expiring_stock(pb::ExpiringStockRequest {
                before: EXPIRY.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            none.rows.is_empty(),
            "a batch expiring on the date is not before it"
        );

        // Each satellite's StoreService shows its own store and nothing else.
        for (k, satellite) in satellites.iter().enumerate() {
            let code = format!("S{}", k + 2);
            let mut store = satellite.store().await;
            let own = store
                .stock_on_hand(pb::StoreStockOnHandRequest::default())
                .await
                .unwrap()
                .into_inner();
            let got: BTreeMap<String, f64> = own
                .rows
                .iter()
                .map(|r| (r.item_code.clone(), r.packs_on_hand))
                .collect();
            let expected: BTreeMap<String, f64> = packs
                .iter()
                .filter(|((_, s), _)| *s == code)
                .map(|((i, _), p)| (i.clone(), *p))
                .collect();
            assert_eq!(got, expected, "satellite {code} sees its own stock only");
            let lines = store
                .expiring_stock(pb::StoreExpiringStockRequest {
                    before: "2030-01-01".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .stock_lines;
            assert_eq!(lines.len(), 3);
            assert!(lines.iter().all(|l| l.store_id == store_ids[&code]));
            invalid(
                store
                    .expiring_stock(pb::StoreExpiringStockRequest {
                        before: "soon".into(),
                    })
                    .await,
                "before",
            );
        }

        // Bad input names the field.
        let nobody = uuid::Uuid::new_v4().to_string();
        invalid(
            reports
                .stock_on_hand(pb::StockOnHandRequest {
                    store_ids: vec![s2.clone(), nobody.clone()],
                    ..Default::default()
                })
                .await,
            "store_ids[1]",
        );
        invalid(
            reports
                .stock_on_hand(pb::StockOnHandRequest {
                    item_ids: vec![nobody.clone()],
                    ..Default::default()
                })
                .await,
            "item_ids[0]",
        );
        invalid(
            reports
                .stock_on_hand(pb::StockOnHandRequest {
                    page_size: 1001,
                    ..Default::default()
                })
                .await,
            "page_size",
        );
        invalid(
            reports
                .stock_on_hand(pb::StockOnHandRequest {
                    page_token: "not-a-token".into(),
                    ..Default::default()
                })
                .await,
            "page_token",
        );
        invalid(
            reports
                .store_activity(pb::StoreActivityRequest {
                    from_date: "2026-03-02".into(),
                    to_date: "2026-03-01".into(),
                    ..Default::default()
                })
                .await,
            "to_date",
        );
        invalid(
            reports
                .store_activity(pb::StoreActivityRequest {
                    from_date: "2026-02-30".into(),
                    ..Default::default()
                })
                .await,
            "from_date",
        );
        invalid(
            reports
                .store_activity(pb::StoreActivityRequest {
                    store_ids: vec!["S2".into()],
                    ..Default::default()
                })
                .await,
            "store_ids[0]",
        );
        invalid(
            reports
                .expiring_stock(pb::ExpiringStockRequest::default())
                .await,
            "before",
        );
        invalid(
            reports
                .expiring_stock(pb::ExpiringStockRequest {
                    before: "2030-01-01".into(),
                    page_size: 5000,
                    ..Default::default()
                })
                .await,
            "page_size",
        );

        // The operator commands print the same numbers.
        let address = master.process.addr.to_string();
        let csv = run_cli(
            "master-service",
            "STORESYNC_MASTER_BIN",
            &[
                "report",
                "stock-on-hand",
                "--address",
                &address,
                "--format",
                "csv",
            ],
        );
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let column = |name: &str| header.iter().position(|c| *c == name).unwrap();
        let mut from_csv: BTreeMap<(String, String), f64> = BTreeMap::new();
        for line in lines {
            let cells: Vec<&str> = line.split(',').collect();
            from_csv.insert(
                (
                    cells[column("item_code")].into(),
                    cells[column("store_code")].into(),
                ),
                cells[column("packs")].parse().unwrap(),
            );
        }
        assert_eq!(from_csv, packs, "CSV of stock on hand");
        let json = run_cli(
            "master-service",
            "STORESYNC_MASTER_BIN",
            &[
                "report",
                "expiring-stock",
                "--before",
                "2030-01-01",
                "--address",
                &address,
                "--format",
                "json",
            ],
        );
        let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
        let units: f64 = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["units"].as_f64().unwrap())
            .sum();
        assert_eq!(
            units,
            packs.values().sum::<f64>() * PACK_SIZE,
            "JSON of expiring stock"
        );
        let table = run_cli(
            "master-service",
            "STORESYNC_MASTER_BIN",
            &["report", "store-activity", "--address", &address],
        );
        let s4_in = format!("{:.1}", 3.0 * packs_in(2) * PACK_SIZE);
        assert!(
            table.lines().any(|l| l.starts_with("S4")
                && l.contains("SUPPLIER_INVOICE")
                && l.contains(&s4_in)),
            "the activity table shows S4's goods in ({s4_in} units):\n{table}"
        );
        let sync = run_cli(
            "master-service",
            "STORESYNC_MASTER_BIN",
            &["report", "sync-status", "--address", &address],
        );
        assert_eq!(
            sync.lines().filter(|l| l.contains(" yes ")).count(),
            3,
            "{sync}"
        );
        let satellite_address = satellites[0].process.addr.to_string();
        let status = run_cli(
            "satellite-agent",
            "STORESYNC_SATELLITE_BIN",
            &[
                "status",
                "--address",
                &satellite_address,
                "--format",
                "json",
            ],
        );
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["sync_id"], 2);
        assert_eq!(status["upstream_backlog"], 0);
        assert_eq!(status["state"], "connected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_status_follows_a_killed_satellite_and_a_master_outage() {
    for backend in backends("sync_status_follows_a_killed_satellite_and_a_master_outage") {
        let master_db = TestDb::new(backend);
        let mut master = Master::start(&master_db, &[]);
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "SST", 2).await;
        let (supplier, _) = create_trading_partners(&master, "T").await;
        let mut satellite = Satellite::start(&master.url(), 2, "streaming", &[]);
        satellite.wait_initialised(LIMIT).await;

        let connected = eventually(LIMIT, "site 2 connected", || async {
            let s = site_status(&master, 2).await;
            s.connected.then_some(s)
        })
        .await;
        assert_eq!(connected.mode, pb::SyncMode::Streaming as i32);
        let never = site_status(&master, 3).await;
        assert!(
            !never.connected && !never.ever_connected,
            "site 3 never connected: {never:?}"
        );
        assert_eq!(never.last_sync_at_ms, 0);

        // Killed: the master notices and says so.
        satellite.process.kill();
        let gone = eventually(LIMIT, "site 2 shown disconnected", || async {
            let s = site_status(&master, 2).await;
            (!s.connected).then_some(s)
        })
        .await;
        assert!(gone.ever_connected);
        satellite.start_again();
        eventually(LIMIT, "site 2 connected again", || async {
            site_status(&master, 2).await.connected.then_some(())
        })
        .await;
        let received_before = site_status(&master, 2).await.upstream_records_received;

        // Master down: the satellite's backlog grows with every invoice.
        master.process.kill();
        let mut store = satellite.store().await;
        let mut backlogs = Vec::new();
        for n in 0..3 {
            goods_in(&mut store, &supplier, &items, 5.0, &format!("OUT{n}")).await;
            backlogs.push(satellite.status().await.upstream_backlog);
        }
        assert!(
            backlogs[0] > 0 && backlogs[0] < backlogs[1] && backlogs[1] < backlogs[2],
            "backlog grows while the master is down: {backlogs:?}"
        );
        let status_cli = run_cli(
            "satellite-agent",
            "STORESYNC_SATELLITE_BIN",
            &["status", "--address", &satellite.process.addr.to_string()],
        );
        assert!(
            status_cli.lines().any(|l| l.starts_with("upstream_backlog")
                && l.trim_end().ends_with(&backlogs[2].to_string())),
            "{status_cli}"
        );

        // Master back: the site reconnects, sends everything, and reports no backlog.
        master.start_again();
        let back = eventually(LIMIT, "site 2 caught up after the outage", || async {
            let s = site_status(&master, 2).await;
            (s.connected
                && s.upstream_backlog_reported == 0
                && s.upstream_records_received > received_before)
                .then_some(s)
        })
        .await;
        assert!(back.upstream_acked_seq >= backlogs[2], "{back:?}");
        satellite.wait_drained(LIMIT).await;
    }
}

/// What the master's SyncStatus says of site `sync_id`.
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

fn chrono_today() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    day_from_epoch_days(now / 86_400)
}

/// `day` (YYYY-MM-DD) moved by `offset` days.
fn day_offset(day: &str, offset: i64) -> String {
    let parts: Vec<i64> = day.split('-').map(|p| p.parse().unwrap()).collect();
    day_from_epoch_days(days_from_civil(parts[0], parts[1], parts[2]) + offset)
}

// Civil-date arithmetic (H. Hinnant's algorithms), to keep chrono out of the tests crate.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn day_from_epoch_days(z: i64) -> String {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
