//! Scenario `storm`: a reconnect storm. The master (on PostgreSQL) with
//! `storm_satellites` sites, each satellite stopped and holding
//! `storm_records` unsent records in its outbox; the master restarted; then
//! every satellite started at once. Timed until the master has acknowledged
//! every outbox sequence (the satellites' process start included), against a
//! same-run `COPY` of the same rows; and the master's peak resident memory
//! over the storm (`VmHWM`, reset through `/proc/<pid>/clear_refs` once the
//! restarted master is up, so it is the storm's own).

use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use storesync_tests::cluster::{create_items, create_trading_partners, Master, Satellite};

use crate::data::{self, Backlog};
use crate::procs::{peak_resident_mib, reset_peak, resident_mib};
use crate::report::{Figure, Target};
use crate::scenarios::{master_with_sites, per_second, start_satellites, wait_all_acked};
use crate::Sizes;

/// PostgreSQL connections of the benchmark's own pool (the checks and the
/// `COPY` ceiling): the database is shared with the master's pool (10), so
/// not one per site; 16 `COPY`s at once already keep both cores busy.
const BENCH_CONNECTIONS: u32 = 16;

/// Runs `each` on every satellite on its own thread, all at once (starting
/// and stopping a process blocks until it has announced itself or exited).
fn all_at_once(satellites: &mut [Satellite], each: impl Fn(&mut Satellite) + Sync) {
    std::thread::scope(|scope| {
        for satellite in satellites.iter_mut() {
            let each = &each;
            scope.spawn(move || each(satellite));
        }
    });
}

pub async fn storm(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let n = sizes.storm_satellites;
    let records = sizes.storm_records;
    let (db, mut master) = master_with_sites(n, &[]).await;
    let conn = storesync_shared::domain::db::connect(&db.url(), BENCH_CONNECTIONS).await?;
    let items: Vec<String> = create_items(&master, "ST", 50)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    let (supplier, _) = create_trading_partners(&master, "S").await;
    let mut satellites = start_satellites(&master.url(), n, &[]).await;
    let mut stores = Vec::new();
    for satellite in &satellites {
        stores.push(satellite.status().await.store.expect("store").id);
    }

    let label = format!("{n} sites x {records} records");
    let mut drained = Figure::new(
        "storm",
        format!("master restarted, {label}: until all acknowledged"),
        "s",
    );
    let mut rate = Figure::new("storm", "master commit rate during the storm", "rec/s");
    let mut copy = Figure::new("storm", "PostgreSQL COPY of the same rows", "rec/s");
    let mut ratio = Figure::new("storm", "storm / COPY", "ratio").target(Target::AtLeast(0.5));
    // The bound docs/PERFORMANCE.md derives for 64 product satellites
    // (*What bounds the master's memory in a storm*), rounded up.
    let mut peak = Figure::new("storm", "master peak resident over the storm", "MiB")
        .target(Target::Below(256.0));
    let mut idle = Figure::new("storm", "master resident before the storm (info)", "MiB");
    for run in 0..sizes.runs {
        let got = storm_run(
            &conn,
            &mut master,
            &mut satellites,
            &stores,
            &supplier.id,
            &items,
            records,
        )
        .await?;
        let (r, c) = (
            per_second(got.records, got.elapsed),
            per_second(got.records, got.copied),
        );
        eprintln!(
            "storm run {run}: {} records from {n} sites acknowledged {:.2?} after they started = {r:.0}/s; COPY of the rows {:.2?}; master resident {:.1} MiB before, peak {:.1} MiB",
            got.records, got.elapsed, got.copied, got.before_mib, got.peak_mib
        );
        drained.samples.push(got.elapsed.as_secs_f64());
        rate.samples.push(r);
        copy.samples.push(c);
        ratio.samples.push(r / c);
        peak.samples.push(got.peak_mib);
        idle.samples.push(got.before_mib);
    }
    drop(satellites);
    drop(master);
    Ok(vec![drained, rate, copy, ratio, peak, idle])
}

/// What one storm measured.
struct StormRun {
    records: usize,
    /// From the satellites' start until every outbox sequence was acknowledged.
    elapsed: Duration,
    /// `COPY` of the same rows.
    copied: Duration,
    /// The restarted master's resident memory before the satellites started.
    before_mib: f64,
    /// Its peak over the storm.
    peak_mib: f64,
}

/// Stops every satellite, writes a backlog into each, restarts the master,
/// starts every satellite at once and waits until the master has
/// acknowledged every backlog; checks the rows and loads the same rows with
/// `COPY`.
async fn storm_run(
    conn: &DatabaseConnection,
    master: &mut Master,
    satellites: &mut [Satellite],
    stores: &[String],
    supplier_id: &str,
    items: &[String],
    records: usize,
) -> anyhow::Result<StormRun> {
    let stopped = std::sync::atomic::AtomicUsize::new(0);
    all_at_once(satellites, |satellite| {
        if satellite
            .process
            .terminate(Duration::from_secs(30))
            .is_some()
        {
            stopped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    anyhow::ensure!(
        stopped.into_inner() == satellites.len(),
        "not every satellite stopped"
    );
    let mut expected = Vec::new();
    let mut backlogs = Vec::new();
    let mut total = 0;
    for (satellite, store_id) in satellites.iter().zip(stores) {
        let mut backlog = Backlog::goods_received(store_id, supplier_id, items, records);
        let local = satellite.db.connect().await;
        let last = backlog.write_to_satellite(&local).await?;
        local.close().await?;
        total += backlog.len();
        // The rows stay for the checks and `COPY`; the outbox copies are sent.
        backlog.records = Vec::new();
        expected.push((satellite.sync_id as i32, last as i64));
        backlogs.push(backlog);
    }
    let before =
        futures::future::try_join_all(stores.iter().map(|s| data::store_counts(conn, s))).await?;

    // The master restarted (SIGTERM, then started on the same address).
    anyhow::ensure!(
        master.process.terminate(Duration::from_secs(30)).is_some(),
        "the master did not stop"
    );
    master.start_again();
    let pid = master.process.child.id();
    let before_mib = resident_mib(pid);
    anyhow::ensure!(
        reset_peak(pid),
        "could not reset the master's peak resident memory (/proc/{pid}/clear_refs)"
    );

    let started = Instant::now();
    all_at_once(satellites, Satellite::start_again);
    wait_all_acked(conn, &expected, Duration::from_millis(20)).await?;
    let elapsed = started.elapsed();
    let peak_mib = peak_resident_mib(pid);

    // What was acknowledged is really there: each store's rows.
    for ((store_id, backlog), before) in stores.iter().zip(&backlogs).zip(&before) {
        let after = data::store_counts(conn, store_id).await?;
        let wanted = [
            before[0] + backlog.stock_lines.len() as i64,
            before[1] + backlog.invoices.len() as i64,
            before[2] + backlog.invoice_lines.len() as i64,
        ];
        anyhow::ensure!(
            after == wanted,
            "store {store_id}: the master holds {after:?} rows, not {wanted:?} (before: {before:?})"
        );
    }
    eprintln!(
        "storm: {total} records acknowledged {elapsed:.2?} after the satellites started; master peak {peak_mib:.1} MiB (resident {before_mib:.1} MiB before); rows checked"
    );
    data::create_copy_tables(conn).await?;
    let copied = data::copy_ceiling(conn, &backlogs.iter().collect::<Vec<_>>()).await?;
    Ok(StormRun {
        records: total,
        elapsed,
        copied,
        before_mib,
        peak_mib,
    })
}
