//! Table `sync_state`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "sync_state")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    pub downstream_cursor: i64,
    pub upstream_last_seq: i64,
    pub upstream_acked_seq: i64,
    pub initialised: bool,
    pub store_id: String,
    pub store_code: String,
    pub store_name: String,
    pub sync_interval_minutes: i32,
    pub last_sync_at_ms: i64,
    pub last_error_at_ms: i64,
    pub last_error: String,
    /// This database's identity (UUID), sent in every Hello.
    pub database_id: String,
    /// The outbox tag of entry `upstream_acked_seq` (0: unknown).
    pub upstream_acked_tag: i64,
    /// Non-empty: this database stopped syncing for good, and why.
    pub halted: String,
    /// `DownstreamBatch.end_tag` stored with `downstream_cursor` (m0202).
    pub downstream_tag: i64,
    /// `Welcome.changelog_epoch` of the master data held (m0202; '' unknown).
    pub changelog_epoch: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
