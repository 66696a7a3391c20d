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
    init_tracing(config.log_format);
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, listen = %config.listen, "cannot listen (STORESYNC_LISTEN)");
            return ExitCode::FAILURE;
        }
    };
    match satellite_agent::serve(
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
    }
}

/// Logs to stderr (stdout carries only the `listening on` line), filtered by
/// `RUST_LOG` (default `info`).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
