//! `master-service [serve]`: reads the configuration and runs [`master_service::serve`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use master_service::config::{Args, Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "master-service", version, about = "The storesync master")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Command {
    /// Run migrations and serve gRPC (the default).
    Serve,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` is the only command, and the default.
    let (Some(Command::Serve) | None) = cli.command;
    let config = match Config::load(cli.args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("master-service: {error}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("master-service: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("master-service: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} ({e}); change STORESYNC_LISTEN (--listen)",
                config.listen
            )
        })?;
    master_service::serve(
        listener,
        config,
        storesync_shared::server::shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Logs to stderr (stdout carries only the lines operators and tests read),
/// filtered by `RUST_LOG` (default `info`).
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
