//! The Grafana dashboard queries only metrics the code emits, under the names
//! the OpenTelemetry Collector's Prometheus exporter gives them, and has a
//! panel for every metric the code emits.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use storesync_shared::kit::telemetry::catalog;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../k8s/base/grafana/storesync-dashboard.json"
);

/// Every `expr` in the dashboard's panels.
fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(child, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| exprs(item, out)),
        _ => {}
    }
}

/// Identifiers in a PromQL expression that name storesync or gRPC server
/// metrics (label names such as `sync_id` or `rpc_method` do not match).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("storesync_") || token.starts_with("rpc_server_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_dashboard_query_uses_emitted_metrics_and_every_metric_has_a_panel() {
    let text = std::fs::read_to_string(DASHBOARD).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(
        queries.len() >= catalog::ALL.len(),
        "too few queries: {queries:?}"
    );

    let emitted: BTreeSet<String> = catalog::ALL
        .iter()
        .flat_map(|desc| desc.prometheus_names())
        .collect();
    let mut queried = BTreeSet::new();
    for expr in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "query names no storesync metric: {expr}");
        for name in names {
            assert!(
                emitted.contains(&name),
                "the dashboard queries {name}, which the code does not emit \
                 (emitted: {emitted:?}); query: {expr}"
            );
            queried.insert(name);
        }
    }
    for desc in catalog::ALL {
        assert!(
            desc.prometheus_names().iter().any(|n| queried.contains(n)),
            "no dashboard panel shows {} ({:?})",
            desc.name,
            desc.prometheus_names()
        );
    }
}

/// The alert rules shipped with the manifests (their firing is unit-tested
/// by promtool in CI) watch only metrics the code emits.
#[test]
fn every_alert_rule_uses_emitted_metrics() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../k8s/base/prometheus/storesync-alerts.yml"
    ))
    .unwrap();
    let emitted: BTreeSet<String> = catalog::ALL
        .iter()
        .flat_map(|desc| desc.prometheus_names())
        .collect();
    let exprs: Vec<&str> = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    let named: Vec<String> = exprs.iter().flat_map(|line| metric_names(line)).collect();
    assert!(
        named.len() >= 6,
        "too few metrics in the alert rules: {named:?}"
    );
    for name in named {
        assert!(
            emitted.contains(&name),
            "an alert rule watches {name}, which the code does not emit (emitted: {emitted:?})"
        );
    }
}

#[test]
fn prometheus_names_follow_the_collector_exporter() {
    assert_eq!(
        catalog::RECORDS_APPLIED.prometheus_names(),
        ["storesync_sync_records_applied_total"]
    );
    assert_eq!(
        catalog::BATCH_DURATION.prometheus_names(),
        [
            "storesync_sync_batch_duration_seconds_bucket",
            "storesync_sync_batch_duration_seconds_sum",
            "storesync_sync_batch_duration_seconds_count"
        ]
    );
    assert_eq!(
        catalog::INIT_PROGRESS.prometheus_names(),
        ["storesync_sync_initialisation_progress_ratio"]
    );
    assert_eq!(
        catalog::SITES_CONNECTED.prometheus_names(),
        ["storesync_sync_sessions"]
    );
    assert_eq!(
        metric_names("sum by (rpc_method) (rate(rpc_server_call_duration_seconds_count[5m]))"),
        ["rpc_server_call_duration_seconds_count"]
    );
}
