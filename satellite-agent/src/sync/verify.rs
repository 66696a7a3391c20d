//! This site's side of the master's integrity check (protocol version 2):
//! it answers from one read of what it holds, applies the master's repair
//! in one transaction, and reports its stock ledger.
//!
//! - `VerifyBegin`: every synced table is read and hashed once
//!   ([`storesync_shared::domain::integrity::index`]); the answer holds each
//!   table's whole-range digest, the outbox backlog and the last outbox
//!   sequence (the master compares only settled data: nothing pending here).
//! - `VerifyRequest`: digests or rows of ranges, from that read.
//! - `VerifyRepair`: in ONE local transaction, the master's records (master
//!   data, and this store's rows the site lacks) are written without entering
//!   the outbox, stray master data is deleted, and the store rows the master
//!   names are appended to the outbox as they are now, so they travel upstream
//!   by the normal exactly-once path (the site's version wins).
//! - `VerifyEnd`: the read is dropped; the answer is the stock ledger check.
//!
//! A check announced by the Welcome (`integrity_check_due`) or by a
//! `VerifyBegin` with check id 0 counts as open from the start of the
//! session, so that an interval-mode site stays until the master has ended it
//! (a `VerifyEnd` with check id 0 releases it without a check).
//!
//! # Ownership
//! The check never deletes a store row, and never re-sends a row the master
//! would refuse (of another store, or failing the table's checks): it is
//! named as skipped, so that one bad row cannot stop this site's upstream.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait};
use storesync_shared::domain::integrity::{self, TableIndex, FULL};
use storesync_shared::domain::tables::write::{self, Scope};
use storesync_shared::domain::tables::{self, apply, Owner};
use storesync_shared::proto::v1::{
    satellite_message::Message, RecordRef, SyncRecord, VerifyBegin, VerifyEnd, VerifyLedger,
    VerifyRepair, VerifyRepaired, VerifyReply, VerifyRequest,
};
use storesync_shared::{Error, Result};

use crate::entities::{outbox as outbox_table, sync_state};

/// One check's read of this site, by table (the contract's `Table` value).
#[derive(Default)]
pub(super) struct Verifier {
    check: Option<(u64, HashMap<i32, TableIndex>)>,
}

impl Verifier {
    /// A check is open: in interval mode the session stays until it ends.
    pub(super) fn is_open(&self) -> bool {
        self.check.is_some()
    }

    /// The Welcome said a check is due in this session
    /// (`integrity_check_due`): it counts as open until the master ends it.
    pub(super) fn announced(due: bool) -> Self {
        Self {
            check: due.then(|| (0, HashMap::new())),
        }
    }

    /// Reads every synced table and answers with their whole-range digests.
    /// `check_id` 0 only announces a check (interval mode: stay for it);
    /// it is not answered.
    pub(super) async fn begin(
        &mut self,
        db: &DatabaseConnection,
        begin: VerifyBegin,
    ) -> Option<Message> {
        let check_id = begin.check_id;
        if check_id == 0 {
            self.check = Some((0, HashMap::new()));
            return None;
        }
        Some(match read_all(db).await {
            Ok((indexes, outbox_pending, upstream_last_seq)) => {
                let tables = tables::SYNCED.iter().map(|t| t.table() as i32).collect();
                let digests = tables::SYNCED
                    .iter()
                    .map(|t| indexes[&(t.table() as i32)].digest(&FULL))
                    .collect();
                self.check = Some((check_id, indexes));
                Message::VerifyReply(VerifyReply {
                    check_id,
                    tables,
                    digests,
                    outbox_pending,
                    upstream_last_seq,
                    ..Default::default()
                })
            }
            Err(error) => {
                tracing::warn!(%error, "could not read this site for the integrity check");
                Message::VerifyReply(VerifyReply {
                    check_id,
                    error: format!("the site could not read its database: {error}"),
                    ..Default::default()
                })
            }
        })
    }

    /// Digests or rows of the ranges asked, from the check's read.
    pub(super) async fn request(&self, db: &DatabaseConnection, request: VerifyRequest) -> Message {
        let mut reply = VerifyReply {
            check_id: request.check_id,
            table: request.table,
            ..Default::default()
        };
        let index = match &self.check {
            Some((id, indexes)) if *id == request.check_id => indexes.get(&request.table),
            _ => None,
        };
        let Some(index) = index else {
            reply.error = format!(
                "no open check {} with table {}",
                request.check_id, request.table
            );
            return Message::VerifyReply(reply);
        };
        if request.rows {
            reply.rows = request.ranges.iter().flat_map(|r| index.rows(r)).collect();
        } else {
            reply.digests = request.ranges.iter().map(|r| index.digest(r)).collect();
        }
        match settled(db).await {
            Ok((pending, last)) => {
                reply.outbox_pending = pending;
                reply.upstream_last_seq = last;
            }
            Err(error) => reply.error = format!("the site could not read its outbox: {error}"),
        }
        Message::VerifyReply(reply)
    }

    /// Applies the master's repair in one transaction (see the module doc).
    pub(super) async fn repair(
        &self,
        db: &DatabaseConnection,
        store_id: &str,
        repair: VerifyRepair,
    ) -> Message {
        let check_id = repair.check_id;
        match apply_repair(db, store_id, repair).await {
            Ok((applied, resent, skipped)) => {
                tracing::info!(
                    applied,
                    resent,
                    skipped = skipped.len(),
                    "integrity repair applied"
                );
                Message::VerifyRepaired(VerifyRepaired {
                    check_id,
                    applied,
                    resent,
                    skipped,
                    error: String::new(),
                })
            }
            Err(error) => {
                tracing::warn!(%error, "integrity repair refused");
                Message::VerifyRepaired(VerifyRepaired {
                    check_id,
                    error: error.to_string(),
                    ..Default::default()
                })
            }
        }
    }

    /// Ends the check; answers with this site's stock ledger check. Check
    /// id 0 only releases an announced check (none ran): answered with no
    /// ledger.
    pub(super) async fn end(&mut self, db: &DatabaseConnection, end: VerifyEnd) -> Message {
        self.check = None;
        if end.check_id == 0 {
            return Message::VerifyLedger(VerifyLedger::default());
        }
        match integrity::ledger(db, None).await {
            Ok((problems, problems_total)) => Message::VerifyLedger(VerifyLedger {
                check_id: end.check_id,
                problems,
                error: String::new(),
                problems_total,
            }),
            Err(error) => Message::VerifyLedger(VerifyLedger {
                check_id: end.check_id,
                problems: Vec::new(),
                error: format!("the site could not check its stock ledger: {error}"),
                problems_total: 0,
            }),
        }
    }
}

/// Outbox entries not yet acknowledged, and the last outbox sequence.
async fn settled<C: ConnectionTrait>(db: &C) -> Result<(u64, u64)> {
    let pending = outbox_table::Entity::find().count(db).await?;
    let state = sync_state::Entity::find_by_id(1)
        .one(db)
        .await?
        .ok_or_else(|| Error::Internal("sync_state row is missing".into()))?;
    Ok((pending, u64::try_from(state.upstream_last_seq).unwrap_or(0)))
}

/// Every synced table hashed, in one read transaction, with the outbox state.
async fn read_all(db: &DatabaseConnection) -> Result<(HashMap<i32, TableIndex>, u64, u64)> {
    let txn = storesync_shared::domain::db::begin(db).await?;
    let mut indexes = HashMap::new();
    for table in tables::SYNCED {
        let index = integrity::index(&txn, *table, Scope::All).await?;
        indexes.insert(table.table() as i32, index);
    }
    let (pending, last) = settled(&txn).await?;
    txn.commit().await?;
    Ok((indexes, pending, last))
}

async fn apply_repair(
    db: &DatabaseConnection,
    store_id: &str,
    repair: VerifyRepair,
) -> Result<(u64, u64, Vec<RecordRef>)> {
    let runs = apply::runs(tables::SYNCED, repair.records)?;
    for run in &runs {
        if let apply::Run::Rows(table, rows) = run {
            if table.owner().store_column().is_some() {
                if let Some(row) = rows
                    .iter()
                    .find(|row| table.store_of(row) != Some(store_id))
                {
                    return Err(Error::InvalidArgument(format!(
                        "verify_repair.records: {} {} is not of this site's store",
                        table.name(),
                        row.id()
                    )));
                }
            }
        }
    }
    let txn = storesync_shared::domain::db::begin(db).await?;
    let mut applied = 0u64;
    for run in runs {
        applied += match &run {
            apply::Run::Rows(_, rows) => rows.len() as u64,
            apply::Run::Delete(..) => 1,
        };
        apply::write(&txn, run).await?;
    }
    for reference in &repair.deletes {
        let table = tables::by_table(tables::SYNCED, reference.table())
            .filter(|table| table.owner() == Owner::Master)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "verify_repair.deletes: {} {} is not master data",
                    reference.table().as_str_name(),
                    reference.id
                ))
            })?;
        write::delete(&txn, table, &reference.id).await?;
        applied += 1;
    }
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    for reference in repair.resend {
        let table = tables::by_table(tables::SYNCED, reference.table())
            .filter(|table| matches!(table.owner(), Owner::Store { .. }));
        let Some(table) = table else {
            skipped.push(reference);
            continue;
        };
        let Some(found) = integrity::row_by_id(&txn, table, &reference.id).await? else {
            skipped.push(reference);
            continue;
        };
        let record = table.record_of(&found)?;
        let received = table
            .receive(record.clone(), &|field| format!("{}.{field}", table.name()))
            .map_err(|_| {
                Error::Internal(format!("{} {} does not decode", table.name(), reference.id))
            })?;
        // A row the master would refuse would stop this site's upstream: it
        // is named as skipped instead (an operator corrects it locally).
        let valid = received.problem.is_none()
            && storesync_shared::domain::validate::uuid("id", &reference.id).is_ok();
        if !valid || table.store_of(&received.row) != Some(store_id) {
            skipped.push(reference);
            continue;
        }
        records.push(SyncRecord {
            record: Some(record),
        });
    }
    let resent = records.len() as u64;
    crate::outbox::append(&txn, &records).await?;
    txn.commit().await?;
    Ok((applied, resent, skipped))
}
