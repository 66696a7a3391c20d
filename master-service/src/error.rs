//! The master's one error type and its one mapping to a gRPC status.
//!
//! Domain failures keep their `storesync_shared::Error` (whose caller-facing
//! messages name the field or record); everything else is internal: logged in
//! full, answered with a generic text.

use tonic::Status;

/// Everything that can go wrong in the master.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A domain failure with a caller-facing message (or an internal one).
    #[error(transparent)]
    Domain(#[from] storesync_shared::Error),
    /// A bad setting; the message says which and what to change.
    #[error("configuration error: {0}")]
    Config(String),
    /// Binding, reading files, and other I/O at start.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Shorthand for the master's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sea_orm::DbErr> for Error {
    fn from(error: sea_orm::DbErr) -> Self {
        Self::Domain(storesync_shared::Error::Database(error))
    }
}

impl Error {
    /// Shorthand for an `INVALID_ARGUMENT` naming `field`.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Self::Domain(storesync_shared::Error::invalid(field, why))
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::Domain(storesync_shared::Error::NotFound(message.into()))
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::Domain(storesync_shared::Error::AlreadyExists(message.into()))
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::Domain(storesync_shared::Error::FailedPrecondition(message.into()))
    }
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::Domain(storesync_shared::Error::PermissionDenied(message.into()))
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Domain(storesync_shared::Error::Internal(message.into()))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Domain(domain) => domain.into(),
            other => {
                tracing::error!(error = %other, "request failed");
                Status::internal("internal error; see the server log")
            }
        }
    }
}

/// Maps a unique-constraint violation (two writers racing past the same
/// check) to `ALREADY_EXISTS` with `message`; other errors pass through.
pub fn unique_violation_as(error: sea_orm::DbErr, message: impl FnOnce() -> String) -> Error {
    match error.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => Error::already_exists(message()),
        _ => error.into(),
    }
}
