//! storesync-bench: the benchmark program.
//!
//! Starts a master on PostgreSQL and satellites as real processes on this
//! machine (the release binaries when built with `--release`), runs each
//! scenario several times and prints one table of medians with their spread;
//! `--json` prints the same figures for machines. Nothing here asserts a time:
//! each figure is shown against its target and the reader judges.
//!
//! ```text
//! cargo run --release -p storesync-bench -- all
//! cargo run --release -p storesync-bench -- upstream latency --runs 5
//! cargo run -p storesync-bench -- --smoke all      # tiny sizes, CI
//! ```
//!
//! PostgreSQL comes from `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); every scenario makes its
//! own scratch database there and drops it afterwards.
//!
//! # Layout
//! - `report`: figures, medians, the table and the JSON
//! - `data`: backlogs, master-data changes, the initialisation data set, COPY
//! - `procs`: memory of the processes under test
//! - `ceilings`: the satellite's ceilings: the same rows bulk-inserted into a
//!   scratch SQLite file of the satellite's schema
//! - `scenarios`: the nine scenarios (`verify`: the integrity check,
//!   `init-many`: the master's memory while many sites initialise at once)
//! - `storm`: the reconnect storm (the master restarted, every site's
//!   backlog sent at once)

mod ceilings;
mod data;
mod procs;
mod report;
mod scenarios;
mod storm;

use clap::{Parser, ValueEnum};

/// The scenarios, in the order `all` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Satellites' backlogs committed on the master, against PostgreSQL COPY.
    Upstream,
    /// Master-data changes reaching 1 and 63 satellites.
    Downstream,
    /// One change each way in streaming mode, p50/p99.
    Latency,
    /// A new satellite for a store of 1,000,000 records; then the reports on that data.
    Init,
    /// Resident memory: the master with 63 idle satellites, an idle satellite.
    Footprint,
    /// Bytes (and CPU) per record on the wire, uncompressed, gzip and deflate, against JSON.
    Wire,
    /// The integrity check of a site with the `init` store: no differences, then some.
    Verify,
    /// Master memory while many new satellites initialise at once (and one alone).
    InitMany,
    /// The master restarted while every site holds a backlog; all reconnect at once.
    Storm,
    /// Every scenario.
    All,
}

#[derive(Parser, Debug)]
#[command(name = "storesync-bench", about = "storesync benchmark program")]
struct Args {
    /// Scenarios to run (`all` for every one). `init` also runs the reports.
    #[arg(value_enum, required = true)]
    scenarios: Vec<Scenario>,
    /// Runs per figure (each figure is the median of its runs).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tiny sizes and one run: proves the program works (CI), measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Print the figures as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Satellites in the upstream scenario.
    #[arg(long, default_value_t = 4)]
    upstream_satellites: u32,
    /// Backlog records per satellite in the upstream scenario.
    #[arg(long, default_value_t = 50_000)]
    upstream_records: usize,
    /// Master-data changes in the downstream scenario.
    #[arg(long, default_value_t = 100_000)]
    downstream_changes: usize,
    /// Satellites of each downstream fan-out run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,63")]
    fanouts: Vec<u32>,
    /// Changes each way per run in the latency scenario.
    #[arg(long, default_value_t = 1000)]
    latency_changes: usize,
    /// Store records of the store a new satellite initialises.
    #[arg(long, default_value_t = 1_000_000)]
    init_records: u64,
    /// Transfers between two stores added to the `init` data for the reports
    /// on them (with a fifth as many requisitions).
    #[arg(long, default_value_t = 100_000)]
    init_transfers: u64,
    /// Rows changed at the site in the verify scenario.
    #[arg(long, default_value_t = 100)]
    verify_differing: u64,
    /// New satellites started together in the init-many scenario.
    #[arg(long, default_value_t = 63)]
    init_many_satellites: u32,
    /// Sites of the storm scenario.
    #[arg(long, default_value_t = 63)]
    storm_satellites: u32,
    /// Unsent records each site of the storm scenario holds.
    #[arg(long, default_value_t = 20_000)]
    storm_records: usize,
}

/// Sizes of one invocation.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub runs: usize,
    pub upstream_satellites: u32,
    pub upstream_records: usize,
    pub downstream_changes: usize,
    /// Satellites of each fan-out run.
    pub fanouts: Vec<u32>,
    pub latency_changes: usize,
    pub init_records: u64,
    pub init_items: u64,
    pub init_names: u64,
    /// Transfers (and a fifth as many requisitions) added for the reports.
    pub init_transfers: u64,
    /// Idle satellites of the footprint scenario.
    pub footprint_satellites: u32,
    pub wire_records: usize,
    pub verify_differing: u64,
    /// New satellites started together in the init-many scenario.
    pub init_many_satellites: u32,
    /// Sites of the storm scenario, each holding `storm_records` unsent records.
    pub storm_satellites: u32,
    pub storm_records: usize,
}

impl Sizes {
    fn from_args(args: &Args) -> Self {
        if args.smoke {
            return Self {
                runs: 1,
                upstream_satellites: 2,
                upstream_records: 2_000,
                downstream_changes: 2_000,
                fanouts: vec![1, 2],
                latency_changes: 50,
                init_records: 20_000,
                init_items: 2_000,
                init_names: 1_000,
                init_transfers: 500,
                footprint_satellites: 3,
                wire_records: 2_000,
                verify_differing: 10,
                init_many_satellites: 3,
                storm_satellites: 3,
                storm_records: 1_000,
            };
        }
        Self {
            runs: args.runs.max(1),
            upstream_satellites: args.upstream_satellites.clamp(1, 63),
            upstream_records: args.upstream_records.max(1),
            downstream_changes: args.downstream_changes.max(2),
            fanouts: args.fanouts.iter().map(|n| (*n).clamp(1, 63)).collect(),
            latency_changes: args.latency_changes.max(10),
            init_records: args.init_records.max(10),
            init_items: 100_000,
            init_names: 50_000,
            init_transfers: args.init_transfers,
            footprint_satellites: 63,
            wire_records: 20_000,
            verify_differing: args.verify_differing.max(1),
            init_many_satellites: args.init_many_satellites.clamp(1, 63),
            storm_satellites: args.storm_satellites.clamp(1, 63),
            storm_records: args.storm_records.max(1),
        }
    }
}

/// Builds the master and satellite binaries of this profile when run by cargo,
/// so that `cargo run -p storesync-bench` is the one command.
fn build_binaries() -> anyhow::Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "-p", "master-service", "-p", "satellite-agent"]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let status = command.status()?;
    anyhow::ensure!(status.success(), "building the binaries failed");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var("TEST_DATABASE_URL").is_err() {
        std::env::set_var(
            "TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
    }
    // The processes' own logs: warnings and errors only, unless asked.
    if std::env::var("TEST_RUST_LOG").is_err() {
        std::env::set_var("TEST_RUST_LOG", "warn");
    }
    build_binaries()?;
    let sizes = Sizes::from_args(&args);
    let chosen: Vec<Scenario> = if args.scenarios.contains(&Scenario::All) {
        vec![
            Scenario::Upstream,
            Scenario::Downstream,
            Scenario::Latency,
            Scenario::Init,
            Scenario::Footprint,
            Scenario::Wire,
            Scenario::Verify,
            Scenario::InitMany,
            Scenario::Storm,
        ]
    } else {
        args.scenarios.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let profile = if cfg!(debug_assertions) {
        "debug (figures not representative)"
    } else {
        "release"
    };
    eprintln!(
        "storesync-bench: {} build, {} cores, sizes {sizes:?}",
        profile,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut figures = Vec::new();
    for scenario in chosen {
        eprintln!("--- scenario {scenario:?}");
        let started = std::time::Instant::now();
        let mut got = runtime.block_on(async {
            match scenario {
                Scenario::Upstream => scenarios::upstream(&sizes).await,
                Scenario::Downstream => scenarios::downstream(&sizes).await,
                Scenario::Latency => scenarios::latency(&sizes).await,
                Scenario::Init => scenarios::init_and_reports(&sizes).await,
                Scenario::Footprint => scenarios::footprint(&sizes).await,
                Scenario::Wire => scenarios::wire(&sizes).await,
                Scenario::Verify => scenarios::verify(&sizes).await,
                Scenario::InitMany => scenarios::init_many(&sizes).await,
                Scenario::Storm => storm::storm(&sizes).await,
                Scenario::All => unreachable!("expanded above"),
            }
        })?;
        eprintln!("--- scenario {scenario:?} took {:.1?}", started.elapsed());
        if !args.json {
            report::print_table(&got);
        }
        figures.append(&mut got);
    }
    if args.json {
        let all: Vec<serde_json::Value> = figures.iter().map(report::Figure::json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        println!("\nAll figures ({profile}):");
        report::print_table(&figures);
    }
    Ok(())
}
