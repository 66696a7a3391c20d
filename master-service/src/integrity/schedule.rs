//! The periodic integrity check: every `verify_interval_minutes` (default
//! hourly) a check is requested for each site whose last settled check is
//! older than that and that has none requested yet. This process's schedule
//! requests the checks of the sites connected to it, one site at a time (it
//! waits for each result: a check reads the site's whole data once on each
//! side, so they are not run side by side); a
//! site in interval mode is requested at the start of its session, where the
//! Welcome tells it to stay for the check (`crate::sync::handshake`). A
//! request is recorded in the database, so each site is checked once
//! whichever replica holds its session.

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

/// Requests a scheduled check of `sync_id` if it is due and none is
/// requested yet; returns the site's oldest request, if any.
pub async fn request_if_due(
    db: &sea_orm::DatabaseConnection,
    sync_id: u32,
    every: Duration,
    report_only: bool,
) -> crate::error::Result<Option<record::Request>> {
    if let Some(request) = record::next_request(db, sync_id).await? {
        return Ok(Some(request));
    }
    if !due(db, sync_id, every).await {
        return Ok(None);
    }
    let request = record::request(db, sync_id, report_only, ACTOR).await?;
    tracing::info!(sync_id, "scheduled integrity check requested");
    Ok(Some(request))
}

/// Runs the schedule until the task is aborted.
pub async fn run(state: AppState, every: Duration, report_only: bool) {
    let tick = every.min(SCHEDULE_TICK);
    loop {
        tokio::time::sleep(tick).await;
        let verifiers = state.site_changes.verifiers();
        for sync_id in verifiers.live() {
            match request_if_due(&state.db, sync_id, every, report_only).await {
                Ok(Some(request)) => {
                    verifiers.nudge(sync_id);
                    let until = super::Until::SessionHere(
                        tokio::time::Instant::now() + super::CHECK_TIMEOUT,
                    );
                    match super::wait_for(&state.db, verifiers, &request, until).await {
                        Ok(result) => {
                            tracing::info!(sync_id, outcome = ?result.outcome(), "scheduled integrity check");
                        }
                        Err(error) => {
                            tracing::warn!(sync_id, %error, "could not read a scheduled integrity check");
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(sync_id, %error, "could not request a scheduled integrity check");
                }
            }
        }
    }
}
