//! The master's instruments, all in one place (names and units in
//! `storesync_shared::kit::telemetry::catalog`).
//!
//! Events are recorded where they happen (a session opens or closes, a batch
//! is applied or refused, a login fails). Per-site state — backlog, downstream
//! lag, last successful sync, initialisation progress — lives in the database,
//! so [`run_site_sampler`] reads it there every export interval: every replica
//! reports the same values (dashboards take `max` per site), and a site whose
//! session runs on another replica is still covered.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};
use opentelemetry::KeyValue;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::kit::telemetry::catalog::{self, MetricDesc};
use storesync_shared::kit::telemetry::grpc::DURATION_BUCKETS;
use storesync_shared::proto::v1::SyncRecord;

use crate::entities::{change_log, site, site_status};
use crate::sync::error::ApplyError;

/// The instruments; built on first use from the global meter provider, which
/// `main` sets up before serving.
pub struct MasterMetrics {
    sessions: UpDownCounter<i64>,
    records_applied: Counter<u64>,
    batch_duration: Histogram<f64>,
    auth_failures: Counter<u64>,
    batches_rejected: Counter<u64>,
    upstream_backlog: Gauge<u64>,
    downstream_pending: Gauge<u64>,
    downstream_delay: Gauge<f64>,
    last_success: Gauge<f64>,
    init_progress: Gauge<f64>,
    protocol_version: Gauge<u64>,
    ready: Gauge<u64>,
    integrity_checked: Counter<u64>,
    integrity_differing: Counter<u64>,
    integrity_repaired: Counter<u64>,
    integrity_last_success: Gauge<f64>,
}

static METRICS: LazyLock<MasterMetrics> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter(storesync_shared::kit::telemetry::SCOPE);
    MasterMetrics {
        sessions: up_down(&meter, catalog::SITES_CONNECTED),
        records_applied: counter(&meter, catalog::RECORDS_APPLIED),
        batch_duration: meter
            .f64_histogram(catalog::BATCH_DURATION.name)
            .with_unit(catalog::BATCH_DURATION.unit)
            .with_description(catalog::BATCH_DURATION.description)
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
        auth_failures: counter(&meter, catalog::AUTH_FAILURES),
        batches_rejected: counter(&meter, catalog::BATCHES_REJECTED),
        upstream_backlog: meter
            .u64_gauge(catalog::UPSTREAM_BACKLOG.name)
            .with_unit(catalog::UPSTREAM_BACKLOG.unit)
            .with_description(catalog::UPSTREAM_BACKLOG.description)
            .build(),
        downstream_pending: meter
            .u64_gauge(catalog::DOWNSTREAM_PENDING.name)
            .with_unit(catalog::DOWNSTREAM_PENDING.unit)
            .with_description(catalog::DOWNSTREAM_PENDING.description)
            .build(),
        downstream_delay: f64_gauge(&meter, catalog::DOWNSTREAM_DELAY),
        last_success: f64_gauge(&meter, catalog::LAST_SUCCESS),
        init_progress: f64_gauge(&meter, catalog::INIT_PROGRESS),
        protocol_version: meter
            .u64_gauge(catalog::SITE_PROTOCOL_VERSION.name)
            .with_unit(catalog::SITE_PROTOCOL_VERSION.unit)
            .with_description(catalog::SITE_PROTOCOL_VERSION.description)
            .build(),
        ready: meter
            .u64_gauge(catalog::SERVER_READY.name)
            .with_unit(catalog::SERVER_READY.unit)
            .with_description(catalog::SERVER_READY.description)
            .build(),
        integrity_checked: counter(&meter, catalog::INTEGRITY_CHECKED),
        integrity_differing: counter(&meter, catalog::INTEGRITY_DIFFERING),
        integrity_repaired: counter(&meter, catalog::INTEGRITY_REPAIRED),
        integrity_last_success: f64_gauge(&meter, catalog::INTEGRITY_LAST_SUCCESS),
    }
});

fn counter(meter: &Meter, desc: MetricDesc) -> Counter<u64> {
    meter
        .u64_counter(desc.name)
        .with_unit(desc.unit)
        .with_description(desc.description)
        .build()
}

fn up_down(meter: &Meter, desc: MetricDesc) -> UpDownCounter<i64> {
    meter
        .i64_up_down_counter(desc.name)
        .with_unit(desc.unit)
        .with_description(desc.description)
        .build()
}

fn f64_gauge(meter: &Meter, desc: MetricDesc) -> Gauge<f64> {
    meter
        .f64_gauge(desc.name)
        .with_unit(desc.unit)
        .with_description(desc.description)
        .build()
}

fn site(sync_id: u32) -> KeyValue {
    KeyValue::new(catalog::SYNC_ID, i64::from(sync_id))
}

/// An integrity check of `sync_id` ended with `result`.
pub fn integrity_checked(sync_id: u32, result: &storesync_shared::proto::v1::SiteVerification) {
    use storesync_shared::proto::v1::VerifyOutcome;
    let outcome = result.outcome();
    METRICS.integrity_checked.add(
        1,
        &[
            site(sync_id),
            KeyValue::new("outcome", outcome.as_str_name()),
        ],
    );
    METRICS
        .integrity_differing
        .add(result.rows_differing, &[site(sync_id)]);
    METRICS
        .integrity_repaired
        .add(result.rows_repaired, &[site(sync_id)]);
    if matches!(outcome, VerifyOutcome::Equal | VerifyOutcome::Different) {
        METRICS
            .integrity_last_success
            .record(result.finished_at_ms as f64 / 1000.0, &[site(sync_id)]);
    }
}

/// A session of `sync_id` opened on this process.
pub fn session_opened(sync_id: u32) {
    METRICS.sessions.add(1, &[site(sync_id)]);
}

/// That session ended.
pub fn session_closed(sync_id: u32) {
    METRICS.sessions.add(-1, &[site(sync_id)]);
}

/// The table of each record of an upstream batch, taken before the batch is
/// moved into the apply.
pub fn tables_of(records: &[SyncRecord]) -> Vec<&'static str> {
    records.iter().map(catalog::table_name).collect()
}

/// An upstream batch of `sync_id` committed: `applied` records were new. The
/// apply skips resent records at the batch's start, so the new ones are the
/// last `applied` of `tables`.
pub fn upstream_applied(sync_id: u32, tables: &[&'static str], applied: u32, started: Instant) {
    let new = tables
        .len()
        .saturating_sub(usize::try_from(applied).unwrap_or(usize::MAX));
    let mut per_table: HashMap<&'static str, u64> = HashMap::new();
    for table in &tables[new..] {
        *per_table.entry(table).or_default() += 1;
    }
    for (table, count) in per_table {
        METRICS.records_applied.add(
            count,
            &[
                site(sync_id),
                KeyValue::new(catalog::DIRECTION, "upstream"),
                KeyValue::new(catalog::TABLE, table),
            ],
        );
    }
    METRICS.batch_duration.record(
        started.elapsed().as_secs_f64(),
        &[site(sync_id), KeyValue::new(catalog::DIRECTION, "upstream")],
    );
}

/// An upstream batch of `sync_id` was refused whole with `error`.
pub fn upstream_rejected(sync_id: u32, error: &ApplyError) {
    let reason = error.reason();
    METRICS.batches_rejected.add(
        1,
        &[
            site(sync_id),
            KeyValue::new(catalog::DIRECTION, "upstream"),
            KeyValue::new(catalog::REASON, reason),
        ],
    );
}

/// A sync login failed. `sync_id` is the claimed one when it is a valid Sync
/// ID (1..=64), so a scan of random IDs cannot grow the label set.
pub fn auth_failed(claimed_sync_id: Option<u32>) {
    let attributes: Vec<KeyValue> = claimed_sync_id
        .filter(|id| (1..=64).contains(id))
        .map(site)
        .into_iter()
        .collect();
    METRICS.auth_failures.add(1, &attributes);
}

/// Records whether this replica serves, labelled with its host name (in
/// Kubernetes, the pod's name), for the replica-not-ready alert.
pub fn ready(serving: bool) {
    let replica = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    METRICS
        .ready
        .record(u64::from(serving), &[KeyValue::new("replica", replica)]);
}

/// Records the per-site gauges from the database every `every`, until the
/// task is aborted. A failed read is logged and retried next period.
pub async fn run_site_sampler(db: DatabaseConnection, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = sample_sites(&db).await {
            tracing::warn!(%error, "could not sample per-site sync metrics");
        }
    }
}

async fn sample_sites(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    let sites = site::Entity::find()
        .filter(site::Column::SyncId.ne(1))
        .all(db)
        .await?;
    let statuses: HashMap<i32, site_status::Model> = site_status::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|s| (s.sync_id, s))
        .collect();
    let newest: Option<i64> = change_log::Entity::find()
        .select_only()
        .column_as(Expr::col(change_log::Column::Seq).max(), "m")
        .into_tuple()
        .one(db)
        .await?
        .flatten();
    let newest = newest.unwrap_or(0);
    let now = now_ms();
    for row in sites {
        let Ok(sync_id) = u32::try_from(row.sync_id) else {
            continue;
        };
        let attrs = [site(sync_id)];
        let pending = newest.saturating_sub(row.downstream_cursor).max(0);
        METRICS
            .downstream_pending
            .record(u64::try_from(pending).unwrap_or(0), &attrs);
        let delay_ms = if pending > 0 {
            change_log::Entity::find()
                .filter(change_log::Column::Seq.gt(row.downstream_cursor))
                .order_by_asc(change_log::Column::Seq)
                .one(db)
                .await?
                .map_or(0, |oldest| now.saturating_sub(oldest.changed_at_ms).max(0))
        } else {
            0
        };
        METRICS
            .downstream_delay
            .record(delay_ms as f64 / 1000.0, &attrs);
        let Some(status) = statuses.get(&row.sync_id) else {
            continue;
        };
        METRICS.upstream_backlog.record(
            u64::try_from(status.upstream_backlog_reported).unwrap_or(0),
            &attrs,
        );
        if status.last_sync_at_ms > 0 {
            METRICS
                .last_success
                .record(status.last_sync_at_ms as f64 / 1000.0, &attrs);
        }
        let progress = if status.initialising && status.init_records_total > 0 {
            status.init_records_done as f64 / status.init_records_total as f64
        } else if row.initialised {
            1.0
        } else {
            0.0
        };
        METRICS
            .init_progress
            .record(progress.clamp(0.0, 1.0), &attrs);
        if let Ok(version @ 1..) = u64::try_from(status.protocol_version) {
            METRICS.protocol_version.record(version, &attrs);
        }
    }
    Ok(())
}
