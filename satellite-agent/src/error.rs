//! The satellite's error: what can stop it from starting or serving, and
//! the domain errors of its handlers. One mapping to a gRPC status.

use tonic::Status;

/// What went wrong in the satellite agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule of the domain (shared with the master).
    #[error(transparent)]
    Domain(#[from] storesync_shared::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The sync settings changed without the authorisation code.
    #[error("{0}")]
    Locked(String),
    #[error("database {url}: {source}")]
    Database {
        url: String,
        #[source]
        source: sea_orm::DbErr,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Shorthand for results of the satellite.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sea_orm::DbErr> for Error {
    fn from(source: sea_orm::DbErr) -> Self {
        Self::Domain(source.into())
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Domain(domain) => domain.into(),
            Error::Locked(message) => Status::failed_precondition(message),
            other => {
                tracing::error!(error = %other, "request failed");
                Status::internal("internal error; see the satellite's log")
            }
        }
    }
}
