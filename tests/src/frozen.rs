//! The sync contract as protocol version 1 was released (`contract/v1`),
//! generated as a client: what a satellite of that version sends and reads.

/// `storesync.v1` of the frozen contract.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("storesync.v1");
}
