//! `master-service [serve]`: reads the configuration and runs [`master_service::serve`].
//! `master-service report …` asks a running master for a report;
//! `master-service verify --site N | --all [--report-only]` runs its integrity check;
//! `master-service demo` runs a master and two satellites with sample data.

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
    /// Ask the running master for a report (operator credentials from
    /// --operator-user / --operator-password or their STORESYNC_* variables).
    Report {
        #[command(subcommand)]
        report: master_service::cli::Report,
        #[command(flatten)]
        client: master_service::cli::ClientArgs,
    },
    /// Check that sites hold what the master holds for them, and repair
    /// what differs (unless --report-only), over their live sync sessions.
    Verify {
        #[command(flatten)]
        verify: master_service::cli::VerifyArgs,
        #[command(flatten)]
        client: master_service::cli::ClientArgs,
    },
    /// Start a master and two satellites with sample data; Ctrl-C stops them.
    Demo(master_service::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Report { report, client }) => {
            return report_command(&cli.args, report, client)
        }
        Some(Command::Verify { verify, client }) => {
            return client_command(
                &cli.args,
                "verify",
                client,
                |url, user, password, format, tls| {
                    Box::pin(master_service::cli::run_verify(
                        url, user, password, verify, format, tls,
                    ))
                },
            )
        }
        Some(Command::Demo(demo)) => return demo_command(demo),
        Some(Command::Serve) | None => {}
    }
    let config = match Config::load(cli.args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("master-service: {error}");
            return ExitCode::from(2);
        }
    };
    // No cap on blocking threads: the blocking work here is password checks,
    // which `storesync_shared::kit::auth` already runs at most two at a time, each
    // with a pooled buffer (its working memory), so more threads cannot mean
    // more of that memory.
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

/// A small runtime for the client commands.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, ExitCode> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => Ok(runtime.block_on(future)),
        Err(error) => {
            eprintln!("master-service: cannot start the runtime: {error}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn report_command(
    args: &Args,
    report: master_service::cli::Report,
    client: master_service::cli::ClientArgs,
) -> ExitCode {
    client_command(
        args,
        "report",
        client,
        |url, user, password, format, tls| {
            Box::pin(master_service::cli::run_report(
                url, user, password, report, format, tls,
            ))
        },
    )
}

/// The future of one client command.
type ClientFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + 'a>>;

/// Runs a client command against the master with the operator's credentials
/// and prints its text.
fn client_command(
    args: &Args,
    name: &str,
    client: master_service::cli::ClientArgs,
    call: impl for<'a> FnOnce(
        &'a str,
        &'a str,
        &'a str,
        storesync_shared::kit::cli::Format,
        &'a storesync_shared::kit::cli::ClientTls,
    ) -> ClientFuture<'a>,
) -> ExitCode {
    let Some(password) = args.operator_password.clone() else {
        eprintln!("master-service {name}: set the operator password with STORESYNC_OPERATOR_PASSWORD or --operator-password");
        return ExitCode::from(2);
    };
    let user = args
        .operator_user
        .clone()
        .unwrap_or_else(|| master_service::config::DEFAULT_OPERATOR_USER.into());
    let url = storesync_shared::kit::cli::service_url(
        client.address.as_deref(),
        args.listen.as_deref(),
        master_service::config::DEFAULT_LISTEN,
    );
    let outcome = block_on(call(&url, &user, &password, client.format, &client.tls));
    match outcome {
        Ok(Ok(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("master-service {name}: {error}");
            ExitCode::FAILURE
        }
        Err(code) => code,
    }
}

fn demo_command(demo: master_service::demo::DemoArgs) -> ExitCode {
    match block_on(master_service::demo::run(demo)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("master-service demo: {error}");
            ExitCode::FAILURE
        }
        Err(code) => code,
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
        storesync_shared::kit::server::shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Logs to stderr (stdout carries only the lines operators and tests read),
/// filtered by `RUST_LOG` (default `info`); OpenTelemetry export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `storesync_shared::kit::telemetry`).
fn init_tracing(format: LogFormat) -> storesync_shared::kit::telemetry::Telemetry {
    storesync_shared::kit::telemetry::init("master-service", format == LogFormat::Json)
}
