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

/// The sync protocol version this build speaks. Version 2 adds the
/// integrity check's messages (`Verify*`); a version 1 satellite is never
/// sent them.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest sync protocol version whose satellites answer an integrity check.
pub const VERIFY_PROTOCOL_VERSION: u32 = 2;

/// The oldest sync protocol version this build's master accepts from a
/// satellite: the window `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION` lets sites
/// upgrade weeks after the master. The contract only changes additively within
/// it (`tests/tests/contract_compat.rs` drives this master with a frozen copy).
pub const MIN_PROTOCOL_VERSION: u32 = 1;
