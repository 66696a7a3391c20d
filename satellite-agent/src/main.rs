//! `satellite-agent`: reads the configuration, sets up logging (stderr) and
//! runs [`satellite_agent::serve`] until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use satellite_agent::config::{Args, Config, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load(Args::parse()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("satellite-agent: {error}");
            return ExitCode::from(2);
        }
    };
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
        storesync_shared::server::shutdown_signal(),
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

/// Logs to stderr (stdout carries only the `listening on` line), filtered by
/// `RUST_LOG` (default `info`); OpenTelemetry export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `storesync_shared::telemetry`).
fn init_tracing(format: LogFormat) -> storesync_shared::telemetry::Telemetry {
    storesync_shared::telemetry::init("satellite-agent", format == LogFormat::Json)
}
