//! What the master and the satellites share.
//!
//! # Layout
//! - [`proto`]: the generated gRPC code of `proto/storesync/v1` and its
//!   descriptor set (for server reflection).
//! - [`schema`] and [`entities`]: the tables every site has, and their rows.
//! - [`convert`]: rows to protobuf records and back.
//! - [`validate`]: input checks whose errors name the field.
//! - [`error`]: the domain error and its one mapping to a gRPC status.
//! - [`auth`]: Basic credentials and argon2 hashes.
//! - [`config`]: defaults both binaries share, and declaring settings once.
//! - [`db`]: opening PostgreSQL or SQLite with the right settings.
//! - [`tls`]: TLS (and mutual TLS) for servers and the sync client.
//! - [`tables`]: one definition per synced table and the registry sync
//!   iterates over, with their statements on each backend.
//! - [`upsert`]: ordered multi-row upserts of records from another site.
//! - [`store_ops`]: a store's rules (invoices move stock, never below zero)
//!   and its reads; [`store_service`]: the `StoreService` adapter over them,
//!   with a [`store_service::StoreContext`] for what differs per site.
//! - [`master_data_read`]: reading items and names (writing is the master's).
//! - [`server`]: sockets, health, reflection, operator auth layer, shutdown signal.
//! - [`telemetry`]: logs, OpenTelemetry traces and metrics (OTLP), the metric
//!   catalogue, W3C context in sync batches, gRPC server metrics.
pub mod auth;
pub mod cli;
pub mod config;
pub mod convert;
pub mod db;
pub mod entities;
pub mod error;
pub mod master_data_read;
pub mod proto;
pub mod schema;
pub mod server;
pub mod store_ops;
pub mod store_service;
pub mod tables;
pub mod telemetry;
pub mod tls;
pub mod upsert;
pub mod validate;

pub use error::{Error, Result};

/// This build's version, reported in handshakes and status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The sync protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
