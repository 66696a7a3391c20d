//! The service kit both binaries are built with; it knows nothing of stores.
//!
//! - [`auth`]: Basic credentials and argon2 hashes (with pooled memory).
//! - [`config`]: defaults both binaries share, and declaring settings once.
//! - [`server`]: sockets, health, reflection, operator auth layer, shutdown signal.
//! - [`tls`]: TLS (and mutual TLS) for servers and the sync client.
//! - [`telemetry`]: logs, OpenTelemetry traces and metrics (OTLP), the metric
//!   catalogue, W3C context in sync batches, the gRPC server layer.
//! - [`cli`]: printing tables, CSV and JSON for the operator commands.
pub mod auth;
pub mod cli;
pub mod config;
pub mod server;
pub mod telemetry;
pub mod tls;
