//! Each site's integrity checks on record, and the audit of their repairs.
//!
//! `integrity_check` (migration `m0120_integrity`) keeps one row per check
//! that reached the site (its outcome, counts, and the differences it named,
//! as JSON); `SyncStatus` shows the latest per site. Each repaired row is one
//! audit entry (`integrity_repair`: table, id, what was done, before and
//! after), written in the same transaction as the check's row.

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Expr, Func, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use storesync_shared::proto::v1 as pb;

use crate::audit;
use crate::error::Result;

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

/// The latest check of every site that has one.
pub async fn latest<C: ConnectionTrait>(db: &C) -> storesync_shared::Result<HashMap<u32, Latest>> {
    let mut newest = Query::select();
    newest
        .from(Alias::new("integrity_check"))
        .expr(Func::max(Expr::col(Alias::new("id"))))
        .group_by_col(Alias::new("sync_id"));
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
        .and_where(Expr::col(Alias::new("id")).in_subquery(newest));
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
