//! The PostgreSQL apply: the same transaction as the portable path, in far
//! fewer, set-based statements.
//!
//! - The site row lock and the session claim are read in one statement.
//! - Each table's rows go in ONE `INSERT … SELECT … FROM UNNEST($arrays)
//!   ON CONFLICT (id) DO UPDATE`, the columns bound as arrays: the statement
//!   text never changes, so each connection prepares it once.
//! - The ownership check is folded into that upsert: `DO UPDATE … WHERE` the
//!   existing row is of the site's store. A row of another store is then left
//!   alone and not counted, so fewer affected rows than sent means an id of
//!   another store: the batch is refused (the transaction rolls back) naming
//!   the record, found by a query that runs only on that error path.
//! - Deletes (rare) check ownership first, then delete by id array.
//!
//! The batch arrives already reduced to the last change of each row
//! ([`Changes`]), which ON CONFLICT needs: one statement may not touch a row twice.
//!
//! The transaction is sqlx's own on sea-orm's pool: sea-orm 1.1 binds no arrays
//! without its `postgres-array` feature, and a sea-orm transaction exposes no
//! connection to run sqlx queries on.

use sea_orm::sqlx::{self, PgPool, Postgres, Row, Transaction};
use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};
use storesync_shared::entities::{invoice, invoice_line, stock_line};
use storesync_shared::proto::v1::{Table, UpstreamBatch};
use storesync_shared::{Error, Result};

use super::{
    foreign_row, read_records, start, sync_id_i32, to_i64, Applied, Changes, SiteIdentity, Start,
};

type Txn = Transaction<'static, Postgres>;

/// A failed statement: INTERNAL, its details for the log.
fn statement_failed(error: sqlx::Error) -> Error {
    Error::Database(DbErr::Exec(RuntimeErr::SqlxError(error)))
}

/// No connection or no transaction: UNAVAILABLE, as sea-orm maps it.
fn unreachable_database(error: sqlx::Error) -> Error {
    Error::Database(match error {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        other => DbErr::Conn(RuntimeErr::SqlxError(other)),
    })
}

/// See [`super::apply_batch`]; `batch` has passed `check_shape`.
pub(super) async fn apply_batch(
    pool: &PgPool,
    site: &SiteIdentity,
    session_id: &str,
    batch: UpstreamBatch,
) -> Result<Applied> {
    let mut txn: Txn = pool.begin().await.map_err(unreachable_database)?;
    let row = sqlx::query(
        "SELECT s.upstream_acked_seq, st.session_id FROM site s \
         LEFT JOIN site_status st ON st.sync_id = s.sync_id \
         WHERE s.sync_id = $1 FOR UPDATE OF s",
    )
    .bind(sync_id_i32(site.sync_id))
    .fetch_optional(&mut *txn)
    .await
    .map_err(statement_failed)?;
    let (acked, owner) = match row {
        Some(row) => (
            Some(row.try_get::<i64, _>(0).map_err(statement_failed)?),
            row.try_get::<Option<String>, _>(1)
                .map_err(statement_failed)?,
        ),
        None => (None, None),
    };
    let skip = match start(site, session_id, acked, owner, &batch)? {
        Start::AlreadyApplied(acked) => {
            txn.commit().await.map_err(statement_failed)?;
            return Ok(Applied {
                acked_seq: acked,
                applied: 0,
            });
        }
        Start::Apply(skip) => skip,
    };
    let last_seq = to_i64(batch.last_seq)?;
    let (changes, applied) = read_records(site, batch, skip)?;
    write(&mut txn, site, changes).await?;
    sqlx::query("UPDATE site SET upstream_acked_seq = $1 WHERE sync_id = $2")
        .bind(last_seq)
        .bind(sync_id_i32(site.sync_id))
        .execute(&mut *txn)
        .await
        .map_err(statement_failed)?;
    txn.commit().await.map_err(statement_failed)?;
    Ok(Applied {
        acked_seq: last_seq as u64,
        applied,
    })
}

const UPSERT_STOCK_LINES: &str = "\
INSERT INTO stock_line AS t (id, store_id, item_id, batch, expiry_date, pack_size, \
available_number_of_packs, total_number_of_packs, cost_price_per_pack, sell_price_per_pack, updated_at_ms) \
SELECT u.id, $2::text, u.item_id, u.batch, u.expiry_date, u.pack_size, u.available, u.total, u.cost, u.sell, u.updated \
FROM UNNEST($1::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::float8[], $8::float8[], \
$9::float8[], $10::float8[], $11::int8[]) \
AS u(id, item_id, batch, expiry_date, pack_size, available, total, cost, sell, updated) \
ON CONFLICT (id) DO UPDATE SET item_id = EXCLUDED.item_id, batch = EXCLUDED.batch, \
expiry_date = EXCLUDED.expiry_date, pack_size = EXCLUDED.pack_size, \
available_number_of_packs = EXCLUDED.available_number_of_packs, \
total_number_of_packs = EXCLUDED.total_number_of_packs, \
cost_price_per_pack = EXCLUDED.cost_price_per_pack, \
sell_price_per_pack = EXCLUDED.sell_price_per_pack, updated_at_ms = EXCLUDED.updated_at_ms \
WHERE t.store_id = EXCLUDED.store_id";

const UPSERT_INVOICES: &str = "\
INSERT INTO invoice AS t (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms) \
SELECT u.id, $2::text, u.name_id, u.kind, u.status, u.invoice_number, u.reference, u.created \
FROM UNNEST($1::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[], $8::int8[]) \
AS u(id, name_id, kind, status, invoice_number, reference, created) \
ON CONFLICT (id) DO UPDATE SET name_id = EXCLUDED.name_id, kind = EXCLUDED.kind, \
status = EXCLUDED.status, invoice_number = EXCLUDED.invoice_number, \
reference = EXCLUDED.reference, created_at_ms = EXCLUDED.created_at_ms \
WHERE t.store_id = EXCLUDED.store_id";

const UPSERT_INVOICE_LINES: &str = "\
INSERT INTO invoice_line AS t (id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, \
pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack) \
SELECT u.id, u.invoice_id, $2::text, u.item_id, u.stock_line_id, u.batch, u.expiry_date, u.pack_size, \
u.packs, u.cost, u.sell \
FROM UNNEST($1::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int4[], \
$9::float8[], $10::float8[], $11::float8[]) \
AS u(id, invoice_id, item_id, stock_line_id, batch, expiry_date, pack_size, packs, cost, sell) \
ON CONFLICT (id) DO UPDATE SET invoice_id = EXCLUDED.invoice_id, item_id = EXCLUDED.item_id, \
stock_line_id = EXCLUDED.stock_line_id, batch = EXCLUDED.batch, expiry_date = EXCLUDED.expiry_date, \
pack_size = EXCLUDED.pack_size, number_of_packs = EXCLUDED.number_of_packs, \
cost_price_per_pack = EXCLUDED.cost_price_per_pack, sell_price_per_pack = EXCLUDED.sell_price_per_pack \
WHERE t.store_id = EXCLUDED.store_id";

/// Writes the batch's changes, table by table; refuses an id of another store.
async fn write(txn: &mut Txn, site: &SiteIdentity, changes: Changes) -> Result<()> {
    let Changes {
        stock_lines,
        invoices,
        invoice_lines,
    } = changes;
    let store = site.store_id.as_str();

    if !stock_lines.upserts.is_empty() {
        let n = stock_lines.upserts.len();
        let mut c = StockLineColumns::with_capacity(n);
        for r in stock_lines.upserts {
            c.push(r);
        }
        let query = sqlx::query(UPSERT_STOCK_LINES)
            .bind(&c.id)
            .bind(store)
            .bind(&c.item_id)
            .bind(&c.batch)
            .bind(&c.expiry_date)
            .bind(&c.pack_size)
            .bind(&c.available)
            .bind(&c.total)
            .bind(&c.cost)
            .bind(&c.sell)
            .bind(&c.updated);
        upsert(txn, site, Table::StockLine, query, &c.id).await?;
    }
    delete(txn, site, Table::StockLine, &stock_lines.deletes).await?;

    if !invoices.upserts.is_empty() {
        let n = invoices.upserts.len();
        let mut c = InvoiceColumns::with_capacity(n);
        for r in invoices.upserts {
            c.push(r);
        }
        let query = sqlx::query(UPSERT_INVOICES)
            .bind(&c.id)
            .bind(store)
            .bind(&c.name_id)
            .bind(&c.kind)
            .bind(&c.status)
            .bind(&c.invoice_number)
            .bind(&c.reference)
            .bind(&c.created);
        upsert(txn, site, Table::Invoice, query, &c.id).await?;
    }
    delete(txn, site, Table::Invoice, &invoices.deletes).await?;

    if !invoice_lines.upserts.is_empty() {
        let n = invoice_lines.upserts.len();
        let mut c = InvoiceLineColumns::with_capacity(n);
        for r in invoice_lines.upserts {
            c.push(r);
        }
        let query = sqlx::query(UPSERT_INVOICE_LINES)
            .bind(&c.id)
            .bind(store)
            .bind(&c.invoice_id)
            .bind(&c.item_id)
            .bind(&c.stock_line_id)
            .bind(&c.batch)
            .bind(&c.expiry_date)
            .bind(&c.pack_size)
            .bind(&c.packs)
            .bind(&c.cost)
            .bind(&c.sell);
        upsert(txn, site, Table::InvoiceLine, query, &c.id).await?;
    }
    delete(txn, site, Table::InvoiceLine, &invoice_lines.deletes).await?;
    Ok(())
}

fn table_name(table: Table) -> &'static str {
    match table {
        Table::StockLine => "stock_line",
        Table::Invoice => "invoice",
        _ => "invoice_line",
    }
}

/// Runs one table's upsert; every row must be inserted or updated, or one of
/// `ids` is another store's.
async fn upsert<'q>(
    txn: &mut Txn,
    site: &SiteIdentity,
    table: Table,
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ids: &[String],
) -> Result<()> {
    let written = query
        .execute(&mut **txn)
        .await
        .map_err(statement_failed)?
        .rows_affected();
    if written != ids.len() as u64 {
        return Err(refuse_foreign(txn, site, table, ids).await);
    }
    Ok(())
}

/// The refusal naming an id of `ids` that belongs to another store.
async fn refuse_foreign(txn: &mut Txn, site: &SiteIdentity, table: Table, ids: &[String]) -> Error {
    match find_foreign(txn, site, table, ids).await {
        Ok(Some((id, store_id))) => foreign_row(table, &id, &store_id, site),
        Ok(None) => Error::Internal(format!(
            "upsert into {} wrote fewer rows than sent, yet no id belongs to another store",
            table_name(table)
        )),
        Err(error) => error,
    }
}

async fn find_foreign(
    txn: &mut Txn,
    site: &SiteIdentity,
    table: Table,
    ids: &[String],
) -> Result<Option<(String, String)>> {
    let row = sqlx::query(&format!(
        "SELECT id, store_id FROM {} WHERE id = ANY($1::text[]) AND store_id <> $2::text LIMIT 1",
        table_name(table)
    ))
    .bind(ids)
    .bind(site.store_id.as_str())
    .fetch_optional(&mut **txn)
    .await
    .map_err(statement_failed)?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
        .map_err(statement_failed)
}

/// Deletes the site's rows with these ids; an id of another store refuses the batch.
async fn delete(txn: &mut Txn, site: &SiteIdentity, table: Table, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    if let Some((id, store_id)) = find_foreign(txn, site, table, ids).await? {
        return Err(foreign_row(table, &id, &store_id, site));
    }
    sqlx::query(&format!(
        "DELETE FROM {} WHERE id = ANY($1::text[]) AND store_id = $2::text",
        table_name(table)
    ))
    .bind(ids)
    .bind(site.store_id.as_str())
    .execute(&mut **txn)
    .await
    .map_err(statement_failed)?;
    Ok(())
}

/// Stock lines as column arrays (the store id is the site's, bound once).
struct StockLineColumns {
    id: Vec<String>,
    item_id: Vec<String>,
    batch: Vec<String>,
    expiry_date: Vec<String>,
    pack_size: Vec<i32>,
    available: Vec<f64>,
    total: Vec<f64>,
    cost: Vec<f64>,
    sell: Vec<f64>,
    updated: Vec<i64>,
}

impl StockLineColumns {
    fn with_capacity(n: usize) -> Self {
        Self {
            id: Vec::with_capacity(n),
            item_id: Vec::with_capacity(n),
            batch: Vec::with_capacity(n),
            expiry_date: Vec::with_capacity(n),
            pack_size: Vec::with_capacity(n),
            available: Vec::with_capacity(n),
            total: Vec::with_capacity(n),
            cost: Vec::with_capacity(n),
            sell: Vec::with_capacity(n),
            updated: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, r: stock_line::Model) {
        self.id.push(r.id);
        self.item_id.push(r.item_id);
        self.batch.push(r.batch);
        self.expiry_date.push(r.expiry_date);
        self.pack_size.push(r.pack_size);
        self.available.push(r.available_number_of_packs);
        self.total.push(r.total_number_of_packs);
        self.cost.push(r.cost_price_per_pack);
        self.sell.push(r.sell_price_per_pack);
        self.updated.push(r.updated_at_ms);
    }
}

/// Invoices as column arrays.
struct InvoiceColumns {
    id: Vec<String>,
    name_id: Vec<String>,
    kind: Vec<String>,
    status: Vec<String>,
    invoice_number: Vec<i64>,
    reference: Vec<String>,
    created: Vec<i64>,
}

impl InvoiceColumns {
    fn with_capacity(n: usize) -> Self {
        Self {
            id: Vec::with_capacity(n),
            name_id: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            invoice_number: Vec::with_capacity(n),
            reference: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, r: invoice::Model) {
        self.id.push(r.id);
        self.name_id.push(r.name_id);
        self.kind.push(r.kind);
        self.status.push(r.status);
        self.invoice_number.push(r.invoice_number);
        self.reference.push(r.reference);
        self.created.push(r.created_at_ms);
    }
}

/// Invoice lines as column arrays.
struct InvoiceLineColumns {
    id: Vec<String>,
    invoice_id: Vec<String>,
    item_id: Vec<String>,
    stock_line_id: Vec<String>,
    batch: Vec<String>,
    expiry_date: Vec<String>,
    pack_size: Vec<i32>,
    packs: Vec<f64>,
    cost: Vec<f64>,
    sell: Vec<f64>,
}

impl InvoiceLineColumns {
    fn with_capacity(n: usize) -> Self {
        Self {
            id: Vec::with_capacity(n),
            invoice_id: Vec::with_capacity(n),
            item_id: Vec::with_capacity(n),
            stock_line_id: Vec::with_capacity(n),
            batch: Vec::with_capacity(n),
            expiry_date: Vec::with_capacity(n),
            pack_size: Vec::with_capacity(n),
            packs: Vec::with_capacity(n),
            cost: Vec::with_capacity(n),
            sell: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, r: invoice_line::Model) {
        self.id.push(r.id);
        self.invoice_id.push(r.invoice_id);
        self.item_id.push(r.item_id);
        self.stock_line_id.push(r.stock_line_id);
        self.batch.push(r.batch);
        self.expiry_date.push(r.expiry_date);
        self.pack_size.push(r.pack_size);
        self.packs.push(r.number_of_packs);
        self.cost.push(r.cost_price_per_pack);
        self.sell.push(r.sell_price_per_pack);
    }
}

#[cfg(test)]
mod tests {
    //! The PostgreSQL statements against the portable path: the same batches,
    //! applied through both, must give the same answers and leave the same rows.
    #![allow(clippy::unwrap_used)]

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, QueryOrder, Set};
    use sea_orm_migration::MigratorTrait;
    use storesync_shared::entities::{invoice, invoice_line, stock_line, store};
    use storesync_shared::proto::v1 as pb;
    use storesync_tests::{backends, Backend, TestDb};

    use super::super::{apply_batch, SiteIdentity};
    use crate::entities::site;

    const STORE_A: &str = "2f1c7a4e-0000-4000-8000-00000000000a";
    const STORE_B: &str = "2f1c7a4e-0000-4000-8000-00000000000b";

    async fn master(backend: Backend) -> (TestDb, DatabaseConnection) {
        let test_db = TestDb::new(backend);
        let db = storesync_shared::db::connect(&test_db.url(), 2)
            .await
            .unwrap();
        crate::schema::Migrator::up(&db, None).await.unwrap();
        for (sync_id, store_id) in [(2, STORE_A), (3, STORE_B)] {
            store::ActiveModel {
                id: Set(store_id.into()),
                code: Set(format!("S{sync_id}")),
                name: Set(format!("Store {sync_id}")),
                sync_id: Set(sync_id),
            }
            .insert(&db)
            .await
            .unwrap();
            site::ActiveModel {
                sync_id: Set(sync_id),
                name: Set(format!("site {sync_id}")),
                store_id: Set(store_id.into()),
                url: Set("http://127.0.0.1:1".into()),
                enabled: Set(true),
                sync_user_name: Set(None),
                sync_password_hash: Set(None),
                upstream_acked_seq: Set(0),
                downstream_cursor: Set(0),
                initialised: Set(true),
                created_at_ms: Set(0),
            }
            .insert(&db)
            .await
            .unwrap();
            crate::sync::status::claim(&db, sync_id as u32, "s", "streaming", "test", 0)
                .await
                .unwrap();
        }
        (test_db, db)
    }

    fn id(pool: &str, n: usize) -> String {
        format!("2f1c7a4e-0000-4000-8000-{pool}{n:011}")
    }

    fn record(rng: &mut StdRng, store_id: &str, pool: &str) -> pb::SyncRecord {
        use pb::sync_record::Record;
        let n = rng.gen_range(0..6);
        let value = f64::from(rng.gen_range(0..1000)) / 4.0;
        let record = match rng.gen_range(0..7) {
            0 | 1 => Record::StockLine(pb::StockLine {
                id: id(pool, n),
                store_id: store_id.into(),
                item_id: id("9", 1),
                batch: format!("B{}", rng.gen_range(0..100)),
                expiry_date: "2028-01-31".into(),
                pack_size: rng.gen_range(1..20),
                available_number_of_packs: value,
                total_number_of_packs: value + 1.0,
                cost_price_per_pack: 1.5,
                sell_price_per_pack: value,
                updated_at_ms: rng.gen_range(0..i64::MAX),
            }),
            2 => Record::Invoice(pb::Invoice {
                id: id(pool, n),
                store_id: store_id.into(),
                name_id: id("8", rng.gen_range(0..3)),
                kind: rng.gen_range(1..=3),
                status: rng.gen_range(1..=2),
                invoice_number: rng.gen_range(0..i64::MAX),
                reference: format!("ref {}", rng.gen_range(0..100)),
                created_at_ms: rng.gen_range(0..i64::MAX),
                lines: Vec::new(),
            }),
            3 | 4 => Record::InvoiceLine(pb::InvoiceLine {
                id: id(pool, n),
                invoice_id: id(pool, rng.gen_range(0..6)),
                store_id: store_id.into(),
                item_id: id("9", rng.gen_range(0..3)),
                stock_line_id: id(pool, rng.gen_range(0..6)),
                batch: String::new(),
                expiry_date: String::new(),
                pack_size: rng.gen_range(1..20),
                number_of_packs: value - 100.0,
                cost_price_per_pack: value,
                sell_price_per_pack: 2.0,
            }),
            table => Record::Deleted(pb::RecordRef {
                table: [
                    pb::Table::StockLine,
                    pb::Table::Invoice,
                    pb::Table::InvoiceLine,
                ][usize::from(table == 6) + rng.gen_range(0..2)] as i32,
                id: id(pool, n),
            }),
        };
        pb::SyncRecord {
            record: Some(record),
        }
    }

    type Rows = (
        Vec<stock_line::Model>,
        Vec<invoice::Model>,
        Vec<invoice_line::Model>,
        Vec<site::Model>,
    );

    async fn rows(db: &DatabaseConnection) -> Rows {
        (
            stock_line::Entity::find()
                .order_by_asc(stock_line::Column::Id)
                .all(db)
                .await
                .unwrap(),
            invoice::Entity::find()
                .order_by_asc(invoice::Column::Id)
                .all(db)
                .await
                .unwrap(),
            invoice_line::Entity::find()
                .order_by_asc(invoice_line::Column::Id)
                .all(db)
                .await
                .unwrap(),
            site::Entity::find()
                .order_by_asc(site::Column::SyncId)
                .all(db)
                .await
                .unwrap(),
        )
    }

    /// Batches with repeated ids, deletes of rows sent in the same or an earlier
    /// batch, and now and then one record whose id is another store's.
    #[tokio::test]
    async fn postgres_apply_matches_the_portable_path() {
        if !backends("postgres_apply_matches_the_portable_path").contains(&Backend::Postgres) {
            return;
        }
        let (_sqlite_db, sqlite) = master(Backend::Sqlite).await;
        let (_postgres_db, postgres) = master(Backend::Postgres).await;
        let mut rng = StdRng::seed_from_u64(11);
        let site_a = SiteIdentity {
            sync_id: 2,
            store_id: STORE_A.into(),
        };
        let site_b = SiteIdentity {
            sync_id: 3,
            store_id: STORE_B.into(),
        };
        // Store B's rows, whose ids site A will now and then try to take.
        let records: Vec<pb::SyncRecord> =
            (0..40).map(|_| record(&mut rng, STORE_B, "b")).collect();
        let batch_b = pb::UpstreamBatch {
            first_seq: 1,
            last_seq: records.len() as u64,
            records,
            trace_context: Default::default(),
        };
        for db in [&sqlite, &postgres] {
            apply_batch(db, &site_b, "s", batch_b.clone())
                .await
                .unwrap();
        }
        let mut next_seq = 1;
        let (mut applied, mut refused) = (0, 0);
        for round in 0..120 {
            let mut records: Vec<pb::SyncRecord> = (0..rng.gen_range(1..40))
                .map(|_| record(&mut rng, STORE_A, "a"))
                .collect();
            if rng.gen_ratio(1, 6) {
                // An id of store B, sent (or deleted) as store A's.
                let foreign = record(&mut rng, STORE_A, "b");
                let at = rng.gen_range(0..=records.len());
                records.insert(at, foreign);
            }
            // Now and then a resend that overlaps what was applied.
            let first_seq = if next_seq > 3 && rng.gen_ratio(1, 8) {
                next_seq - 2
            } else {
                next_seq
            };
            let batch = pb::UpstreamBatch {
                first_seq,
                last_seq: first_seq + records.len() as u64 - 1,
                records,
                trace_context: Default::default(),
            };
            let expected = apply_batch(&sqlite, &site_a, "s", batch.clone()).await;
            let got = apply_batch(&postgres, &site_a, "s", batch).await;
            match (&expected, &got) {
                (Ok(expected), Ok(got)) => {
                    assert_eq!(expected, got, "round {round}");
                    next_seq = got.acked_seq + 1;
                    applied += 1;
                }
                (Err(expected), Err(got)) => {
                    assert_eq!(expected.code(), got.code(), "round {round}: {got}");
                    assert_eq!(expected.to_string(), got.to_string(), "round {round}");
                    refused += 1;
                }
                _ => panic!("round {round}: portable {expected:?}, PostgreSQL {got:?}"),
            }
            assert_eq!(rows(&sqlite).await, rows(&postgres).await, "round {round}");
        }
        assert!(
            applied > 50 && refused > 5,
            "{applied} applied, {refused} refused"
        );
    }
}
