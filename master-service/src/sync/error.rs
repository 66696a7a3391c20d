//! Why an upstream batch was refused, typed, and its one mapping to the wire.
//!
//! [`ApplyError`] says what was wrong and which record; from it come the
//! `tonic::Status` that ends the session (through the crate's
//! [`storesync_shared::Error`], whose mapping hides internal details), the
//! `SyncError` with its `record` reference, and the metric's reason label.

use storesync_shared::proto::v1::{self as pb, Table};
use storesync_shared::Error;
use tonic::Status;

/// One record of a synced table, as errors name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordId {
    /// The table's lower-case name.
    pub table: &'static str,
    /// The contract's value for it.
    pub contract: Table,
    pub id: String,
}

impl RecordId {
    /// The contract's reference to this record.
    pub fn to_ref(&self) -> pb::RecordRef {
        pb::RecordRef {
            table: self.contract as i32,
            id: self.id.clone(),
        }
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.table, self.id)
    }
}

/// Why an upstream batch was not applied. Nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The record's id already belongs to a row of another store.
    #[error("{record} already exists in store {store:?}; Sync ID {sync_id} may not change it; nothing of this batch was applied")]
    ForeignRow {
        record: RecordId,
        store: String,
        sync_id: u32,
    },
    /// A site's record names, in `column`, a row of another store.
    #[error("{record} names in {column} {target}, which belongs to store {store:?}; Sync ID {sync_id} may refer only to its own store's rows; nothing of this batch was applied")]
    ForeignReference {
        record: RecordId,
        column: &'static str,
        /// Boxed: the error is returned by value on every record's path.
        target: Box<RecordId>,
        store: String,
        sync_id: u32,
    },
    /// A site sent master data, which only the master writes.
    #[error("{record} (upstream sequence {seq}) is master data, which only the master may change (Sync ID {sync_id} sent it); nothing of this batch was applied")]
    MasterData {
        record: RecordId,
        seq: u64,
        sync_id: u32,
    },
    /// A site sent a record of a store it does not host.
    #[error("{record} (upstream sequence {seq}) belongs to store {store:?}, but Sync ID {sync_id} hosts store {site_store:?}: a site may only send its own store's data; nothing of this batch was applied")]
    OtherStore {
        record: RecordId,
        seq: u64,
        store: String,
        sync_id: u32,
        site_store: String,
    },
    /// A site created or changed what only the master writes in a transfer:
    /// an inbound shipment the master did not create, or its link fields.
    #[error("{record} (from Sync ID {sync_id}): {why}; only the master creates an inbound shipment and sets its link to the outbound; nothing of this batch was applied")]
    TransferLink {
        record: RecordId,
        why: String,
        sync_id: u32,
    },
    /// A site created or changed what only the master writes in a
    /// requisition: a response, its lines, or a link between a shipment or
    /// a response and a requisition.
    #[error("{record} (from Sync ID {sync_id}): {why}; only the master creates a response requisition, and a shipment may only supply an open response of its store; nothing of this batch was applied")]
    RequisitionLink {
        record: RecordId,
        why: String,
        sync_id: u32,
    },
    /// A site's record links to what the master does not hold yet (a
    /// shipment supplying a response the master lost in a restore from an
    /// older backup): the batch is held, the site sends it again later.
    #[error("{record} (from Sync ID {sync_id}): {why}; nothing of this batch was applied, send it again later")]
    AwaitsLink {
        record: RecordId,
        why: String,
        sync_id: u32,
    },
    /// The batch does not follow what the master has applied.
    #[error("upstream batch out of sequence: it starts at {first_seq} but the master has applied up to {acked}; resend from {}", acked + 1)]
    OutOfSequence { first_seq: u64, acked: u64 },
    /// A newer session of the site holds its claim.
    #[error("a newer session for Sync ID {sync_id} replaced this one; nothing of this batch was applied")]
    Replaced { sync_id: u32 },
    /// The site was removed from the master's sync-with list.
    #[error("Sync ID {sync_id} is no longer in the master's sync-with list")]
    SiteRemoved { sync_id: u32 },
    /// A field is malformed: `message` starts with its path.
    #[error("{message}")]
    InvalidField {
        message: String,
        /// The record at fault, when its table and id are known.
        record: Option<RecordId>,
    },
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// Unexpected; the text goes to the log, not to the satellite.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApplyError {
    /// An `InvalidField` of the batch itself, naming `field`.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Self::InvalidField {
            message: format!("{field}: {why}"),
            record: None,
        }
    }

    /// A shared check's refusal (`INVALID_ARGUMENT` naming the field) of `record`.
    pub(crate) fn field(error: Error, record: Option<RecordId>) -> Self {
        match error {
            Error::InvalidArgument(message) => Self::InvalidField { message, record },
            Error::Database(error) => Self::Database(error),
            other => Self::Internal(other.to_string()),
        }
    }

    /// The record at fault, if one is.
    pub fn record(&self) -> Option<&RecordId> {
        match self {
            Self::ForeignRow { record, .. }
            | Self::ForeignReference { record, .. }
            | Self::MasterData { record, .. }
            | Self::OtherStore { record, .. }
            | Self::TransferLink { record, .. }
            | Self::RequisitionLink { record, .. }
            | Self::AwaitsLink { record, .. } => Some(record),
            Self::InvalidField { record, .. } => record.as_ref(),
            _ => None,
        }
    }

    /// The gRPC code the refusal ends the session with.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::ForeignRow { .. }
            | Self::ForeignReference { .. }
            | Self::MasterData { .. }
            | Self::OtherStore { .. }
            | Self::TransferLink { .. }
            | Self::RequisitionLink { .. }
            | Self::SiteRemoved { .. } => tonic::Code::PermissionDenied,
            Self::OutOfSequence { .. } => tonic::Code::FailedPrecondition,
            Self::AwaitsLink { .. } => tonic::Code::Unavailable,
            Self::Replaced { .. } => tonic::Code::Aborted,
            Self::InvalidField { .. } => tonic::Code::InvalidArgument,
            Self::Database(sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_)) => {
                tonic::Code::Unavailable
            }
            Self::Database(_) | Self::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The `reason` label of the rejected-batches metric.
    pub fn reason(&self) -> &'static str {
        match self.code() {
            tonic::Code::InvalidArgument => "invalid_argument",
            tonic::Code::PermissionDenied => "permission_denied",
            tonic::Code::FailedPrecondition => "failed_precondition",
            tonic::Code::Unavailable => "unavailable",
            _ => "internal",
        }
    }

    /// The `SyncError` the master sends before ending the session, naming
    /// the record at fault.
    pub fn into_sync_error(self) -> pb::SyncError {
        let record = self.record().map(RecordId::to_ref);
        let status = Status::from(self);
        pb::SyncError {
            code: status.code() as i32,
            message: status.message().to_owned(),
            record,
        }
    }
}

impl From<ApplyError> for Error {
    fn from(error: ApplyError) -> Self {
        match error.code() {
            tonic::Code::PermissionDenied => Error::PermissionDenied(error.to_string()),
            tonic::Code::FailedPrecondition => Error::FailedPrecondition(error.to_string()),
            tonic::Code::Aborted => Error::Aborted(error.to_string()),
            tonic::Code::InvalidArgument => Error::InvalidArgument(error.to_string()),
            _ => match error {
                ApplyError::AwaitsLink { .. } => Error::Unavailable(error.to_string()),
                ApplyError::Database(error) => Error::Database(error),
                ApplyError::Internal(details) => Error::Internal(details),
                other => Error::Internal(other.to_string()),
            },
        }
    }
}

impl From<ApplyError> for Status {
    fn from(error: ApplyError) -> Self {
        Status::from(Error::from(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_record_is_named_in_the_status_and_the_sync_error() {
        let error = ApplyError::ForeignRow {
            record: RecordId {
                table: "stock_line",
                contract: Table::StockLine,
                id: "2f1c7a4e-0000-4000-8000-000000000001".into(),
            },
            store: "B".into(),
            sync_id: 2,
        };
        assert_eq!(error.reason(), "permission_denied");
        let sync_error = error.into_sync_error();
        assert_eq!(sync_error.code, tonic::Code::PermissionDenied as i32);
        assert_eq!(
            sync_error.message,
            "stock_line 2f1c7a4e-0000-4000-8000-000000000001 already exists in store \"B\"; \
             Sync ID 2 may not change it; nothing of this batch was applied"
        );
        assert_eq!(
            sync_error.record,
            Some(pb::RecordRef {
                table: Table::StockLine as i32,
                id: "2f1c7a4e-0000-4000-8000-000000000001".into()
            })
        );
    }
}
