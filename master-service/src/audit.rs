//! The audit trail: who changed what, and when. Written in the same
//! transaction as the change it describes, so neither exists without the other.
//! Details never hold secrets (passwords, codes, tokens): only whether one changed.

use sea_orm::{ConnectionTrait, EntityTrait, QueryOrder, QuerySelect, Set};
use storesync_shared::domain::entities::audit_log;
use storesync_shared::domain::validate::now_ms;

use crate::error::Result;

/// Actor recorded for changes the master makes itself (first start, configuration).
pub const SYSTEM: &str = "system";

/// Records `action` by `actor` with `detail`.
pub async fn record<C: ConnectionTrait>(
    db: &C,
    actor: &str,
    action: &str,
    detail: impl Into<String>,
) -> Result<()> {
    audit_log::Entity::insert(audit_log::ActiveModel {
        at_ms: Set(now_ms()),
        actor: Set(actor.to_owned()),
        action: Set(action.to_owned()),
        detail: Set(detail.into()),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// The newest `limit` entries, newest first.
pub async fn newest<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<audit_log::Model>> {
    Ok(audit_log::Entity::find()
        .order_by_desc(audit_log::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}
