//! Table `refusal` (see `crate::sync::refusals`).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "refusal")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub sync_id: i32,
    pub first_seq: i64,
    pub last_seq: i64,
    /// The gRPC code's name, e.g. `PERMISSION_DENIED`.
    pub code: String,
    pub reason: String,
    /// The contract's `Table` number of the record at fault (0: none).
    pub record_table: i32,
    /// Its id ("" when none).
    pub record_id: String,
    pub first_at_ms: i64,
    pub last_at_ms: i64,
    pub attempts: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
