//! `requisition_line`: a store's data, written by the site hosting the store
//! (a RESPONSE's lines: created by the master with the response).

use super::{Model, Owner, Reference, TableDef};
use crate::domain::entities::requisition_line;
use crate::domain::validate;
use crate::proto::v1::{sync_record::Record, Table};

pub struct RequisitionLine;

impl TableDef for RequisitionLine {
    type Entity = requisition_line::Entity;
    const NAME: &'static str = "requisition_line";
    const TABLE: Table = Table::RequisitionLine;
    const OWNER: Owner = Owner::Store { column: "store_id" };
    const REFERENCES: &'static [Reference] = &[Reference {
        column: "requisition_id",
        table: "requisition",
    }];

    fn decode(record: Record) -> Result<Model<Self>, Record> {
        match record {
            Record::RequisitionLine(line) => Ok(line.into()),
            other => Err(other),
        }
    }

    fn encode(model: Model<Self>) -> Record {
        Record::RequisitionLine(model.into())
    }

    fn validate(line: &Model<Self>, field: &dyn Fn(&str) -> String) -> crate::Result<()> {
        validate::uuid(&field("requisition_id"), &line.requisition_id)?;
        validate::uuid(&field("item_id"), &line.item_id)?;
        validate::quantity(&field("requested_quantity"), line.requested_quantity, 0.0)?;
        validate::quantity(&field("stock_on_hand"), line.stock_on_hand, 0.0)?;
        validate::quantity(
            &field("average_monthly_consumption"),
            line.average_monthly_consumption,
            0.0,
        )
    }
}
