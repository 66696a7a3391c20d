//! Applying what the master sends: master-data changes and snapshot batches.
//!
//! # Invariant: checkpoint with the data
//! A batch's records and its end cursor commit in ONE local transaction. A crash
//! before commit leaves the old cursor and none of the batch (the master resends
//! it); after commit both are there. The last snapshot batch also marks the
//! database initialised and sets the upstream positions from the master's.
//!
//! # Resumable initialisation
//! Each snapshot batch before the last also stores, in its transaction,
//! where the snapshot stands (`snapshot_resume`: the cursor it is replayed
//! from, the epoch, the last record and the count held). A session cut
//! mid-snapshot names that position in its next Hello; when the master
//! continues after it (`Welcome.snapshot_resumed`) nothing is emptied, and
//! the batch that completes the snapshot stores its cursor and deletes the
//! position. A snapshot started again empties everything first, the
//! position with it (`clear_for_initialisation`).
//!
//! The cursor moves with the tag of the entry it names and the master's
//! change-log epoch (`Hello.cursor_tag`, `Hello.changelog_epoch`).
//!
//! # Invariant: batches continue the cursor
//! A change-log batch names the cursor it continues from
//! (`DownstreamBatch.after_cursor`). One that does not continue from the
//! cursor held here is refused whole and the session ends: the next session
//! resumes from the cursor held, so a batch lost on the way is sent again,
//! never skipped. (The stream's own transport delivers in order, so this
//! should not happen; the check makes a hole loud instead of silent. Masters
//! older than the field leave it unset, and nothing is checked.)
//!
//! # Master-data resync
//! When the master's Welcome says `resync_master_data`, a snapshot of master
//! data (and the store row) follows. Each batch upserts its records, first
//! moving aside a unique code that another local row holds, and records the
//! ids it carried in `resync_seen`; the batch that completes it deletes every
//! master-owned row the snapshot did not name, empties `resync_seen` and
//! stores the snapshot's cursor, tag and epoch, in one transaction. The
//! store's own data is never touched. A crash before that leaves the old
//! epoch and cursor, so the next session resyncs again (resuming it, or
//! starting it again with `resync_seen` emptied: see below). A master-owned
//! row that local store data still names is deleted all the same (the
//! master, the truth for master data, no longer has it; the store's rows
//! keep their own copies of batch, prices and pack sizes) and a warning
//! counts them.
//!
//! Each batch before the last also stores where the resync stands
//! (`snapshot_resume`, as for an initialisation, with the resync's epoch); a
//! cut session names it in its next Hello (`Hello.resync_changelog_epoch`)
//! and, when the master continues after it (`Welcome.snapshot_resumed`),
//! `resync_seen` is kept; a resync started again empties both
//! (`start_resync`), the completing batch deletes both.
//!
//! # Handover of store rows
//! Outside a snapshot, the master sends store rows only to hand a row it
//! created over to this site (an inbound shipment, `docs/TRANSFERS.md`).
//! Such a row is inserted if absent and only for the store this site
//! hosts; a row already here is this site's and is never overwritten.
//!
//! The tables written, their order and which deletes the master may send come
//! from the registry of synced tables (`storesync_shared::domain::tables`).
//!
//! # Invariant: one history per Sync ID
//! The (sequence, tag) of the last entry the master acknowledged is kept in
//! `sync_state` with the acknowledgement. At the start of a session
//! ([`reconcile_upstream`]) the master's acknowledged entry must be this
//! database's own (same tag) and not past anything it ever wrote; otherwise
//! this database is a copy with another history and it stops syncing for
//! good ([`halt`]), deleting nothing, so that its entries can be handed over.

use sea_orm::sea_query::{Alias, Expr, OnConflict, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter};
use storesync_shared::domain::tables::{self, apply, Owner};
use storesync_shared::proto::v1::{DownstreamBatch, InitialisationProgress, Store};
use storesync_shared::{Error, Result};

use crate::entities::{outbox, sync_state};

/// What a committed batch changed in the sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchApplied {
    pub records: usize,
    /// The database became initialised with this batch.
    pub initialised: bool,
    /// A master-data resync completed with this batch.
    pub resynced: bool,
}

/// What the session's Welcome says about the batches that follow.
#[derive(Clone, Copy, Debug, Default)]
pub struct Applying<'a> {
    /// The store this site hosts.
    pub store: Option<&'a Store>,
    /// The master's acknowledged upstream sequence.
    pub upstream_acked_seq: u64,
    /// The master's tag of that entry (0: unknown).
    pub upstream_acked_tag: u64,
    /// The master's change-log epoch, stored with the cursor.
    pub epoch: &'a str,
    /// Snapshot batches are a master-data resync, not an initialisation.
    pub resync: bool,
}

/// Applies one downstream batch in one transaction with its cursor.
///
/// `upstream_acked_seq` is the master's (from Welcome); the initialising batch
/// that completes the snapshot continues the outbox numbering after it, so that
/// writes made after a re-initialisation are never taken for duplicates, and
/// takes `upstream_acked_tag` (the master's tag of that entry) as its own.
pub async fn apply_batch(
    db: &DatabaseConnection,
    batch: DownstreamBatch,
    store: Option<&Store>,
    upstream_acked_seq: u64,
    upstream_acked_tag: u64,
) -> Result<BatchApplied> {
    apply_with(
        db,
        batch,
        Applying {
            store,
            upstream_acked_seq,
            upstream_acked_tag,
            ..Applying::default()
        },
    )
    .await
}

/// [`apply_batch`] with everything the Welcome said (see the module docs).
pub async fn apply_with(
    db: &DatabaseConnection,
    batch: DownstreamBatch,
    applying: Applying<'_>,
) -> Result<BatchApplied> {
    let Applying {
        store,
        upstream_acked_seq,
        upstream_acked_tag,
        epoch,
        resync,
    } = applying;
    let records = batch.records.len();
    let complete = batch.initialisation.as_ref().is_some_and(|i| i.complete);
    let in_snapshot = batch.initialisation.is_some();
    let end_tag = i64::try_from(batch.end_tag)
        .map_err(|_| Error::invalid("downstream_batch.end_tag", "is out of range"))?;
    if resync && in_snapshot {
        return apply_resync(db, batch, epoch, end_tag).await;
    }
    let completes_init = complete;
    let in_init = in_snapshot;
    let batch_progress = batch.initialisation.clone();
    let runs = apply::runs(tables::SYNCED, batch.records)?;
    let txn = storesync_shared::domain::db::begin(db).await?;
    // The store this site hosts, outside a snapshot: store rows the master
    // hands over are taken only for it.
    let mut own_store: Option<String> = None;
    if !in_init {
        let state = sync_state::Entity::find_by_id(1)
            .one(&txn)
            .await?
            .ok_or_else(|| Error::Internal("sync_state row is missing".into()))?;
        own_store = Some(state.store_id.clone());
        let held = u64::try_from(state.downstream_cursor).unwrap_or(0);
        if held >= batch.end_cursor {
            // Already applied (a resend after a lost ack): nothing to do.
            txn.commit().await?;
            return Ok(BatchApplied {
                records: 0,
                initialised: false,
                resynced: false,
            });
        }
        // A batch that does not continue from the cursor held here: one went
        // missing on the way. Nothing of it is applied; the session ends and
        // the next one resumes from the cursor held (see the module docs).
        if let Some(after) = batch.after_cursor {
            if after != held {
                return Err(Error::Unavailable(format!(
                    "downstream_batch.after_cursor: the batch continues after change-log entry {after}, \
                     but this site holds the entries up to {held}: a batch went missing on the way; \
                     the session ends and resumes from {held}"
                )));
            }
        }
    }
    for run in runs {
        match (run, &own_store) {
            // A store row in the change log is a handover (see
            // `docs/TRANSFERS.md`): inserted if absent, for this store only,
            // never over a row this site already owns and writes.
            (apply::Run::Rows(table, rows), Some(own))
                if matches!(table.owner(), Owner::Store { .. }) =>
            {
                let rows: Vec<tables::Row> = rows
                    .into_iter()
                    .filter(|row| table.store_of(row) == Some(own.as_str()))
                    .collect();
                // Rows this site holds already: the master lost them
                // (restored from an older backup) and created them again;
                // this site's copies go back to it.
                let ids: Vec<String> = rows.iter().map(|row| row.id().to_owned()).collect();
                let held = super::repush::held_ids(&txn, table, &ids).await?;
                apply::insert_absent(&txn, table, rows).await?;
                super::repush::push_back(&txn, table, &held).await?;
            }
            (run, _) => apply::write(&txn, run).await?,
        }
    }
    let cursor = i64::try_from(batch.end_cursor)
        .map_err(|_| Error::invalid("downstream_batch.end_cursor", "is out of range"))?;
    if completes_init {
        let store = store.ok_or_else(|| {
            Error::Internal("the master did not say which store this site hosts".into())
        })?;
        let acked = i64::try_from(upstream_acked_seq)
            .map_err(|_| Error::invalid("welcome.upstream_acked_seq", "is out of range"))?;
        // The outbox is empty while uninitialised (writes are refused until now).
        outbox::Entity::delete_many().exec(&txn).await?;
        // Built once over the whole snapshot, in the transaction that makes
        // the database initialised: no initialised database lacks them.
        build_store_data_indexes(&txn).await?;
        txn.execute_unprepared("DELETE FROM snapshot_resume")
            .await?;
        sync_state::Entity::update_many()
            .col_expr(sync_state::Column::DownstreamCursor, Expr::value(cursor))
            .col_expr(sync_state::Column::DownstreamTag, Expr::value(end_tag))
            .col_expr(
                sync_state::Column::ChangelogEpoch,
                Expr::value(epoch.to_owned()),
            )
            .col_expr(sync_state::Column::Initialised, Expr::value(true))
            .col_expr(sync_state::Column::UpstreamLastSeq, Expr::value(acked))
            .col_expr(sync_state::Column::UpstreamAckedSeq, Expr::value(acked))
            .col_expr(
                sync_state::Column::UpstreamAckedTag,
                Expr::value(i64::try_from(upstream_acked_tag).unwrap_or(0)),
            )
            .col_expr(sync_state::Column::StoreId, Expr::value(store.id.clone()))
            .col_expr(
                sync_state::Column::StoreCode,
                Expr::value(store.code.clone()),
            )
            .col_expr(
                sync_state::Column::StoreName,
                Expr::value(store.name.clone()),
            )
            .filter(sync_state::Column::Id.eq(1))
            .exec(&txn)
            .await?;
    } else if in_init {
        if let Some(progress) = &batch_progress {
            hold_snapshot_position(&txn, progress, epoch).await?;
        }
    } else {
        let mut update = sync_state::Entity::update_many()
            .col_expr(sync_state::Column::DownstreamCursor, Expr::value(cursor))
            .col_expr(sync_state::Column::DownstreamTag, Expr::value(end_tag));
        if !epoch.is_empty() {
            update = update.col_expr(
                sync_state::Column::ChangelogEpoch,
                Expr::value(epoch.to_owned()),
            );
        }
        update
            .filter(sync_state::Column::Id.eq(1))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(BatchApplied {
        records,
        initialised: completes_init,
        resynced: false,
    })
}

/// Records, in the transaction of a snapshot batch, where the snapshot
/// stands: its cursor and epoch and the last record held (see
/// [`snapshot_position`]). A master that names no record (older than
/// resumable snapshots) leaves nothing, so the next session starts again.
async fn hold_snapshot_position<C: ConnectionTrait>(
    txn: &C,
    progress: &InitialisationProgress,
    epoch: &str,
) -> Result<()> {
    if progress.last_id.is_empty() {
        return Ok(());
    }
    let mut upsert = Query::insert();
    upsert
        .into_table(Alias::new("snapshot_resume"))
        .columns(
            [
                "id",
                "snapshot_cursor",
                "changelog_epoch",
                "last_table",
                "last_id",
                "records_done",
            ]
            .map(Alias::new),
        )
        .values_panic([
            1i32.into(),
            i64::try_from(progress.snapshot_cursor)
                .unwrap_or(i64::MAX)
                .into(),
            epoch.into(),
            progress.last_table.into(),
            progress.last_id.clone().into(),
            i64::try_from(progress.records_done)
                .unwrap_or(i64::MAX)
                .into(),
        ])
        .on_conflict(
            OnConflict::column(Alias::new("id"))
                .update_columns(
                    [
                        "snapshot_cursor",
                        "changelog_epoch",
                        "last_table",
                        "last_id",
                        "records_done",
                    ]
                    .map(Alias::new),
                )
                .to_owned(),
        );
    txn.execute(txn.get_database_backend().build(&upsert))
        .await?;
    Ok(())
}

/// Where a snapshot cut before its end stands, as the master told it with
/// the last batch committed (see `hold_snapshot_position`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPosition {
    pub cursor: u64,
    pub epoch: String,
    pub last_table: i32,
    pub last_id: String,
    pub records_done: u64,
}

/// The position of the snapshot this database holds in part (None: none).
pub async fn snapshot_position<C: ConnectionTrait>(db: &C) -> Result<Option<SnapshotPosition>> {
    let row = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT snapshot_cursor, changelog_epoch, last_table, last_id, records_done FROM snapshot_resume WHERE id = 1",
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(SnapshotPosition {
        cursor: u64::try_from(row.try_get_by_index::<i64>(0)?).unwrap_or(0),
        epoch: row.try_get_by_index(1)?,
        last_table: row.try_get_by_index(2)?,
        last_id: row.try_get_by_index(3)?,
        records_done: u64::try_from(row.try_get_by_index::<i64>(4)?).unwrap_or(0),
    }))
}

/// Master-owned tables: what a resync rewrites and prunes.
fn master_owned() -> impl Iterator<Item = &'static dyn tables::SyncTable> {
    tables::SYNCED
        .iter()
        .copied()
        .filter(|table| !matches!(table.owner(), Owner::Store { .. }))
}

/// Ids per `IN (…)` list or multi-row insert.
const CHUNK: usize = 400;

/// One batch of a master-data resync (see the module docs).
async fn apply_resync(
    db: &DatabaseConnection,
    batch: DownstreamBatch,
    epoch: &str,
    end_tag: i64,
) -> Result<BatchApplied> {
    let records = batch.records.len();
    let complete = batch.initialisation.as_ref().is_some_and(|i| i.complete);
    let batch_progress = batch.initialisation.clone();
    let cursor = i64::try_from(batch.end_cursor)
        .map_err(|_| Error::invalid("downstream_batch.end_cursor", "is out of range"))?;
    let runs = apply::runs(tables::SYNCED, batch.records)?;
    let txn = storesync_shared::domain::db::begin(db).await?;
    for run in runs {
        if let apply::Run::Rows(table, rows) = &run {
            if matches!(table.owner(), Owner::Store { .. }) {
                return Err(Error::InvalidArgument(format!(
                    "the master sent {} rows in a master-data resync",
                    table.name()
                )));
            }
            free_codes(&txn, *table, rows).await?;
            let ids: Vec<&str> = rows.iter().map(tables::Row::id).collect();
            for chunk in ids.chunks(CHUNK) {
                let mut insert = Query::insert();
                insert
                    .into_table(Alias::new("resync_seen"))
                    .columns([Alias::new("table_name"), Alias::new("id")])
                    .on_conflict(
                        OnConflict::columns([Alias::new("table_name"), Alias::new("id")])
                            .do_nothing()
                            .to_owned(),
                    );
                for id in chunk {
                    insert.values_panic([table.name().into(), (*id).into()]);
                }
                txn.execute(txn.get_database_backend().build(&insert))
                    .await?;
            }
        }
        apply::write(&txn, run).await?;
    }
    if !complete {
        // Where the resync stands, with its records: a cut resumes after it.
        if let Some(progress) = &batch_progress {
            hold_snapshot_position(&txn, progress, epoch).await?;
        }
    }
    if complete {
        let mut removed = 0u64;
        for table in master_owned() {
            let orphans = format!(
                "FROM \"{0}\" WHERE id NOT IN (SELECT id FROM resync_seen WHERE table_name = '{0}')",
                table.name()
            );
            if table.table() == storesync_shared::proto::v1::Table::Item {
                warn_if_in_use(&txn, &orphans).await;
            }
            removed += txn
                .execute_unprepared(&format!("DELETE {orphans}"))
                .await?
                .rows_affected();
        }
        txn.execute_unprepared("DELETE FROM resync_seen").await?;
        txn.execute_unprepared("DELETE FROM snapshot_resume")
            .await?;
        sync_state::Entity::update_many()
            .col_expr(sync_state::Column::DownstreamCursor, Expr::value(cursor))
            .col_expr(sync_state::Column::DownstreamTag, Expr::value(end_tag))
            .col_expr(
                sync_state::Column::ChangelogEpoch,
                Expr::value(epoch.to_owned()),
            )
            .filter(sync_state::Column::Id.eq(1))
            .exec(&txn)
            .await?;
        tracing::info!(
            removed,
            cursor,
            epoch,
            "resync complete: orphans removed, cursor, tag and epoch stored"
        );
    }
    txn.commit().await?;
    Ok(BatchApplied {
        records,
        initialised: false,
        resynced: complete,
    })
}

/// Moves a unique code that `rows` are about to take out of the way of
/// another local row (its code becomes `~resync~<id>` until the snapshot
/// names it again or it is deleted as an orphan).
async fn free_codes<C: ConnectionTrait>(
    txn: &C,
    table: &dyn tables::SyncTable,
    rows: &[tables::Row],
) -> Result<()> {
    let Some(code) = table.columns().iter().position(|c| c.name == "code") else {
        return Ok(());
    };
    if table.owner() != Owner::Master {
        return Ok(());
    }
    let codes: Vec<&str> = rows.iter().filter_map(|row| row.text(code)).collect();
    for chunk in codes.chunks(CHUNK) {
        let mut update = Query::update();
        update
            .table(Alias::new(table.name()))
            .value(Alias::new("code"), Expr::cust("'~resync~' || id"))
            .and_where(Expr::col(Alias::new("code")).is_in(chunk.iter().copied()));
        txn.execute(txn.get_database_backend().build(&update))
            .await?;
    }
    Ok(())
}

/// Logs how many items about to be removed by a resync local store data
/// still names (they are removed all the same, see the module docs).
async fn warn_if_in_use<C: ConnectionTrait>(txn: &C, orphans: &str) {
    let sql = format!(
        "SELECT COUNT(*) {orphans} AND (id IN (SELECT item_id FROM stock_line) OR id IN (SELECT item_id FROM invoice_line))"
    );
    let found = txn
        .query_one(sea_orm::Statement::from_string(
            txn.get_database_backend(),
            sql,
        ))
        .await;
    if let Ok(Some(row)) = found {
        let in_use: i64 = row.try_get_by_index(0).unwrap_or(0);
        if in_use > 0 {
            tracing::warn!(
                items = in_use,
                "the master no longer has items this store's data names: they are removed; the store's rows keep their own batch, price and pack size"
            );
        }
    }
}

/// Empties what an interrupted earlier resync left, before a new one.
pub async fn start_resync(db: &DatabaseConnection) -> Result<()> {
    let txn = storesync_shared::domain::db::begin(db).await?;
    txn.execute_unprepared("DELETE FROM resync_seen").await?;
    txn.execute_unprepared("DELETE FROM snapshot_resume")
        .await?;
    txn.commit().await?;
    Ok(())
}

/// Drops the position of a snapshot that will not continue (an
/// initialised database's, whose resync the master did not ask for again).
pub async fn forget_snapshot_position(db: &DatabaseConnection) -> Result<()> {
    if snapshot_position(db).await?.is_some() {
        db.execute_unprepared("DELETE FROM snapshot_resume").await?;
    }
    Ok(())
}

/// Builds the store-data indexes a snapshot load goes without (a no-op for
/// those that exist). Also run at start on an initialised database: a check
/// that costs nothing when they are there.
pub async fn build_store_data_indexes<C: ConnectionTrait>(db: &C) -> Result<()> {
    for (_, create) in storesync_shared::domain::schema::store_data_indexes() {
        db.execute_unprepared(&create).await?;
    }
    Ok(())
}

/// Empties every synced table before a snapshot, so that a half-finished
/// earlier initialisation leaves nothing behind.
///
/// Refuses (and changes nothing) if the database has become initialised in
/// the meantime: its data must never be thrown away.
pub async fn clear_for_initialisation(db: &DatabaseConnection) -> Result<()> {
    let txn = storesync_shared::domain::db::begin(db).await?;
    let state = sync_state::Entity::find_by_id(1)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::Internal("sync_state row is missing".into()))?;
    if state.initialised {
        return Err(Error::FailedPrecondition(
            "the database is initialised; it is not emptied for a snapshot".into(),
        ));
    }
    // Rows before the rows they name.
    for table in tables::SYNCED.iter().rev() {
        tables::write::clear(&txn, *table).await?;
    }
    outbox::Entity::delete_many().exec(&txn).await?;
    txn.execute_unprepared("DELETE FROM snapshot_resume")
        .await?;
    // Until the last snapshot batch builds them again (see `apply_batch`).
    for (index, _) in storesync_shared::domain::schema::store_data_indexes() {
        txn.execute_unprepared(&format!("DROP INDEX IF EXISTS {index}"))
            .await?;
    }
    sync_state::Entity::update_many()
        .col_expr(sync_state::Column::DownstreamCursor, Expr::value(0i64))
        .col_expr(sync_state::Column::UpstreamLastSeq, Expr::value(0i64))
        .col_expr(sync_state::Column::UpstreamAckedSeq, Expr::value(0i64))
        .col_expr(sync_state::Column::UpstreamAckedTag, Expr::value(0i64))
        .filter(sync_state::Column::Id.eq(1))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// The master acknowledged up to `acked`: drop those outbox entries and record
/// the position, in one transaction.
pub async fn upstream_acked(db: &DatabaseConnection, acked: u64) -> Result<()> {
    let acked = i64::try_from(acked)
        .map_err(|_| Error::invalid("upstream_ack.acked_seq", "is out of range"))?;
    let txn = storesync_shared::domain::db::begin(db).await?;
    // The acknowledged entry's tag, read before the entry leaves the outbox.
    let tag = crate::outbox::tag_of(&txn, u64::try_from(acked).unwrap_or(0)).await?;
    outbox::Entity::delete_many()
        .filter(outbox::Column::Seq.lte(acked))
        .exec(&txn)
        .await?;
    let mut update = sync_state::Entity::update_many()
        .col_expr(sync_state::Column::UpstreamAckedSeq, Expr::value(acked));
    if let Some(tag) = tag {
        update = update.col_expr(
            sync_state::Column::UpstreamAckedTag,
            Expr::value(i64::try_from(tag).unwrap_or(0)),
        );
    }
    update
        .filter(sync_state::Column::Id.eq(1))
        .filter(sync_state::Column::UpstreamAckedSeq.lt(acked))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// Reconciles the local upstream positions with the master's acknowledged
/// entry (`master_acked`, tagged `master_tag`) at the start of a session;
/// returns the sequence to send after.
///
/// - The master's entry is one this database holds (its last acknowledged
///   one, or one still in its outbox whose ack was lost): the tags must match.
///   Another tag means another database wrote that entry under this Sync ID:
///   this one is a copy whose history diverged (a clone, a restored backup).
/// - The master is past everything this database ever wrote: it is an older
///   copy of the database that owns the Sync ID (a restored backup, a clone
///   that fell behind); renumbering its entries would lose or repeat records.
///
/// Both stop this database for good ([`halt`]) and delete nothing: its unsent
/// entries wait for `satellite-agent handover export`. (A new database asks
/// for a snapshot instead and continues numbering after the master's entry,
/// see [`apply_batch`].)
/// - Master behind what was acknowledged locally: the master lost data it had
///   acknowledged (restored from a backup); entries it needs are gone from the
///   outbox. The site re-pushes its whole store (`repush`), keeping its data.
pub async fn reconcile_upstream(
    db: &DatabaseConnection,
    master_acked: u64,
    master_tag: u64,
) -> Result<u64> {
    let txn = storesync_shared::domain::db::begin(db).await?;
    let state = sync_state::Entity::find_by_id(1)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::Internal("sync_state row is missing".into()))?;
    let local_acked = u64::try_from(state.upstream_acked_seq).unwrap_or(0);
    let local_last = u64::try_from(state.upstream_last_seq).unwrap_or(0);
    if master_acked > local_last {
        let why = format!(
            "this database ({}) is an older copy of the one that syncs as this Sync ID: the master has applied \
             upstream entries up to {master_acked}, but this database only ever wrote up to {local_last} \
             (a restored backup, or a cloned machine that fell behind)",
            state.database_id
        );
        return halt(txn, &why).await;
    } else if master_acked < local_acked {
        super::repush::repush_store(&txn, master_acked, local_acked, &state.store_id).await?;
    }
    let local_tag = if master_acked == local_acked {
        u64::try_from(state.upstream_acked_tag).unwrap_or(0)
    } else {
        crate::outbox::tag_of(&txn, master_acked)
            .await?
            .unwrap_or(0)
    };
    if master_tag != 0 && local_tag != 0 && master_tag != local_tag {
        let why = format!(
            "this database ({}) holds another history than the master for this Sync ID: the master's upstream entry \
             {master_acked} is tagged {master_tag}, this database's is tagged {local_tag}, so another copy of this \
             database (a cloned machine, or the original of a restored backup) wrote it",
            state.database_id
        );
        return halt(txn, &why).await;
    }
    // Entries the master applied but whose ack was lost: drop them now.
    upstream_acked_in(&txn, master_acked, master_tag).await?;
    txn.commit().await?;
    Ok(master_acked)
}

/// Stops this database from syncing for good (`sync_state.halted`), keeping
/// everything; the error says why and what the operator can do.
async fn halt(txn: sea_orm::DatabaseTransaction, why: &str) -> Result<u64> {
    let message = format!("{why}. {HALT_ADVICE}");
    sync_state::Entity::update_many()
        .col_expr(sync_state::Column::Halted, Expr::value(message.clone()))
        .filter(sync_state::Column::Id.eq(1))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    tracing::error!(%message, "this database stops syncing");
    Err(Error::FailedPrecondition(message))
}

/// What an operator does with a halted database.
pub const HALT_ADVICE: &str = "It has stopped syncing and deleted nothing. Move its unsent entries to the \
     site's database: stop this agent, run `satellite-agent handover export --out FILE` here and \
     `satellite-agent handover import FILE` on the machine that syncs (a new database there is adopted \
     with AdminService.AdoptDatabase); see README, \"Restored or cloned site\"";

async fn upstream_acked_in<C: ConnectionTrait>(txn: &C, acked: u64, tag: u64) -> Result<()> {
    let acked = i64::try_from(acked).unwrap_or(i64::MAX);
    outbox::Entity::delete_many()
        .filter(outbox::Column::Seq.lte(acked))
        .exec(txn)
        .await?;
    let mut update = sync_state::Entity::update_many()
        .col_expr(sync_state::Column::UpstreamAckedSeq, Expr::value(acked));
    if tag != 0 {
        update = update.col_expr(
            sync_state::Column::UpstreamAckedTag,
            Expr::value(i64::try_from(tag).unwrap_or(0)),
        );
    }
    update
        .filter(sync_state::Column::Id.eq(1))
        .exec(txn)
        .await?;
    Ok(())
}
