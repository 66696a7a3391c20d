//! Table `transfer`: the master's record of one transfer between two stores.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "transfer")]
pub struct Model {
    /// The outbound shipment's id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub from_store_id: String,
    pub to_store_id: String,
    pub inbound_invoice_id: String,
    pub shipped_at_ms: i64,
    pub delivered_at_ms: i64,
    pub received_at_ms: i64,
    pub packs_shipped: f64,
    pub packs_received: f64,
    pub discrepancy: f64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
