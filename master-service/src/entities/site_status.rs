//! Table `site_status`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "site_status")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub sync_id: i32,
    pub session_id: Option<String>,
    pub connected: bool,
    pub ever_connected: bool,
    pub heartbeat_at_ms: i64,
    pub mode: String,
    pub agent_version: String,
    pub last_sync_at_ms: i64,
    pub last_error_at_ms: i64,
    pub last_error: String,
    pub upstream_records_received: i64,
    pub upstream_backlog_reported: i64,
    pub initialising: bool,
    pub init_records_done: i64,
    pub init_records_total: i64,
    /// The sync protocol version of the site's latest session.
    pub protocol_version: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
