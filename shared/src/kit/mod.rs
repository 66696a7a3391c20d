//! The service kit both binaries are built with; it knows nothing of stores.
//!
//! - [`auth`]: Basic credentials and argon2 hashes (with pooled memory).
//! - [`config`]: defaults both binaries share, and declaring settings once.
//! - [`server`]: sockets, health, reflection, operator auth layer, shutdown signal.
//! - [`tls`]: TLS (and mutual TLS) for servers and the sync client.
//! - [`telemetry`]: logs, OpenTelemetry traces and metrics (OTLP), the metric
//!   catalogue, W3C context in sync batches, the gRPC server layer.
//! - [`cli`]: printing tables, CSV and JSON for the operator commands.
//! - [`stream_compression`]: one deflate context per direction for a whole
//!   sync session (`StreamCompression` in `sync.proto`).
pub mod auth;
pub mod cli;
pub mod config;
pub mod server;
pub mod stream_compression;
pub mod telemetry;
pub mod tls;
