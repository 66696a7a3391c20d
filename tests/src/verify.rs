//! The product's own integrity check, as tests (and the fault campaign) call
//! it: `AdminService.VerifySites` on a running master, waiting for the
//! result (the check runs at the site's session, on whichever replica holds
//! it), asked again while the data is still moving, and its differences as a
//! set to compare with a record-by-record comparison.

use std::collections::BTreeSet;
use std::time::Duration;

use storesync_shared::proto::v1 as pb;

use crate::cluster::Master;

/// One difference as the check names it: (table, id, side).
pub type Named = (pb::Table, String, pb::DifferenceSide);

/// Asks for a check of `sync_id` and waits up to `wait` for its result
/// (`QUEUED` when it did not come).
pub async fn check_waiting(
    master: &Master,
    sync_id: u32,
    report_only: bool,
    wait: Duration,
) -> pb::SiteVerification {
    let mut answer = master
        .admin()
        .await
        .verify_sites(pb::VerifySitesRequest {
            sync_ids: vec![sync_id],
            report_only,
            wait_seconds: u32::try_from(wait.as_secs()).unwrap_or(3600).clamp(1, 3600),
        })
        .await
        .expect("VerifySites")
        .into_inner();
    answer.sites.pop().expect("one result per site asked")
}

/// Runs the check of `sync_id` until it settles (at most `limit`) and
/// returns its result; panics if it fails or never settles.
pub async fn settled_check(
    master: &Master,
    sync_id: u32,
    report_only: bool,
    limit: Duration,
) -> pb::SiteVerification {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let result = check_waiting(master, sync_id, report_only, left).await;
        match result.outcome() {
            pb::VerifyOutcome::Equal | pb::VerifyOutcome::Different => return result,
            pb::VerifyOutcome::NotSettled if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!(
                "the check of Sync ID {sync_id} ended {other:?}: {}",
                result.message
            ),
        }
    }
}

/// The differences a check named.
pub fn named(result: &pb::SiteVerification) -> BTreeSet<Named> {
    result
        .differences
        .iter()
        .map(|d| (d.table(), d.id.clone(), d.side()))
        .collect()
}
