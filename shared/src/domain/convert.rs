//! Conversions between stored rows and their protobuf records.

use crate::domain::entities::{
    invoice, invoice_line, item, name, requisition, requisition_line, stock_line, store, transfer,
};
use crate::proto::v1 as pb;

impl From<item::Model> for pb::Item {
    fn from(m: item::Model) -> Self {
        Self {
            id: m.id,
            code: m.code,
            name: m.name,
            unit: m.unit,
            default_pack_size: m.default_pack_size,
            active: m.active,
            updated_at_ms: m.updated_at_ms,
        }
    }
}

impl From<pb::Item> for item::Model {
    fn from(p: pb::Item) -> Self {
        Self {
            id: p.id,
            code: p.code,
            name: p.name,
            unit: p.unit,
            default_pack_size: p.default_pack_size,
            active: p.active,
            updated_at_ms: p.updated_at_ms,
        }
    }
}

impl From<name::Model> for pb::Name {
    fn from(m: name::Model) -> Self {
        Self {
            id: m.id,
            code: m.code,
            name: m.name,
            is_customer: m.is_customer,
            is_supplier: m.is_supplier,
            is_store: m.is_store,
            active: m.active,
            updated_at_ms: m.updated_at_ms,
        }
    }
}

impl From<pb::Name> for name::Model {
    fn from(p: pb::Name) -> Self {
        Self {
            id: p.id,
            code: p.code,
            name: p.name,
            is_customer: p.is_customer,
            is_supplier: p.is_supplier,
            is_store: p.is_store,
            active: p.active,
            updated_at_ms: p.updated_at_ms,
        }
    }
}

impl From<store::Model> for pb::Store {
    fn from(m: store::Model) -> Self {
        Self {
            id: m.id,
            code: m.code,
            name: m.name,
            sync_id: u32::try_from(m.sync_id).unwrap_or(0),
        }
    }
}

impl From<pb::Store> for store::Model {
    fn from(p: pb::Store) -> Self {
        Self {
            id: p.id,
            code: p.code,
            name: p.name,
            sync_id: i32::try_from(p.sync_id).unwrap_or(i32::MAX),
        }
    }
}

impl From<stock_line::Model> for pb::StockLine {
    fn from(m: stock_line::Model) -> Self {
        Self {
            id: m.id,
            store_id: m.store_id,
            item_id: m.item_id,
            batch: m.batch,
            expiry_date: m.expiry_date,
            pack_size: m.pack_size,
            available_number_of_packs: m.available_number_of_packs,
            total_number_of_packs: m.total_number_of_packs,
            cost_price_per_pack: m.cost_price_per_pack,
            sell_price_per_pack: m.sell_price_per_pack,
            updated_at_ms: m.updated_at_ms,
        }
    }
}

impl From<pb::StockLine> for stock_line::Model {
    fn from(p: pb::StockLine) -> Self {
        Self {
            id: p.id,
            store_id: p.store_id,
            item_id: p.item_id,
            batch: p.batch,
            expiry_date: p.expiry_date,
            pack_size: p.pack_size,
            available_number_of_packs: p.available_number_of_packs,
            total_number_of_packs: p.total_number_of_packs,
            cost_price_per_pack: p.cost_price_per_pack,
            sell_price_per_pack: p.sell_price_per_pack,
            updated_at_ms: p.updated_at_ms,
        }
    }
}

/// The stored spelling of an invoice kind.
pub fn kind_to_str(kind: pb::InvoiceKind) -> &'static str {
    match kind {
        pb::InvoiceKind::SupplierInvoice => "SUPPLIER_INVOICE",
        pb::InvoiceKind::CustomerInvoice => "CUSTOMER_INVOICE",
        pb::InvoiceKind::InventoryAdjustment => "INVENTORY_ADJUSTMENT",
        pb::InvoiceKind::OutboundShipment => "OUTBOUND_SHIPMENT",
        pb::InvoiceKind::InboundShipment => "INBOUND_SHIPMENT",
        pb::InvoiceKind::Unspecified => "UNSPECIFIED",
    }
}

/// The invoice kind of its stored spelling (`Unspecified` if unknown).
pub fn kind_from_str(kind: &str) -> pb::InvoiceKind {
    pb::InvoiceKind::from_str_name(kind).unwrap_or(pb::InvoiceKind::Unspecified)
}

impl From<invoice::Model> for pb::Invoice {
    fn from(m: invoice::Model) -> Self {
        Self {
            id: m.id,
            store_id: m.store_id,
            name_id: m.name_id,
            kind: kind_from_str(&m.kind) as i32,
            status: pb::InvoiceStatus::from_str_name(&m.status)
                .unwrap_or(pb::InvoiceStatus::Unspecified) as i32,
            invoice_number: m.invoice_number,
            reference: m.reference,
            created_at_ms: m.created_at_ms,
            lines: Vec::new(),
            linked_invoice_id: m.linked_invoice_id,
            shipped_at_ms: m.shipped_at_ms,
            received_at_ms: m.received_at_ms,
            requisition_id: m.requisition_id,
        }
    }
}

impl From<pb::Invoice> for invoice::Model {
    fn from(p: pb::Invoice) -> Self {
        let status =
            pb::InvoiceStatus::try_from(p.status).unwrap_or(pb::InvoiceStatus::Unspecified);
        Self {
            kind: kind_to_str(p.kind()).to_owned(),
            id: p.id,
            store_id: p.store_id,
            name_id: p.name_id,
            status: status.as_str_name().to_owned(),
            invoice_number: p.invoice_number,
            reference: p.reference,
            created_at_ms: p.created_at_ms,
            linked_invoice_id: p.linked_invoice_id,
            shipped_at_ms: p.shipped_at_ms,
            received_at_ms: p.received_at_ms,
            requisition_id: p.requisition_id,
        }
    }
}

impl From<invoice_line::Model> for pb::InvoiceLine {
    fn from(m: invoice_line::Model) -> Self {
        Self {
            id: m.id,
            invoice_id: m.invoice_id,
            store_id: m.store_id,
            item_id: m.item_id,
            stock_line_id: m.stock_line_id,
            batch: m.batch,
            expiry_date: m.expiry_date,
            pack_size: m.pack_size,
            number_of_packs: m.number_of_packs,
            cost_price_per_pack: m.cost_price_per_pack,
            sell_price_per_pack: m.sell_price_per_pack,
            received_number_of_packs: m.received_number_of_packs,
        }
    }
}

impl From<pb::InvoiceLine> for invoice_line::Model {
    fn from(p: pb::InvoiceLine) -> Self {
        Self {
            id: p.id,
            invoice_id: p.invoice_id,
            store_id: p.store_id,
            item_id: p.item_id,
            stock_line_id: p.stock_line_id,
            batch: p.batch,
            expiry_date: p.expiry_date,
            pack_size: p.pack_size,
            number_of_packs: p.number_of_packs,
            cost_price_per_pack: p.cost_price_per_pack,
            sell_price_per_pack: p.sell_price_per_pack,
            received_number_of_packs: p.received_number_of_packs,
        }
    }
}

impl From<transfer::Model> for pb::Transfer {
    fn from(m: transfer::Model) -> Self {
        Self {
            id: m.id,
            from_store_id: m.from_store_id,
            to_store_id: m.to_store_id,
            inbound_invoice_id: m.inbound_invoice_id,
            shipped_at_ms: m.shipped_at_ms,
            delivered_at_ms: m.delivered_at_ms,
            received_at_ms: m.received_at_ms,
            packs_shipped: m.packs_shipped,
            packs_received: m.packs_received,
            discrepancy: m.discrepancy,
        }
    }
}

impl From<pb::Transfer> for transfer::Model {
    fn from(p: pb::Transfer) -> Self {
        Self {
            id: p.id,
            from_store_id: p.from_store_id,
            to_store_id: p.to_store_id,
            inbound_invoice_id: p.inbound_invoice_id,
            shipped_at_ms: p.shipped_at_ms,
            delivered_at_ms: p.delivered_at_ms,
            received_at_ms: p.received_at_ms,
            packs_shipped: p.packs_shipped,
            packs_received: p.packs_received,
            discrepancy: p.discrepancy,
        }
    }
}

/// The stored spelling of a requisition kind.
pub fn requisition_kind_to_str(kind: pb::RequisitionKind) -> &'static str {
    kind.as_str_name()
}

/// The stored spelling of a requisition status.
pub fn requisition_status_to_str(status: pb::RequisitionStatus) -> &'static str {
    status.as_str_name()
}

impl From<requisition::Model> for pb::Requisition {
    fn from(m: requisition::Model) -> Self {
        Self {
            id: m.id,
            store_id: m.store_id,
            kind: pb::RequisitionKind::from_str_name(&m.kind).unwrap_or_default() as i32,
            status: pb::RequisitionStatus::from_str_name(&m.status).unwrap_or_default() as i32,
            other_store_id: m.other_store_id,
            requisition_number: m.requisition_number,
            reference: m.reference,
            created_at_ms: m.created_at_ms,
            sent_at_ms: m.sent_at_ms,
            finalised_at_ms: m.finalised_at_ms,
            linked_requisition_id: m.linked_requisition_id,
            lines: Vec::new(),
        }
    }
}

impl From<pb::Requisition> for requisition::Model {
    fn from(p: pb::Requisition) -> Self {
        Self {
            kind: requisition_kind_to_str(p.kind()).to_owned(),
            status: requisition_status_to_str(p.status()).to_owned(),
            id: p.id,
            store_id: p.store_id,
            other_store_id: p.other_store_id,
            requisition_number: p.requisition_number,
            reference: p.reference,
            created_at_ms: p.created_at_ms,
            sent_at_ms: p.sent_at_ms,
            finalised_at_ms: p.finalised_at_ms,
            linked_requisition_id: p.linked_requisition_id,
        }
    }
}

impl From<requisition_line::Model> for pb::RequisitionLine {
    fn from(m: requisition_line::Model) -> Self {
        Self {
            id: m.id,
            requisition_id: m.requisition_id,
            store_id: m.store_id,
            item_id: m.item_id,
            requested_quantity: m.requested_quantity,
            stock_on_hand: m.stock_on_hand,
            average_monthly_consumption: m.average_monthly_consumption,
            supplied_quantity: 0.0,
        }
    }
}

impl From<pb::RequisitionLine> for requisition_line::Model {
    fn from(p: pb::RequisitionLine) -> Self {
        Self {
            id: p.id,
            requisition_id: p.requisition_id,
            store_id: p.store_id,
            item_id: p.item_id,
            requested_quantity: p.requested_quantity,
            stock_on_hand: p.stock_on_hand,
            average_monthly_consumption: p.average_monthly_consumption,
        }
    }
}
