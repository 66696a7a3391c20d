//! The verifier of one sync session: a task beside the session's two halves
//! that runs the checks asked of it ([`super::Job`]), one at a time, over the
//! session's stream, and records each result.
//!
//! # Invariant
//! A satellite older than `storesync_shared::VERIFY_PROTOCOL_VERSION` is
//! never sent an integrity message: every job is answered
//! `CANNOT_VERIFY_VERSION` without touching the stream.

use std::time::Duration;

use sea_orm::DatabaseConnection;
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::{self as pb, satellite_message};
use tokio::sync::{mpsc, watch};

use super::check::{self, Link};
use super::{record, Job};
use crate::metrics;
use crate::sync::downstream::{Acked, Outbound};

/// Most differences listed in one result (each about 60 bytes: well under
/// the message limit).
pub const MAX_LISTED: usize = 20_000;

/// What a session's verifier needs.
pub struct SessionVerifier {
    pub db: DatabaseConnection,
    pub sync_id: u32,
    pub store_id: String,
    pub protocol_version: u32,
    pub tx: Outbound,
    pub acked: watch::Receiver<Acked>,
    /// A scheduled check is due at the session's start (see `schedule`).
    pub due_at_start: bool,
}

impl SessionVerifier {
    /// Runs the jobs that arrive until the session ends.
    pub async fn serve(
        self,
        mut jobs: mpsc::Receiver<Job>,
        mut answers: mpsc::Receiver<satellite_message::Message>,
        scheduled_report_only: bool,
    ) {
        if self.due_at_start {
            let result = self
                .check(&mut answers, scheduled_report_only, super::schedule::ACTOR)
                .await;
            tracing::info!(sync_id = self.sync_id, outcome = ?result.outcome(), "scheduled integrity check at the start of an interval-mode session");
        }
        while let Some(job) = jobs.recv().await {
            let result = self.check(&mut answers, job.report_only, &job.actor).await;
            let _ = job.reply.send(result);
        }
    }

    /// One check, recorded (when it reached the site) and counted.
    async fn check(
        &self,
        answers: &mut mpsc::Receiver<satellite_message::Message>,
        report_only: bool,
        actor: &str,
    ) -> pb::SiteVerification {
        let started_at_ms = now_ms();
        let started = std::time::Instant::now();
        let mut result = pb::SiteVerification {
            sync_id: self.sync_id,
            started_at_ms,
            report_only,
            ..Default::default()
        };
        if self.protocol_version < storesync_shared::VERIFY_PROTOCOL_VERSION {
            result.outcome = pb::VerifyOutcome::CannotVerifyVersion as i32;
            result.message = format!(
                "cannot verify: version (the site speaks sync protocol version {}; the check needs {})",
                self.protocol_version,
                storesync_shared::VERIFY_PROTOCOL_VERSION
            );
            result.finished_at_ms = now_ms();
            metrics::integrity_checked(self.sync_id, &result);
            return result;
        }
        // Answers of an earlier, abandoned check are dropped.
        while answers.try_recv().is_ok() {}
        let mut link = Link {
            tx: &self.tx,
            answers,
            acked: &self.acked,
            bytes: 0,
            round_trips: 0,
        };
        let ran = check::run(
            &self.db,
            &mut link,
            self.sync_id,
            &self.store_id,
            report_only,
        )
        .await;
        result.bytes_exchanged = link.bytes;
        result.round_trips = link.round_trips;
        let mut repairs = Vec::new();
        match ran {
            Ok(found) => {
                result.rows_compared = found.rows_compared;
                result.rows_differing = found.differences.len() as u64;
                result.rows_repaired = found.rows_repaired;
                result.message = found.message;
                result.site_ledger = found.site_ledger;
                result.site_ledger_total = found.site_ledger_total;
                result.master_ledger = found.master_ledger;
                result.master_ledger_total = found.master_ledger_total;
                result.outcome = if !found.settled {
                    pb::VerifyOutcome::NotSettled
                } else if found.differences.is_empty() {
                    pb::VerifyOutcome::Equal
                } else {
                    pb::VerifyOutcome::Different
                } as i32;
                // The answer lists the first MAX_LISTED (rows_differing counts all).
                result.differences = found
                    .differences
                    .into_iter()
                    .take(MAX_LISTED)
                    .map(|(d, repair)| pb::RowDifference {
                        table: d.table as i32,
                        id: d.id,
                        side: d.side as i32,
                        repair,
                    })
                    .collect();
                repairs = found.repairs;
            }
            Err(error) => {
                result.outcome = match &error {
                    crate::error::Error::Domain(storesync_shared::Error::Unavailable(_)) => {
                        pb::VerifyOutcome::NotConnected
                    }
                    _ => pb::VerifyOutcome::Failed,
                } as i32;
                result.message = error.to_string();
            }
        }
        result.finished_at_ms = now_ms();
        tracing::info!(
            sync_id = self.sync_id,
            outcome = ?result.outcome(),
            compared = result.rows_compared,
            differing = result.rows_differing,
            repaired = result.rows_repaired,
            bytes = result.bytes_exchanged,
            round_trips = result.round_trips,
            took_ms = started.elapsed().as_millis() as u64,
            "integrity check"
        );
        if let Err(error) = record::save(&self.db, &result, &repairs, actor).await {
            tracing::warn!(sync_id = self.sync_id, %error, "could not record the integrity check");
        }
        metrics::integrity_checked(self.sync_id, &result);
        result
    }
}

/// How often the schedule looks for sites due (at most).
pub const SCHEDULE_TICK: Duration = Duration::from_secs(60);
