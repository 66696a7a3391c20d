//! The satellite's instruments, all in one place (names and units in
//! `storesync_shared::kit::telemetry::catalog`): what it applies from the master.
//! Its upstream backlog, lag and last sync are reported by the master, which
//! sees every site.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Instant;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::KeyValue;
use storesync_shared::kit::telemetry::catalog;
use storesync_shared::kit::telemetry::grpc::DURATION_BUCKETS;
use storesync_shared::proto::v1::SyncRecord;

struct SatelliteMetrics {
    records_applied: Counter<u64>,
    batch_duration: Histogram<f64>,
}

static METRICS: LazyLock<SatelliteMetrics> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter(storesync_shared::kit::telemetry::SCOPE);
    SatelliteMetrics {
        records_applied: meter
            .u64_counter(catalog::RECORDS_APPLIED.name)
            .with_unit(catalog::RECORDS_APPLIED.unit)
            .with_description(catalog::RECORDS_APPLIED.description)
            .build(),
        batch_duration: meter
            .f64_histogram(catalog::BATCH_DURATION.name)
            .with_unit(catalog::BATCH_DURATION.unit)
            .with_description(catalog::BATCH_DURATION.description)
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
    }
});

/// The table of each record of a downstream batch, taken before the batch is
/// moved into the apply.
pub fn tables_of(records: &[SyncRecord]) -> Vec<&'static str> {
    records.iter().map(catalog::table_name).collect()
}

/// A downstream batch committed on site `sync_id`; `applied` is 0 when it
/// had been applied before (a resend), else all of `tables`.
pub fn downstream_applied(sync_id: u32, tables: &[&'static str], applied: usize, started: Instant) {
    let site = KeyValue::new(catalog::SYNC_ID, i64::from(sync_id));
    if applied > 0 {
        let mut per_table: HashMap<&'static str, u64> = HashMap::new();
        for table in tables {
            *per_table.entry(table).or_default() += 1;
        }
        for (table, count) in per_table {
            METRICS.records_applied.add(
                count,
                &[
                    site.clone(),
                    KeyValue::new(catalog::DIRECTION, "downstream"),
                    KeyValue::new(catalog::TABLE, table),
                ],
            );
        }
    }
    METRICS.batch_duration.record(
        started.elapsed().as_secs_f64(),
        &[site, KeyValue::new(catalog::DIRECTION, "downstream")],
    );
}
