//! One integrity check of one site, over its sync session.
//!
//! 1. **Settle.** Wait (bounded) until the site has acknowledged the whole
//!    change log; send `VerifyBegin`; the site reads every synced table once
//!    and answers with their whole-range digests and its outbox. A pending
//!    outbox or a change log that moved while the master read its side means
//!    "not yet": wait and begin again, at most [`SETTLE_ATTEMPTS`] times.
//! 2. **Descend.** Per table of [`tables::SYNCED`]: a range whose digests
//!    differ is split into [`FANOUT`] parts and their digests asked for, until
//!    a range holds at most [`LEAF_ROWS`] rows on both sides together; then
//!    its rows (id and row hash) are asked for and compared. A range the site
//!    holds nothing of needs no question: the master's rows there are the
//!    difference. Each round is one request per table, so the bytes and round
//!    trips grow with the differences (and the log of the store), not the store.
//! 3. **Re-check settled.** The change log must not have moved and the site's
//!    outbox must still be empty at the same sequence; otherwise the outcome
//!    is `NOT_SETTLED` and nothing is repaired.
//! 4. **Repair** (unless report-only), by owner (see the parent module).
//! 5. **End.** `VerifyEnd`; the site answers with its stock ledger check; the
//!    master checks its own copy of the site's store.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use sea_orm::DatabaseConnection;
use storesync_shared::domain::integrity::{self, TableIndex, FULL};
use storesync_shared::domain::tables::write::Scope;
use storesync_shared::domain::tables::{self, Owner, SyncTable};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::proto::v1::{
    self as pb, master_message, satellite_message, HashRange, RecordRef, SyncRecord, Table,
    VerifyBegin, VerifyEnd, VerifyRepair, VerifyRequest,
};
use tokio::sync::{mpsc, watch};

use crate::changelog;
use crate::error::{Error, Result};
use crate::sync::downstream::{Acked, Outbound};

/// Parts a differing range is split into.
pub const FANOUT: u64 = 16;
/// A range with at most this many rows (both sides together) is compared row by row.
pub const LEAF_ROWS: u64 = 32;
/// Rows per repair message (bounds it well under the message limit).
const REPAIR_PER_MESSAGE: usize = 1000;
/// Ranges per request (bounds each answer well under the message limit).
const RANGES_PER_REQUEST: usize = 1000;
/// How many times a check begins again while data is still moving.
pub const SETTLE_ATTEMPTS: u32 = 20;
/// The wait between two attempts.
const SETTLE_WAIT: Duration = Duration::from_millis(500);
/// How long the site may take to answer one message.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// A row that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub table: Table,
    pub id: String,
    pub side: pb::DifferenceSide,
}

/// The session's link to its satellite, for a check.
pub struct Link<'a> {
    pub tx: &'a Outbound,
    /// The satellite's integrity answers, forwarded by the inbound half.
    pub answers: &'a mut mpsc::Receiver<satellite_message::Message>,
    /// What the satellite has acknowledged downstream.
    pub acked: &'a watch::Receiver<Acked>,
    /// Bytes of integrity messages both ways.
    pub bytes: u64,
    /// Requests answered.
    pub round_trips: u32,
}

impl Link<'_> {
    async fn send(&mut self, message: master_message::Message) -> Result<()> {
        let message = pb::MasterMessage {
            message: Some(message),
        };
        self.bytes += message.encoded_len() as u64;
        let begun = self.round_trips > 0;
        self.tx.send(Ok(message)).await.map_err(|_| {
            if begun {
                cut("the satellite went away during the check")
            } else {
                not_begun()
            }
        })
    }

    /// The next answer of check `check_id` (older checks' answers are dropped).
    async fn answer(&mut self, check_id: u64) -> Result<satellite_message::Message> {
        loop {
            let next = tokio::time::timeout(ANSWER_TIMEOUT, self.answers.recv())
                .await
                .map_err(|_| failed(format!("the site did not answer within {ANSWER_TIMEOUT:?}")))?
                .ok_or_else(|| {
                    if self.round_trips > 0 {
                        cut("the session ended during the check")
                    } else {
                        not_begun()
                    }
                })?;
            let id = match &next {
                satellite_message::Message::VerifyReply(r) => r.check_id,
                satellite_message::Message::VerifyRepaired(r) => r.check_id,
                satellite_message::Message::VerifyLedger(r) => r.check_id,
                _ => continue,
            };
            if id == check_id {
                self.bytes += satellite_message::Message::encoded_len(&next) as u64;
                self.round_trips += 1;
                return Ok(next);
            }
        }
    }

    async fn reply(&mut self, check_id: u64) -> Result<pb::VerifyReply> {
        match self.answer(check_id).await? {
            satellite_message::Message::VerifyReply(reply) if reply.error.is_empty() => Ok(reply),
            satellite_message::Message::VerifyReply(reply) => Err(failed(reply.error)),
            _ => Err(failed("the site answered out of turn".into())),
        }
    }
}

/// The session ended before the site answered anything (an interval-mode
/// site can say Goodbye as the check is asked for): nothing was checked, and
/// the site is checked at a later session.
fn not_begun() -> Error {
    cut("the sync session ended before the site began the check")
}

/// The session ended during the check: `UNAVAILABLE`, which leaves its
/// request requested for the next session (see `super::session`).
fn cut(why: &str) -> Error {
    Error::Domain(storesync_shared::Error::Unavailable(why.to_owned()))
}

fn failed(message: String) -> Error {
    Error::Domain(storesync_shared::Error::FailedPrecondition(message))
}

/// What one check found, before it is recorded.
#[derive(Debug, Default)]
pub struct Found {
    pub settled: bool,
    pub message: String,
    pub rows_compared: u64,
    pub differences: Vec<(Difference, String)>,
    pub rows_repaired: u64,
    pub site_ledger: Vec<pb::LedgerProblem>,
    pub site_ledger_total: u64,
    pub master_ledger: Vec<pb::LedgerProblem>,
    pub master_ledger_total: u64,
    /// (table, id, action, before, after) of each repair, for the audit.
    pub repairs: Vec<[String; 5]>,
}

/// The site's side as it answered VerifyBegin.
struct Begun {
    digests: HashMap<i32, pb::RangeDigest>,
    /// The site's upstream sequence the master had applied at the read.
    acked_seq: i64,
    head: u64,
    master: Vec<(&'static dyn SyncTable, TableIndex)>,
}

/// The scope of `table` the site `store_id` holds.
fn scope_of<'s>(table: &dyn SyncTable, store_id: &'s str) -> Scope<'s> {
    match table.owner() {
        Owner::Master => Scope::All,
        Owner::MasterForStore { .. } | Owner::MasterForStores { .. } | Owner::Store { .. } => {
            Scope::Store(store_id)
        }
    }
}

/// Runs one check (see the module doc). A check that fails otherwise than
/// by the end of the session is ended at the site too (`VerifyEnd`), so that
/// an interval-mode site does not stay for it.
pub async fn run(
    db: &DatabaseConnection,
    link: &mut Link<'_>,
    sync_id: u32,
    store_id: &str,
    report_only: bool,
) -> Result<Found> {
    let check_id = (u64::try_from(now_ms()).unwrap_or(1) ^ u64::from(rand_tag())).max(1);
    let ran = run_check(db, link, check_id, sync_id, store_id, report_only).await;
    if let Err(error) = &ran {
        if !matches!(
            error,
            Error::Domain(storesync_shared::Error::Unavailable(_))
        ) {
            let _ = link
                .send(master_message::Message::VerifyEnd(VerifyEnd { check_id }))
                .await;
        }
    }
    ran
}

async fn run_check(
    db: &DatabaseConnection,
    link: &mut Link<'_>,
    check_id: u64,
    sync_id: u32,
    store_id: &str,
    report_only: bool,
) -> Result<Found> {
    let mut found = Found::default();
    let Some(begun) = settle(db, link, check_id, sync_id, store_id).await? else {
        found.message = format!(
            "data was still moving (outbox or change log) through {SETTLE_ATTEMPTS} attempts; retry later"
        );
        end(link, check_id, &mut found).await.ok();
        return Ok(found);
    };
    let mut moved = false;
    for (table, master) in &begun.master {
        let Some(site) = begun.digests.get(&(table.table() as i32)) else {
            continue;
        };
        found.rows_compared += (master.len() as u64).max(site.count);
        let differences = descend(link, check_id, *table, master, site, &mut moved).await?;
        found
            .differences
            .extend(differences.into_iter().map(|d| (d, String::new())));
    }
    let missing: Vec<&str> = begun
        .master
        .iter()
        .filter(|(t, _)| !begun.digests.contains_key(&(t.table() as i32)))
        .map(|(t, _)| t.name())
        .collect();
    let still = !moved
        && changelog::head(db).await? == begun.head
        && acked_seq(db, sync_id).await? == begun.acked_seq;
    if !still {
        found.message = "data moved during the check (change log or outbox); retry later".into();
        found.differences.clear();
        end(link, check_id, &mut found).await.ok();
        return Ok(found);
    }
    found.settled = true;
    if !missing.is_empty() {
        found.message = format!("the site does not know table(s) {}", missing.join(", "));
    }
    if !report_only && !found.differences.is_empty() {
        repair(db, link, check_id, store_id, &mut found).await?;
    }
    end(link, check_id, &mut found).await?;
    (found.master_ledger, found.master_ledger_total) =
        integrity::ledger(db, Some(store_id)).await?;
    Ok(found)
}

fn rand_tag() -> u32 {
    // Distinguishes two checks begun in the same millisecond; not a secret.
    std::process::id().rotate_left(16) ^ (std::time::Instant::now().elapsed().subsec_nanos())
}

/// Waits until the site and the master hold settled data and begins the
/// check; `None` when it never settled.
async fn settle(
    db: &DatabaseConnection,
    link: &mut Link<'_>,
    check_id: u64,
    sync_id: u32,
    store_id: &str,
) -> Result<Option<Begun>> {
    for attempt in 0..SETTLE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(SETTLE_WAIT).await;
        }
        let head = changelog::head(db).await?;
        if link.acked.borrow().cursor < head {
            continue;
        }
        link.send(master_message::Message::VerifyBegin(VerifyBegin {
            check_id,
        }))
        .await?;
        let reply = link.reply(check_id).await?;
        let acked = acked_seq(db, sync_id).await?;
        if reply.outbox_pending > 0 || u64::try_from(acked).ok() != Some(reply.upstream_last_seq) {
            continue;
        }
        let mut master = Vec::new();
        for table in tables::SYNCED {
            master.push((
                *table,
                integrity::index(db, *table, scope_of(*table, store_id)).await?,
            ));
        }
        if changelog::head(db).await? != head || acked_seq(db, sync_id).await? != acked {
            continue;
        }
        let digests = reply
            .tables
            .iter()
            .zip(reply.digests)
            .map(|(table, digest)| (*table, digest))
            .collect();
        return Ok(Some(Begun {
            digests,
            acked_seq: acked,
            head,
            master,
        }));
    }
    Ok(None)
}

/// The rows of `table` that differ, by descent from the whole range.
async fn descend(
    link: &mut Link<'_>,
    check_id: u64,
    table: &dyn SyncTable,
    master: &TableIndex,
    site: &pb::RangeDigest,
    moved: &mut bool,
) -> Result<Vec<Difference>> {
    let mut differences = Vec::new();
    let whole = master.digest(&FULL);
    if whole.count == site.count && whole.sum == site.sum {
        return Ok(differences);
    }
    // Ranges known to differ, with the site's count there.
    let mut pending: Vec<(HashRange, u64)> = vec![(FULL, site.count)];
    while !pending.is_empty() {
        let mut leaves = Vec::new();
        let mut inner = Vec::new();
        for (range, site_count) in pending.drain(..) {
            if site_count == 0 {
                // The site holds nothing here: every master row is missing there.
                differences.extend(master.rows(&range).into_iter().map(|row| Difference {
                    table: table.table(),
                    id: row.id,
                    side: pb::DifferenceSide::MasterOnly,
                }));
            } else if master.digest(&range).count + site_count <= LEAF_ROWS
                || range.low == range.high
            {
                leaves.push(range);
            } else {
                inner.extend(integrity::split(&range, FANOUT));
            }
        }
        for chunk in leaves.chunks(RANGES_PER_REQUEST) {
            let reply = ask(link, check_id, table, chunk, true, moved).await?;
            let site_rows: HashMap<String, u64> =
                reply.rows.into_iter().map(|r| (r.id, r.row_hash)).collect();
            let mut master_rows: HashMap<String, u64> = HashMap::new();
            for range in chunk {
                master_rows.extend(master.rows(range).into_iter().map(|r| (r.id, r.row_hash)));
            }
            for (id, hash) in &master_rows {
                match site_rows.get(id) {
                    None => differences.push(Difference {
                        table: table.table(),
                        id: id.clone(),
                        side: pb::DifferenceSide::MasterOnly,
                    }),
                    Some(theirs) if theirs != hash => differences.push(Difference {
                        table: table.table(),
                        id: id.clone(),
                        side: pb::DifferenceSide::BothDiffer,
                    }),
                    Some(_) => {}
                }
            }
            for id in site_rows.keys() {
                if !master_rows.contains_key(id) {
                    differences.push(Difference {
                        table: table.table(),
                        id: id.clone(),
                        side: pb::DifferenceSide::SiteOnly,
                    });
                }
            }
        }
        for chunk in inner.chunks(RANGES_PER_REQUEST) {
            let reply = ask(link, check_id, table, chunk, false, moved).await?;
            if reply.digests.len() != chunk.len() {
                return Err(failed(format!(
                    "the site answered {} digests for {} ranges",
                    reply.digests.len(),
                    chunk.len()
                )));
            }
            for (range, theirs) in chunk.iter().zip(reply.digests) {
                let ours = master.digest(range);
                if ours.count != theirs.count || ours.sum != theirs.sum {
                    pending.push((*range, theirs.count));
                }
            }
        }
    }
    differences.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(differences)
}

async fn ask(
    link: &mut Link<'_>,
    check_id: u64,
    table: &dyn SyncTable,
    ranges: &[HashRange],
    rows: bool,
    moved: &mut bool,
) -> Result<pb::VerifyReply> {
    link.send(master_message::Message::VerifyRequest(VerifyRequest {
        check_id,
        table: table.table() as i32,
        ranges: ranges.to_vec(),
        rows,
    }))
    .await?;
    let reply = link.reply(check_id).await?;
    if reply.outbox_pending > 0 {
        // A local write at the site since the read: a repair could overwrite it.
        *moved = true;
    }
    Ok(reply)
}

/// The upstream sequence of site `sync_id` the master has applied.
async fn acked_seq(db: &DatabaseConnection, sync_id: u32) -> Result<i64> {
    use sea_orm::EntityTrait;
    Ok(
        crate::entities::site::Entity::find_by_id(crate::sync::upstream::sync_id_i32(sync_id))
            .one(db)
            .await?
            .map_or(0, |site| site.upstream_acked_seq),
    )
}

/// Sends the repair of `found.differences` and waits for the site to apply it.
async fn repair(
    db: &DatabaseConnection,
    link: &mut Link<'_>,
    check_id: u64,
    store_id: &str,
    found: &mut Found,
) -> Result<()> {
    let order = |table: Table| {
        tables::SYNCED
            .iter()
            .position(|t| t.table() == table)
            .unwrap_or(usize::MAX)
    };
    found
        .differences
        .sort_by(|(a, _), (b, _)| (order(a.table), &a.id).cmp(&(order(b.table), &b.id)));
    let mut message = VerifyRepair {
        check_id,
        ..Default::default()
    };
    for (difference, action) in &mut found.differences {
        let Some(table) = tables::by_table(tables::SYNCED, difference.table) else {
            continue;
        };
        let ours = match difference.side {
            pb::DifferenceSide::SiteOnly => None,
            _ => integrity::row_by_id(db, table, &difference.id)
                .await?
                .map(|row| table.record_of(&row))
                .transpose()?,
        };
        let reference = RecordRef {
            table: difference.table as i32,
            id: difference.id.clone(),
        };
        let before = ours
            .as_ref()
            .map_or_else(|| "absent on the master".to_owned(), |r| format!("{r:?}"));
        match (table.owner(), difference.side, ours) {
            (Owner::Master, pb::DifferenceSide::SiteOnly, _) => {
                *action = "deleted at the site".into();
                message.deletes.push(reference);
                found.repairs.push([
                    table.name().into(),
                    difference.id.clone(),
                    action.clone(),
                    "a stray row at the site".into(),
                    "absent at the site".into(),
                ]);
            }
            (
                Owner::Store { .. },
                pb::DifferenceSide::SiteOnly | pb::DifferenceSide::BothDiffer,
                _,
            ) => {
                *action = "re-sent by the site".into();
                message.resend.push(reference);
                found.repairs.push([
                    table.name().into(),
                    difference.id.clone(),
                    action.clone(),
                    before,
                    "the site's version, re-sent upstream".into(),
                ]);
            }
            (_, pb::DifferenceSide::MasterOnly | pb::DifferenceSide::BothDiffer, Some(record)) => {
                let store_ok = table.owner().store_column().is_none()
                    || table
                        .decode(record.clone())
                        .ok()
                        .is_some_and(|row| table.store_of(&row) == Some(store_id));
                if !store_ok {
                    continue;
                }
                *action = "sent to the site".into();
                found.repairs.push([
                    table.name().into(),
                    difference.id.clone(),
                    action.clone(),
                    if difference.side == pb::DifferenceSide::MasterOnly {
                        "absent at the site".into()
                    } else {
                        "the site's differing version".into()
                    },
                    before,
                ]);
                message.records.push(SyncRecord {
                    record: Some(record),
                });
            }
            // A row of the store table only the site holds (another
            // store's), or a master row gone since the read: reported only.
            _ => {}
        }
    }
    // Cut into messages of at most REPAIR_PER_MESSAGE rows, in order
    // (master data and referenced rows first); each is one transaction at the site.
    let mut chunks: Vec<VerifyRepair> = Vec::new();
    let mut rows_in_last = REPAIR_PER_MESSAGE;
    let push = |chunks: &mut Vec<VerifyRepair>, rows_in_last: &mut usize| {
        if *rows_in_last >= REPAIR_PER_MESSAGE {
            chunks.push(VerifyRepair {
                check_id,
                ..Default::default()
            });
            *rows_in_last = 0;
        }
        *rows_in_last += 1;
        chunks.len() - 1
    };
    for record in message.records {
        let at = push(&mut chunks, &mut rows_in_last);
        chunks[at].records.push(record);
    }
    for reference in message.deletes {
        let at = push(&mut chunks, &mut rows_in_last);
        chunks[at].deletes.push(reference);
    }
    for reference in message.resend {
        let at = push(&mut chunks, &mut rows_in_last);
        chunks[at].resend.push(reference);
    }
    let mut not_done: Vec<(i32, String)> = Vec::new();
    let mut failure = None;
    for chunk in chunks {
        if failure.is_some() {
            not_done.extend(ids_of(&chunk));
            continue;
        }
        let ids = ids_of(&chunk);
        link.send(master_message::Message::VerifyRepair(chunk))
            .await?;
        match link.answer(check_id).await? {
            satellite_message::Message::VerifyRepaired(done) if done.error.is_empty() => {
                found.rows_repaired += done.applied + done.resent;
                not_done.extend(done.skipped.into_iter().map(|r| (r.table, r.id)));
            }
            satellite_message::Message::VerifyRepaired(done) => {
                not_done.extend(ids);
                failure = Some(format!("the site refused the repair: {}", done.error));
            }
            _ => return Err(failed("the site answered out of turn".into())),
        }
    }
    let not_done: std::collections::HashSet<(i32, String)> = not_done.into_iter().collect();
    for (difference, action) in &mut found.differences {
        if not_done.contains(&(difference.table as i32, difference.id.clone())) {
            action.clear();
        }
    }
    found.repairs.retain(|r| {
        !tables::SYNCED
            .iter()
            .find(|t| t.name() == r[0])
            .is_some_and(|t| not_done.contains(&(t.table() as i32, r[1].clone())))
    });
    if let Some(failure) = failure {
        found.message = failure;
    }
    Ok(())
}

/// The rows a repair message names, as (table, id).
fn ids_of(chunk: &VerifyRepair) -> Vec<(i32, String)> {
    let mut ids: Vec<(i32, String)> = chunk
        .records
        .iter()
        .filter_map(|record| {
            let record = record.record.clone()?;
            let (table, row) = tables::decode(tables::SYNCED, record).ok()?;
            Some((table.table() as i32, row.id().to_owned()))
        })
        .collect();
    ids.extend(
        chunk
            .deletes
            .iter()
            .chain(&chunk.resend)
            .map(|r| (r.table, r.id.clone())),
    );
    ids
}

/// Ends the check; keeps the site's ledger answer.
async fn end(link: &mut Link<'_>, check_id: u64, found: &mut Found) -> Result<()> {
    link.send(master_message::Message::VerifyEnd(VerifyEnd { check_id }))
        .await?;
    match link.answer(check_id).await? {
        satellite_message::Message::VerifyLedger(ledger) if ledger.error.is_empty() => {
            found.site_ledger = ledger.problems;
            found.site_ledger_total = ledger.problems_total;
            Ok(())
        }
        satellite_message::Message::VerifyLedger(ledger) => Err(failed(ledger.error)),
        _ => Err(failed("the site answered out of turn".into())),
    }
}
