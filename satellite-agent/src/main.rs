//! `satellite-agent`: reads the configuration, sets up logging (stderr) and
//! runs [`satellite_agent::serve`] until SIGINT or SIGTERM.
//! `satellite-agent status` asks the running satellite for its sync state.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use satellite_agent::config::{Args, Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "satellite-agent",
    version,
    about = "storesync satellite: hosts one store's data and syncs it with the master"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Command {
    /// Ask the running satellite for its sync state (operator credentials from
    /// STORESYNC_OPERATOR_USER / STORESYNC_OPERATOR_PASSWORD).
    Status(satellite_agent::cli::StatusArgs),
    /// Move a retired database's unsent invoices to the database that syncs
    /// the site (both found from STORESYNC_DATABASE_URL / STORESYNC_DATA_DIR).
    #[command(subcommand)]
    Handover(Handover),
}

#[derive(Subcommand)]
enum Handover {
    /// Write every invoice the master has not acknowledged to FILE (JSON) and
    /// stop this database from syncing for good. Run it with the agent stopped.
    Export {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Create the invoices of FILE again in this database (initialised, and
    /// syncing the same store); ones already here are skipped.
    Import { file: std::path::PathBuf },
}

/// Runtime threads. A satellite serves one store: its database takes one
/// writer at a time, and two workers keep up with the sync stream and the
/// store's clients; tokio's default (one per core) only adds thread stacks
/// and malloc arenas on a bigger machine.
const WORKER_THREADS: usize = 2;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        // No cap on blocking threads: password checks, the blocking work
        // here, run at most two at a time with pooled working memory
        // (`storesync_shared::kit::auth`), however many threads there are.
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("satellite-agent: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command;
    if let Some(Command::Status(status)) = &command {
        return status_command(&cli.args, status).await;
    }
    let config = match Config::load(cli.args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("satellite-agent: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Handover(handover)) = command {
        return handover_command(&config, handover).await;
    }
    let telemetry = init_tracing(config.log_format);
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, listen = %config.listen, "cannot listen (STORESYNC_LISTEN)");
            return ExitCode::FAILURE;
        }
    };
    let code = match satellite_agent::serve(
        listener,
        config,
        storesync_shared::kit::server::shutdown_signal(),
        Some(satellite_agent::sync::start),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "satellite-agent stopped");
            ExitCode::FAILURE
        }
    };
    // Last: flush spans and metrics (blocking, so off the async threads).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

async fn status_command(args: &Args, status: &satellite_agent::cli::StatusArgs) -> ExitCode {
    let Some(password) = args.operator_password.clone() else {
        eprintln!("satellite-agent status: set the operator password with STORESYNC_OPERATOR_PASSWORD or --operator-password");
        return ExitCode::from(2);
    };
    let user = args
        .operator_user
        .clone()
        .unwrap_or_else(|| satellite_agent::config::DEFAULT_OPERATOR_USER.into());
    let url = storesync_shared::kit::cli::service_url(
        status.address.as_deref(),
        args.listen.as_deref(),
        satellite_agent::config::DEFAULT_LISTEN,
    );
    match satellite_agent::cli::status(&url, &user, &password, status).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("satellite-agent status: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn handover_command(config: &Config, command: Handover) -> ExitCode {
    use satellite_agent::handover;
    let db = match handover::open(&config.database_url).await {
        Ok(db) => db,
        Err(error) => {
            eprintln!("satellite-agent handover: {error}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Handover::Export { out } => {
            let exported = match handover::export(&db, config.sync_id.get()).await {
                Ok(exported) => exported,
                Err(error) => {
                    eprintln!("satellite-agent handover export: {error}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(error) = handover::write_file(&out, &exported) {
                eprintln!("satellite-agent handover export: {error}");
                return ExitCode::FAILURE;
            }
            println!(
                "exported {} unsent invoice(s) of store {} from database {} to {}; this database no longer syncs",
                exported.invoices.len(),
                exported.store_code,
                exported.database_id,
                out.display()
            );
            ExitCode::SUCCESS
        }
        Handover::Import { file } => {
            let done = match handover::read_file(&file) {
                Ok(handover) => handover::import(&db, &handover).await,
                Err(error) => Err(error),
            };
            match done {
                Ok(done) => {
                    for id in &done.created {
                        println!("imported invoice {id}");
                    }
                    for id in &done.skipped {
                        println!("skipped invoice {id}: already in this database");
                    }
                    for (id, why) in &done.refused {
                        println!("refused invoice {id}: {why}");
                    }
                    println!(
                        "{} imported, {} already here, {} refused",
                        done.created.len(),
                        done.skipped.len(),
                        done.refused.len()
                    );
                    if done.refused.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    eprintln!("satellite-agent handover import: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs to stderr (stdout carries only the `listening on` line), filtered by
/// `RUST_LOG` (default `info`); OpenTelemetry export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `storesync_shared::kit::telemetry`).
fn init_tracing(format: LogFormat) -> storesync_shared::kit::telemetry::Telemetry {
    storesync_shared::kit::telemetry::init("satellite-agent", format == LogFormat::Json)
}
