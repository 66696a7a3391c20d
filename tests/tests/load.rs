//! Load: 63 satellites — every Sync ID there is — connected to one master at
//! once, each with live writes, while master data churns. Nothing is lost (each
//! satellite's store equals the master's copy, master data is the same
//! everywhere), no site starves (time for each to drain is reported), and the
//! master's resident memory is measured and reported. No figure is asserted
//! beyond correctness; `STORESYNC_LOAD_INVOICES` sets the invoices per site.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in,
    wait_master_data_equal, Master, Satellite,
};
use storesync_tests::{backends, TestDb};

fn resident_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<f64>().ok())
                })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_three_satellites_at_once_lose_nothing_and_none_starves() {
    let invoices: usize = std::env::var("STORESYNC_LOAD_INVOICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let backend = *backends("sixty_three_satellites_at_once_lose_nothing_and_none_starves")
        .last()
        .unwrap();
    let master_db = TestDb::new(backend);
    let master = Master::start(&master_db, &[("STORESYNC_DB_MAX_CONNECTIONS", "20")]);
    let db = master_db.connect().await;
    let ids: Vec<u32> = (2..=64).collect();
    for sync_id in &ids {
        master.add_site(*sync_id).await;
    }
    let items = create_items(&master, "LOAD", 6).await;
    let (supplier, _) = create_trading_partners(&master, "L").await;
    let pid = master.process.child.id();
    let idle_before = resident_mib(pid);

    let started = Instant::now();
    let satellites: Vec<Satellite> = ids
        .iter()
        .map(|id| Satellite::start(&master.url(), *id, "streaming", &[]))
        .collect();
    for satellite in &satellites {
        satellite.wait_initialised(Duration::from_secs(180)).await;
    }
    eprintln!("63 satellites initialised in {:?}; master resident {:.1} MiB (before: {idle_before:.1} MiB)", started.elapsed(), resident_mib(pid));

    // Live writes at every site at once, while master data churns.
    let started = Instant::now();
    let mut writers = Vec::new();
    for satellite in &satellites {
        let mut store = satellite.store().await;
        let (supplier, items) = (supplier.clone(), items.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..invoices {
                goods_in(
                    &mut store,
                    &supplier,
                    &items[n % items.len()..=n % items.len()],
                    2.0,
                    &format!("LOAD{n}"),
                )
                .await;
            }
        }));
    }
    let churn = {
        let client = master.master_data().await;
        let items = items.clone();
        tokio::spawn(async move {
            let mut client = client;
            for round in 0..20 {
                let mut item = items[round % items.len()].clone();
                item.name = format!("Churned name {round}");
                client
                    .upsert_item(pb::UpsertItemRequest { item: Some(item) })
                    .await
                    .unwrap();
            }
        })
    };
    let mut peak = resident_mib(pid);
    for writer in writers {
        writer.await.unwrap();
        peak = peak.max(resident_mib(pid));
    }
    churn.await.unwrap();
    let mut slowest = Duration::ZERO;
    for satellite in &satellites {
        assert_store_copies_equal(&db, satellite, Duration::from_secs(180)).await;
        slowest = slowest.max(started.elapsed());
        peak = peak.max(resident_mib(pid));
    }
    for satellite in &satellites {
        wait_master_data_equal(&db, satellite, Duration::from_secs(180)).await;
    }
    let sites = master
        .reports()
        .await
        .sync_status(pb::SyncStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .sites;
    assert_eq!(sites.len(), 63);
    let received: Vec<u64> = sites.iter().map(|s| s.upstream_records_received).collect();
    assert!(
        sites.iter().all(|s| s.connected && s.last_error.is_empty()),
        "every site connected, no errors"
    );
    eprintln!(
        "per-site upstream records received: min {} max {} (each site wrote {} records)",
        received.iter().min().unwrap(),
        received.iter().max().unwrap(),
        invoices * 3
    );
    eprintln!(
        "*** load: 63 satellites x {invoices} invoices + 20 master-data changes: every site drained and equal within {slowest:?}; master resident peak {peak:.1} MiB, now {:.1} MiB ***",
        resident_mib(pid)
    );
}
