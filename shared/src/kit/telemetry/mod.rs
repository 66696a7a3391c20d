//! Logs, traces and metrics for both binaries.
//!
//! - Logs always go to stderr (text, or JSON with `STORESYNC_LOG_FORMAT=json`),
//!   filtered by `RUST_LOG`.
//! - When `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `…_METRICS_ENDPOINT`) is set,
//!   `tracing` spans are also exported as OpenTelemetry traces and the
//!   instruments of [`catalog`] as metrics, over OTLP/gRPC. The standard
//!   `OTEL_*` variables apply (service name, resource attributes, headers,
//!   timeouts, sampler, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_METRIC_EXPORT_INTERVAL`),
//!   and `OTEL_SDK_DISABLED=true` or `OTEL_{TRACES,METRICS}_EXPORTER=none`
//!   turn a signal off.
//! - [`propagation`] carries W3C trace context inside sync batches, so one
//!   batch is one trace across sites.
//! - [`grpc`] is the tower layer that makes a span and records the gRPC
//!   server metrics for every call.
//!
//! [`Telemetry::shutdown`] flushes what is buffered: call it last, after the
//! server has drained, while the tokio runtime is still running (the exporter's
//! connection lives on it).
//!
//! Not here: which instruments each binary records and when (`metrics` in each
//! binary), and the names themselves ([`catalog`]).

pub mod catalog;
pub mod grpc;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The instrumentation scope of every storesync span and instrument.
pub const SCOPE: &str = "storesync";

/// The OpenTelemetry providers of this process, when exporting. Keep it alive
/// until the end of `main` and call [`Telemetry::shutdown`].
#[must_use = "dropping it without `shutdown` loses the last spans and metrics"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Whether spans are exported (else only logged).
    pub fn traces_enabled(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Whether metrics are exported; without it instruments are no-ops and
    /// samplers that cost database reads need not run.
    pub fn metrics_enabled(&self) -> bool {
        self.meter_provider.is_some()
    }

    /// Exports what is buffered and stops the exporters. Blocks (the SDK's
    /// exporters run on their own threads): call it from `main` after the
    /// server stopped, or through `spawn_blocking`.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("telemetry: flushing traces failed: {error}");
            }
        }
        if let Some(provider) = self.meter_provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("telemetry: flushing metrics failed: {error}");
            }
        }
    }
}

/// Sets up logging and, when configured, OpenTelemetry export.
///
/// `service_name` is used when neither `OTEL_SERVICE_NAME` nor a `service.name`
/// in `OTEL_RESOURCE_ATTRIBUTES` names the service. With an OTLP endpoint set,
/// this must run inside a tokio runtime (the gRPC exporter's connection is
/// spawned on it). An exporter that cannot be built is reported on stderr and
/// that signal stays off: telemetry never stops the service.
pub fn init(service_name: &'static str, json_logs: bool) -> Telemetry {
    let telemetry = if sdk_disabled() {
        Telemetry {
            tracer_provider: None,
            meter_provider: None,
        }
    } else {
        let resource = resource(service_name);
        Telemetry {
            tracer_provider: signal_enabled("TRACES")
                .then(|| tracer_provider(resource.clone()))
                .flatten(),
            meter_provider: signal_enabled("METRICS")
                .then(|| meter_provider(resource))
                .flatten(),
        }
    };
    if let Some(provider) = &telemetry.meter_provider {
        opentelemetry::global::set_meter_provider(provider.clone());
        METRICS_EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<_> + Send + Sync> = if json_logs {
        Box::new(fmt.json())
    } else {
        Box::new(fmt)
    };
    let otel = telemetry.tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SCOPE))
            // The exporter's own transport must not trace itself (a span per
            // export would feed the next export forever).
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_default(tracing::Level::TRACE)
                    .with_target("h2", tracing::level_filters::LevelFilter::OFF)
                    .with_target("hyper", tracing::level_filters::LevelFilter::OFF)
                    .with_target("hyper_util", tracing::level_filters::LevelFilter::OFF)
                    .with_target("tonic", tracing::level_filters::LevelFilter::OFF)
                    .with_target("tower", tracing::level_filters::LevelFilter::OFF)
                    .with_target("opentelemetry", tracing::level_filters::LevelFilter::OFF)
                    .with_target(
                        "opentelemetry_sdk",
                        tracing::level_filters::LevelFilter::OFF,
                    )
                    .with_target(
                        "opentelemetry_otlp",
                        tracing::level_filters::LevelFilter::OFF,
                    ),
            )
    });
    // `try_init`: a second call (tests that serve in-process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    if telemetry.traces_enabled() || telemetry.metrics_enabled() {
        tracing::info!(
            traces = telemetry.traces_enabled(),
            metrics = telemetry.metrics_enabled(),
            "exporting OpenTelemetry over OTLP/gRPC"
        );
    }
    telemetry
}

static METRICS_EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports metrics: samplers that cost database reads
/// run only then.
pub fn metrics_exporting() -> bool {
    METRICS_EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// How often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, in ms,
/// default 60 s), bounded to 1–60 s: the period of gauges that are sampled.
pub fn metric_export_interval() -> std::time::Duration {
    let millis = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(60_000);
    std::time::Duration::from_millis(millis.clamp(1_000, 60_000))
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// `signal` is `TRACES` or `METRICS`: an endpoint is configured for it and its
/// exporter is not `none`.
fn signal_enabled(signal: &str) -> bool {
    let endpoint = env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || env_set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"));
    let exporter_off = std::env::var(format!("OTEL_{signal}_EXPORTER"))
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    endpoint && !exporter_off
}

/// The detected resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
/// SDK attributes), named `service_name` when the environment names nothing.
fn resource(service_name: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    if unnamed {
        Resource::builder().with_service_name(service_name).build()
    } else {
        detected
    }
}

fn tracer_provider(resource: Resource) -> Option<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|error| eprintln!("telemetry: traces stay off: {error}"))
        .ok()?;
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

fn meter_provider(resource: Resource) -> Option<SdkMeterProvider> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()
        .map_err(|error| eprintln!("telemetry: metrics stay off: {error}"))
        .ok()?;
    Some(
        SdkMeterProvider::builder()
            .with_periodic_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}
