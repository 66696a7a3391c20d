//! `item`: master data, sent to every site.

use super::{Model, Owner, TableDef};
use crate::domain::entities::item;
use crate::proto::v1::{sync_record::Record, Table};

pub struct Item;

impl TableDef for Item {
    type Entity = item::Entity;
    const NAME: &'static str = "item";
    const TABLE: Table = Table::Item;
    const OWNER: Owner = Owner::Master;

    fn decode(record: Record) -> Result<Model<Self>, Record> {
        match record {
            Record::Item(item) => Ok(item.into()),
            other => Err(other),
        }
    }

    fn encode(model: Model<Self>) -> Record {
        Record::Item(model.into())
    }
}
