//! `name`: master data (customers, suppliers, stores), sent to every site.

use super::{Model, Owner, TableDef};
use crate::domain::entities::name;
use crate::proto::v1::{sync_record::Record, Table};

pub struct Name;

impl TableDef for Name {
    type Entity = name::Entity;
    const NAME: &'static str = "name";
    const TABLE: Table = Table::Name;
    const OWNER: Owner = Owner::Master;

    fn decode(record: Record) -> Result<Model<Self>, Record> {
        match record {
            Record::Name(name) => Ok(name.into()),
            other => Err(other),
        }
    }

    fn encode(model: Model<Self>) -> Record {
        Record::Name(model.into())
    }
}
