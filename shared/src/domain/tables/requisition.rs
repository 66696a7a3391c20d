//! `requisition`: a store's data, written by the site hosting the store. A
//! RESPONSE is created by the master and handed over to its store's site
//! (see `docs/TRANSFERS.md`); the master refuses a site creating one.

use super::{Model, Owner, TableDef};
use crate::domain::entities::requisition;
use crate::proto::v1::{sync_record::Record, RequisitionKind, RequisitionStatus, Table};
use crate::{domain::validate, Error};

pub struct Requisition;

impl TableDef for Requisition {
    type Entity = requisition::Entity;
    const NAME: &'static str = "requisition";
    const TABLE: Table = Table::Requisition;
    const OWNER: Owner = Owner::Store { column: "store_id" };

    /// A requisition travels without its lines (they are records of their own).
    fn decode(record: Record) -> Result<Model<Self>, Record> {
        match record {
            Record::Requisition(requisition) => Ok(requisition.into()),
            other => Err(other),
        }
    }

    fn encode(model: Model<Self>) -> Record {
        Record::Requisition(model.into())
    }

    fn validate(row: &Model<Self>, field: &dyn Fn(&str) -> String) -> crate::Result<()> {
        validate::uuid(&field("other_store_id"), &row.other_store_id)?;
        if RequisitionKind::from_str_name(&row.kind)
            .is_none_or(|kind| kind == RequisitionKind::Unspecified)
        {
            return Err(Error::invalid(
                &field("kind"),
                "must be a known requisition kind",
            ));
        }
        if RequisitionStatus::from_str_name(&row.status)
            .is_none_or(|status| status == RequisitionStatus::Unspecified)
        {
            return Err(Error::invalid(
                &field("status"),
                "must be a known requisition status",
            ));
        }
        validate::optional_text(&field("reference"), &row.reference, 256)
    }
}
