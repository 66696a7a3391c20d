//! W3C trace context (`traceparent`, `tracestate`) carried inside sync batches,
//! and read from a unary call's metadata.
//!
//! Per-call gRPC metadata would make a whole sync session one trace; a batch
//! carries its own context (`UpstreamBatch.trace_context`,
//! `DownstreamBatch.trace_context`), so the sender's span for one batch and
//! the receiver's apply span of that batch are one trace.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C context of `span`, for a batch's `trace_context`. Empty when
/// traces are not exported (the span has no OpenTelemetry context then).
pub fn inject(span: &tracing::Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
}

/// The W3C `traceparent` of `span`, for storing beside what it wrote (empty
/// when traces are not exported).
pub fn traceparent(span: &tracing::Span) -> String {
    inject(span).remove("traceparent").unwrap_or_default()
}

/// Links `span` to each span named by a stored `traceparent` (the writes a
/// batch carries), at most `limit` of them; malformed or empty ones are skipped.
pub fn add_links<'a>(
    span: &tracing::Span,
    traceparents: impl IntoIterator<Item = &'a str>,
    limit: usize,
) {
    use opentelemetry::trace::TraceContextExt;
    let propagator = TraceContextPropagator::new();
    let mut seen = std::collections::HashSet::new();
    for traceparent in traceparents {
        if seen.len() >= limit {
            break;
        }
        if traceparent.is_empty() || !seen.insert(traceparent) {
            continue;
        }
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let context = propagator.extract(&carrier);
        let linked = context.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
}

/// Makes `span` a child of the context in `carrier` (a received batch's
/// `trace_context`). A missing or malformed context leaves `span` a root.
pub fn set_parent(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if carrier.is_empty() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(carrier);
    // Fails only when the span is already started or not exported: it stays a root.
    let _ = span.set_parent(parent);
}

/// Makes `span` a child of the W3C context in a call's metadata (HTTP/2
/// headers), if it carries one; otherwise `span` stays a root.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only when the span is not exported: it stays a root.
    let _ = span.set_parent(parent);
}

/// Reads propagation fields from HTTP headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
