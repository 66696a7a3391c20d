//! `ReportService`: reports across every store, read from the master's copy
//! of each store's data, and the sync state of every site.
//!
//! The handlers are adapters over one domain function per report:
//! [`stock::stock_on_hand`], [`stock::expiring_stock`],
//! [`activity::store_activity`], [`sync_status`] and, for stock moving
//! between stores, [`movements::stock_in_transit`],
//! [`movements::open_requisitions`] and [`movements::receipt_discrepancies`]. [`query`] holds what they
//! share (sea-query helpers, id-filter checks, page tokens). Reports only
//! read; they never touch the sync stream's tables except to show its state.

pub mod activity;
pub mod movements;
pub mod query;
pub mod stock;

use std::collections::HashMap;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use storesync_shared::domain::entities::store;
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1 as pb;
use storesync_shared::proto::v1::report_service_server::ReportService;
use storesync_shared::Result;
use tonic::{Request, Response, Status};

use crate::changelog;
use crate::entities::{change_log, site, site_status};

/// The tonic adapter.
pub struct ReportApi {
    db: DatabaseConnection,
    /// A session silent for longer than this is shown as disconnected, even
    /// if its process died without saying goodbye.
    liveness_ms: i64,
}

impl ReportApi {
    pub fn new(db: DatabaseConnection, heartbeat_seconds: u64) -> Self {
        Self {
            db,
            liveness_ms: i64::try_from(heartbeat_seconds.saturating_mul(3000)).unwrap_or(i64::MAX),
        }
    }
}

/// The sync state of every site in the "sync with" list, Sync ID order.
pub async fn sync_status(
    db: &DatabaseConnection,
    liveness_ms: i64,
) -> Result<Vec<pb::SiteSyncStatus>> {
    let sites = site::Entity::find()
        .filter(site::Column::SyncId.gt(1))
        .order_by_asc(site::Column::SyncId)
        .all(db)
        .await?;
    let statuses: HashMap<i32, site_status::Model> = site_status::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|s| (s.sync_id, s))
        .collect();
    let stores: HashMap<String, store::Model> = store::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let head = changelog::head(db).await?;
    let refusals = crate::sync::refusals::counts(db).await?;
    let checks = crate::integrity::record::latest(db).await?;
    let queued = crate::integrity::record::queued(db).await?;
    let now = now_ms();
    let mut rows = Vec::with_capacity(sites.len());
    for site in sites {
        let cursor = u64::try_from(site.downstream_cursor).unwrap_or(0);
        let oldest_pending = change_log::Entity::find()
            .filter(change_log::Column::Seq.gt(site.downstream_cursor))
            .order_by_asc(change_log::Column::Seq)
            .one(db)
            .await?;
        let status = statuses.get(&site.sync_id);
        let connected =
            status.is_some_and(|s| s.connected && now - s.heartbeat_at_ms <= liveness_ms);
        let mode = match status.map(|s| s.mode.as_str()) {
            Some("streaming") => pb::SyncMode::Streaming,
            Some("interval") => pb::SyncMode::Interval,
            _ => pb::SyncMode::Unspecified,
        };
        rows.push(pb::SiteSyncStatus {
            sync_id: u32::try_from(site.sync_id).unwrap_or(0),
            site_name: site.name.clone(),
            store_code: stores
                .get(&site.store_id)
                .map(|s| s.code.clone())
                .unwrap_or_default(),
            connected,
            mode: mode as i32,
            ever_connected: status.is_some_and(|s| s.ever_connected),
            last_sync_at_ms: status.map_or(0, |s| s.last_sync_at_ms),
            last_error_at_ms: status.map_or(0, |s| s.last_error_at_ms),
            last_error: status.map(|s| s.last_error.clone()).unwrap_or_default(),
            upstream_acked_seq: u64::try_from(site.upstream_acked_seq).unwrap_or(0),
            upstream_records_received: status.map_or(0, |s| {
                u64::try_from(s.upstream_records_received).unwrap_or(0)
            }),
            upstream_backlog_reported: status.map_or(0, |s| {
                u64::try_from(s.upstream_backlog_reported).unwrap_or(0)
            }),
            downstream_cursor: cursor,
            downstream_pending: if site.initialised {
                head.saturating_sub(cursor)
            } else {
                0
            },
            downstream_oldest_pending_age_ms: match (&oldest_pending, site.initialised) {
                (Some(entry), true) => (now - entry.changed_at_ms).max(0),
                _ => 0,
            },
            agent_version: status.map(|s| s.agent_version.clone()).unwrap_or_default(),
            initialising: status.is_some_and(|s| s.initialising),
            init_records_done: status
                .map_or(0, |s| u64::try_from(s.init_records_done).unwrap_or(0)),
            init_records_total: status
                .map_or(0, |s| u64::try_from(s.init_records_total).unwrap_or(0)),
            refusals: refusals.get(&site.sync_id).map_or(0, |r| r.0),
            last_refusal_at_ms: refusals.get(&site.sync_id).map_or(0, |r| r.1),
            protocol_version: status.map_or(0, |s| u32::try_from(s.protocol_version).unwrap_or(0)),
            ..check_fields(
                checks.get(&u32::try_from(site.sync_id).unwrap_or(0)),
                queued.get(&u32::try_from(site.sync_id).unwrap_or(0)),
            )
        });
    }
    Ok(rows)
}

/// The fields of a site's latest integrity check (`None`: never checked)
/// and of the check requested of it, if any.
fn check_fields(
    latest: Option<&crate::integrity::record::Latest>,
    queued: Option<&crate::integrity::record::Request>,
) -> pb::SiteSyncStatus {
    let queued = pb::SiteSyncStatus {
        check_queued_at_ms: queued.map_or(0, |r| r.requested_at_ms),
        check_attempts: queued.map_or(0, |r| r.attempts),
        ..Default::default()
    };
    let Some(latest) = latest else {
        return queued;
    };
    pb::SiteSyncStatus {
        last_check_at_ms: latest.finished_at_ms,
        last_check_outcome: latest.outcome.clone(),
        last_check_rows_compared: latest.rows_compared,
        last_check_rows_differing: latest.rows_differing,
        last_check_rows_repaired: latest.rows_repaired,
        last_check_ledger_problems: latest.ledger_problems,
        last_check_message: latest.message.clone(),
        ..queued
    }
}

#[tonic::async_trait]
impl ReportService for ReportApi {
    async fn stock_on_hand(
        &self,
        request: Request<pb::StockOnHandRequest>,
    ) -> Result<Response<pb::StockOnHandResponse>, Status> {
        Ok(Response::new(
            stock::stock_on_hand(&self.db, request.get_ref()).await?,
        ))
    }

    async fn store_activity(
        &self,
        request: Request<pb::StoreActivityRequest>,
    ) -> Result<Response<pb::StoreActivityResponse>, Status> {
        Ok(Response::new(
            activity::store_activity(&self.db, request.get_ref()).await?,
        ))
    }

    async fn expiring_stock(
        &self,
        request: Request<pb::ExpiringStockRequest>,
    ) -> Result<Response<pb::ExpiringStockResponse>, Status> {
        Ok(Response::new(
            stock::expiring_stock(&self.db, request.get_ref()).await?,
        ))
    }

    async fn sync_status(
        &self,
        _: Request<pb::SyncStatusRequest>,
    ) -> Result<Response<pb::SyncStatusResponse>, Status> {
        Ok(Response::new(pb::SyncStatusResponse {
            sites: sync_status(&self.db, self.liveness_ms).await?,
        }))
    }

    async fn stock_in_transit(
        &self,
        request: Request<pb::StockInTransitRequest>,
    ) -> Result<Response<pb::StockInTransitResponse>, Status> {
        Ok(Response::new(
            movements::stock_in_transit(&self.db, request.get_ref()).await?,
        ))
    }

    async fn open_requisitions(
        &self,
        request: Request<pb::OpenRequisitionsRequest>,
    ) -> Result<Response<pb::OpenRequisitionsResponse>, Status> {
        Ok(Response::new(
            movements::open_requisitions(&self.db, request.get_ref()).await?,
        ))
    }

    async fn receipt_discrepancies(
        &self,
        request: Request<pb::ReceiptDiscrepanciesRequest>,
    ) -> Result<Response<pb::ReceiptDiscrepanciesResponse>, Status> {
        Ok(Response::new(
            movements::receipt_discrepancies(&self.db, request.get_ref()).await?,
        ))
    }
}
