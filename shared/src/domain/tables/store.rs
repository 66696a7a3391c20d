//! `store`: written on the master; a site receives the row of the store it hosts.

use super::{Model, Owner, TableDef};
use crate::domain::entities::store;
use crate::proto::v1::{sync_record::Record, Table};

pub struct Store;

impl TableDef for Store {
    type Entity = store::Entity;
    const NAME: &'static str = "store";
    const TABLE: Table = Table::Store;
    const OWNER: Owner = Owner::MasterForStore { column: "id" };

    fn decode(record: Record) -> Result<Model<Self>, Record> {
        match record {
            Record::Store(store) => Ok(store.into()),
            other => Err(other),
        }
    }

    fn encode(model: Model<Self>) -> Record {
        Record::Store(model.into())
    }
}
