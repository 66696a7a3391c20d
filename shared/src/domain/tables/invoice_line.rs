//! `invoice_line`: a store's data, written by the site hosting the store.

use super::{Model, Owner, Reference, TableDef, UpdateGuard};
use crate::domain::entities::invoice_line;
use crate::proto::v1::{sync_record::Record, Table};
use crate::{domain::validate, Error};

pub struct InvoiceLine;

impl TableDef for InvoiceLine {
    type Entity = invoice_line::Entity;
    const NAME: &'static str = "invoice_line";
    const TABLE: Table = Table::InvoiceLine;
    const OWNER: Owner = Owner::Store { column: "store_id" };
    const REFERENCES: &'static [Reference] = &[
        Reference {
            column: "invoice_id",
            table: "invoice",
        },
        Reference {
            column: "stock_line_id",
            table: "stock_line",
        },
    ];
    /// A line of an inbound shipment (the master made it from the sender's
    /// outbound lines) is not moved to another invoice. The master's
    /// transfer checks read back only the lines sent on an inbound
    /// shipment, and refuse other changes to them; this is the one change
    /// they cannot see without reading back every line sent.
    const UPDATE_GUARD: Option<UpdateGuard> = Some(UpdateGuard {
        sql: "t.invoice_id = excluded.invoice_id OR NOT EXISTS \
              (SELECT 1 FROM invoice i WHERE i.id = t.invoice_id AND i.kind = 'INBOUND_SHIPMENT')",
        why: "changes the shipped packs, item or shipment of an inbound line",
    });

    fn decode(record: Record) -> Result<Model<Self>, Record> {
        match record {
            Record::InvoiceLine(line) => Ok(line.into()),
            other => Err(other),
        }
    }

    fn encode(model: Model<Self>) -> Record {
        Record::InvoiceLine(model.into())
    }

    fn validate(line: &Model<Self>, field: &dyn Fn(&str) -> String) -> crate::Result<()> {
        validate::uuid(&field("invoice_id"), &line.invoice_id)?;
        validate::uuid(&field("item_id"), &line.item_id)?;
        validate::optional_text(&field("batch"), &line.batch, 64)?;
        validate::date(&field("expiry_date"), &line.expiry_date, true)?;
        validate::pack_size(&field("pack_size"), line.pack_size)?;
        // Negative for stock going out: bounded, not signed.
        if !line.number_of_packs.is_finite() || line.number_of_packs.abs() > validate::MAX_QUANTITY
        {
            return Err(Error::invalid(&field("number_of_packs"), "is out of range"));
        }
        validate::quantity(&field("cost_price_per_pack"), line.cost_price_per_pack, 0.0)?;
        validate::quantity(&field("sell_price_per_pack"), line.sell_price_per_pack, 0.0)
    }
}
