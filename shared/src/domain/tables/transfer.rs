//! `transfer`: the master's record of a transfer between two stores, sent to
//! the sites of both (see `docs/TRANSFERS.md`).
//!
//! # Ownership
//! Written only by the master (a site sending one is refused as master
//! data); the site hosting `from_store_id` and the one hosting
//! `to_store_id` each receive it, through the change log (entries aimed at
//! their store) and in their snapshot.

use super::{Model, Owner, TableDef};
use crate::domain::entities::transfer;
use crate::proto::v1::{sync_record::Record, Table};

pub struct Transfer;

impl TableDef for Transfer {
    type Entity = transfer::Entity;
    const NAME: &'static str = "transfer";
    const TABLE: Table = Table::Transfer;
    const OWNER: Owner = Owner::MasterForStores {
        columns: &["from_store_id", "to_store_id"],
    };

    fn decode(record: Record) -> Result<Model<Self>, Record> {
        match record {
            Record::Transfer(transfer) => Ok(transfer.into()),
            other => Err(other),
        }
    }

    fn encode(model: Model<Self>) -> Record {
        Record::Transfer(model.into())
    }
}
