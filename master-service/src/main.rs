//! `master-service [serve]`: reads the configuration and runs [`master_service::serve`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use master_service::config::{Args, Config, LogFormat};

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
    // The OTLP exporter's connection lives on the runtime: set up inside it.
    let telemetry = {
        let _runtime = runtime.enter();
        init_tracing(config.log_format)
    };
    let code = match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("master-service: {error:#}");
            ExitCode::FAILURE
        }
    };
    // Last: flush spans and metrics while the runtime still runs.
    telemetry.shutdown();
    code
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
/// filtered by `RUST_LOG` (default `info`); OpenTelemetry export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `storesync_shared::telemetry`).
fn init_tracing(format: LogFormat) -> storesync_shared::telemetry::Telemetry {
    storesync_shared::telemetry::init("master-service", format == LogFormat::Json)
}
