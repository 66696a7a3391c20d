//! Helpers to start and drive a master (see the crate docs).
