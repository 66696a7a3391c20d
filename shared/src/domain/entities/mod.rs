//! sea-orm entities of the common tables (see [`crate::domain::schema`]).

pub mod audit_log;
pub mod invoice;
pub mod invoice_line;
pub mod item;
pub mod name;
pub mod operator;
pub mod requisition;
pub mod requisition_line;
pub mod setting;
pub mod stock_line;
pub mod store;
pub mod transfer;
pub mod unlock_token;
