//! The scenarios. Each starts its own master (on a scratch PostgreSQL
//! database) and satellites (SQLite each) as real processes, and stops them.
//!
//! Every scenario also checks that what it timed really happened (row counts,
//! cursors, acknowledged sequences) and fails loudly if not: a fast wrong
//! answer is not a figure.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{create_items, create_trading_partners, Authed, Master, Satellite};
use storesync_tests::proxy::Proxy;
use storesync_tests::{Backend, TestDb};

use crate::data::{self, Backlog};
use crate::procs::{anonymous_mib, peak_resident_mib, resident_mib};
use crate::report::{ms, Figure, Target};
use crate::Sizes;

type Agent = pb::agent_service_client::AgentServiceClient<Authed>;

/// How long any one wait may take before the scenario fails.
const PATIENCE: Duration = Duration::from_secs(600);

pub(crate) fn per_second(records: usize, elapsed: Duration) -> f64 {
    records as f64 / elapsed.as_secs_f64()
}

/// The product's default heartbeat (the test harness shortens it to notice
/// dead links fast; a benchmark measures what operators run).
const HEARTBEAT: (&str, &str) = ("STORESYNC_HEARTBEAT_SECONDS", "15");

/// `extra` after the product defaults the harness overrides.
fn with_defaults<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars = vec![HEARTBEAT];
    vars.extend_from_slice(extra);
    vars
}

/// A master on a fresh PostgreSQL database with sites `2..=satellites + 1`.
pub(crate) async fn master_with_sites(satellites: u32, extra: &[(&str, &str)]) -> (TestDb, Master) {
    let db = TestDb::new(Backend::Postgres);
    let master = Master::start(&db, &with_defaults(extra));
    for sync_id in 2..=satellites + 1 {
        master.add_site(sync_id).await;
    }
    (db, master)
}

/// Starts satellites `2..=count + 1` and waits until each is initialised.
pub(crate) async fn start_satellites(
    master_url: &str,
    count: u32,
    extra: &[(&str, &str)],
) -> Vec<Satellite> {
    let satellites: Vec<Satellite> = (2..=count + 1)
        .map(|sync_id| Satellite::start(master_url, sync_id, "streaming", &with_defaults(extra)))
        .collect();
    for satellite in &satellites {
        satellite.wait_initialised(PATIENCE).await;
    }
    satellites
}

/// Polls `check` every `every` until it holds; fails after [`PATIENCE`].
pub(crate) async fn wait_for<F, Fut>(
    what: &str,
    every: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// Polls a satellite's status until `done` holds; fails after [`PATIENCE`].
async fn wait_for_status(
    agent: &Agent,
    what: &str,
    done: impl Fn(&pb::AgentStatus) -> bool,
) -> anyhow::Result<()> {
    let done = &done;
    wait_for(what, Duration::from_millis(20), || {
        let mut agent = agent.clone();
        async move {
            Ok(done(
                &agent.status(pb::AgentStatusRequest {}).await?.into_inner(),
            ))
        }
    })
    .await
}

/// Waits until the master has acknowledged, for each `(sync_id, last)` of
/// `expected`, that site's outbox up to `last`; polls every `poll`.
pub(crate) async fn wait_all_acked(
    conn: &DatabaseConnection,
    expected: &[(i32, i64)],
    poll: Duration,
) -> anyhow::Result<()> {
    wait_for("the master to acknowledge every backlog", poll, || async {
        let acked = acked_seqs(conn).await?;
        Ok(expected
            .iter()
            .all(|(id, last)| acked.iter().any(|(s, a)| s == id && a >= last)))
    })
    .await
}

/// Each site's acknowledged upstream sequence on the master.
pub(crate) async fn acked_seqs(db: &DatabaseConnection) -> anyhow::Result<Vec<(i32, i64)>> {
    let rows = db
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT sync_id, upstream_acked_seq FROM site ORDER BY sync_id",
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("", "sync_id")?,
                r.try_get("", "upstream_acked_seq")?,
            ))
        })
        .collect()
}

/// Scenario 1: N satellites each with a backlog; records per second until
/// the master has committed them all, and the same rows through `COPY`.
/// Then (with 2 or more satellites) the same with transfers mixed in: each
/// satellite also ships the stock of one goods-received invoice in
/// [`TRANSFER_EVERY`] on to the next satellite's store, so the master
/// creates the inbound shipments and transfer records as it commits.
pub async fn upstream(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let n = sizes.upstream_satellites;
    let (db, master) = master_with_sites(n, &[]).await;
    let conn = storesync_shared::domain::db::connect(&db.url(), n + 2).await?;
    let items: Vec<String> = create_items(&master, "UP", 50)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    let (supplier, _) = create_trading_partners(&master, "U").await;
    let mut satellites = start_satellites(&master.url(), n, &[]).await;
    let mut stores = Vec::new();
    for satellite in &satellites {
        stores.push(satellite.status().await.store.expect("store").id);
    }

    let label = format!("{n} satellites x {} records", sizes.upstream_records);
    let mut rate = Figure::new("upstream", format!("master commit rate, {label}"), "rec/s");
    let mut copy = Figure::new("upstream", "PostgreSQL COPY of the same rows", "rec/s");
    let mut ratio =
        Figure::new("upstream", "upstream / COPY", "ratio").target(Target::AtLeast(0.7));
    let mixed_label = format!("with transfers (1 invoice in {TRANSFER_EVERY} shipped on)");
    let mut mixed_rate = Figure::new(
        "upstream",
        format!("master commit rate, {mixed_label}"),
        "rec/s",
    );
    let mut mixed_ratio = Figure::new(
        "upstream",
        format!("upstream / COPY, {mixed_label}"),
        "ratio",
    );
    let mut transfer_rate = Figure::new(
        "upstream",
        "transfers followed (inbound shipment created) per second",
        "1/s",
    );
    let variants: &[bool] = if n >= 2 { &[false, true] } else { &[false] };
    if n < 2 {
        eprintln!("upstream: 1 satellite, so no transfers are mixed in (they need a second store)");
    }
    for run in 0..sizes.runs {
        for &with_transfers in variants {
            let got = upstream_run(
                &conn,
                &mut satellites,
                &stores,
                &supplier.id,
                &items,
                sizes.upstream_records,
                with_transfers,
            )
            .await?;
            let (r, c) = (
                per_second(got.records, got.elapsed),
                per_second(got.records, got.copied),
            );
            eprintln!(
                "upstream run {run}{}: {} records in {:.2?} = {r:.0}/s; COPY of its rows {:.2?}; {} transfers",
                if with_transfers { " (transfers mixed in)" } else { "" },
                got.records,
                got.elapsed,
                got.copied,
                got.transfers
            );
            if with_transfers {
                mixed_rate.samples.push(r);
                mixed_ratio.samples.push(r / c);
                transfer_rate
                    .samples
                    .push(got.transfers as f64 / got.elapsed.as_secs_f64());
            } else {
                rate.samples.push(r);
                copy.samples.push(c);
                ratio.samples.push(r / c);
            }
        }
    }
    let mut figures = vec![rate, copy, ratio];
    if n >= 2 {
        figures.extend([mixed_rate, mixed_ratio, transfer_rate]);
    }
    Ok(figures)
}

/// One goods-received invoice in this many is shipped on as a transfer in
/// the upstream scenario's mixed runs.
const TRANSFER_EVERY: usize = 5;

/// What one upstream run measured.
struct UpstreamRun {
    /// Outbox records the satellites sent.
    records: usize,
    /// Until the master acknowledged every one (process start included).
    elapsed: Duration,
    /// `COPY` of the backlogs' final rows (a stock line sent three times is
    /// copied once; the ratio compares the two times).
    copied: Duration,
    transfers: usize,
}

/// Stops the satellites, writes a backlog into each (with transfers to the
/// next satellite's store when `with_transfers`), starts them, waits until
/// the master has acknowledged every backlog, checks the rows, and loads the
/// same rows with `COPY`.
async fn upstream_run(
    conn: &DatabaseConnection,
    satellites: &mut [Satellite],
    stores: &[String],
    supplier_id: &str,
    items: &[String],
    records: usize,
    with_transfers: bool,
) -> anyhow::Result<UpstreamRun> {
    let mut expected = Vec::new();
    let mut backlogs = Vec::new();
    let mut shipped = Vec::new();
    for (index, (satellite, store_id)) in satellites.iter_mut().zip(stores).enumerate() {
        anyhow::ensure!(
            satellite
                .process
                .terminate(Duration::from_secs(20))
                .is_some(),
            "satellite {} did not stop",
            satellite.sync_id
        );
        let mut backlog = Backlog::goods_received(store_id, supplier_id, items, records);
        let local = satellite.db.connect().await;
        let mut last = backlog.write_to_satellite(&local).await?;
        let mut transfers = 0;
        if with_transfers {
            let to = &stores[(index + 1) % stores.len()];
            (last, transfers) = backlog
                .ship_transfers(&local, store_id, to, TRANSFER_EVERY)
                .await?;
        }
        local.close().await?;
        expected.push((satellite.sync_id as i32, last as i64));
        backlogs.push(backlog);
        shipped.push(transfers);
    }
    let before =
        futures::future::try_join_all(stores.iter().map(|s| data::store_counts(conn, s))).await?;
    let transfers_before = count_transfers(conn).await?;
    let total: usize = backlogs.iter().map(Backlog::len).sum();
    let started = Instant::now();
    for satellite in satellites.iter_mut() {
        satellite.start_again();
    }
    wait_all_acked(conn, &expected, Duration::from_millis(10)).await?;
    let elapsed = started.elapsed();
    // What was acknowledged is really there: each store's own rows, and the
    // inbound shipments (one invoice, 10 lines each) the master created for
    // the transfers the previous store shipped to it.
    for (index, ((store_id, backlog), before)) in
        stores.iter().zip(&backlogs).zip(&before).enumerate()
    {
        let inbound = shipped[(index + stores.len() - 1) % stores.len()] as i64;
        let after = data::store_counts(conn, store_id).await?;
        let wanted = [
            before[0] + backlog.stock_lines.len() as i64,
            before[1] + backlog.invoices.len() as i64 + inbound,
            before[2] + backlog.invoice_lines.len() as i64 + inbound * 10,
        ];
        anyhow::ensure!(
            after == wanted,
            "store {store_id}: the master holds {after:?} rows, not {wanted:?} (before: {before:?})"
        );
    }
    let transfers: usize = shipped.iter().sum();
    let transfers_after = count_transfers(conn).await?;
    anyhow::ensure!(
        transfers_after == transfers_before + transfers as i64,
        "the master holds {transfers_after} transfers, not {transfers_before} + {transfers}"
    );
    data::create_copy_tables(conn).await?;
    let copied = data::copy_ceiling(conn, &backlogs.iter().collect::<Vec<_>>()).await?;
    Ok(UpstreamRun {
        records: total,
        elapsed,
        copied,
        transfers,
    })
}

/// The master's transfer records.
async fn count_transfers(conn: &DatabaseConnection) -> anyhow::Result<i64> {
    let row = conn
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            "SELECT COUNT(*) AS n FROM transfer",
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("count of transfers"))?;
    Ok(row.try_get("", "n")?)
}

/// Agent clients made once (a poll must not open a connection).
async fn agents(satellites: &[Satellite]) -> Vec<Agent> {
    let mut agents = Vec::new();
    for satellite in satellites {
        agents.push(satellite.agent().await);
    }
    agents
}

/// Scenario 2: master-data changes reaching 1 and 63 satellites.
pub async fn downstream(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let changes = sizes.downstream_changes;
    let mut figures = Vec::new();
    for &fanout in &sizes.fanouts {
        let (db, master) = master_with_sites(fanout, &[]).await;
        let conn = db.connect().await;
        let satellites = start_satellites(&master.url(), fanout, &[]).await;
        let mut agents = agents(&satellites).await;
        let mut per_satellite = Figure::new(
            "downstream",
            format!("apply rate per satellite, {fanout} satellite(s)"),
            "rec/s",
        );
        let mut last = Figure::new(
            "downstream",
            format!("{changes} changes: until the last of {fanout} has all"),
            "ms",
        );
        if fanout >= 63 {
            // Issue 18: 63 satellites on two cores, the last done within a minute.
            last = last.target(Target::Below(60_000.0));
        }
        // One satellite against a bulk insert of the same rows (see `ceilings`).
        let mut ceiling = if fanout == 1 {
            // The schema of the satellite's own file (see `ceilings`).
            let local = satellites[0].db.connect().await;
            Some((
                crate::ceilings::Scratch::like(&local).await?,
                Figure::new(
                    "downstream",
                    "bulk insert of the same rows, satellite schema (ceiling)",
                    "rec/s",
                ),
                Figure::new("downstream", "apply / bulk insert, 1 satellite", "ratio")
                    .target(Target::AtLeast(0.75)),
            ))
        } else {
            None
        };
        let mut together = Figure::new(
            "downstream",
            format!("records applied per second, {fanout} satellite(s) together"),
            "rec/s",
        );
        for run in 0..sizes.runs {
            let started = Instant::now();
            let head = data::master_data_changes(&conn, &format!("R{run}"), changes).await?;
            let committed = started.elapsed();
            let started = Instant::now();
            let mut done: Vec<Option<Duration>> = vec![None; agents.len()];
            let deadline = started + PATIENCE;
            while done.iter().any(Option::is_none) {
                anyhow::ensure!(Instant::now() < deadline, "satellites did not catch up");
                for (agent, slot) in agents.iter_mut().zip(done.iter_mut()) {
                    if slot.is_none() {
                        let status = agent.status(pb::AgentStatusRequest {}).await?.into_inner();
                        if status.downstream_cursor >= head {
                            *slot = Some(started.elapsed());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let times: Vec<Duration> = done.into_iter().flatten().collect();
            let slowest = times.iter().max().copied().unwrap_or_default();
            let mut rates: Vec<f64> = times.iter().map(|t| per_second(changes, *t)).collect();
            rates.sort_by(f64::total_cmp);
            let median_rate = rates[rates.len() / 2];
            eprintln!(
                "downstream {fanout} run {run}: committed {changes} changes in {committed:.2?}; per-satellite median {median_rate:.0}/s; last satellite after {slowest:.2?}"
            );
            if let Some((scratch, bulk, ratio)) = ceiling.as_mut() {
                let local = satellites[0].db.connect().await;
                let (rows, took) =
                    crate::ceilings::master_data_insert(scratch, &local, &format!("R{run}"))
                        .await?;
                anyhow::ensure!(
                    rows == changes,
                    "the satellite's file holds {rows} of the {changes} changes"
                );
                let bulk_rate = per_second(rows, took);
                eprintln!(
                    "downstream {fanout} run {run}: bulk insert of the same {rows} rows {took:.2?} ({bulk_rate:.0}/s): ratio {:.2}",
                    median_rate / bulk_rate
                );
                bulk.samples.push(bulk_rate);
                ratio.samples.push(median_rate / bulk_rate);
            }
            per_satellite.samples.push(median_rate);
            last.samples.push(ms(slowest));
            together
                .samples
                .push(per_second(changes * times.len(), slowest));
        }
        // Spot check: the last run's changes are in a satellite's tables.
        let local = satellites[0].db.connect().await;
        let row = local
            .query_one(Statement::from_string(
                DbBackend::Sqlite,
                format!(
                    "SELECT (SELECT COUNT(*) FROM item WHERE code LIKE 'R{0}I%') + (SELECT COUNT(*) FROM name WHERE code LIKE 'R{0}N%') AS n",
                    sizes.runs - 1
                ),
            ))
            .await?
            .ok_or_else(|| anyhow::anyhow!("count"))?;
        let landed: i64 = row.try_get("", "n")?;
        anyhow::ensure!(
            landed == changes as i64,
            "satellite {} holds {landed} of the {changes} changes",
            satellites[0].sync_id
        );
        figures.push(per_satellite);
        if let Some((_, bulk, ratio)) = ceiling {
            figures.push(bulk);
            figures.push(ratio);
        }
        figures.push(last);
        figures.push(together);
        drop(satellites);
        drop(master);
    }
    Ok(figures)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Scenario 3: one change each way in streaming mode, timed from the
/// writer's commit (its call returned) to the moment a reader at the other
/// end sees it, while another satellite writes in the background.
pub async fn latency(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let (db, master) = master_with_sites(2, &[]).await;
    let conn = db.connect().await;
    let items = create_items(&master, "LAT", 5).await;
    let (supplier, _) = create_trading_partners(&master, "L").await;
    let satellites = start_satellites(&master.url(), 2, &[]).await;
    let (measured, background) = (&satellites[0], &satellites[1]);

    // Light background load: an invoice every 100 ms at the other satellite.
    let stop = tokio::sync::watch::channel(false);
    let load = {
        let mut store = background.store().await;
        let (supplier, items) = (supplier.clone(), items.clone());
        let mut stop_rx = stop.0.subscribe();
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                storesync_tests::cluster::goods_in(
                    &mut store,
                    &supplier,
                    &items[n % items.len()..=n % items.len()],
                    1.0,
                    &format!("BG{n}"),
                )
                .await;
                n += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop_rx.changed() => return n,
                }
            }
        })
    };

    let mut master_data = master.master_data().await;
    let mut satellite_data = measured.master_data().await;
    let mut satellite_store = measured.store().await;
    let mut down = (
        Figure::new("latency", "master -> satellite p50", "ms").target(Target::Below(2.0)),
        Figure::new("latency", "master -> satellite p99", "ms").target(Target::Below(5.0)),
    );
    let mut up = (
        Figure::new("latency", "satellite -> master p50", "ms").target(Target::Below(2.0)),
        Figure::new("latency", "satellite -> master p99", "ms").target(Target::Below(5.0)),
    );
    let warmup = 20;
    for run in 0..sizes.runs {
        let mut down_samples = Vec::new();
        let mut up_samples = Vec::new();
        for n in 0..sizes.latency_changes + warmup {
            // Master to satellite: an item renamed on the master.
            let mut item = items[0].clone();
            item.name = format!("Latency probe {run}-{n}");
            master_data
                .upsert_item(pb::UpsertItemRequest {
                    item: Some(item.clone()),
                })
                .await?;
            let committed = Instant::now();
            let deadline = committed + Duration::from_secs(30);
            loop {
                let seen = satellite_data
                    .get_item(pb::GetItemRequest {
                        id: item.id.clone(),
                    })
                    .await?
                    .into_inner();
                if seen.name == item.name {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the satellite never saw {}",
                    item.name
                );
            }
            let down_latency = committed.elapsed();

            // Satellite to master: goods received at the satellite.
            let created = storesync_tests::cluster::goods_in(
                &mut satellite_store,
                &supplier,
                &items[1..2],
                1.0,
                &format!("LAT{run}-{n}"),
            )
            .await;
            let committed = Instant::now();
            let invoice_id = created.invoice.expect("invoice").id;
            let deadline = committed + Duration::from_secs(30);
            loop {
                let row = conn
                    .query_one(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT COUNT(*) AS n FROM invoice_line WHERE invoice_id = $1",
                        [invoice_id.clone().into()],
                    ))
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("count"))?;
                if row.try_get::<i64>("", "n")? > 0 {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the master never saw invoice {invoice_id}"
                );
            }
            let up_latency = committed.elapsed();
            if n >= warmup {
                down_samples.push(ms(down_latency));
                up_samples.push(ms(up_latency));
            }
        }
        down_samples.sort_by(f64::total_cmp);
        up_samples.sort_by(f64::total_cmp);
        eprintln!(
            "latency run {run}: down p50 {:.2} p99 {:.2} max {:.2} ms; up p50 {:.2} p99 {:.2} max {:.2} ms ({} changes each way)",
            percentile(&down_samples, 50.0),
            percentile(&down_samples, 99.0),
            percentile(&down_samples, 100.0),
            percentile(&up_samples, 50.0),
            percentile(&up_samples, 99.0),
            percentile(&up_samples, 100.0),
            down_samples.len()
        );
        down.0.samples.push(percentile(&down_samples, 50.0));
        down.1.samples.push(percentile(&down_samples, 99.0));
        up.0.samples.push(percentile(&up_samples, 50.0));
        up.1.samples.push(percentile(&up_samples, 99.0));
    }
    stop.0.send_replace(true);
    let background_invoices = load.await?;
    eprintln!("latency: {background_invoices} background invoices meanwhile");
    Ok(vec![down.0, down.1, up.0, up.1])
}

/// Scenario 4 and 7: a new satellite for a store of `init_records` records
/// with the items and names, until ready; then every report on that data.
pub async fn init_and_reports(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let (db, master) = master_with_sites(0, &[]).await;
    let site = master.add_site(2).await;
    let store_id = site.store.expect("store").id;
    let conn = db.connect().await;
    let seeding = Instant::now();
    data::seed_store(
        &conn,
        &store_id,
        sizes.init_records,
        sizes.init_items,
        sizes.init_names,
    )
    .await?;
    let expected = data::store_counts(&conn, &store_id).await?;
    eprintln!(
        "init: seeded {} store records ({expected:?}), {} items, {} names in {:.1?}",
        sizes.init_records,
        sizes.init_items,
        sizes.init_names,
        seeding.elapsed()
    );
    let mut ready = Figure::new(
        "init",
        format!(
            "new satellite ready: {} records + {} items + {} names",
            sizes.init_records, sizes.init_items, sizes.init_names
        ),
        "s",
    )
    .target(Target::Below(30.0));
    let mut bulk = Figure::new(
        "init",
        "bulk load of the same rows, satellite schema (ceiling)",
        "s",
    );
    let mut ratio =
        Figure::new("init", "initialisation / bulk load", "ratio").target(Target::Below(1.3));
    let mut peak = Figure::new("init", "satellite peak resident memory", "MiB");
    let mut master_peak = Figure::new("init", "master peak resident memory (info)", "MiB");
    for run in 0..sizes.runs {
        // Each run is a new satellite database for Sync ID 2, as a replaced
        // machine is: its identity made first and adopted, as an operator
        // does, so the master takes it (outside the timed part).
        let file = TestDb::new(Backend::Sqlite);
        satellite_agent::handover::open(&file.url())
            .await
            .map_err(anyhow::Error::msg)?;
        if run > 0 {
            let id = storesync_tests::cluster::database_id(&file).await;
            master.adopt(2, &id).await;
        }
        let started = Instant::now();
        let satellite =
            Satellite::start_on(file, &master.url(), 2, "streaming", &with_defaults(&[]));
        let mut agent = satellite.agent().await;
        wait_for_status(&agent, "the new satellite to initialise", |s| s.initialised).await?;
        let elapsed = started.elapsed();
        let pid = satellite.process.child.id();
        let satellite_peak = peak_resident_mib(pid);
        let local = satellite.db.connect().await;
        let got = data::store_counts(&local, &store_id).await?;
        anyhow::ensure!(
            got == expected,
            "satellite holds {got:?}, master {expected:?}"
        );
        let status = agent.status(pb::AgentStatusRequest {}).await?.into_inner();
        eprintln!(
            "init run {run}: ready in {elapsed:.2?} ({} records reported), satellite peak {satellite_peak:.1} MiB",
            status.init_records_total
        );
        // The ceiling: the rows the satellite now holds, loaded in bulk.
        let (rows, took) = crate::ceilings::bulk_load(&local).await?;
        eprintln!(
            "init run {run}: bulk load of the same {rows} rows {took:.2?}: ratio {:.2}",
            elapsed.as_secs_f64() / took.as_secs_f64()
        );
        bulk.samples.push(took.as_secs_f64());
        ratio
            .samples
            .push(elapsed.as_secs_f64() / took.as_secs_f64());
        ready.samples.push(elapsed.as_secs_f64());
        peak.samples.push(satellite_peak);
        master_peak
            .samples
            .push(peak_resident_mib(master.process.child.id()));
        drop(local);
        drop(satellite);
    }

    // Stock moving to and from another store, for the reports on it (after
    // the initialisations: the satellite's row counts above are of the
    // store data set alone).
    let other = master.add_site(3).await.store.expect("store").id;
    let seeding = Instant::now();
    data::seed_transfers(
        &conn,
        &store_id,
        &other,
        sizes.init_transfers,
        sizes.init_items,
    )
    .await?;
    eprintln!(
        "init: seeded {} transfers and {} requisitions in {:.1?}",
        sizes.init_transfers,
        (sizes.init_transfers / 5).max(1),
        seeding.elapsed()
    );
    // The reports read what was seeded: 3 transfers in 10 in transit, 1 in
    // 100 received short.
    let mut client = master.reports().await;
    let in_transit = client
        .stock_in_transit(pb::StockInTransitRequest::default())
        .await?
        .into_inner();
    let want = (1..=sizes.init_transfers).filter(|g| g % 10 < 3).count() as u64;
    anyhow::ensure!(
        in_transit.rows.iter().map(|r| r.transfers).sum::<u64>() == want,
        "StockInTransit shows {:?}, not {want} transfers",
        in_transit.rows
    );
    let short = client
        .receipt_discrepancies(pb::ReceiptDiscrepanciesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let want = (1..=sizes.init_transfers).filter(|g| g % 100 == 55).count();
    anyhow::ensure!(
        short.rows.len() == want.min(1000),
        "ReceiptDiscrepancies lists {} transfers on its first page, not {}",
        short.rows.len(),
        want.min(1000)
    );
    let open = client
        .open_requisitions(pb::OpenRequisitionsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(
        !open.rows.is_empty() && open.rows.iter().all(|r| r.lines == 3),
        "OpenRequisitions lists {} requests (each should have 3 lines)",
        open.rows.len()
    );
    let mut figures = vec![ready, bulk, ratio, peak, master_peak];
    figures.extend(reports(sizes, &master).await?);
    Ok(figures)
}

/// Scenario 7: each report through the master's ReportService.
async fn reports(sizes: &Sizes, master: &Master) -> anyhow::Result<Vec<Figure>> {
    let mut client = master.reports().await;
    let runs = sizes.runs.max(5);
    let mut figures = Vec::new();
    let target = Target::Below(1000.0);
    macro_rules! time {
        ($label:expr, $call:expr) => {{
            let mut figure = Figure::new("reports", $label, "ms").target(target);
            for _ in 0..runs {
                let started = Instant::now();
                let response = $call.await?.into_inner();
                figure.samples.push(ms(started.elapsed()));
                std::hint::black_box(response);
            }
            figures.push(figure);
        }};
    }
    time!(
        "StockOnHand, first page of 1000",
        client.stock_on_hand(pb::StockOnHandRequest {
            page_size: 1000,
            ..Default::default()
        })
    );
    time!(
        "StockOnHand, item code prefix I0123",
        client.stock_on_hand(pb::StockOnHandRequest {
            item_code_prefix: "I0123".into(),
            page_size: 1000,
            ..Default::default()
        })
    );
    time!(
        "StockOnHand, include_zero, first page",
        client.stock_on_hand(pb::StockOnHandRequest {
            include_zero: true,
            page_size: 1000,
            ..Default::default()
        })
    );
    time!(
        "StoreActivity, 30 days",
        client.store_activity(pb::StoreActivityRequest {
            from_date: "2026-03-01".into(),
            to_date: "2026-03-30".into(),
            ..Default::default()
        })
    );
    time!(
        "StoreActivity, a year per day (first page)",
        client.store_activity(pb::StoreActivityRequest {
            from_date: "2026-01-01".into(),
            to_date: "2026-12-31".into(),
            per_day: true,
            ..Default::default()
        })
    );
    time!(
        "ExpiringStock, before 2026-04-01, first page",
        client.expiring_stock(pb::ExpiringStockRequest {
            before: "2026-04-01".into(),
            page_size: 1000,
            ..Default::default()
        })
    );
    let transfers = sizes.init_transfers;
    time!(
        format!("StockInTransit, {transfers} transfers"),
        client.stock_in_transit(pb::StockInTransitRequest::default())
    );
    time!(
        "OpenRequisitions, first page",
        client.open_requisitions(pb::OpenRequisitionsRequest {
            page_size: 1000,
            ..Default::default()
        })
    );
    time!(
        "ReceiptDiscrepancies, first page",
        client.receipt_discrepancies(pb::ReceiptDiscrepanciesRequest {
            page_size: 1000,
            ..Default::default()
        })
    );
    time!("SyncStatus", client.sync_status(pb::SyncStatusRequest {}));
    Ok(figures)
}

/// Scenario 5: the master's resident memory with idle connected satellites,
/// and an idle satellite's, sampled once a second for five seconds.
pub async fn footprint(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let count = sizes.footprint_satellites;
    let (_db, master) = master_with_sites(count, &[]).await;
    create_items(&master, "FP", 20).await;
    let satellites = start_satellites(&master.url(), count, &[]).await;
    // Settle: every session past its snapshot and heartbeating.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected = master
        .reports()
        .await
        .sync_status(pb::SyncStatusRequest {})
        .await?
        .into_inner()
        .sites
        .iter()
        .filter(|s| s.connected)
        .count();
    anyhow::ensure!(
        connected == count as usize,
        "{connected} of {count} satellites are connected"
    );
    let pid = master.process.child.id();
    let mut master_rss = Figure::new(
        "footprint",
        format!("master resident, {count} idle satellites"),
        "MiB",
    )
    .target(Target::Below(64.0));
    let mut satellite_rss = Figure::new(
        "footprint",
        "idle satellite resident (median of all)",
        "MiB",
    )
    .target(Target::Below(20.0));
    let mut satellite_max = Figure::new("footprint", "idle satellite resident (largest)", "MiB");
    // Of those: heap, stacks and buffers; the rest is the binary's own
    // pages (see `procs::anonymous_mib`).
    let mut master_anon = Figure::new(
        "footprint",
        format!("master anonymous (heap etc.), {count} idle satellites"),
        "MiB",
    );
    let mut satellite_anon = Figure::new(
        "footprint",
        "idle satellite anonymous (median of all)",
        "MiB",
    );
    for _ in 0..5 {
        master_rss.samples.push(resident_mib(pid));
        master_anon.samples.push(anonymous_mib(pid));
        let mut anon: Vec<f64> = satellites
            .iter()
            .map(|s| anonymous_mib(s.process.child.id()))
            .collect();
        anon.sort_by(f64::total_cmp);
        satellite_anon.samples.push(anon[anon.len() / 2]);
        let mut all: Vec<f64> = satellites
            .iter()
            .map(|s| resident_mib(s.process.child.id()))
            .collect();
        all.sort_by(f64::total_cmp);
        satellite_rss.samples.push(all[all.len() / 2]);
        satellite_max.samples.push(all[all.len() - 1]);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "footprint: master peak so far {:.1} MiB",
        peak_resident_mib(pid)
    );
    Ok(vec![
        master_rss,
        master_anon,
        satellite_rss,
        satellite_anon,
        satellite_max,
    ])
}

/// Scenario 6: bytes on the wire per record, each way, uncompressed, gzip
/// (each message alone) and deflate (one stream per session), counted by a
/// proxy between satellite and master; against the same records encoded as
/// protobuf and as JSON. Also the CPU both processes spent per record, to
/// weigh compression's cost on a fast link.
pub async fn wire(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let records = sizes.wire_records;
    let mut figures = Vec::new();
    for compression in ["none", "gzip", "deflate"] {
        let (db, master) = master_with_sites(1, &[]).await;
        let conn = db.connect().await;
        let items: Vec<String> = create_items(&master, "W", 50)
            .await
            .into_iter()
            .map(|i| i.id)
            .collect();
        let (supplier, _) = create_trading_partners(&master, "W").await;
        let proxy = Proxy::start(master.process.addr).await;
        let extra = [("STORESYNC_SYNC_COMPRESSION", compression)];
        let mut satellite = Satellite::start(&proxy.url(), 2, "streaming", &with_defaults(&extra));
        satellite.wait_initialised(PATIENCE).await;
        let mut agent = satellite.agent().await;

        // Downstream: master-data changes.
        let master_pid = master.process.child.id();
        let cpu_of = |satellite: &Satellite| {
            cpu_seconds(master_pid) + cpu_seconds(satellite.process.child.id())
        };
        let cpu_before = cpu_of(&satellite);
        let (_, down_before) = proxy.bytes();
        let head = data::master_data_changes(&conn, "W", records).await?;
        wait_for_status(&agent, "the satellite to apply the changes", |s| {
            s.downstream_cursor >= head
        })
        .await?;
        let (_, down_after) = proxy.bytes();
        let down_cpu = cpu_of(&satellite) - cpu_before;

        // Upstream: a backlog written while the satellite was stopped.
        anyhow::ensure!(
            satellite
                .process
                .terminate(Duration::from_secs(20))
                .is_some(),
            "satellite did not stop"
        );
        let store_id = data_store_id(&conn, 2).await?;
        let backlog = Backlog::goods_received(&store_id, &supplier.id, &items, records);
        let local = satellite.db.connect().await;
        let last = backlog.write_to_satellite(&local).await?;
        local.close().await?;
        let (up_before, _) = proxy.bytes();
        satellite.start_again();
        let up_cpu_before = cpu_of(&satellite);
        agent = satellite.agent().await;
        wait_for(
            "the master to acknowledge the backlog",
            Duration::from_millis(20),
            || async {
                Ok(acked_seqs(&conn)
                    .await?
                    .iter()
                    .any(|(s, a)| *s == 2 && *a >= last as i64))
            },
        )
        .await?;
        let (up_after, _) = proxy.bytes();
        let up_cpu = cpu_of(&satellite) - up_cpu_before;
        drop(agent);
        let down = (down_after - down_before) as f64 / records as f64;
        let up = (up_after - up_before) as f64 / backlog.len() as f64;
        eprintln!("wire {compression}: downstream {down:.1} B/record, upstream {up:.1} B/record; CPU (master + satellite) downstream {:.1} µs/record, upstream {:.1} µs/record", down_cpu * 1e6 / records as f64, up_cpu * 1e6 / backlog.len() as f64);
        figures.push(
            Figure::new(
                "wire",
                format!(
                    "downstream CPU (master + satellite) per record, compression {compression}"
                ),
                "µs",
            )
            .sample(down_cpu * 1e6 / records as f64),
        );
        figures.push(
            Figure::new(
                "wire",
                format!("upstream CPU (master + satellite) per record, compression {compression}"),
                "µs",
            )
            .sample(up_cpu * 1e6 / backlog.len() as f64),
        );
        figures.push(
            Figure::new(
                "wire",
                format!("downstream bytes/record, compression {compression}"),
                "B",
            )
            .sample(down),
        );
        figures.push(
            Figure::new(
                "wire",
                format!("upstream bytes/record, compression {compression}"),
                "B",
            )
            .sample(up),
        );
        if compression == "none" {
            let master_data = data::master_data_records("W", records, 0);
            let (proto_down, json_down) = encoded_sizes(&master_data);
            let (proto_up, json_up) = encoded_sizes(&backlog.records);
            figures.push(
                Figure::new("wire", "downstream records as protobuf (payload only)", "B")
                    .sample(proto_down),
            );
            figures.push(Figure::new("wire", "downstream records as JSON", "B").sample(json_down));
            figures.push(
                Figure::new("wire", "upstream records as protobuf (payload only)", "B")
                    .sample(proto_up),
            );
            figures.push(Figure::new("wire", "upstream records as JSON", "B").sample(json_up));
        }
    }
    Ok(figures)
}

/// Mean protobuf and JSON bytes of `records`.
fn encoded_sizes(records: &[pb::SyncRecord]) -> (f64, f64) {
    use prost::Message;
    let proto: usize = records.iter().map(Message::encoded_len).sum();
    let json: usize = records
        .iter()
        .map(|r| data::as_json(r).to_string().len())
        .sum();
    let n = records.len().max(1) as f64;
    (proto as f64 / n, json as f64 / n)
}

/// The store hosted by `sync_id`.
async fn data_store_id(db: &DatabaseConnection, sync_id: i32) -> anyhow::Result<String> {
    let row = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT store_id FROM site WHERE sync_id = $1",
            [sync_id.into()],
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no site {sync_id}"))?;
    Ok(row.try_get("", "store_id")?)
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces).
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        });
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    ticks.map_or(f64::NAN, |t| t / 100.0)
}

/// Scenario `verify`: the integrity check of a site whose store holds
/// `init_records` records (with the items and names): with no differences,
/// then with `verify_differing` rows changed at the site (report-only, so
/// every run sees the same differences).
pub async fn verify(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let (db, master) = master_with_sites(0, &[("STORESYNC_VERIFY_INTERVAL_MINUTES", "0")]).await;
    let site = master.add_site(2).await;
    let store_id = site.store.expect("store").id;
    let conn = db.connect().await;
    data::seed_store(
        &conn,
        &store_id,
        sizes.init_records,
        sizes.init_items,
        sizes.init_names,
    )
    .await?;
    let satellite = Satellite::start(&master.url(), 2, "streaming", &with_defaults(&[]));
    let agent = satellite.agent().await;
    wait_for_status(&agent, "the satellite to initialise", |s| s.initialised).await?;
    let admin = master.admin().await;
    let master_pid = master.process.child.id();
    let rows = sizes.init_records + sizes.init_items + sizes.init_names;

    let mut equal_time = Figure::new(
        "verify",
        format!("full check, no differences: {rows} rows"),
        "s",
    );
    let mut equal_cpu =
        Figure::new("verify", "master CPU time of that check", "s").target(Target::Below(5.0));
    let mut equal_bytes =
        Figure::new("verify", "bytes exchanged by that check", "KiB").target(Target::Below(1024.0));
    let differing = sizes.verify_differing;
    let mut diff_time = Figure::new(
        "verify",
        format!("full check, {differing} rows differing (report-only)"),
        "s",
    );
    let mut diff_cpu = Figure::new("verify", "master CPU time of that check", "s");
    let mut diff_bytes = Figure::new("verify", "bytes exchanged by that check", "KiB");
    let mut diff_trips = Figure::new("verify", "round trips of that check", "");

    let check = |report_only: bool| {
        let mut admin = admin.clone();
        async move {
            let answer = admin
                .verify_sites(pb::VerifySitesRequest {
                    sync_ids: vec![2],
                    report_only,
                    wait_seconds: 0,
                })
                .await?
                .into_inner();
            let result = answer
                .sites
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("no result"))?;
            Ok::<_, anyhow::Error>(result)
        }
    };
    for run in 0..sizes.runs {
        let cpu = cpu_seconds(master_pid);
        let started = Instant::now();
        let result = check(true).await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            result.outcome() == pb::VerifyOutcome::Equal,
            "the check of an unchanged site ended {:?} ({}), {} differing",
            result.outcome(),
            result.message,
            result.rows_differing
        );
        // The seeded rows, and the stores' own rows (the store, its name).
        anyhow::ensure!(
            result.rows_compared >= rows,
            "compared {} rows, expected at least {rows}",
            result.rows_compared
        );
        eprintln!(
            "verify run {run}: equal in {elapsed:.2?}, {} bytes, {} round trips",
            result.bytes_exchanged, result.round_trips
        );
        equal_time.samples.push(elapsed.as_secs_f64());
        equal_cpu.samples.push(cpu_seconds(master_pid) - cpu);
        equal_bytes
            .samples
            .push(result.bytes_exchanged as f64 / 1024.0);
    }

    // Rows changed behind the product's back at the site.
    let local = satellite.db.connect().await;
    local
        .execute_unprepared(&format!(
            "UPDATE stock_line SET batch = batch || '-edited' WHERE id IN \
             (SELECT id FROM stock_line ORDER BY id LIMIT {differing})"
        ))
        .await?;
    drop(local);
    for run in 0..sizes.runs {
        let cpu = cpu_seconds(master_pid);
        let started = Instant::now();
        let result = check(true).await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            result.rows_differing == differing,
            "named {} rows ({:?}: {}), expected exactly {differing}",
            result.rows_differing,
            result.outcome(),
            result.message
        );
        anyhow::ensure!(
            result
                .differences
                .iter()
                .all(|d| d.table() == pb::Table::StockLine
                    && d.side() == pb::DifferenceSide::BothDiffer),
            "a difference other than the changed stock lines"
        );
        eprintln!(
            "verify run {run}: {differing} differing in {elapsed:.2?}, {} bytes, {} round trips",
            result.bytes_exchanged, result.round_trips
        );
        diff_time.samples.push(elapsed.as_secs_f64());
        diff_cpu.samples.push(cpu_seconds(master_pid) - cpu);
        diff_bytes
            .samples
            .push(result.bytes_exchanged as f64 / 1024.0);
        diff_trips.samples.push(f64::from(result.round_trips));
    }
    Ok(vec![
        equal_time,
        equal_cpu,
        equal_bytes,
        diff_time,
        diff_cpu,
        diff_bytes,
        diff_trips,
    ])
}

/// Scenario `init-many`: the master's peak resident memory while new sites
/// initialise from it, one alone and then `init_many_satellites` started
/// together (every Sync ID by default), each on a master holding
/// `init_items` items and `init_names` names; and the time until the last
/// is initialised. The peak is reset (`/proc/<pid>/clear_refs`) after the
/// sites are added, so that it is the initialisations' own.
pub async fn init_many(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let many = sizes.init_many_satellites;
    let mut figures = Vec::new();
    for (count, target) in [(1, 64.0), (many, 256.0)] {
        let mut peak = Figure::new(
            "init-many",
            format!("master peak resident, {count} new satellite(s) at once"),
            "MiB",
        )
        .target(Target::Below(target));
        let mut last = Figure::new(
            "init-many",
            format!(
                "{count} new satellite(s), {} items + {} names: until the last is initialised",
                sizes.init_items, sizes.init_names
            ),
            "s",
        );
        if count > 1 {
            // Issue 18: within 1.5 x the 66 s that 63 sites took when it was filed.
            last = last.target(Target::Below(99.0));
        }
        for run in 0..sizes.runs {
            let (db, master) = master_with_sites(count, &[]).await;
            let conn = db.connect().await;
            data::seed_master_data(&conn, sizes.init_items, sizes.init_names).await?;
            let expected = [
                data::count_all(&conn, "item").await?,
                data::count_all(&conn, "name").await?,
            ];
            let pid = master.process.child.id();
            let before = resident_mib(pid);
            anyhow::ensure!(
                crate::procs::reset_peak(pid),
                "could not reset the master's peak resident memory (/proc/{pid}/clear_refs)"
            );
            let started = Instant::now();
            let satellites = start_satellites(&master.url(), count, &[]).await;
            let elapsed = started.elapsed();
            let master_peak = peak_resident_mib(pid);
            // What was timed really happened: every site holds all master data.
            for satellite in &satellites {
                let local = satellite.db.connect().await;
                let got = [
                    data::count_all(&local, "item").await?,
                    data::count_all(&local, "name").await?,
                ];
                local.close().await?;
                anyhow::ensure!(
                    got == expected,
                    "satellite {} holds {got:?} items and names, the master {expected:?}",
                    satellite.sync_id
                );
            }
            eprintln!(
                "init-many {count} run {run}: all initialised after {elapsed:.2?}; master resident {before:.1} MiB before, peak {master_peak:.1} MiB"
            );
            peak.samples.push(master_peak);
            last.samples.push(elapsed.as_secs_f64());
            drop(satellites);
            drop(master);
        }
        figures.push(peak);
        figures.push(last);
    }
    Ok(figures)
}
