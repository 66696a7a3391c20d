//! Several master replicas on one PostgreSQL, with no cluster protocol of
//! their own: PostgreSQL `LISTEN/NOTIFY` carries two wake-ups between them.
//!
//! - `storesync_changes` (payload: change-log sequence): sent by
//!   `changelog::append` inside the writer's transaction, so PostgreSQL delivers
//!   it exactly when the change commits. Every replica wakes its tailing streams.
//!   The change log stays the truth: a lost notification (say, while the
//!   listener reconnects) delays a change until the streams' fallback poll,
//!   never loses it, and after a reconnect every stream is woken anyway.
//! - `storesync_sessions` (payload: `sync_id:session_id`): sent when a session
//!   claims its site. A replica holding an older session of that site ends it
//!   (ABORTED). The claim in `site_status` is what counts: upstream batches are
//!   applied only by the session that holds it (checked in the apply transaction,
//!   under the site's row lock), so two replicas never apply one site's batches.
//! - `storesync_sites` (payload: a Sync ID, or `*` for every site): sent after an
//!   operator disabled or removed a site or changed its (or the shared) sync
//!   credentials. Every replica's session of that site re-checks the site and
//!   ends if it may no longer sync. A lost notification costs one heartbeat
//!   period: sessions also re-check then.
//!
//! On SQLite (one process) none of this runs; the in-process notifier and
//! session registry do the same job.

use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::registry::Sessions;
use crate::changelog::ChangeNotifier;

/// Channel of change-log commits.
pub const CHANGES_CHANNEL: &str = "storesync_changes";
/// Channel of session claims.
pub const SESSIONS_CHANNEL: &str = "storesync_sessions";

/// Channel of operators' changes to sites.
pub const SITES_CHANNEL: &str = "storesync_sites";

/// An operator changed site `sync_id` (`None`: the shared credentials of
/// every site), after the change committed: the live sessions on this process
/// and (PostgreSQL) on every replica re-check it at once.
pub async fn site_changed(
    db: &sea_orm::DatabaseConnection,
    local: &super::SiteChanges,
    sync_id: Option<u32>,
) {
    local.changed(sync_id);
    let payload = sync_id.map_or_else(|| "*".to_owned(), |id| id.to_string());
    if let Err(error) = notify(db, SITES_CHANNEL, &payload).await {
        tracing::warn!(?sync_id, %error, "could not tell the replicas about a site change; their sessions re-check at their next heartbeat");
    }
}

/// Tells the other replicas (inside the caller's transaction, or at once
/// outside one) that `payload` happened on `channel`. A no-op on SQLite.
pub async fn notify<C: ConnectionTrait>(
    db: &C,
    channel: &str,
    payload: &str,
) -> Result<(), sea_orm::DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [channel.into(), payload.into()],
    ))
    .await?;
    Ok(())
}

/// Listens for the other replicas' notifications until the process ends,
/// reconnecting (with a pause) whenever the database goes away.
pub(super) async fn listen(
    database_url: String,
    notifier: ChangeNotifier,
    sessions: std::sync::Arc<Sessions>,
) {
    let mut failures: u32 = 0;
    loop {
        match listen_once(&database_url, &notifier, &sessions).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures % 30 == 0 {
                    tracing::warn!(%error, failures, "cannot listen for other replicas' changes; retrying (changes still arrive by polling)");
                }
            }
        }
        // Whatever was notified while not listening: have every stream look.
        notifier.wake_all();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One listening connection, until it is lost.
async fn listen_once(
    database_url: &str,
    notifier: &ChangeNotifier,
    sessions: &Sessions,
) -> Result<(), sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect(database_url).await?;
    listener
        .listen_all([CHANGES_CHANNEL, SESSIONS_CHANNEL, SITES_CHANNEL])
        .await?;
    tracing::debug!("listening for other replicas' changes and session claims");
    notifier.wake_all();
    loop {
        // None: the connection was lost (try_recv reconnects on the next call,
        // but we go round the outer loop to wake everyone first).
        let Some(notification) = listener.try_recv().await? else {
            return Ok(());
        };
        match notification.channel() {
            CHANGES_CHANNEL => match notification.payload().parse::<u64>() {
                Ok(seq) => notifier.committed(seq),
                Err(_) => notifier.wake_all(),
            },
            SESSIONS_CHANNEL => {
                if let Some((sync_id, session_id)) = notification.payload().split_once(':') {
                    if let Ok(sync_id) = sync_id.parse::<u32>() {
                        sessions.claimed_elsewhere(sync_id, session_id);
                    }
                }
            }
            SITES_CHANNEL => sessions.recheck(notification.payload().parse::<u32>().ok()),
            _ => {}
        }
    }
}
