//! Table `requisition_line`: one item of a requisition (units).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "requisition_line")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub requisition_id: String,
    pub store_id: String,
    pub item_id: String,
    pub requested_quantity: f64,
    pub stock_on_hand: f64,
    pub average_monthly_consumption: f64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
