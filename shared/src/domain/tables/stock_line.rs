//! `stock_line`: a store's data, written by the site hosting the store.

use super::{Model, Owner, TableDef};
use crate::domain::entities::stock_line;
use crate::domain::validate;
use crate::proto::v1::{sync_record::Record, Table};

pub struct StockLine;

impl TableDef for StockLine {
    type Entity = stock_line::Entity;
    const NAME: &'static str = "stock_line";
    const TABLE: Table = Table::StockLine;
    const OWNER: Owner = Owner::Store { column: "store_id" };

    fn decode(record: Record) -> Result<Model<Self>, Record> {
        match record {
            Record::StockLine(line) => Ok(line.into()),
            other => Err(other),
        }
    }

    fn encode(model: Model<Self>) -> Record {
        Record::StockLine(model.into())
    }

    fn validate(line: &Model<Self>, field: &dyn Fn(&str) -> String) -> crate::Result<()> {
        validate::uuid(&field("item_id"), &line.item_id)?;
        validate::optional_text(&field("batch"), &line.batch, 64)?;
        validate::date(&field("expiry_date"), &line.expiry_date, true)?;
        validate::pack_size(&field("pack_size"), line.pack_size)?;
        for (name, value) in [
            ("available_number_of_packs", line.available_number_of_packs),
            ("total_number_of_packs", line.total_number_of_packs),
            ("cost_price_per_pack", line.cost_price_per_pack),
            ("sell_price_per_pack", line.sell_price_per_pack),
        ] {
            validate::quantity(&field(name), value, 0.0)?;
        }
        Ok(())
    }
}
