//! What the master records of each site's sessions: the claim and the status
//! operators see (`site_status`), and the site's downstream cursor (`site`).
//!
//! Status is advisory: a failed update is logged and never ends a session.
//! It is written by the session that owns the site; `session_id` guards the
//! disconnect so that an old session cannot mark a newer one as gone.
//!
//! The claim and the downstream cursor are not advisory: a session that
//! cannot record them ends (the caller gets the error).

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, Set,
};
use storesync_shared::domain::validate::now_ms;

use super::upstream::sync_id_i32;
use crate::entities::{site, site_status};

fn log_failure(what: &str, sync_id: u32, result: Result<(), sea_orm::DbErr>) {
    if let Err(error) = result {
        tracing::warn!(sync_id, %error, "could not record {what} in site_status");
    }
}

/// Session `session_id` claims `sync_id`: from now on only it may apply the
/// site's upstream batches (see `upstream`), on any replica, and the replicas
/// holding an older session of the site are told to end it.
pub async fn claim(
    db: &DatabaseConnection,
    sync_id: u32,
    session_id: &str,
    mode: &str,
    agent_version: &str,
    protocol_version: u32,
    backlog: u64,
) -> Result<(), sea_orm::DbErr> {
    let now = now_ms();
    let row = site_status::ActiveModel {
        sync_id: Set(sync_id_i32(sync_id)),
        session_id: Set(Some(session_id.to_owned())),
        connected: Set(true),
        ever_connected: Set(true),
        heartbeat_at_ms: Set(now),
        mode: Set(mode.to_owned()),
        agent_version: Set(agent_version.to_owned()),
        last_sync_at_ms: Set(0),
        last_error_at_ms: Set(0),
        last_error: Set(String::new()),
        upstream_records_received: Set(0),
        upstream_backlog_reported: Set(i64::try_from(backlog).unwrap_or(i64::MAX)),
        initialising: Set(false),
        init_records_done: Set(0),
        init_records_total: Set(0),
        protocol_version: Set(i32::try_from(protocol_version).unwrap_or(i32::MAX)),
    };
    site_status::Entity::insert(row)
        .on_conflict(
            OnConflict::column(site_status::Column::SyncId)
                .update_columns([
                    site_status::Column::SessionId,
                    site_status::Column::Connected,
                    site_status::Column::EverConnected,
                    site_status::Column::HeartbeatAtMs,
                    site_status::Column::Mode,
                    site_status::Column::AgentVersion,
                    site_status::Column::ProtocolVersion,
                    site_status::Column::UpstreamBacklogReported,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    super::cluster::notify(
        db,
        super::cluster::SESSIONS_CHANNEL,
        &format!("{sync_id}:{session_id}"),
    )
    .await
}

async fn update(
    db: &DatabaseConnection,
    what: &str,
    sync_id: u32,
    columns: Vec<(site_status::Column, sea_orm::sea_query::SimpleExpr)>,
) {
    let mut query = site_status::Entity::update_many()
        .filter(site_status::Column::SyncId.eq(sync_id_i32(sync_id)));
    for (column, value) in columns {
        query = query.col_expr(column, value);
    }
    log_failure(what, sync_id, without_flush(db, query).await);
}

/// Runs `update` without waiting for the write-ahead log to reach the disk
/// (PostgreSQL's `synchronous_commit = off`, for this transaction only).
///
/// For writes whose loss in a crash costs nothing: status, and cursors that
/// only ever move forward and whose older value makes the master resend what
/// the satellite then skips. A session writes these after every batch; a
/// flush each time would stall the stream for a disk round trip per batch.
/// Atomicity and ordering are unchanged; only durability of the last
/// few hundred milliseconds is given up.
async fn without_flush<E: EntityTrait>(
    db: &DatabaseConnection,
    update: sea_orm::UpdateMany<E>,
) -> Result<(), sea_orm::DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return update.exec(db).await.map(|_| ());
    }
    let txn = storesync_shared::domain::db::begin(db).await?;
    txn.execute_unprepared("SET LOCAL synchronous_commit = off")
        .await?;
    update.exec(&txn).await?;
    txn.commit().await
}

/// The satellite acknowledged downstream batches up to `cursor`: the site's
/// cursor moves there (never back) and the site counts as initialised.
/// Retention keeps change-log entries until every initialised site's cursor
/// is past them (`retention`).
///
/// `initialising`: the site was receiving its snapshot, whose batches carry
/// no cursor until the last; this ack completes its initialisation.
pub async fn downstream_acked(
    db: &DatabaseConnection,
    sync_id: u32,
    cursor: u64,
    initialising: bool,
) -> Result<(), sea_orm::DbErr> {
    let update = site::Entity::update_many()
        .col_expr(
            site::Column::DownstreamCursor,
            Expr::value(i64::try_from(cursor).unwrap_or(i64::MAX)),
        )
        .col_expr(site::Column::Initialised, Expr::value(true))
        .filter(site::Column::SyncId.eq(sync_id_i32(sync_id)))
        .filter(site::Column::DownstreamCursor.lt(i64::try_from(cursor).unwrap_or(i64::MAX)));
    if initialising {
        // The site becomes initialised: from now on tombstones
        // wait for it, so this must survive any crash. Its snapshot's hold on
        // the change log (`retention`) ends in the same transaction.
        let txn = storesync_shared::domain::db::begin(db).await?;
        update.exec(&txn).await?;
        snapshot_done(&txn, sync_id).await?;
        txn.commit().await?;
        Ok(())
    } else {
        // Not flushed: after a database crash an older cursor
        // only keeps tombstones a little longer.
        without_flush(db, update).await
    }
}

/// A snapshot for the site starts at change-log `cursor`: from now on the
/// site holds the log from there (`retention`). Durable before the first
/// snapshot batch is sent.
pub async fn snapshot_started(
    db: &DatabaseConnection,
    sync_id: u32,
    cursor: u64,
) -> Result<(), sea_orm::DbErr> {
    site::Entity::update_many()
        .col_expr(
            sea_orm::sea_query::Alias::new("snapshot_cursor"),
            Expr::value(i64::try_from(cursor).unwrap_or(i64::MAX)),
        )
        .filter(site::Column::SyncId.eq(sync_id_i32(sync_id)))
        .exec(db)
        .await?;
    Ok(())
}

/// The site's snapshot is applied and acknowledged: its hold ends.
async fn snapshot_done<C: ConnectionTrait>(db: &C, sync_id: u32) -> Result<(), sea_orm::DbErr> {
    site::Entity::update_many()
        .col_expr(
            sea_orm::sea_query::Alias::new("snapshot_cursor"),
            Expr::value(sea_orm::Value::BigInt(None)),
        )
        .filter(site::Column::SyncId.eq(sync_id_i32(sync_id)))
        .exec(db)
        .await?;
    Ok(())
}

/// The site is alive and reports `backlog` outbox entries waiting. Returns
/// false when another session has claimed the site since (this one must end);
/// a database error is logged and taken as still the owner.
pub async fn heartbeat(
    db: &DatabaseConnection,
    sync_id: u32,
    session_id: &str,
    backlog: u64,
) -> bool {
    let result = site_status::Entity::update_many()
        .col_expr(site_status::Column::HeartbeatAtMs, Expr::value(now_ms()))
        .col_expr(
            site_status::Column::UpstreamBacklogReported,
            Expr::value(i64::try_from(backlog).unwrap_or(i64::MAX)),
        )
        .filter(site_status::Column::SyncId.eq(sync_id_i32(sync_id)))
        .filter(site_status::Column::SessionId.eq(session_id.to_owned()))
        .exec(db)
        .await;
    match result {
        Ok(outcome) => outcome.rows_affected > 0,
        Err(error) => {
            log_failure("a heartbeat", sync_id, Err(error));
            true
        }
    }
}

/// A sync exchange succeeded; `received` upstream records were new.
///
/// The backlog the site last reported (in its Hello or a heartbeat) goes
/// down by the records received, never below 0: without it, a site that
/// reported a backlog and then sent it showed that backlog until its next
/// heartbeat, or for good once it disconnected.
pub async fn synced(db: &DatabaseConnection, sync_id: u32, received: u64) {
    let received = i64::try_from(received).unwrap_or(i64::MAX);
    let backlog = site_status::Column::UpstreamBacklogReported;
    update(
        db,
        "a sync",
        sync_id,
        vec![
            (site_status::Column::LastSyncAtMs, Expr::value(now_ms())),
            (site_status::Column::HeartbeatAtMs, Expr::value(now_ms())),
            (
                site_status::Column::UpstreamRecordsReceived,
                Expr::col(site_status::Column::UpstreamRecordsReceived).add(received),
            ),
            (
                backlog,
                Expr::case(
                    Expr::col(backlog).gt(received),
                    Expr::col(backlog).sub(received),
                )
                .finally(0)
                .into(),
            ),
        ],
    )
    .await;
}

/// Initialisation progress (`initialising` false once complete).
pub async fn initialisation(
    db: &DatabaseConnection,
    sync_id: u32,
    initialising: bool,
    done: u64,
    total: u64,
) {
    update(
        db,
        "initialisation progress",
        sync_id,
        vec![
            (site_status::Column::Initialising, Expr::value(initialising)),
            (
                site_status::Column::InitRecordsDone,
                Expr::value(i64::try_from(done).unwrap_or(i64::MAX)),
            ),
            (
                site_status::Column::InitRecordsTotal,
                Expr::value(i64::try_from(total).unwrap_or(i64::MAX)),
            ),
        ],
    )
    .await;
}

/// The session failed with `message`.
pub async fn error(db: &DatabaseConnection, sync_id: u32, message: &str) {
    update(
        db,
        "an error",
        sync_id,
        vec![
            (site_status::Column::LastErrorAtMs, Expr::value(now_ms())),
            (
                site_status::Column::LastError,
                Expr::value(message.to_owned()),
            ),
        ],
    )
    .await;
}

/// A database was refused at the handshake (see `handshake::check_database`):
/// the site's last error says so, without touching the owner's session.
pub async fn refused(db: &DatabaseConnection, sync_id: u32, message: &str) {
    let now = now_ms();
    let row = site_status::ActiveModel {
        sync_id: Set(sync_id_i32(sync_id)),
        session_id: Set(None),
        connected: Set(false),
        ever_connected: Set(false),
        heartbeat_at_ms: Set(0),
        mode: Set(String::new()),
        agent_version: Set(String::new()),
        last_sync_at_ms: Set(0),
        last_error_at_ms: Set(now),
        last_error: Set(message.to_owned()),
        upstream_records_received: Set(0),
        upstream_backlog_reported: Set(0),
        initialising: Set(false),
        init_records_done: Set(0),
        init_records_total: Set(0),
        protocol_version: Set(0),
    };
    let result = site_status::Entity::insert(row)
        .on_conflict(
            OnConflict::column(site_status::Column::SyncId)
                .update_columns([
                    site_status::Column::LastErrorAtMs,
                    site_status::Column::LastError,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map(|_| ());
    log_failure("a refused database", sync_id, result);
}

/// Session `session_id` ended (a newer session of the site is left alone).
pub async fn disconnected(db: &DatabaseConnection, sync_id: u32, session_id: &str) {
    let result = site_status::Entity::update_many()
        .col_expr(site_status::Column::Connected, Expr::value(false))
        .filter(site_status::Column::SyncId.eq(sync_id_i32(sync_id)))
        .filter(site_status::Column::SessionId.eq(session_id.to_owned()))
        .exec(db)
        .await
        .map(|_| ());
    log_failure("a disconnection", sync_id, result);
}
