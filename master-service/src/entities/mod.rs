//! sea-orm entities of the master's own tables (see [`crate::schema`]).

pub mod change_log;
pub mod refusal;
pub mod site;
pub mod site_status;
