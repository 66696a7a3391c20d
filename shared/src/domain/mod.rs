//! The store domain: what is stored, who may write it, and the rules that
//! keep it right. No gRPC serving, no authentication, no telemetry setup.
//!
//! - [`schema`] and [`entities`]: the tables every site has, and their rows.
//! - [`tables`]: one definition per synced table and the registry sync
//!   iterates over, with their statements on each backend.
//! - [`convert`]: rows to protobuf records and back.
//! - [`upsert`]: ordered multi-row upserts of records from another site.
//! - [`validate`]: input checks whose errors name the field.
//! - [`error`]: the domain error and its one mapping to a gRPC status.
//! - [`db`]: opening PostgreSQL or SQLite with the right settings.
//! - [`store_ops`]: a store's rules (invoices move stock, never below zero)
//!   and its reads; [`store_service`]: the `StoreService` adapter over them,
//!   with a [`store_service::StoreContext`] for what differs per site.
//! - [`integrity`]: digests of the synced tables and the stock ledger, for
//!   the integrity check both sides run.
//! - [`master_data_read`]: reading items and names (writing is the master's).
pub mod convert;
pub mod db;
pub mod entities;
pub mod error;
pub mod integrity;
pub mod master_data_read;
pub mod requisitions;
pub mod schema;
pub mod store_ops;
pub mod store_service;
pub mod tables;
pub mod transfers;
pub mod upsert;
pub mod validate;
