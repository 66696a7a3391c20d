//! Table `invoice_line`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "invoice_line")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub invoice_id: String,
    pub store_id: String,
    pub item_id: String,
    pub stock_line_id: String,
    pub batch: String,
    pub expiry_date: String,
    pub pack_size: i32,
    pub number_of_packs: f64,
    pub cost_price_per_pack: f64,
    pub sell_price_per_pack: f64,
    /// Transfers (m0110/m0210): packs received on an inbound shipment's line.
    pub received_number_of_packs: f64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
