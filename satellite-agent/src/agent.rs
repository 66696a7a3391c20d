//! `AgentService`: the satellite's sync state as an operator sees it, and a
//! way to sync now. Durable values come from `sync_state`, live ones from the
//! [`SyncHandle`].

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use storesync_shared::proto::v1 as pb;
use storesync_shared::proto::v1::agent_service_server::AgentService;
use tonic::{Request, Response, Status};

use crate::config::{Config, SyncId, SyncMode};
use crate::status::SyncHandle;
use crate::store::sync_state;

/// The satellite's `AgentService`.
pub struct Agent {
    db: DatabaseConnection,
    config: Arc<Config>,
    sync: SyncHandle,
}

impl Agent {
    pub fn new(db: DatabaseConnection, config: Arc<Config>, sync: SyncHandle) -> Self {
        Self { db, config, sync }
    }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[tonic::async_trait]
impl AgentService for Agent {
    async fn status(
        &self,
        _: Request<pb::AgentStatusRequest>,
    ) -> Result<Response<pb::AgentStatus>, Status> {
        let state = sync_state(&self.db).await?;
        let live = self.sync.snapshot();
        let store = (!state.store_id.is_empty()).then(|| pb::Store {
            id: state.store_id.clone(),
            code: state.store_code.clone(),
            name: state.store_name.clone(),
            sync_id: self.config.sync_id.get(),
        });
        // The last error: whichever is newer, this process's or the stored one.
        let (last_error, last_error_at_ms) = if live.last_error_at_ms >= state.last_error_at_ms {
            (live.last_error, live.last_error_at_ms)
        } else {
            (state.last_error, state.last_error_at_ms)
        };
        let status = pb::AgentStatus {
            sync_id: self.config.sync_id.get(),
            state: live.state as i32,
            mode: match live.mode {
                SyncMode::Streaming => pb::SyncMode::Streaming,
                SyncMode::Interval => pb::SyncMode::Interval,
            } as i32,
            store,
            sync_with: vec![pb::SyncPeer {
                sync_id: SyncId::MASTER.get(),
                name: "master".into(),
                url: self.config.master_urls_text(),
            }],
            downstream_cursor: to_u64(state.downstream_cursor),
            upstream_last_seq: to_u64(state.upstream_last_seq),
            upstream_acked_seq: to_u64(state.upstream_acked_seq),
            upstream_backlog: to_u64(state.upstream_last_seq - state.upstream_acked_seq),
            last_sync_at_ms: live.last_sync_at_ms.max(state.last_sync_at_ms),
            last_error_at_ms,
            last_error,
            initialised: state.initialised,
            initialising: live.initialising,
            init_records_done: live.init_records_done,
            init_records_total: live.init_records_total,
            // Seeded from the stored master preference at start (see `Satellite::open`).
            sync_interval_minutes: live.sync_interval_minutes,
            agent_version: storesync_shared::VERSION.into(),
        };
        Ok(Response::new(status))
    }

    async fn sync_now(
        &self,
        _: Request<pb::SyncNowRequest>,
    ) -> Result<Response<pb::SyncNowResponse>, Status> {
        tracing::info!("sync requested by an operator");
        self.sync.request_sync_now();
        Ok(Response::new(pb::SyncNowResponse {}))
    }
}
