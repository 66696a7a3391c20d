//! sea-orm entities of the satellite's own tables (see [`crate::schema`]).

pub mod outbox;
pub mod sync_state;
