//! Every metric storesync emits: name, unit, kind and meaning, in one list.
//!
//! The binaries build their instruments from these descriptions (`metrics` in
//! each binary), and a test checks that every metric the Grafana dashboard
//! (`k8s/base/grafana/storesync-dashboard.json`) queries is in [`ALL`], under
//! the name the OpenTelemetry Collector's Prometheus exporter gives it
//! ([`MetricDesc::prometheus_names`]).
//!
//! Names follow the OpenTelemetry semantic-convention style: dotted,
//! lower case, a unit in UCUM (`s`, `1`) or a `{annotation}` count.
//!
//! Attributes: [`SYNC_ID`] on everything per site, [`DIRECTION`] and [`TABLE`]
//! where records are counted.

/// Attribute: the site's Sync ID (2..=64 for satellites).
pub const SYNC_ID: &str = "sync_id";
/// Attribute: `upstream` (satellite → master) or `downstream` (master → satellite).
pub const DIRECTION: &str = "direction";
/// Attribute: the table of a record (`item`, `stock_line`, …).
pub const TABLE: &str = "table";
/// Attribute: why a batch was rejected (the gRPC status code name).
pub const REASON: &str = "reason";

/// How an instrument aggregates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic sum.
    Counter,
    /// Sum that goes up and down.
    UpDownCounter,
    /// Last value.
    Gauge,
    /// Distribution.
    Histogram,
}

/// One metric.
#[derive(Clone, Copy, Debug)]
pub struct MetricDesc {
    pub name: &'static str,
    pub unit: &'static str,
    pub kind: MetricKind,
    pub description: &'static str,
}

impl MetricDesc {
    /// The series names this metric has in Prometheus after the Collector's
    /// `prometheus` exporter (dots to underscores, a unit suffix for `s` and
    /// `1`, `_total` on counters, `_bucket`/`_sum`/`_count` on histograms).
    pub fn prometheus_names(&self) -> Vec<String> {
        let mut base = self.name.replace('.', "_");
        match (self.unit, self.kind) {
            ("s", _) => base.push_str("_seconds"),
            ("1", MetricKind::Gauge) => base.push_str("_ratio"),
            _ => {}
        }
        match self.kind {
            MetricKind::Counter => vec![format!("{base}_total")],
            MetricKind::UpDownCounter | MetricKind::Gauge => vec![base],
            MetricKind::Histogram => vec![
                format!("{base}_bucket"),
                format!("{base}_sum"),
                format!("{base}_count"),
            ],
        }
    }
}

/// Sessions open per site (0 or 1 per Sync ID and master replica; the sum over
/// sites is the number of connected sites). Master.
pub const SITES_CONNECTED: MetricDesc = MetricDesc {
    name: "storesync.sync.sessions",
    unit: "{session}",
    kind: MetricKind::UpDownCounter,
    description: "Open sync sessions, by site",
};

/// Records applied, by site, direction and table: upstream on the master,
/// downstream on each satellite.
pub const RECORDS_APPLIED: MetricDesc = MetricDesc {
    name: "storesync.sync.records.applied",
    unit: "{record}",
    kind: MetricKind::Counter,
    description:
        "Records applied from the other side (new ones; resent duplicates are not counted)",
};

/// Time to apply one batch in its transaction, by site and direction.
pub const BATCH_DURATION: MetricDesc = MetricDesc {
    name: "storesync.sync.batch.duration",
    unit: "s",
    kind: MetricKind::Histogram,
    description: "Time to apply one sync batch (one database transaction)",
};

/// Outbox entries a satellite has not had acknowledged, as it last reported. Master.
pub const UPSTREAM_BACKLOG: MetricDesc = MetricDesc {
    name: "storesync.sync.upstream.backlog",
    unit: "{record}",
    kind: MetricKind::Gauge,
    description: "Upstream records waiting on the satellite, as last reported by it",
};

/// Master-data changes a site has not acknowledged yet. Master.
pub const DOWNSTREAM_PENDING: MetricDesc = MetricDesc {
    name: "storesync.sync.downstream.pending",
    unit: "{record}",
    kind: MetricKind::Gauge,
    description: "Change-log entries after the site's acknowledged cursor",
};

/// Age of the oldest master-data change a site has not acknowledged (0 when
/// it is up to date). Master.
pub const DOWNSTREAM_DELAY: MetricDesc = MetricDesc {
    name: "storesync.sync.downstream.delay",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "Age of the oldest change the site has not acknowledged",
};

/// When a site last completed a sync exchange (Unix time). Master.
pub const LAST_SUCCESS: MetricDesc = MetricDesc {
    name: "storesync.sync.last_success",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "Unix time of the site's last successful sync exchange",
};

/// Failed sync logins (wrong user name, password or Sync ID). Master.
pub const AUTH_FAILURES: MetricDesc = MetricDesc {
    name: "storesync.sync.auth.failures",
    unit: "{failure}",
    kind: MetricKind::Counter,
    description: "Sync sessions refused for their credentials",
};

/// Upstream batches refused whole (ownership, validation, sequence). Master.
pub const BATCHES_REJECTED: MetricDesc = MetricDesc {
    name: "storesync.sync.batches.rejected",
    unit: "{batch}",
    kind: MetricKind::Counter,
    description: "Upstream batches refused whole, by reason",
};

/// Share of its initialisation snapshot a site has applied (1 when done). Master.
pub const INIT_PROGRESS: MetricDesc = MetricDesc {
    name: "storesync.sync.initialisation.progress",
    unit: "1",
    kind: MetricKind::Gauge,
    description: "Initialisation progress of the site, 0 to 1",
};

/// The sync protocol version each site spoke at its latest session, for
/// upgrades planned across a version window. Master.
pub const SITE_PROTOCOL_VERSION: MetricDesc = MetricDesc {
    name: "storesync.sync.site.protocol_version",
    unit: "{version}",
    kind: MetricKind::Gauge,
    description: "Sync protocol version of the site's latest session",
};

/// Whether this master replica serves (1) or reports NOT_SERVING to its
/// probes (0: its database is unreachable, or it is stopping), by `replica`
/// (the host name: the pod). Master.
pub const SERVER_READY: MetricDesc = MetricDesc {
    name: "storesync.server.ready",
    unit: "{state}",
    kind: MetricKind::Gauge,
    description: "1 while the master replica serves, 0 while it reports NOT_SERVING",
};

/// gRPC server calls, by method and status (time to the response headers; for
/// a stream that is when it opens). Both binaries.
pub const RPC_SERVER_DURATION: MetricDesc = MetricDesc {
    name: "rpc.server.call.duration",
    unit: "s",
    kind: MetricKind::Histogram,
    description: "gRPC server call duration to the response headers",
};

/// Integrity checks run, by site and outcome (VerifyOutcome name). Master.
pub const INTEGRITY_CHECKED: MetricDesc = MetricDesc {
    name: "storesync.integrity.checked",
    unit: "{check}",
    kind: MetricKind::Counter,
    description: "Integrity checks run, by outcome",
};

/// Rows an integrity check found differing between a site and the master. Master.
pub const INTEGRITY_DIFFERING: MetricDesc = MetricDesc {
    name: "storesync.integrity.differing",
    unit: "{record}",
    kind: MetricKind::Counter,
    description: "Rows found differing between a site and the master",
};

/// Rows an integrity check repaired. Master.
pub const INTEGRITY_REPAIRED: MetricDesc = MetricDesc {
    name: "storesync.integrity.repaired",
    unit: "{record}",
    kind: MetricKind::Counter,
    description: "Rows repaired by integrity checks",
};

/// When a site's latest settled integrity check ended (equal or repaired). Master.
pub const INTEGRITY_LAST_SUCCESS: MetricDesc = MetricDesc {
    name: "storesync.integrity.last_success",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "Unix time of the site's latest settled integrity check",
};

/// Everything above.
pub const ALL: &[MetricDesc] = &[
    INTEGRITY_CHECKED,
    INTEGRITY_DIFFERING,
    INTEGRITY_REPAIRED,
    INTEGRITY_LAST_SUCCESS,
    SITES_CONNECTED,
    RECORDS_APPLIED,
    BATCH_DURATION,
    UPSTREAM_BACKLOG,
    DOWNSTREAM_PENDING,
    DOWNSTREAM_DELAY,
    LAST_SUCCESS,
    AUTH_FAILURES,
    BATCHES_REJECTED,
    INIT_PROGRESS,
    SITE_PROTOCOL_VERSION,
    SERVER_READY,
    RPC_SERVER_DURATION,
];

/// Lower-case table name of a record (a delete counts under its table), for
/// the [`TABLE`] attribute.
pub fn table_name(record: &crate::proto::v1::SyncRecord) -> &'static str {
    use crate::proto::v1::{sync_record::Record, Table};
    let table = match &record.record {
        Some(Record::Item(_)) => Table::Item,
        Some(Record::Name(_)) => Table::Name,
        Some(Record::Store(_)) => Table::Store,
        Some(Record::StockLine(_)) => Table::StockLine,
        Some(Record::Invoice(_)) => Table::Invoice,
        Some(Record::InvoiceLine(_)) => Table::InvoiceLine,
        Some(Record::Transfer(_)) => Table::Transfer,
        Some(Record::Requisition(_)) => Table::Requisition,
        Some(Record::RequisitionLine(_)) => Table::RequisitionLine,
        Some(Record::Deleted(reference)) => reference.table(),
        None => Table::Unspecified,
    };
    match table {
        Table::Item => "item",
        Table::Name => "name",
        Table::Store => "store",
        Table::StockLine => "stock_line",
        Table::Invoice => "invoice",
        Table::InvoiceLine => "invoice_line",
        Table::Transfer => "transfer",
        Table::Requisition => "requisition",
        Table::RequisitionLine => "requisition_line",
        Table::Unspecified => "unspecified",
    }
}
