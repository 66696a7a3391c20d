//! The gRPC server layer of both binaries: a span and the
//! `rpc.server.call.duration` metric for every call.
//!
//! # Spans
//! Each call is one `server` span named `storesync.v1.Service/Method`, with
//! the OpenTelemetry RPC attributes (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`, `network.peer.address` and
//! `network.peer.port`). A W3C `traceparent` (and `tracestate`) in the call's
//! metadata makes it a child of the caller's span, so
//! `grpcurl -H 'traceparent: 00-…-01' …` shows up inside the caller's trace.
//! The span also records `trace_id` and `span_id` as fields, so every log line
//! written during the call (JSON logs print the current span's fields) leads
//! to its trace. Health checks get no span: probes every few seconds would
//! bury the calls an operator looks for (they keep their metric).
//!
//! # Metric
//! The duration runs to the response headers. For unary calls that is the
//! call; a server stream's call ends when the stream opens (its messages are
//! measured by the sync metrics). The status is the `grpc-status` header of a
//! trailers-only response (errors), else 0: tonic puts an OK status in the
//! trailers, which this layer does not wait for. The span ends at the same
//! moment with the same status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::metrics::Histogram;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::KeyValue;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::catalog;

/// Bucket bounds in seconds, from 1 ms to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A span and [`catalog::RPC_SERVER_DURATION`] for every call.
#[derive(Clone)]
pub struct GrpcServerLayer {
    duration: Histogram<f64>,
}

impl GrpcServerLayer {
    /// Instruments from the global meter provider: build it after
    /// [`super::init`].
    pub fn new() -> Self {
        let desc = catalog::RPC_SERVER_DURATION;
        let duration = opentelemetry::global::meter(super::SCOPE)
            .f64_histogram(desc.name)
            .with_unit(desc.unit)
            .with_description(desc.description)
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        Self { duration }
    }
}

impl Default for GrpcServerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> tower::Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcServer {
            inner,
            duration: self.duration.clone(),
        }
    }
}

/// See [`GrpcServerLayer`].
#[derive(Clone)]
pub struct GrpcServer<S> {
    inner: S,
    duration: Histogram<f64>,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcServer<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let span = call_span(&request, &service, &method);
        let duration = self.duration.clone();
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = response.await;
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0),
                    // A transport-level failure: report it as UNKNOWN.
                    Err(_) => 2,
                };
                let current = tracing::Span::current();
                current.record("rpc.grpc.status_code", code);
                if server_error(code) {
                    current.record("otel.status_code", "ERROR");
                }
                duration.record(
                    started.elapsed().as_secs_f64(),
                    &[
                        KeyValue::new("rpc.system", "grpc"),
                        KeyValue::new("rpc.service", service),
                        KeyValue::new("rpc.method", method),
                        KeyValue::new("rpc.grpc.status_code", code),
                    ],
                );
                result
            }
            .instrument(span),
        )
    }
}

/// The span of one call (disabled for health checks), a child of the
/// caller's W3C context when the metadata carries one.
fn call_span<B>(request: &http::Request<B>, service: &str, method: &str) -> tracing::Span {
    if service == "grpc.health.v1.Health" {
        return tracing::Span::none();
    }
    let peer = request
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr());
    let span = tracing::info_span!(
        parent: None,
        "rpc.server",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        network.peer.address = peer.map(|a| tracing::field::display(a.ip())),
        network.peer.port = peer.map(|a| a.port()),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    super::propagation::set_parent_from_headers(&span, request.headers());
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
        span.record("span_id", tracing::field::display(span_context.span_id()));
    }
    span
}

/// gRPC codes that are the server's failure, not the caller's (the
/// OpenTelemetry RPC conventions' list for server spans).
fn server_error(code: i64) -> bool {
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// `/pkg.Service/Method` into its service and method; anything else (a probe
/// of a wrong path) is reported under `unknown` so the label set stays bounded.
fn split_path(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method))
            if !service.is_empty() && !method.is_empty() && !method.contains('/') =>
        {
            (service.to_owned(), method.to_owned())
        }
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn paths_split_into_service_and_method_and_junk_stays_bounded() {
        assert_eq!(
            split_path("/storesync.v1.SyncService/Sync"),
            ("storesync.v1.SyncService".to_owned(), "Sync".to_owned())
        );
        assert_eq!(
            split_path("/a/b/c"),
            ("unknown".to_owned(), "unknown".to_owned())
        );
        assert_eq!(
            split_path("/"),
            ("unknown".to_owned(), "unknown".to_owned())
        );
    }
}
