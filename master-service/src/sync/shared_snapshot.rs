//! Master data as of one change-log cursor, read once and shared by the
//! snapshots (initialisations, master-data resyncs) that start near it.
//!
//! A snapshot's master data must be ONE database state: the satellite keeps
//! item and name codes unique, and rows read at different states can hold
//! the same code (one row renamed away from it, another given it), which no
//! replay of the log in order could apply. Holding a repeatable-read
//! transaction open for as long as a snapshot takes to send would hold a pool
//! connection per initialising site (a slow link takes minutes); loading the
//! rows into each session cost about 50 MiB per session. So the rows are
//! read once, in pages inside one repeatable-read transaction, kept encoded
//! (about 100 bytes per record), and every session that starts while that
//! copy is recent enough sends from it.
//!
//! # Invariant
//! - A copy holds exactly the master data at its `cursor` (one database
//!   snapshot: repeatable read on PostgreSQL, the one connection's
//!   transaction on SQLite), each table in the registry's order and each
//!   table's rows in the database's id order.
//! - A session sends a copy only with a replay of the change log from a
//!   cursor at or before the copy's (its own hold, see `downstream`).
//!
//! # Ownership
//! Reads master-owned tables and the change-log head; writes nothing. At most
//! one copy is handed to new sessions at a time (`latest`); older copies live
//! only while a session still sends from them.

use std::sync::{Arc, Weak};

use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, IsolationLevel};
use storesync_shared::domain::tables::write::{self, Scope};
use storesync_shared::domain::tables::{Owner, SyncTable};
use storesync_shared::proto::v1::{SyncRecord, Table};
use storesync_shared::Result;

use crate::changelog;

/// Rows per query while a copy is read (bounds the rows decoded at once).
const PAGE_ROWS: u64 = 5_000;

/// Master data at one change-log cursor, encoded.
#[derive(Debug)]
pub struct MasterData {
    /// The change-log head the rows are the state of.
    pub cursor: u64,
    /// The encoded `SyncRecord`s, one after the other.
    records: Vec<u8>,
    /// The ids, one after the other.
    ids: String,
    /// Per record: its table, and where its record and its id end.
    index: Vec<(Table, usize, usize)>,
}

impl MasterData {
    /// Records held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Record `n`: its table, id and encoded `SyncRecord`.
    pub fn get(&self, n: usize) -> (Table, &str, &[u8]) {
        let (table, record_end, id_end) = self.index[n];
        let (record_start, id_start) = match n.checked_sub(1) {
            Some(before) => (self.index[before].1, self.index[before].2),
            None => (0, 0),
        };
        (
            table,
            &self.ids[id_start..id_end],
            &self.records[record_start..record_end],
        )
    }

    /// The first record after the one of `table` with id `after` (exact
    /// match: the database's id order is not Rust's string order), None
    /// when the copy does not hold it.
    pub fn position_after(&self, table: Table, after: &str) -> Option<usize> {
        (0..self.len())
            .find(|&n| {
                let (t, id, _) = self.get(n);
                t == table && id == after
            })
            .map(|n| n + 1)
    }

    /// Appends a record (in the order the copy is read).
    fn push(&mut self, table: Table, id: &str, record: &SyncRecord) -> Result<()> {
        record
            .encode(&mut self.records)
            .map_err(|e| storesync_shared::Error::Internal(format!("encoding: {e}")))?;
        self.ids.push_str(id);
        self.index.push((table, self.records.len(), self.ids.len()));
        Ok(())
    }

    /// Reads every master-owned table of `tables_in_order` in one database
    /// snapshot, in pages.
    async fn read(db: &DatabaseConnection, tables_in_order: &[&dyn SyncTable]) -> Result<Self> {
        let isolation = (db.get_database_backend() == DbBackend::Postgres)
            .then_some(IsolationLevel::RepeatableRead);
        let txn = storesync_shared::domain::db::begin_with_config(db, isolation, None).await?;
        let cursor = changelog::head(&txn).await?;
        let mut data = Self {
            cursor,
            records: Vec::new(),
            ids: String::new(),
            index: Vec::new(),
        };
        for table in tables_in_order {
            if table.owner() != Owner::Master {
                continue;
            }
            let mut after = String::new();
            loop {
                let rows = write::page(&txn, *table, Scope::All, &after, Some(PAGE_ROWS)).await?;
                let Some(last) = rows.last() else {
                    break;
                };
                after = last.try_get_by_index(0)?;
                for row in &rows {
                    let id: String = row.try_get_by_index(0)?;
                    let record = SyncRecord {
                        record: Some(table.record_of(row)?),
                    };
                    data.push(table.table(), &id, &record)?;
                }
            }
        }
        txn.commit().await?;
        data.records.shrink_to_fit();
        data.ids.shrink_to_fit();
        data.index.shrink_to_fit();
        Ok(data)
    }
}

/// The copy handed to new sessions, read by one session at a time.
#[derive(Debug, Default)]
pub struct Latest {
    copy: tokio::sync::Mutex<Weak<MasterData>>,
}

impl Latest {
    /// The latest copy if a session still holds it and its cursor is at
    /// least `at_least`.
    pub async fn reusable(&self, at_least: u64) -> Option<Arc<MasterData>> {
        self.copy
            .lock()
            .await
            .upgrade()
            .filter(|copy| copy.cursor >= at_least)
    }

    /// A copy at `at_least` or later: the latest if it is, else a new one
    /// read now (sessions asking meanwhile wait for it and share it).
    pub async fn at_least(
        &self,
        db: &DatabaseConnection,
        tables_in_order: &[&dyn SyncTable],
        at_least: u64,
    ) -> Result<Arc<MasterData>> {
        let mut latest = self.copy.lock().await;
        if let Some(copy) = latest.upgrade().filter(|copy| copy.cursor >= at_least) {
            return Ok(copy);
        }
        let copy = Arc::new(MasterData::read(db, tables_in_order).await?);
        tracing::debug!(
            cursor = copy.cursor,
            records = copy.len(),
            bytes = copy.records.len() + copy.ids.len(),
            "read a copy of master data for snapshots"
        );
        *latest = Arc::downgrade(&copy);
        Ok(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::MasterData;
    use prost::Message;
    use storesync_shared::proto::v1::{sync_record::Record, Item, Name, SyncRecord, Table};

    fn item(id: &str) -> SyncRecord {
        SyncRecord {
            record: Some(Record::Item(Item {
                id: id.into(),
                code: format!("C{id}"),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_copy_gives_back_each_record_with_its_table_and_id_and_finds_a_resume_point() {
        let mut copy = MasterData {
            cursor: 7,
            records: Vec::new(),
            ids: String::new(),
            index: Vec::new(),
        };
        for id in ["a", "b", "c"] {
            copy.push(Table::Item, id, &item(id)).expect("push");
        }
        let name = SyncRecord {
            record: Some(Record::Name(Name {
                id: "a".into(),
                ..Default::default()
            })),
        };
        copy.push(Table::Name, "a", &name).expect("push");
        assert_eq!(copy.len(), 4);
        let (table, id, encoded) = copy.get(1);
        assert_eq!((table, id), (Table::Item, "b"));
        assert_eq!(SyncRecord::decode(encoded).expect("decode"), item("b"));
        let (table, id, encoded) = copy.get(3);
        assert_eq!((table, id), (Table::Name, "a"));
        assert_eq!(SyncRecord::decode(encoded).expect("decode"), name);
        // The same id in another table is another record.
        assert_eq!(copy.position_after(Table::Item, "a"), Some(1));
        assert_eq!(copy.position_after(Table::Name, "a"), Some(4));
        assert_eq!(copy.position_after(Table::Item, "gone"), None);
    }
}
