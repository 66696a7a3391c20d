//! Applying a satellite's upstream batch: its store data, exactly once.
//!
//! # Invariant
//! A batch is applied in ONE transaction that also moves `site.upstream_acked_seq`
//! to the batch's last sequence (and `site.upstream_acked_tag` to the
//! satellite's tag of that entry, which tells copies of a database apart). Entries at or below the acknowledged sequence
//! are skipped (a resend after a lost ack), a gap after it is refused, and the
//! site row is locked (`FOR UPDATE` on PostgreSQL; SQLite has one writer) so that
//! two sessions of one site can never apply concurrently. Either the records and
//! the new acknowledged sequence commit together, or neither does.
//!
//! # Ownership
//! A site may write only store data of the store it hosts. A record of another
//! store, one whose id already belongs to another store's row, one that names
//! another store's row (an invoice line on another store's invoice or stock
//! line: the table's `Reference`s), or any master data rejects the whole batch
//! with `PERMISSION_DENIED` naming the record. Who owns what is each table's
//! [`Owner`] (`storesync_shared::domain::tables`). An inbound shipment is
//! the receiving store's, but only the master creates it and sets its link
//! to the outbound: a site forging one or changing that link is refused the
//! same way (`crate::transfers::check_site_rows`). A site's copy of one the
//! master lost in a restore and cannot derive yet is left out of the batch
//! (`crate::transfers::set_aside`); it comes back with the handover.
//!
//! # Transfers
//! After the batch's rows are written, in the same transaction, a shipped
//! outbound gets its inbound shipment and a received inbound updates its
//! transfer (`crate::transfers::follow`); the change-log entries this adds
//! are appended as the transaction's last statement (the log's counter lock
//! is then held for the commit only, see `crate::changelog::Pending`),
//! commit with the batch, and [`Applied::logged`] names the last for the
//! session to announce.
//!
//! # Order within a batch
//! Every record is validated, then each table's records are reduced to the last
//! change of each id (`Latest`), which leaves the state applying them one by
//! one in arrival order would: a repeated id ends with its last version, a row
//! sent and then deleted is gone, one deleted and then sent again exists.
//!
//! # Backends
//! Each table's changes are written by `tables::write::store_rows`: on
//! PostgreSQL one array-bound upsert per table that also checks ownership and
//! the table's references; on SQLite queries that check them first and
//! `shared::upsert`'s statements. Both
//! run on this module's one sea-orm transaction. Tables are written in the
//! registry's order (an invoice before its lines), so a reference to a row
//! the batch itself wrote is known to be the store's and is not looked up
//! (`write::Written`).

use std::collections::HashSet;

use sea_orm::sea_query::{Expr, LockType, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter};
use storesync_shared::domain::tables::write::{self, WriteError};
use storesync_shared::domain::tables::{self, Change, Owner, SyncTable};
use storesync_shared::domain::validate;
use storesync_shared::proto::v1::{sync_record::Record, SyncRecord, Table, UpstreamBatch};

pub use super::error::{ApplyError, RecordId};
use crate::entities::{site, site_status};

/// Sync IDs are 1..=64, stored as INTEGER.
pub(crate) fn sync_id_i32(sync_id: u32) -> i32 {
    i32::try_from(sync_id).unwrap_or(i32::MAX)
}

/// The site a session belongs to, as authenticated.
#[derive(Clone, Debug)]
pub struct SiteIdentity {
    pub sync_id: u32,
    pub store_id: String,
}

/// Outcome of one applied batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The site's acknowledged sequence after the batch.
    pub acked_seq: u64,
    /// Records that were new (not already applied).
    pub applied: u32,
    /// The last change-log entry the batch's transfers appended (an inbound
    /// shipment handed over, a transfer record updated): announce it after
    /// commit.
    pub logged: Option<u64>,
}

/// One upstream record, read by its table, before the apply's checks.
pub struct Incoming<'t> {
    pub table: &'t dyn SyncTable,
    pub change: Change,
    /// What the table's own checks found wrong with its fields, if anything.
    pub problem: Option<storesync_shared::Error>,
}

/// The last change of each row a batch touches in one table.
///
/// Rows of one table do not depend on each other, so writing only the last
/// change of each id leaves exactly the state that applying every record in
/// arrival order would: a repeated id ends with its last version, and a row
/// deleted and then sent again exists (and one sent and then deleted does not).
struct Latest {
    upserts: Vec<tables::Row>,
    deletes: Vec<String>,
}

impl Latest {
    fn of(changes: Vec<Change>) -> Self {
        // Walking backwards, the first sight of an id is its last change.
        let keep: Vec<bool> = {
            let mut seen: HashSet<&str, foldhash::fast::RandomState> =
                HashSet::with_capacity_and_hasher(changes.len(), Default::default());
            let mut keep: Vec<bool> = changes
                .iter()
                .rev()
                .map(|change| {
                    seen.insert(match change {
                        Change::Upsert(row) => row.id(),
                        Change::Delete(id) => id,
                    })
                })
                .collect();
            keep.reverse();
            keep
        };
        let mut latest = Self {
            upserts: Vec::with_capacity(changes.len()),
            deletes: Vec::new(),
        };
        for (change, keep) in changes.into_iter().zip(keep) {
            match change {
                Change::Upsert(row) if keep => latest.upserts.push(row),
                Change::Delete(id) if keep => latest.deletes.push(id),
                _ => {}
            }
        }
        latest
    }
}

/// What the site's row and claim say about a batch, before its records are read.
enum Start {
    /// Every entry of the batch was applied before (a resend after a lost ack).
    AlreadyApplied(u64),
    /// Apply the batch's records after skipping this many already applied.
    Apply(usize),
}

/// Checks the claim and the sequence under the site's row lock: `acked` is the
/// site's acknowledged sequence (`None`: the site is gone) and `owner` the
/// session holding its claim.
fn start(
    site: &SiteIdentity,
    session_id: &str,
    acked: Option<i64>,
    owner: Option<String>,
    first_seq: u64,
    last_seq: u64,
) -> Result<Start, ApplyError> {
    let Some(acked) = acked else {
        return Err(ApplyError::SiteRemoved {
            sync_id: site.sync_id,
        });
    };
    let acked = u64::try_from(acked).unwrap_or(0);
    // Only the session holding the claim applies, so a session replaced on
    // another replica can never apply again.
    if owner.as_deref() != Some(session_id) {
        return Err(ApplyError::Replaced {
            sync_id: site.sync_id,
        });
    }
    if last_seq <= acked {
        return Ok(Start::AlreadyApplied(acked));
    }
    if first_seq > acked + 1 {
        return Err(ApplyError::OutOfSequence { first_seq, acked });
    }
    usize::try_from(acked + 1 - first_seq)
        .map(Start::Apply)
        .map_err(|_| ApplyError::Internal("skip overflow".into()))
}

/// Applies `batch` for `site`. See the module docs for the invariant.
pub async fn apply_batch(
    db: &DatabaseConnection,
    site: &SiteIdentity,
    session_id: &str,
    batch: UpstreamBatch,
) -> Result<Applied, ApplyError> {
    check_shape(&batch)?;
    let tables = tables::SYNCED;
    apply_records(
        db,
        tables,
        site,
        session_id,
        batch.first_seq,
        batch.last_seq,
        batch.last_tag,
        batch.records,
        |seq, record| receive(tables, seq, record),
    )
    .await
}

/// Applies the records `first_seq..=last_seq` of a batch for `site`, each
/// read by `read` (the wire's: [`receive`]) only if it was not applied
/// before, into `tables`. The sequence numbers must match the records;
/// `last_tag` is the satellite's tag of entry `last_seq` (0: unknown).
#[allow(clippy::too_many_arguments)]
pub async fn apply_records<'t, R>(
    db: &DatabaseConnection,
    tables: &[&'t dyn SyncTable],
    site: &SiteIdentity,
    session_id: &str,
    first_seq: u64,
    last_seq: u64,
    last_tag: u64,
    records: Vec<R>,
    read: impl Fn(u64, R) -> Result<Incoming<'t>, ApplyError>,
) -> Result<Applied, ApplyError> {
    let txn = storesync_shared::domain::db::begin(db).await?;
    let (acked, owner) = lock_site(&txn, site.sync_id).await?;
    let skip = match start(site, session_id, acked, owner, first_seq, last_seq)? {
        Start::AlreadyApplied(acked) => {
            txn.commit().await?;
            return Ok(Applied {
                acked_seq: acked,
                applied: 0,
                logged: None,
            });
        }
        Start::Apply(skip) => skip,
    };
    let last = to_i64(last_seq)?;
    let applied = u32::try_from(records.len().saturating_sub(skip)).unwrap_or(u32::MAX);
    // Each table's changes, in arrival order, in the order of `tables`.
    let mut changes: Vec<Vec<Change>> = tables.iter().map(|_| Vec::new()).collect();
    for (offset, record) in records.into_iter().enumerate().skip(skip) {
        let seq = first_seq + offset as u64;
        let incoming = admit(site, seq, read(seq, record)?)?;
        let index = tables
            .iter()
            .position(|t| t.name() == incoming.table.name())
            .ok_or_else(|| {
                ApplyError::Internal(format!(
                    "{} is not a registered table",
                    incoming.table.name()
                ))
            })?;
        changes[index].push(incoming.change);
    }
    // Invoices the batch wrote: a shipped outbound or a received inbound
    // moves its transfer on, in this transaction (`crate::transfers`).
    let mut invoices = crate::transfers::Invoices::default();
    // Requisitions the batch wrote: a sent request gets its response.
    let mut requisition_ids: Vec<String> = Vec::new();
    // Rows upserted so far: the store's own, so naming one needs no look-up.
    let mut written = write::Written::default();
    for (table, changes) in tables.iter().zip(changes) {
        if changes.is_empty() {
            continue;
        }
        let mut latest = Latest::of(changes);
        // A site's copies of rows the master lost in a restore and cannot
        // derive yet: not written, they come back with the handover.
        let aside = crate::transfers::set_aside(&txn, *table, &mut latest.upserts)
            .await
            .map_err(|error| ApplyError::field(error, None))?;
        if !aside.is_empty() {
            tracing::warn!(
                sync_id = site.sync_id,
                table = table.name(),
                rows = ?aside,
                "rows the master creates and no longer holds (restored from an older backup?) set aside until the other store's site sends what they derive from"
            );
        }
        if let Some(refusal) = crate::transfers::check_site_rows(
            &txn,
            *table,
            &latest.upserts,
            &latest.deletes,
            &invoices,
        )
        .await
        .map_err(|error| ApplyError::field(error, None))?
        {
            let record = record_id(*table, refusal.id);
            let (why, sync_id) = (refusal.why, site.sync_id);
            return Err(if refusal.held {
                ApplyError::AwaitsLink {
                    record,
                    why,
                    sync_id,
                }
            } else if refusal.requisition {
                ApplyError::RequisitionLink {
                    record,
                    why,
                    sync_id,
                }
            } else {
                ApplyError::TransferLink {
                    record,
                    why,
                    sync_id,
                }
            });
        }
        invoices.note(*table, &latest.upserts);
        if table.table() == Table::Requisition {
            requisition_ids.extend(latest.upserts.iter().map(|row| row.id().to_owned()));
        }
        write::store_rows(
            &txn,
            tables,
            *table,
            &site.store_id,
            latest.upserts,
            latest.deletes,
            &mut written,
        )
        .await
        .map_err(|error| match error {
            WriteError::Foreign { id, store } => ApplyError::ForeignRow {
                record: record_id(*table, id),
                store,
                sync_id: site.sync_id,
            },
            WriteError::Reference(found) => {
                let target = tables
                    .iter()
                    .find(|t| t.name() == found.target_table)
                    .copied()
                    .unwrap_or(*table);
                ApplyError::ForeignReference {
                    record: record_id(*table, found.id),
                    column: found.column,
                    target: Box::new(record_id(target, found.target_id)),
                    store: found.store,
                    sync_id: site.sync_id,
                }
            }
            WriteError::Guarded { id, why } => ApplyError::TransferLink {
                record: record_id(*table, id),
                why: why.to_owned(),
                sync_id: site.sync_id,
            },
            WriteError::Database(error) => ApplyError::Database(error),
            WriteError::Inconsistent(details) => ApplyError::Internal(details),
        })?;
    }
    let follow_error = |error| match error {
        storesync_shared::Error::Database(error) => ApplyError::Database(error),
        storesync_shared::Error::Internal(details) => ApplyError::Internal(details),
        other => ApplyError::InvalidField {
            message: other.to_string(),
            record: None,
        },
    };
    let mut log = crate::changelog::Pending::default();
    crate::transfers::follow_requisitions(&txn, &requisition_ids, &mut log)
        .await
        .map_err(follow_error)?;
    crate::transfers::follow(&txn, invoices.followed(), &mut log)
        .await
        .map_err(follow_error)?;
    site::Entity::update_many()
        .col_expr(site::Column::UpstreamAckedSeq, Expr::value(last))
        .col_expr(
            site::Column::UpstreamAckedTag,
            Expr::value(i64::try_from(last_tag).unwrap_or(0)),
        )
        .filter(site::Column::SyncId.eq(sync_id_i32(site.sync_id)))
        .exec(&txn)
        .await?;
    // Last: the change log's counter lock is held from here to the commit.
    let logged = log.append(&txn).await.map_err(follow_error)?;
    txn.commit().await?;
    Ok(Applied {
        acked_seq: last_seq,
        applied,
        logged,
    })
}

fn to_i64(value: u64) -> Result<i64, ApplyError> {
    i64::try_from(value)
        .map_err(|_| ApplyError::invalid("upstream_batch.last_seq", "is out of range"))
}

/// The batch's sequence numbers must be dense and match its records.
fn check_shape(batch: &UpstreamBatch) -> Result<(), ApplyError> {
    if batch.records.is_empty() {
        return Err(ApplyError::invalid(
            "upstream_batch.records",
            "must not be empty",
        ));
    }
    if batch.first_seq == 0 {
        return Err(ApplyError::invalid(
            "upstream_batch.first_seq",
            "sequences start at 1",
        ));
    }
    let expected = batch.last_seq.checked_sub(batch.first_seq).map(|d| d + 1);
    if expected != Some(batch.records.len() as u64) {
        return Err(ApplyError::invalid(
            "upstream_batch",
            format!(
                "first_seq {} to last_seq {} does not match its {} records",
                batch.first_seq,
                batch.last_seq,
                batch.records.len()
            ),
        ));
    }
    to_i64(batch.last_seq)?;
    Ok(())
}

/// The site's acknowledged sequence (`None`: the site is gone) and the
/// session holding its claim, locking its row for this transaction (`FOR
/// UPDATE` on PostgreSQL; SQLite has no row locks and needs none: one writer).
async fn lock_site<C: ConnectionTrait>(
    txn: &C,
    sync_id: u32,
) -> Result<(Option<i64>, Option<String>), ApplyError> {
    let mut query = Query::select();
    query
        .column((site::Entity, site::Column::UpstreamAckedSeq))
        .column((site_status::Entity, site_status::Column::SessionId))
        .from(site::Entity)
        .left_join(
            site_status::Entity,
            Expr::col((site_status::Entity, site_status::Column::SyncId))
                .equals((site::Entity, site::Column::SyncId)),
        )
        .and_where(Expr::col((site::Entity, site::Column::SyncId)).eq(sync_id_i32(sync_id)))
        .lock_with_tables(LockType::Update, [site::Entity]);
    let Some(row) = txn
        .query_one(txn.get_database_backend().build(&query))
        .await?
    else {
        return Ok((None, None));
    };
    Ok((Some(row.try_get_by_index(0)?), row.try_get_by_index(1)?))
}

fn record_id(table: &dyn SyncTable, id: String) -> RecordId {
    RecordId {
        table: table.name(),
        contract: table.table(),
        id,
    }
}

/// Reads one record off the wire with the table it belongs to.
pub fn receive<'t>(
    tables: &[&'t dyn SyncTable],
    seq: u64,
    record: SyncRecord,
) -> Result<Incoming<'t>, ApplyError> {
    let at = |field: &str| format!("upstream record {seq}: {field}");
    let invalid = |field: &str, why: &str| ApplyError::invalid(&at(field), why);
    let Some(record) = record.record else {
        return Err(invalid("record", "is empty"));
    };
    let record = match record {
        Record::Deleted(reference) => {
            validate::uuid(&at("deleted.id"), &reference.id)
                .map_err(|error| ApplyError::field(error, None))?;
            let table = match reference.table() {
                Table::Unspecified => None,
                table => tables::by_table(tables, table),
            }
            .ok_or_else(|| {
                ApplyError::invalid(
                    &at("deleted.table"),
                    format!("{} is not a known table", reference.table),
                )
            })?;
            return Ok(Incoming {
                table,
                change: Change::Delete(reference.id),
                problem: None,
            });
        }
        other => other,
    };
    let mut record = Some(record);
    for table in tables {
        let Some(current) = record.take() else { break };
        // Called only for a record that fails a check (`SyncTable::receive`).
        let field = |name: &str| format!("upstream record {seq}: {}.{name}", table.name());
        match table.receive(current, &field) {
            Ok(received) => {
                return Ok(Incoming {
                    table: *table,
                    change: Change::Upsert(received.row),
                    problem: received.problem,
                })
            }
            Err(back) => record = Some(back),
        }
    }
    Err(invalid("record", "is of a table the master does not know"))
}

/// The apply's checks of one record, in the order their refusals take
/// precedence: master data, then the id, the owning store, the other fields.
fn admit<'t>(
    site: &SiteIdentity,
    seq: u64,
    mut incoming: Incoming<'t>,
) -> Result<Incoming<'t>, ApplyError> {
    let table = incoming.table;
    let id = match &incoming.change {
        Change::Upsert(row) => row.id(),
        Change::Delete(id) => id.as_str(),
    };
    if !matches!(table.owner(), Owner::Store { .. }) {
        return Err(ApplyError::MasterData {
            record: record_id(table, id.to_owned()),
            seq,
            sync_id: site.sync_id,
        });
    }
    let Change::Upsert(row) = &incoming.change else {
        return Ok(incoming);
    };
    // The field's path is made only for an id that fails.
    if !validate::is_uuid(id) {
        validate::uuid(&format!("upstream record {seq}: {}.id", table.name()), id)
            .map_err(|error| ApplyError::field(error, None))?;
    }
    let store = table.store_of(row).unwrap_or_default();
    if store != site.store_id {
        return Err(ApplyError::OtherStore {
            record: record_id(table, id.to_owned()),
            seq,
            store: store.to_owned(),
            sync_id: site.sync_id,
            site_store: site.store_id.clone(),
        });
    }
    if let Some(problem) = incoming.problem.take() {
        return Err(ApplyError::field(
            problem,
            Some(record_id(table, id.to_owned())),
        ));
    }
    Ok(incoming)
}
