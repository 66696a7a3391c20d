//! Table `requisition`: a store's request to another store, or the
//! supplying store's response to it (see `docs/TRANSFERS.md`).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "requisition")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub store_id: String,
    /// `REQUEST` or `RESPONSE`.
    pub kind: String,
    /// `REQUISITION_DRAFT`, `REQUISITION_SENT` or `REQUISITION_FINALISED`.
    pub status: String,
    pub other_store_id: String,
    pub requisition_number: i64,
    pub reference: String,
    pub created_at_ms: i64,
    pub sent_at_ms: i64,
    pub finalised_at_ms: i64,
    pub linked_requisition_id: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
