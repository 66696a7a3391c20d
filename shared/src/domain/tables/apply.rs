//! A satellite's apply of what the master sends, table by table.
//!
//! Records are written in arrival order, cut into runs of one table; each run
//! is one [`crate::domain::upsert::rows`] call. Downstream deletes are of master data
//! only ([`Owner::Master`]): a store's data is never deleted by the master.
//! Store rows handed over by the master go through [`insert_absent`].

use crate::proto::v1::{sync_record::Record, SyncRecord};
use crate::{Error, Result};

use super::{Owner, Row, SyncTable};

/// Records of one table that arrived next to each other, or one delete.
pub enum Run<'t> {
    Rows(&'t dyn SyncTable, Vec<Row>),
    Delete(&'t dyn SyncTable, String),
}

/// Cuts downstream `records` into runs of one table, keeping their order.
pub fn runs<'t>(tables: &[&'t dyn SyncTable], records: Vec<SyncRecord>) -> Result<Vec<Run<'t>>> {
    let mut runs: Vec<Run<'t>> = Vec::new();
    for (index, record) in records.into_iter().enumerate() {
        let Some(record) = record.record else {
            return Err(Error::InvalidArgument(format!(
                "downstream record {index} is empty"
            )));
        };
        let record = match record {
            Record::Deleted(reference) => {
                let table = super::by_table(tables, reference.table())
                    .filter(|table| table.owner() == Owner::Master)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "the master sent a delete of {} {}; only items and names are deleted downstream",
                            reference.table().as_str_name(),
                            reference.id
                        ))
                    })?;
                runs.push(Run::Delete(table, reference.id));
                continue;
            }
            other => other,
        };
        let (table, row) = super::decode(tables, record).map_err(|_| {
            Error::InvalidArgument(format!(
                "downstream record {index} is of a table this site does not know"
            ))
        })?;
        push(&mut runs, table, row);
    }
    Ok(runs)
}

/// Adds `row` of `table` to the last run if it is of the same table.
pub fn push<'t>(runs: &mut Vec<Run<'t>>, table: &'t dyn SyncTable, row: Row) {
    match runs.last_mut() {
        Some(Run::Rows(last, rows)) if last.name() == table.name() => rows.push(row),
        _ => runs.push(Run::Rows(table, vec![row])),
    }
}

/// Writes one run.
pub async fn write<C: sea_orm::ConnectionTrait>(db: &C, run: Run<'_>) -> Result<()> {
    match run {
        Run::Rows(table, rows) => crate::domain::upsert::rows(db, table, rows).await?,
        Run::Delete(table, id) => super::write::delete(db, table, &id).await?,
    }
    Ok(())
}

/// Inserts the `rows` of `table` whose id is not there yet, leaving every
/// existing row as it is (`ON CONFLICT (id) DO NOTHING`): the handover of a
/// store row the master created to the site that owns it from then on.
pub async fn insert_absent<C: sea_orm::ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    rows: Vec<Row>,
) -> Result<()> {
    use sea_orm::sea_query::{Alias, OnConflict, Query};
    if rows.is_empty() {
        return Ok(());
    }
    let columns: Vec<Alias> = table
        .columns()
        .into_iter()
        .map(|c| Alias::new(c.name))
        .collect();
    for chunk in rows.chunks(100) {
        let mut insert = Query::insert();
        insert
            .into_table(Alias::new(table.name()))
            .columns(columns.clone())
            .on_conflict(OnConflict::column(Alias::new("id")).do_nothing().to_owned());
        for row in chunk {
            insert
                .values(row.0.iter().cloned().map(Into::into))
                .map_err(|e| Error::Internal(format!("{}: {e}", table.name())))?;
        }
        db.execute(db.get_database_backend().build(&insert))
            .await
            .map_err(Error::from)?;
    }
    Ok(())
}
