//! gRPC server metrics as a tower layer: `rpc.server.call.duration` by
//! `rpc.service`, `rpc.method` and `rpc.grpc.status_code`.
//!
//! The duration runs to the response headers. For unary calls that is the
//! call; a server stream's call ends when the stream opens (its messages are
//! measured by the sync metrics). The status is the `grpc-status` header of a
//! trailers-only response (errors), else 0: tonic puts an OK status in the
//! trailers, which this layer does not wait for.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::metrics::Histogram;
use opentelemetry::KeyValue;

use super::catalog;

/// Bucket bounds in seconds, from 1 ms to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Records [`catalog::RPC_SERVER_DURATION`] for every call.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    duration: Histogram<f64>,
}

impl GrpcMetricsLayer {
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

impl Default for GrpcMetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            duration: self.duration.clone(),
        }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    duration: Histogram<f64>,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
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
        let duration = self.duration.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
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
        })
    }
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
