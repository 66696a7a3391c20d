//! `invoice`: a store's data, written by the site hosting the store.

use super::{Model, Owner, TableDef};
use crate::domain::entities::invoice;
use crate::proto::v1::{sync_record::Record, InvoiceKind, Table};
use crate::{domain::convert, domain::validate, Error};

pub struct Invoice;

impl TableDef for Invoice {
    type Entity = invoice::Entity;
    const NAME: &'static str = "invoice";
    const TABLE: Table = Table::Invoice;
    const OWNER: Owner = Owner::Store { column: "store_id" };

    /// An invoice travels without its lines (they are records of their own).
    fn decode(record: Record) -> Result<Model<Self>, Record> {
        match record {
            Record::Invoice(invoice) => Ok(invoice.into()),
            other => Err(other),
        }
    }

    fn encode(model: Model<Self>) -> Record {
        Record::Invoice(model.into())
    }

    fn validate(invoice: &Model<Self>, field: &dyn Fn(&str) -> String) -> crate::Result<()> {
        validate::uuid(&field("name_id"), &invoice.name_id)?;
        if convert::kind_from_str(&invoice.kind) == InvoiceKind::Unspecified {
            return Err(Error::invalid(
                &field("kind"),
                "must be a known invoice kind",
            ));
        }
        validate::optional_text(&field("reference"), &invoice.reference, 256)
    }
}
