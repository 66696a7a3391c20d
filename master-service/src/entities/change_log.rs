//! Table `change_log`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "change_log")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    pub table_name: String,
    pub record_id: String,
    pub deleted: bool,
    pub payload: Vec<u8>,
    pub changed_at_ms: i64,
    /// Random, set when the entry is written: tells this entry from another
    /// one with the same sequence in a restored (rewound) log.
    pub tag: i64,
    /// W3C `traceparent` of the write that made the entry ('' if not traced):
    /// the downstream batches carrying it link to that span.
    pub traceparent: String,
    /// m0110: the store whose site alone receives this entry (a store row
    /// handed over, a transfer record); NULL: every site (master data).
    pub store_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
