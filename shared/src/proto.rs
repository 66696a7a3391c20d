//! The gRPC contract, generated from `proto/storesync/v1/*.proto`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Package `storesync.v1`.
pub mod v1 {
    tonic::include_proto!("storesync.v1");
}

/// Encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("storesync_descriptor");
