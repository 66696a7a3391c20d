//! What both sides of an integrity check compute: a digest of every synced
//! table they hold, and the stock ledger.
//!
//! # Digests
//! Every row of a table in [`tables::SYNCED`] is placed by the hash of its id
//! ([`id_hash`]) and summarised by the hash of its encoded record
//! ([`row_hash`]: the contract's bytes, which are the same on the master and
//! on a site for equal rows, whatever the backend). A range of id hashes is
//! summarised by its row count and the wrapping sum of its row hashes
//! ([`TableIndex::digest`]), so a range's digest is the sum of its parts and
//! no table needs code of its own: a table added to the registry is checked
//! by being declared there.
//!
//! # Invariant
//! Equal rows give equal hashes on both sides; a table index is read once
//! per check and every answer of that check comes from it, so the master's
//! descent sees one consistent picture of each side.
//!
//! # Ledger
//! [`ledger`] compares each stock line's total and available packs with what
//! its invoice lines account for (goods in and inventory adjustments add
//! their signed packs, customer invoices take theirs, whichever sign the line
//! stores; a shipped outbound shipment takes its packs and a draft one
//! reserves them from the available packs; a received inbound shipment adds
//! the packs received). It reports; it never writes.

use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, Statement};
use sha2::{Digest, Sha256};

use crate::proto::v1::{HashRange, LedgerProblem, RangeDigest, RowDigest, SyncRecord};

use super::tables::write::{self, Scope};
use super::tables::SyncTable;

/// Rows read per query while indexing a table.
const PAGE: u64 = 5000;

/// Packs closer than this are equal (floating-point sums).
const EPSILON: f64 = 1e-6;

/// The whole range of id hashes.
pub const FULL: HashRange = HashRange {
    low: 0,
    high: u64::MAX,
};

fn hash64(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Where a row is placed: the hash of its id.
pub fn id_hash(id: &str) -> u64 {
    hash64(id.as_bytes())
}

/// What a row is: the hash of its encoded record.
pub fn row_hash(record: &SyncRecord) -> u64 {
    hash64(&prost::Message::encode_to_vec(record))
}

/// One indexed row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id_hash: u64,
    pub row_hash: u64,
    pub id: String,
}

/// A table as one side holds it, sorted by id hash.
#[derive(Clone, Debug, Default)]
pub struct TableIndex {
    entries: Vec<Entry>,
}

impl TableIndex {
    /// An index of `entries` (any order).
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_unstable_by(|a, b| (a.id_hash, &a.id).cmp(&(b.id_hash, &b.id)));
        Self { entries }
    }

    /// Rows indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn slice(&self, range: &HashRange) -> &[Entry] {
        let start = self.entries.partition_point(|e| e.id_hash < range.low);
        let end = self.entries.partition_point(|e| e.id_hash <= range.high);
        &self.entries[start..end.max(start)]
    }

    /// The count and row-hash sum of `range`.
    pub fn digest(&self, range: &HashRange) -> RangeDigest {
        let rows = self.slice(range);
        RangeDigest {
            range: Some(*range),
            count: rows.len() as u64,
            sum: rows
                .iter()
                .fold(0u64, |sum, e| sum.wrapping_add(e.row_hash)),
        }
    }

    /// The rows of `range`.
    pub fn rows(&self, range: &HashRange) -> Vec<RowDigest> {
        self.slice(range)
            .iter()
            .map(|e| RowDigest {
                id: e.id.clone(),
                row_hash: e.row_hash,
            })
            .collect()
    }
}

/// Reads and hashes every row of `table` in `scope`.
pub async fn index<C: ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    scope: Scope<'_>,
) -> Result<TableIndex, DbErr> {
    let mut entries = Vec::new();
    let mut after = String::new();
    loop {
        let rows = write::page(db, table, scope, &after, Some(PAGE)).await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get_by_index(0)?;
        for row in &rows {
            let id: String = row.try_get_by_index(0)?;
            let record = SyncRecord {
                record: Some(table.record_of(row)?),
            };
            entries.push(Entry {
                id_hash: id_hash(&id),
                row_hash: row_hash(&record),
                id,
            });
        }
        if (rows.len() as u64) < PAGE {
            break;
        }
    }
    Ok(TableIndex::new(entries))
}

/// `range` cut into at most `parts` contiguous ranges of about equal width.
pub fn split(range: &HashRange, parts: u64) -> Vec<HashRange> {
    let width = u128::from(range.high - range.low) + 1;
    let parts = u128::from(parts.max(1)).min(width);
    let step = width / parts;
    (0..parts)
        .map(|i| {
            let low = u128::from(range.low) + i * step;
            let high = if i + 1 == parts {
                u128::from(range.high)
            } else {
                low + step - 1
            };
            // Both fit: they lie within `range`.
            HashRange {
                low: low as u64,
                high: high as u64,
            }
        })
        .collect()
}

/// The row of `table` with this id, selected with the table's columns in
/// order (see [`SyncTable::record_of`]).
pub async fn row_by_id<C: ConnectionTrait>(
    db: &C,
    table: &dyn SyncTable,
    id: &str,
) -> Result<Option<QueryResult>, DbErr> {
    let mut query = Query::select();
    query
        .from(Alias::new(table.name()))
        .columns(table.columns().into_iter().map(|c| Alias::new(c.name)))
        .and_where(Expr::col(Alias::new("id")).eq(id));
    db.query_one(db.get_database_backend().build(&query)).await
}

/// Most ledger problems listed (the rest are counted).
pub const LEDGER_LISTED: usize = 1000;

/// The stock lines of `store_id` (every store's with `None`) whose total or
/// available packs differ from what their invoice lines account for: the
/// first [`LEDGER_LISTED`] by id, and how many in all.
pub async fn ledger<C: ConnectionTrait>(
    db: &C,
    store_id: Option<&str>,
) -> Result<(Vec<LedgerProblem>, u64), DbErr> {
    let rows = db
        .query_all(ledger_statement(db.get_database_backend(), store_id))
        .await?;
    let mut problems = Vec::new();
    let mut total_problems = 0u64;
    for row in rows {
        let total: f64 = row.try_get_by_index(2)?;
        let available: f64 = row.try_get_by_index(3)?;
        let moved: f64 = row.try_get_by_index(4)?;
        let reserved: f64 = row.try_get_by_index(5)?;
        // Stock never goes below zero (invoices that would are refused).
        let expected = moved.max(0.0);
        let expected_available = (expected - reserved).max(0.0);
        if (total - expected).abs() <= EPSILON && (available - expected_available).abs() <= EPSILON
        {
            continue;
        }
        total_problems += 1;
        if problems.len() < LEDGER_LISTED {
            problems.push(LedgerProblem {
                stock_line_id: row.try_get_by_index(0)?,
                item_id: row.try_get_by_index(1)?,
                total_packs: total,
                available_packs: available,
                expected_total_packs: expected,
                expected_available_packs: expected_available,
            });
        }
    }
    Ok((problems, total_problems))
}

/// The statement [`ledger`] runs: every stock line of `store_id` (every
/// store's with `None`) with what its invoice lines moved and reserve, by
/// id. Its join finds a stock line's lines by the `invoice_line_stock_line`
/// index on a satellite (`schema::LEDGER_INDEX`).
pub fn ledger_statement(backend: sea_orm::DbBackend, store_id: Option<&str>) -> Statement {
    let (filter, values) = match store_id {
        Some(store) if backend == sea_orm::DbBackend::Postgres => {
            ("WHERE s.store_id = $1", vec![store.into()])
        }
        Some(store) => ("WHERE s.store_id = ?", vec![store.into()]),
        None => ("", vec![]),
    };
    let sql = format!(
        "SELECT s.id, s.item_id, s.total_number_of_packs, s.available_number_of_packs, \
         COALESCE(SUM(CASE WHEN i.kind = 'CUSTOMER_INVOICE' THEN -ABS(l.number_of_packs) \
         WHEN i.kind = 'OUTBOUND_SHIPMENT' AND i.status = 'DRAFT' THEN 0.0 \
         WHEN i.kind = 'OUTBOUND_SHIPMENT' THEN -ABS(l.number_of_packs) \
         WHEN i.kind = 'INBOUND_SHIPMENT' THEN l.received_number_of_packs \
         ELSE l.number_of_packs END), 0.0) AS moved, \
         COALESCE(SUM(CASE WHEN i.kind = 'OUTBOUND_SHIPMENT' AND i.status = 'DRAFT' \
         THEN ABS(l.number_of_packs) ELSE 0.0 END), 0.0) AS reserved \
         FROM stock_line s \
         LEFT JOIN invoice_line l ON l.stock_line_id = s.id \
         LEFT JOIN invoice i ON i.id = l.invoice_id \
         {filter} \
         GROUP BY s.id, s.item_id, s.total_number_of_packs, s.available_number_of_packs \
         ORDER BY s.id"
    );
    Statement::from_sql_and_values(backend, sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, row: u64) -> Entry {
        Entry {
            id_hash: id_hash(id),
            row_hash: row,
            id: id.into(),
        }
    }

    #[test]
    fn a_range_digest_is_the_sum_of_its_parts() {
        let index = TableIndex::new(
            (0..500)
                .map(|i| entry(&format!("row-{i}"), i * 7919))
                .collect(),
        );
        let whole = index.digest(&FULL);
        let parts = split(&FULL, 16);
        assert_eq!(parts.first().expect("a first part").low, 0);
        assert_eq!(parts.last().expect("a last part").high, u64::MAX);
        for pair in parts.windows(2) {
            assert_eq!(pair[0].high + 1, pair[1].low);
        }
        let digests: Vec<_> = parts.iter().map(|p| index.digest(p)).collect();
        assert_eq!(digests.iter().map(|d| d.count).sum::<u64>(), 500);
        assert_eq!(
            digests.iter().fold(0u64, |s, d| s.wrapping_add(d.sum)),
            whole.sum
        );
        let rows: usize = parts.iter().map(|p| index.rows(p).len()).sum();
        assert_eq!(rows, 500);
    }

    #[test]
    fn one_changed_row_changes_only_its_range() {
        let a = TableIndex::new((0..100).map(|i| entry(&format!("r{i}"), i)).collect());
        let b = TableIndex::new(
            (0..100)
                .map(|i| entry(&format!("r{i}"), if i == 42 { 4242 } else { i }))
                .collect(),
        );
        let differing: Vec<_> = split(&FULL, 64)
            .into_iter()
            .filter(|p| a.digest(p) != b.digest(p))
            .collect();
        assert_eq!(differing.len(), 1);
        let rows = b.rows(&differing[0]);
        assert!(rows.iter().any(|r| r.id == "r42" && r.row_hash == 4242));
    }

    #[test]
    fn a_narrow_range_splits_into_at_most_its_width() {
        let narrow = HashRange { low: 10, high: 12 };
        assert_eq!(split(&narrow, 16).len(), 3);
    }
}
