//! What the master and the satellites share, in three parts that do not mix.
//!
//! # Layout
//! - [`proto`] — **the contract**: the generated gRPC code of
//!   `proto/storesync/v1` and its descriptor set (for server reflection).
//! - [`domain`] — **the store domain**: the tables every site has and their
//!   rows, one definition per synced table, a store's rules, input checks,
//!   the domain error, and reaching the database.
//! - [`kit`] — **the service kit**: authentication, serving, TLS, telemetry,
//!   configuration mechanics and CLI output, which know nothing of stores.
//!
//! The domain uses the contract. The kit holds no store rules: it uses the
//! contract (reflection, metric labels), the shared [`Error`], and the
//! operator table for operator logins. Neither binary imports the other:
//! what both need lives here.
pub mod domain;
pub mod kit;
pub mod proto;

pub use domain::error::{Error, Result};

/// This build's version, reported in handshakes and status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The sync protocol version this build speaks.
///
/// - 1: the first release (frozen in `tests/contract/v1`).
/// - 2: rows the master hands over to a store's site (a transfer's inbound
///   shipment) and `Transfer` records (`docs/TRANSFERS.md`); the integrity
///   check's messages (`Verify*`, `docs/INTEGRITY.md`). A version 1
///   satellite is sent none of them.
pub const PROTOCOL_VERSION: u32 = 2;

/// The first protocol version that takes rows the master hands over to a
/// store's site. An older site is never sent one, nor skipped past one: its
/// downstream waits before the first entry handed to its store, and it cannot
/// initialise a store that holds transfer rows, until it is upgraded.
pub const HANDOVER_PROTOCOL_VERSION: u32 = 2;

/// Whether a satellite speaking protocol `version` knows records of `table`.
pub fn knows_table(version: u32, table: proto::v1::Table) -> bool {
    version >= HANDOVER_PROTOCOL_VERSION || (table as i32) <= proto::v1::Table::InvoiceLine as i32
}

/// The oldest sync protocol version whose satellites answer an integrity check.
pub const VERIFY_PROTOCOL_VERSION: u32 = 2;

/// The oldest sync protocol version this build's master accepts from a
/// satellite: the window `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION` lets sites
/// upgrade weeks after the master. The contract only changes additively within
/// it (`tests/tests/contract_compat.rs` drives this master with a frozen copy).
pub const MIN_PROTOCOL_VERSION: u32 = 1;
