//! Table `site`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "site")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub sync_id: i32,
    pub name: String,
    pub store_id: String,
    pub url: String,
    pub enabled: bool,
    pub sync_user_name: Option<String>,
    pub sync_password_hash: Option<String>,
    pub upstream_acked_seq: i64,
    pub downstream_cursor: i64,
    pub initialised: bool,
    pub created_at_ms: i64,
    /// The satellite database that owns this Sync ID (empty: none yet).
    pub database_id: String,
    /// The satellite's tag of entry `upstream_acked_seq` (0: unknown).
    pub upstream_acked_tag: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
