//! The storesync satellite agent.
//!
//! # Layout
//! - [`schema`], [`entities`]: the satellite's own tables (the common ones are in
//!   `storesync_shared`).
//! - [`outbox`]: local store-data changes waiting for the master, written in the
//!   same transaction as each change.
pub mod entities;
pub mod outbox;
pub mod schema;
pub mod status;
pub mod sync;
