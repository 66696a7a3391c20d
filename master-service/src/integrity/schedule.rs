//! The periodic integrity check: every `verify_interval_minutes` (default
//! hourly), each site with a live session on this process whose last settled
//! check is older than that is checked, one site at a time (a check reads the
//! site's whole data once on each side, so they are not run side by side).
//! A site in interval mode is checked during its session when it is due (see
//! `crate::sync::session`). Each replica checks the sites connected to it.

use std::time::Duration;

use storesync_shared::domain::validate::now_ms;

use super::record;
use super::session::SCHEDULE_TICK;
use crate::AppState;

/// The audit's actor of scheduled checks.
pub const ACTOR: &str = "schedule";

/// Whether site `sync_id` is due for a check every `every`.
pub async fn due(db: &sea_orm::DatabaseConnection, sync_id: u32, every: Duration) -> bool {
    match record::last_checked(db, sync_id).await {
        Ok(last) => {
            now_ms().saturating_sub(last) >= i64::try_from(every.as_millis()).unwrap_or(i64::MAX)
        }
        Err(error) => {
            tracing::warn!(sync_id, %error, "could not read the last integrity check");
            false
        }
    }
}

/// Runs the schedule until the task is aborted.
pub async fn run(state: AppState, every: Duration, report_only: bool) {
    let tick = every.min(SCHEDULE_TICK);
    loop {
        tokio::time::sleep(tick).await;
        for sync_id in state.site_changes.verifiers().live() {
            if due(&state.db, sync_id, every).await {
                let result = state
                    .site_changes
                    .verifiers()
                    .run(sync_id, report_only, ACTOR)
                    .await;
                tracing::info!(sync_id, outcome = ?result.outcome(), "scheduled integrity check");
            }
        }
    }
}
