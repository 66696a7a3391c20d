//! Applying a satellite's upstream batch: its store data, exactly once.
//!
//! # Invariant
//! A batch is applied in ONE transaction that also moves `site.upstream_acked_seq`
//! to the batch's last sequence. Entries at or below the acknowledged sequence
//! are skipped (a resend after a lost ack), a gap after it is refused, and the
//! site row is locked (`FOR UPDATE` on PostgreSQL; SQLite has one writer) so that
//! two sessions of one site can never apply concurrently. Either the records and
//! the new acknowledged sequence commit together, or neither does.
//!
//! # Ownership
//! A site may write only store data of the store it hosts. A record of another
//! store, one whose id already belongs to another store's row, or any master data
//! rejects the whole batch with `PERMISSION_DENIED` naming the record.
//!
//! # Order within a batch
//! Every record is validated, then each table's records are reduced to the last
//! change of each id (`Latest`), which leaves the state applying them one by
//! one in arrival order would: a repeated id ends with its last version, a row
//! sent and then deleted is gone, one deleted and then sent again exists.
//!
//! # Backends
//! On PostgreSQL (module `postgres`) each table is written with one array-bound
//! upsert that also checks ownership; elsewhere (SQLite) ownership is checked
//! with queries first and rows are written with `shared::upsert`.

use std::collections::HashSet;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};
use storesync_shared::entities::{invoice, invoice_line, stock_line};
use storesync_shared::proto::v1::{sync_record::Record, SyncRecord, Table, UpstreamBatch};
use storesync_shared::{upsert, validate, Error, Result};

use crate::entities::{site, site_status};

mod postgres;

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
}

/// One record's effect on a row.
enum Change<M> {
    Upsert(M),
    Delete(String),
}

/// A batch's records, by table, in the order they arrived.
#[derive(Default)]
struct Rows {
    stock_lines: Vec<Change<stock_line::Model>>,
    invoices: Vec<Change<invoice::Model>>,
    invoice_lines: Vec<Change<invoice_line::Model>>,
}

/// The last change of each row a batch touches in one table.
///
/// Rows of one table do not depend on each other, so writing only the last
/// change of each id leaves exactly the state that applying every record in
/// arrival order would: a repeated id ends with its last version, and a row
/// deleted and then sent again exists (and one sent and then deleted does not).
struct Latest<M> {
    upserts: Vec<M>,
    deletes: Vec<String>,
}

impl<M> Latest<M> {
    fn of(changes: Vec<Change<M>>, id_of: impl Fn(&M) -> &str) -> Self {
        // Walking backwards, the first sight of an id is its last change.
        let keep: Vec<bool> = {
            let mut seen: HashSet<&str> = HashSet::with_capacity(changes.len());
            let mut keep: Vec<bool> = changes
                .iter()
                .rev()
                .map(|change| {
                    seen.insert(match change {
                        Change::Upsert(model) => id_of(model),
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
                Change::Upsert(model) if keep => latest.upserts.push(model),
                Change::Delete(id) if keep => latest.deletes.push(id),
                _ => {}
            }
        }
        latest
    }

    /// Every id this table's changes touch.
    fn ids<'a>(&'a self, id_of: impl Fn(&'a M) -> &'a str) -> impl Iterator<Item = &'a str> {
        self.upserts
            .iter()
            .map(id_of)
            .chain(self.deletes.iter().map(String::as_str))
    }
}

/// A batch reduced to the last change of each row, by table.
struct Changes {
    stock_lines: Latest<stock_line::Model>,
    invoices: Latest<invoice::Model>,
    invoice_lines: Latest<invoice_line::Model>,
}

impl Changes {
    fn of(rows: Rows) -> Self {
        Self {
            stock_lines: Latest::of(rows.stock_lines, |r| &r.id),
            invoices: Latest::of(rows.invoices, |r| &r.id),
            invoice_lines: Latest::of(rows.invoice_lines, |r| &r.id),
        }
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
    batch: &UpstreamBatch,
) -> Result<Start> {
    let Some(acked) = acked else {
        return Err(Error::PermissionDenied(format!(
            "Sync ID {} is no longer in the master's sync-with list",
            site.sync_id
        )));
    };
    let acked = u64::try_from(acked).unwrap_or(0);
    // Only the session holding the claim applies, so a session replaced on
    // another replica can never apply again.
    if owner.as_deref() != Some(session_id) {
        return Err(Error::Aborted(format!(
            "a newer session for Sync ID {} replaced this one; nothing of this batch was applied",
            site.sync_id
        )));
    }
    if batch.last_seq <= acked {
        return Ok(Start::AlreadyApplied(acked));
    }
    if batch.first_seq > acked + 1 {
        return Err(Error::FailedPrecondition(format!(
            "upstream batch out of sequence: it starts at {} but the master has applied up to {acked}; resend from {}",
            batch.first_seq,
            acked + 1
        )));
    }
    usize::try_from(acked + 1 - batch.first_seq)
        .map(Start::Apply)
        .map_err(|_| Error::Internal("skip overflow".into()))
}

/// Validates the batch's records after the first `skip` and reduces them to
/// the last change of each row; also returns how many records that was.
fn read_records(site: &SiteIdentity, batch: UpstreamBatch, skip: usize) -> Result<(Changes, u32)> {
    let mut rows = Rows::default();
    let applied = u32::try_from(batch.records.len().saturating_sub(skip)).unwrap_or(u32::MAX);
    for (offset, record) in batch.records.into_iter().enumerate().skip(skip) {
        let seq = batch.first_seq + offset as u64;
        collect(&mut rows, site, seq, record)?;
    }
    Ok((Changes::of(rows), applied))
}

/// Applies `batch` for `site`. See the module docs for the invariant.
pub async fn apply_batch(
    db: &DatabaseConnection,
    site: &SiteIdentity,
    session_id: &str,
    batch: UpstreamBatch,
) -> Result<Applied> {
    check_shape(&batch)?;
    if let DatabaseConnection::SqlxPostgresPoolConnection(_) = db {
        return postgres::apply_batch(db.get_postgres_connection_pool(), site, session_id, batch)
            .await;
    }
    let txn = db.begin().await?;
    let acked = lock_acked_seq(&txn, site.sync_id).await?;
    let owner: Option<Option<String>> = site_status::Entity::find_by_id(sync_id_i32(site.sync_id))
        .select_only()
        .column(site_status::Column::SessionId)
        .into_tuple()
        .one(&txn)
        .await?;
    let skip = match start(site, session_id, acked, owner.flatten(), &batch)? {
        Start::AlreadyApplied(acked) => {
            txn.commit().await?;
            return Ok(Applied {
                acked_seq: acked,
                applied: 0,
            });
        }
        Start::Apply(skip) => skip,
    };
    let last_seq = to_i64(batch.last_seq)?;
    let (changes, applied) = read_records(site, batch, skip)?;
    check_ids_not_foreign(&txn, site, &changes).await?;
    write_rows(&txn, site, changes).await?;
    site::Entity::update_many()
        .col_expr(site::Column::UpstreamAckedSeq, Expr::value(last_seq))
        .filter(site::Column::SyncId.eq(sync_id_i32(site.sync_id)))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(Applied {
        acked_seq: last_seq as u64,
        applied,
    })
}

fn to_i64(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::invalid("upstream_batch.last_seq", "is out of range"))
}

/// The batch's sequence numbers must be dense and match its records.
fn check_shape(batch: &UpstreamBatch) -> Result<()> {
    if batch.records.is_empty() {
        return Err(Error::invalid(
            "upstream_batch.records",
            "must not be empty",
        ));
    }
    if batch.first_seq == 0 {
        return Err(Error::invalid(
            "upstream_batch.first_seq",
            "sequences start at 1",
        ));
    }
    let expected = batch.last_seq.checked_sub(batch.first_seq).map(|d| d + 1);
    if expected != Some(batch.records.len() as u64) {
        return Err(Error::invalid(
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

/// The site's acknowledged sequence (`None`: the site is gone), locking its
/// row for this transaction.
async fn lock_acked_seq<C: ConnectionTrait>(txn: &C, sync_id: u32) -> Result<Option<i64>> {
    // FOR UPDATE on PostgreSQL; SQLite has no row locks and needs none (one writer).
    let site = site::Entity::find_by_id(sync_id_i32(sync_id))
        .lock_exclusive()
        .one(txn)
        .await?;
    Ok(site.map(|site| site.upstream_acked_seq))
}

fn record_name(table: Table, id: &str, seq: u64) -> String {
    format!(
        "{} {id} (upstream sequence {seq})",
        table.as_str_name().to_ascii_lowercase()
    )
}

fn denied_store(table: Table, id: &str, seq: u64, store_id: &str, site: &SiteIdentity) -> Error {
    Error::PermissionDenied(format!(
        "{} belongs to store {store_id:?}, but Sync ID {} hosts store {:?}: a site may only send its own store's data; nothing of this batch was applied",
        record_name(table, id, seq),
        site.sync_id,
        site.store_id
    ))
}

/// Validates one record and files it under its table.
fn collect(rows: &mut Rows, site: &SiteIdentity, seq: u64, record: SyncRecord) -> Result<()> {
    let at = |field: &str| format!("upstream record {seq}: {field}");
    match record.record {
        Some(Record::StockLine(line)) => {
            validate::uuid(&at("stock_line.id"), &line.id)?;
            if line.store_id != site.store_id {
                return Err(denied_store(
                    Table::StockLine,
                    &line.id,
                    seq,
                    &line.store_id,
                    site,
                ));
            }
            validate::uuid(&at("stock_line.item_id"), &line.item_id)?;
            validate::optional_text(&at("stock_line.batch"), &line.batch, 64)?;
            validate::date(&at("stock_line.expiry_date"), &line.expiry_date, true)?;
            validate::pack_size(&at("stock_line.pack_size"), line.pack_size)?;
            validate::quantity(
                &at("stock_line.available_number_of_packs"),
                line.available_number_of_packs,
                0.0,
            )?;
            validate::quantity(
                &at("stock_line.total_number_of_packs"),
                line.total_number_of_packs,
                0.0,
            )?;
            validate::quantity(
                &at("stock_line.cost_price_per_pack"),
                line.cost_price_per_pack,
                0.0,
            )?;
            validate::quantity(
                &at("stock_line.sell_price_per_pack"),
                line.sell_price_per_pack,
                0.0,
            )?;
            rows.stock_lines.push(Change::Upsert(line.into()));
        }
        Some(Record::Invoice(mut invoice)) => {
            validate::uuid(&at("invoice.id"), &invoice.id)?;
            if invoice.store_id != site.store_id {
                return Err(denied_store(
                    Table::Invoice,
                    &invoice.id,
                    seq,
                    &invoice.store_id,
                    site,
                ));
            }
            validate::uuid(&at("invoice.name_id"), &invoice.name_id)?;
            if invoice.kind() == storesync_shared::proto::v1::InvoiceKind::Unspecified {
                return Err(Error::invalid(
                    &at("invoice.kind"),
                    "must be a known invoice kind",
                ));
            }
            validate::optional_text(&at("invoice.reference"), &invoice.reference, 256)?;
            invoice.lines.clear();
            rows.invoices.push(Change::Upsert(invoice.into()));
        }
        Some(Record::InvoiceLine(line)) => {
            validate::uuid(&at("invoice_line.id"), &line.id)?;
            if line.store_id != site.store_id {
                return Err(denied_store(
                    Table::InvoiceLine,
                    &line.id,
                    seq,
                    &line.store_id,
                    site,
                ));
            }
            validate::uuid(&at("invoice_line.invoice_id"), &line.invoice_id)?;
            validate::uuid(&at("invoice_line.item_id"), &line.item_id)?;
            validate::optional_text(&at("invoice_line.batch"), &line.batch, 64)?;
            validate::date(&at("invoice_line.expiry_date"), &line.expiry_date, true)?;
            validate::pack_size(&at("invoice_line.pack_size"), line.pack_size)?;
            if !line.number_of_packs.is_finite()
                || line.number_of_packs.abs() > validate::MAX_QUANTITY
            {
                return Err(Error::invalid(
                    &at("invoice_line.number_of_packs"),
                    "is out of range",
                ));
            }
            validate::quantity(
                &at("invoice_line.cost_price_per_pack"),
                line.cost_price_per_pack,
                0.0,
            )?;
            validate::quantity(
                &at("invoice_line.sell_price_per_pack"),
                line.sell_price_per_pack,
                0.0,
            )?;
            rows.invoice_lines.push(Change::Upsert(line.into()));
        }
        Some(Record::Deleted(reference)) => {
            validate::uuid(&at("deleted.id"), &reference.id)?;
            match reference.table() {
                Table::StockLine => rows.stock_lines.push(Change::Delete(reference.id)),
                Table::Invoice => rows.invoices.push(Change::Delete(reference.id)),
                Table::InvoiceLine => rows.invoice_lines.push(Change::Delete(reference.id)),
                Table::Unspecified => {
                    return Err(Error::invalid(
                        &at("deleted.table"),
                        format!("{} is not a known table", reference.table),
                    ))
                }
                other => return Err(master_data_denied(other, &reference.id, seq, site)),
            }
        }
        Some(Record::Item(item)) => {
            return Err(master_data_denied(Table::Item, &item.id, seq, site))
        }
        Some(Record::Name(name)) => {
            return Err(master_data_denied(Table::Name, &name.id, seq, site))
        }
        Some(Record::Store(store)) => {
            return Err(master_data_denied(Table::Store, &store.id, seq, site))
        }
        None => return Err(Error::invalid(&at("record"), "is empty")),
    }
    Ok(())
}

fn master_data_denied(table: Table, id: &str, seq: u64, site: &SiteIdentity) -> Error {
    Error::PermissionDenied(format!(
        "{} is master data, which only the master may change (Sync ID {} sent it); nothing of this batch was applied",
        record_name(table, id, seq),
        site.sync_id
    ))
}

/// The refusal of an id that already belongs to another store's row.
fn foreign_row(table: Table, id: &str, store_id: &str, site: &SiteIdentity) -> Error {
    Error::PermissionDenied(format!(
        "{} {id} already exists in store {store_id:?}; Sync ID {} may not change it; nothing of this batch was applied",
        table.as_str_name().to_ascii_lowercase(),
        site.sync_id
    ))
}

/// No id of the batch may already belong to another store's row: an upsert by
/// id would otherwise move that row into this site's store.
async fn check_ids_not_foreign<C: ConnectionTrait>(
    txn: &C,
    site: &SiteIdentity,
    changes: &Changes,
) -> Result<()> {
    async fn check<'a, E, C>(
        txn: &C,
        site: &SiteIdentity,
        table: Table,
        ids: impl Iterator<Item = &'a str>,
        id_col: E::Column,
        store_col: E::Column,
    ) -> Result<()>
    where
        E: EntityTrait,
        C: ConnectionTrait,
    {
        let ids: Vec<&str> = ids.collect();
        for chunk in ids.chunks(500) {
            let foreign: Option<(String, String)> = E::find()
                .select_only()
                .column(id_col)
                .column(store_col)
                .filter(id_col.is_in(chunk.iter().copied()))
                .filter(store_col.ne(site.store_id.as_str()))
                .into_tuple()
                .one(txn)
                .await?;
            if let Some((id, store_id)) = foreign {
                return Err(foreign_row(table, &id, &store_id, site));
            }
        }
        Ok(())
    }
    check::<stock_line::Entity, _>(
        txn,
        site,
        Table::StockLine,
        changes.stock_lines.ids(|r| &r.id),
        stock_line::Column::Id,
        stock_line::Column::StoreId,
    )
    .await?;
    check::<invoice::Entity, _>(
        txn,
        site,
        Table::Invoice,
        changes.invoices.ids(|r| &r.id),
        invoice::Column::Id,
        invoice::Column::StoreId,
    )
    .await?;
    check::<invoice_line::Entity, _>(
        txn,
        site,
        Table::InvoiceLine,
        changes.invoice_lines.ids(|r| &r.id),
        invoice_line::Column::Id,
        invoice_line::Column::StoreId,
    )
    .await?;
    Ok(())
}

/// Upserts the batch's rows (whole-row replace: the site is their only writer)
/// and applies its deletes.
async fn write_rows<C: ConnectionTrait>(
    txn: &C,
    site: &SiteIdentity,
    changes: Changes,
) -> Result<()> {
    async fn delete<E, C>(
        txn: &C,
        site: &SiteIdentity,
        ids: Vec<String>,
        id_col: E::Column,
        store_col: E::Column,
    ) -> Result<()>
    where
        E: EntityTrait,
        C: ConnectionTrait,
    {
        for chunk in ids.chunks(500) {
            E::delete_many()
                .filter(id_col.is_in(chunk.iter().map(String::as_str)))
                .filter(store_col.eq(site.store_id.as_str()))
                .exec(txn)
                .await?;
        }
        Ok(())
    }
    let Changes {
        stock_lines,
        invoices,
        invoice_lines,
    } = changes;
    upsert::all::<stock_line::Entity, _>(txn, stock_lines.upserts, |r| &r.id).await?;
    upsert::all::<invoice::Entity, _>(txn, invoices.upserts, |r| &r.id).await?;
    upsert::all::<invoice_line::Entity, _>(txn, invoice_lines.upserts, |r| &r.id).await?;
    delete::<stock_line::Entity, _>(
        txn,
        site,
        stock_lines.deletes,
        stock_line::Column::Id,
        stock_line::Column::StoreId,
    )
    .await?;
    delete::<invoice::Entity, _>(
        txn,
        site,
        invoices.deletes,
        invoice::Column::Id,
        invoice::Column::StoreId,
    )
    .await?;
    delete::<invoice_line::Entity, _>(
        txn,
        site,
        invoice_lines.deletes,
        invoice_line::Column::Id,
        invoice_line::Column::StoreId,
    )
    .await?;
    Ok(())
}
