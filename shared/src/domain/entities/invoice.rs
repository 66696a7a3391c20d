//! Table `invoice`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "invoice")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub store_id: String,
    pub name_id: String,
    pub kind: String,
    pub status: String,
    pub invoice_number: i64,
    pub reference: String,
    pub created_at_ms: i64,
    /// Transfers (m0110/m0210): an inbound shipment's outbound shipment.
    pub linked_invoice_id: String,
    pub shipped_at_ms: i64,
    pub received_at_ms: i64,
    /// Requisitions (m0111/m0211): the response an outbound supplies, the
    /// request an inbound answers; empty otherwise.
    pub requisition_id: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
