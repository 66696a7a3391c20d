//! Each site's integrity checks on record, and the audit of their repairs.
//!
//! `integrity_check` (migration `m0120_integrity`) keeps one row per check
//! that reached the site (its outcome, counts, and the differences it named,
//! as JSON); `SyncStatus` shows the latest per site. Each repaired row is one
//! audit entry (`integrity_repair`: table, id, what was done, before and
//! after), written in the same transaction as the check's row.
//!
//! `integrity_request` (migration `m0121_integrity_requests`) keeps the
//! checks requested (by an operator or the schedule) until one of the site's
//! sessions, on any master process, has run them, and then their result: a
//! caller on another replica reads it there.
//!
//! Both are pruned ([`prune`], every hour): checks and finished requests
//! that ended more than `integrity_history_days` ago go, except each site's
//! latest check, which `SyncStatus` shows and the schedule reads. The audit
//! of repairs (`audit_log`) is kept.
//!
//! # Invariant
//! A request is finished once, with the result of an attempt that ended
//! (EQUAL, DIFFERENT, NOT_SETTLED, CANNOT_VERIFY_VERSION, FAILED), or FAILED
//! when [`MAX_ATTEMPTS`] attempts have begun and none ended; an attempt cut
//! by the end of the session leaves it requested.

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Expr, Func, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use storesync_shared::proto::v1 as pb;

use crate::audit;
use storesync_shared::domain::validate::now_ms;

use crate::error::{Error, Result};

/// The migration's statements (see `crate::schema`).
pub const MIGRATION: &str = r#"
CREATE TABLE integrity_check (
    id {serial_pk},
    sync_id INTEGER NOT NULL,
    started_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT NOT NULL,
    report_only BOOLEAN NOT NULL,
    outcome TEXT NOT NULL,
    message TEXT NOT NULL,
    rows_compared BIGINT NOT NULL,
    rows_differing BIGINT NOT NULL,
    rows_repaired BIGINT NOT NULL,
    ledger_problems BIGINT NOT NULL,
    differences TEXT NOT NULL
);
CREATE INDEX integrity_check_site ON integrity_check (sync_id, id)
"#;

/// Most differences kept per check row (the audit keeps every repair).
const MAX_KEPT: usize = 1000;

/// The latest check of a site, as `SyncStatus` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latest {
    pub finished_at_ms: i64,
    pub outcome: String,
    pub message: String,
    pub rows_compared: u64,
    pub rows_differing: u64,
    pub rows_repaired: u64,
    pub ledger_problems: u64,
}

/// Records `result` and audits `repairs` ((table, id, action, before, after)) by `actor`.
pub async fn save(
    db: &DatabaseConnection,
    result: &pb::SiteVerification,
    repairs: &[[String; 5]],
    actor: &str,
) -> Result<()> {
    let differences: Vec<serde_json::Value> = result
        .differences
        .iter()
        .take(MAX_KEPT)
        .map(|d| {
            serde_json::json!({
                "table": d.table().as_str_name(),
                "id": d.id,
                "side": d.side().as_str_name(),
                "repair": d.repair,
            })
        })
        .collect();
    let txn = storesync_shared::domain::db::begin(db).await?;
    let mut insert = Query::insert();
    insert
        .into_table(Alias::new("integrity_check"))
        .columns(
            [
                "sync_id",
                "started_at_ms",
                "finished_at_ms",
                "report_only",
                "outcome",
                "message",
                "rows_compared",
                "rows_differing",
                "rows_repaired",
                "ledger_problems",
                "differences",
            ]
            .map(Alias::new),
        )
        .values_panic([
            i64::from(result.sync_id).into(),
            result.started_at_ms.into(),
            result.finished_at_ms.into(),
            result.report_only.into(),
            result.outcome().as_str_name().into(),
            result.message.clone().into(),
            count(result.rows_compared).into(),
            count(result.rows_differing).into(),
            count(result.rows_repaired).into(),
            count(result.site_ledger_total + result.master_ledger_total).into(),
            serde_json::Value::Array(differences).to_string().into(),
        ]);
    txn.execute(txn.get_database_backend().build(&insert))
        .await?;
    for [table, id, action, before, after] in repairs {
        audit::record(
            &txn,
            actor,
            "integrity_repair",
            serde_json::json!({
                "sync_id": result.sync_id,
                "table": table,
                "id": id,
                "repair": action,
                "before": before,
                "after": after,
            })
            .to_string(),
        )
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The id of each site's latest check.
fn newest_check_ids() -> sea_orm::sea_query::SelectStatement {
    let mut newest = Query::select();
    newest
        .from(Alias::new("integrity_check"))
        .expr(Func::max(Expr::col(Alias::new("id"))))
        .group_by_col(Alias::new("sync_id"));
    newest
}

/// The latest check of every site that has one.
pub async fn latest<C: ConnectionTrait>(db: &C) -> storesync_shared::Result<HashMap<u32, Latest>> {
    let mut query = Query::select();
    query
        .from(Alias::new("integrity_check"))
        .columns(
            [
                "sync_id",
                "finished_at_ms",
                "outcome",
                "message",
                "rows_compared",
                "rows_differing",
                "rows_repaired",
                "ledger_problems",
            ]
            .map(Alias::new),
        )
        .and_where(Expr::col(Alias::new("id")).in_subquery(newest_check_ids()));
    let rows = db
        .query_all(db.get_database_backend().build(&query))
        .await?;
    let mut latest = HashMap::new();
    for row in rows {
        let sync_id: i32 = row.try_get_by_index(0)?;
        let unsigned = |index: usize| -> storesync_shared::Result<u64> {
            let value: i64 = row.try_get_by_index(index)?;
            Ok(u64::try_from(value).unwrap_or(0))
        };
        latest.insert(
            u32::try_from(sync_id).unwrap_or(0),
            Latest {
                finished_at_ms: row.try_get_by_index(1)?,
                outcome: row.try_get_by_index(2)?,
                message: row.try_get_by_index(3)?,
                rows_compared: unsigned(4)?,
                rows_differing: unsigned(5)?,
                rows_repaired: unsigned(6)?,
                ledger_problems: unsigned(7)?,
            },
        );
    }
    Ok(latest)
}

/// When site `sync_id`'s latest settled check (EQUAL or DIFFERENT) ended (0: never).
pub async fn last_checked<C: ConnectionTrait>(db: &C, sync_id: u32) -> Result<i64> {
    let mut query = Query::select();
    query
        .from(Alias::new("integrity_check"))
        .expr(Func::max(Expr::col(Alias::new("finished_at_ms"))))
        .and_where(Expr::col(Alias::new("sync_id")).eq(i64::from(sync_id)))
        .and_where(Expr::col(Alias::new("outcome")).is_in(["EQUAL", "DIFFERENT"]));
    let found = db
        .query_one(db.get_database_backend().build(&query))
        .await?;
    Ok(match found {
        Some(row) => row.try_get_by_index::<Option<i64>>(0)?.unwrap_or(0),
        None => 0,
    })
}

/// The statements of migration `m0121_integrity_requests` (see `crate::schema`).
///
/// One row per check requested (by an operator or the schedule); the process
/// that holds the site's session runs it and writes its result here.
/// `finished_at_ms` 0: still requested. `attempts`: attempts begun (a session
/// that ended during one leaves the request as it was, with `message` saying
/// why). `result`: the encoded `SiteVerification`, once finished.
pub const REQUESTS_MIGRATION: &str = r#"
CREATE TABLE integrity_request (
    id {serial_pk},
    sync_id INTEGER NOT NULL,
    requested_at_ms BIGINT NOT NULL,
    report_only BOOLEAN NOT NULL,
    actor TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    message TEXT NOT NULL,
    finished_at_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    result {blob}
);
CREATE INDEX integrity_request_site ON integrity_request (sync_id, finished_at_ms, id)
"#;

/// Attempts a request gets before it ends FAILED (each cut by the end of the
/// site's session, or by the end of the master process).
pub const MAX_ATTEMPTS: u32 = 5;

/// A check requested and not yet finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: i64,
    pub sync_id: u32,
    pub requested_at_ms: i64,
    pub report_only: bool,
    /// Who asked (the audit's actor of its repairs).
    pub actor: String,
    /// Attempts begun so far.
    pub attempts: u32,
    /// Why the last attempt did not finish.
    pub message: String,
}

fn requests() -> Alias {
    Alias::new("integrity_request")
}

fn col(name: &str) -> Expr {
    Expr::col(Alias::new(name))
}

const REQUEST_COLUMNS: [&str; 7] = [
    "id",
    "sync_id",
    "requested_at_ms",
    "report_only",
    "actor",
    "attempts",
    "message",
];

fn request_of(row: &sea_orm::QueryResult) -> storesync_shared::Result<Request> {
    let sync_id: i32 = row.try_get_by_index(1)?;
    let attempts: i32 = row.try_get_by_index(5)?;
    Ok(Request {
        id: row.try_get_by_index(0)?,
        sync_id: u32::try_from(sync_id).unwrap_or(0),
        requested_at_ms: row.try_get_by_index(2)?,
        report_only: row.try_get_by_index(3)?,
        actor: row.try_get_by_index(4)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        message: row.try_get_by_index(6)?,
    })
}

/// Requests a check of `sync_id`. A request of the same kind that no
/// attempt has begun yet stands for this one too (its result is newer than
/// both); otherwise a new one is recorded.
pub async fn request(
    db: &DatabaseConnection,
    sync_id: u32,
    report_only: bool,
    actor: &str,
) -> Result<Request> {
    let mut waiting = Query::select();
    waiting
        .from(requests())
        .columns(REQUEST_COLUMNS.map(Alias::new))
        .and_where(col("sync_id").eq(i64::from(sync_id)))
        .and_where(col("finished_at_ms").eq(0))
        .and_where(col("attempts").eq(0))
        .and_where(col("report_only").eq(report_only))
        .order_by(Alias::new("id"), sea_orm::sea_query::Order::Asc)
        .limit(1);
    let backend = db.get_database_backend();
    if let Some(row) = db.query_one(backend.build(&waiting)).await? {
        return Ok(request_of(&row)?);
    }
    let requested_at_ms = now_ms();
    let mut insert = Query::insert();
    insert
        .into_table(requests())
        .columns(
            [
                "sync_id",
                "requested_at_ms",
                "report_only",
                "actor",
                "attempts",
                "message",
                "finished_at_ms",
                "outcome",
            ]
            .map(Alias::new),
        )
        .values_panic([
            i64::from(sync_id).into(),
            requested_at_ms.into(),
            report_only.into(),
            actor.into(),
            0i32.into(),
            "".into(),
            0i64.into(),
            "".into(),
        ])
        .returning_col(Alias::new("id"));
    let row = db
        .query_one(backend.build(&insert))
        .await?
        .ok_or_else(|| Error::internal("the new integrity request has no id"))?;
    Ok(Request {
        id: row.try_get_by_index(0)?,
        sync_id,
        requested_at_ms,
        report_only,
        actor: actor.to_owned(),
        attempts: 0,
        message: String::new(),
    })
}

/// The oldest unfinished request of each site (`None`: every site).
async fn pending(
    db: &impl ConnectionTrait,
    sync_id: Option<u32>,
) -> storesync_shared::Result<Vec<Request>> {
    let mut query = Query::select();
    query
        .from(requests())
        .columns(REQUEST_COLUMNS.map(Alias::new))
        .and_where(col("finished_at_ms").eq(0))
        .order_by(Alias::new("id"), sea_orm::sea_query::Order::Asc);
    if let Some(sync_id) = sync_id {
        query.and_where(col("sync_id").eq(i64::from(sync_id)));
    }
    let rows = db
        .query_all(db.get_database_backend().build(&query))
        .await?;
    let mut oldest: Vec<Request> = Vec::new();
    for row in rows {
        let request = request_of(&row)?;
        if !oldest.iter().any(|r| r.sync_id == request.sync_id) {
            oldest.push(request);
        }
    }
    Ok(oldest)
}

/// The oldest unfinished request of `sync_id`.
pub async fn next_request(db: &DatabaseConnection, sync_id: u32) -> Result<Option<Request>> {
    Ok(pending(db, Some(sync_id)).await?.pop())
}

/// Each site's oldest unfinished request, for `SyncStatus`.
pub async fn queued<C: ConnectionTrait>(db: &C) -> storesync_shared::Result<HashMap<u32, Request>> {
    Ok(pending(db, None)
        .await?
        .into_iter()
        .map(|r| (r.sync_id, r))
        .collect())
}

/// Counts an attempt of `request` as begun; false when it has finished
/// meanwhile (another session ran it).
pub async fn begin_attempt(db: &DatabaseConnection, request: &Request) -> Result<bool> {
    let mut update = Query::update();
    update
        .table(requests())
        .value(Alias::new("attempts"), col("attempts").add(1))
        .and_where(col("id").eq(request.id))
        .and_where(col("finished_at_ms").eq(0));
    let done = db.execute(db.get_database_backend().build(&update)).await?;
    Ok(done.rows_affected() == 1)
}

/// An attempt of `request` was cut (`why`): it stays requested.
pub async fn attempt_cut(db: &DatabaseConnection, request: &Request, why: &str) -> Result<()> {
    let mut update = Query::update();
    update
        .table(requests())
        .value(Alias::new("message"), why)
        .and_where(col("id").eq(request.id))
        .and_where(col("finished_at_ms").eq(0));
    db.execute(db.get_database_backend().build(&update)).await?;
    Ok(())
}

/// `request` finished with `result` (a request finished already stays as it was).
pub async fn finish(
    db: &DatabaseConnection,
    request: &Request,
    result: &pb::SiteVerification,
) -> Result<()> {
    use prost::Message;
    let mut update = Query::update();
    update
        .table(requests())
        .value(
            Alias::new("finished_at_ms"),
            result.finished_at_ms.max(request.requested_at_ms).max(1),
        )
        .value(Alias::new("outcome"), result.outcome().as_str_name())
        .value(Alias::new("message"), result.message.clone())
        .value(Alias::new("result"), result.encode_to_vec())
        .and_where(col("id").eq(request.id))
        .and_where(col("finished_at_ms").eq(0));
    db.execute(db.get_database_backend().build(&update)).await?;
    Ok(())
}

/// Request `id` as it stands: its result once finished (`Err`: still
/// requested, with its state).
pub async fn result_of(
    db: &DatabaseConnection,
    id: i64,
) -> Result<std::result::Result<pb::SiteVerification, Request>> {
    use prost::Message;
    let mut query = Query::select();
    query
        .from(requests())
        .columns(REQUEST_COLUMNS.map(Alias::new))
        .column(Alias::new("finished_at_ms"))
        .column(Alias::new("result"))
        .and_where(col("id").eq(id));
    let row = db
        .query_one(db.get_database_backend().build(&query))
        .await?
        .ok_or_else(|| Error::internal(format!("integrity request {id} is missing")))?;
    let request = request_of(&row)?;
    let finished_at_ms: i64 = row.try_get_by_index(7)?;
    if finished_at_ms == 0 {
        return Ok(Err(request));
    }
    let bytes: Option<Vec<u8>> = row.try_get_by_index(8)?;
    pb::SiteVerification::decode(bytes.unwrap_or_default().as_slice())
        .map(Ok)
        .map_err(|e| {
            Error::internal(format!(
                "integrity request {id}: its result does not decode: {e}"
            ))
        })
}

/// Deletes the checks and the finished requests that ended before
/// `before_ms`, except each site's latest check; returns how many of each.
/// Unfinished requests stay whatever their age (they are still to run).
pub async fn prune<C: ConnectionTrait>(db: &C, before_ms: i64) -> Result<(u64, u64)> {
    let backend = db.get_database_backend();
    let mut checks = Query::delete();
    checks
        .from_table(Alias::new("integrity_check"))
        .and_where(col("finished_at_ms").lt(before_ms))
        .and_where(col("id").not_in_subquery(newest_check_ids()));
    let checks = db.execute(backend.build(&checks)).await?.rows_affected();
    let mut finished = Query::delete();
    finished
        .from_table(requests())
        .and_where(col("finished_at_ms").gt(0))
        .and_where(col("finished_at_ms").lt(before_ms));
    let finished = db.execute(backend.build(&finished)).await?.rows_affected();
    Ok((checks, finished))
}

/// Prunes the history older than `keep` every `every` until the task is aborted.
pub async fn run_pruning(
    db: DatabaseConnection,
    keep: std::time::Duration,
    every: std::time::Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let before_ms =
            now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        match prune(&db, before_ms).await {
            Ok((0, 0)) => {}
            Ok((checks, requests)) => {
                tracing::info!(checks, requests, "pruned integrity check history")
            }
            Err(error) => tracing::warn!(%error, "could not prune the integrity check history"),
        }
    }
}
