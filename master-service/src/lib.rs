//! The storesync master.
//!
//! # Layout
//! - [`schema`], [`entities`]: the master's own tables (the common ones are in
//!   `storesync_shared`).
//! - [`changelog`]: the gap-free log of master-data changes that the sync stream reads.
//! - [`sync`]: the sync stream (`SyncService.Sync`): sessions, upstream apply, downstream and initialisation.
pub mod changelog;
pub mod entities;
pub mod schema;
pub mod sync;
