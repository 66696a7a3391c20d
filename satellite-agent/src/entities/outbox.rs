//! Table `outbox`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    pub payload: Vec<u8>,
    pub created_at_ms: i64,
    /// Random, made when the entry is written: which history this entry
    /// belongs to (two copies of a database number alike but tag apart).
    pub tag: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
