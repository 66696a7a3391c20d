//! An in-process OTLP/gRPC receiver: the collector's trace and metrics
//! services (from `opentelemetry-proto`), served on `127.0.0.1:0`, keeping
//! everything the binaries under test export so tests can look at it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// One received span, flattened.
#[derive(Clone, Debug)]
pub struct Span {
    /// `service.name` of the exporting process.
    pub service: String,
    /// Every resource attribute of the exporting process.
    pub resource: BTreeMap<String, String>,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    /// The OTLP span kind (2 is SERVER).
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    /// The spans this one links to: (trace id, span id).
    pub links: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One received data point, flattened.
#[derive(Clone, Debug)]
pub struct Point {
    pub service: String,
    pub metric: String,
    pub unit: String,
    pub attributes: BTreeMap<String, String>,
    /// The value of a sum or gauge; the count of a histogram.
    pub value: f64,
}

#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver; stopped by [`OtlpReceiver::stop`] (or on drop).
pub struct OtlpReceiver {
    addr: SocketAddr,
    store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Serves the trace and metrics services on an ephemeral loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let store = Store::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(store.clone()))
            .add_service(MetricsServiceServer::new(store.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            );
        let task = tokio::spawn(async move {
            server.await.expect("OTLP receiver");
        });
        Self {
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The `OTEL_EXPORTER_OTLP_ENDPOINT` of this receiver.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        let received = self.store.0.lock().unwrap();
        let mut spans = Vec::new();
        for request in &received.traces {
            for resource_spans in &request.resource_spans {
                let resource = attributes(
                    resource_spans
                        .resource
                        .as_ref()
                        .map_or(&[][..], |r| &r.attributes[..]),
                );
                let service = service_name(resource_spans.resource.as_ref());
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        spans.push(Span {
                            service: service.clone(),
                            resource: resource.clone(),
                            name: span.name.clone(),
                            trace_id: span.trace_id.clone(),
                            span_id: span.span_id.clone(),
                            parent_span_id: span.parent_span_id.clone(),
                            kind: span.kind,
                            attributes: attributes(&span.attributes),
                            links: span
                                .links
                                .iter()
                                .map(|l| (l.trace_id.clone(), l.span_id.clone()))
                                .collect(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Every data point received so far (all exports: cumulative sums repeat).
    pub fn points(&self) -> Vec<Point> {
        let received = self.store.0.lock().unwrap();
        let mut points = Vec::new();
        for request in &received.metrics {
            for resource_metrics in &request.resource_metrics {
                let service = service_name(resource_metrics.resource.as_ref());
                for scope in &resource_metrics.scope_metrics {
                    for m in &scope.metrics {
                        let mut push = |attrs: &[KeyValue], value: f64| {
                            points.push(Point {
                                service: service.clone(),
                                metric: m.name.clone(),
                                unit: m.unit.clone(),
                                attributes: attributes(attrs),
                                value,
                            });
                        };
                        match &m.data {
                            Some(metric::Data::Sum(sum)) => {
                                for p in &sum.data_points {
                                    push(&p.attributes, number(p.value));
                                }
                            }
                            Some(metric::Data::Gauge(gauge)) => {
                                for p in &gauge.data_points {
                                    push(&p.attributes, number(p.value));
                                }
                            }
                            Some(metric::Data::Histogram(histogram)) => {
                                for p in &histogram.data_points {
                                    push(&p.attributes, p.count as f64);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        points
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("OTLP receiver task");
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn number(value: Option<number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        None => f64::NAN,
    }
}

fn service_name(resource: Option<&Resource>) -> String {
    resource
        .map(|r| attributes(&r.attributes))
        .and_then(|a| a.get("service.name").cloned())
        .unwrap_or_default()
}

/// Attributes as strings (ints and doubles printed, e.g. `sync_id` = "2").
pub fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
        .collect()
}

fn any_value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
