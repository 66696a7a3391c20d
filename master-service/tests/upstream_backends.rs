//! The upstream apply on both backends, through the generic table path.
//!
//! - The PostgreSQL statements against the portable path: the same batches,
//!   applied through both, must give the same answers and leave the same rows.
//! - A table that exists only in this test syncs both ways through the same
//!   generic steps as the real ones: upstream apply into the master (with its
//!   ownership checks), the snapshot read, and a satellite's apply.
#![allow(clippy::unwrap_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, QueryOrder, Set};
use sea_orm_migration::MigratorTrait;
use storesync_shared::domain::entities::{invoice, invoice_line, stock_line, store};
use storesync_shared::proto::v1 as pb;
use storesync_tests::{backends, Backend, TestDb};

use master_service::entities::site;
use master_service::sync::upstream::{
    apply_batch, apply_records, ApplyError, Incoming, SiteIdentity,
};
use sea_orm::ConnectionTrait;
use storesync_shared::domain::tables::write::{self, Scope};
use storesync_shared::domain::tables::{self, apply, Change, Owner, Row, SyncTable, TableDef};
use storesync_shared::proto::v1::sync_record::Record;

const STORE_A: &str = "2f1c7a4e-0000-4000-8000-00000000000a";
const STORE_B: &str = "2f1c7a4e-0000-4000-8000-00000000000b";

async fn master(backend: Backend) -> (TestDb, DatabaseConnection) {
    let test_db = TestDb::new(backend);
    let db = storesync_shared::domain::db::connect(&test_db.url(), 2)
        .await
        .unwrap();
    master_service::schema::Migrator::up(&db, None)
        .await
        .unwrap();
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
            database_id: Set(String::new()),
            upstream_acked_tag: Set(0),
        }
        .insert(&db)
        .await
        .unwrap();
        master_service::sync::status::claim(&db, sync_id as u32, "s", "streaming", "test", 1, 0)
            .await
            .unwrap();
    }
    (test_db, db)
}

fn id(pool: &str, n: usize) -> String {
    format!("2f1c7a4e-0000-4000-8000-{pool}{n:011}")
}

/// Texts that a PostgreSQL array literal must quote or escape, that a
/// packed column must not split or read as NULL (the upsert binds a text
/// column as one text for `string_to_array`; see `tables::write::pack`), and
/// that a lone row's column cannot be packed as (`""`).
const AWKWARD_TEXTS: &[&str] = &[
    "",
    " ",
    "NULL",
    "null",
    "a,b",
    "{x}",
    "}",
    "say \"hi\"",
    "back\\slash",
    "\\\"",
    " lead and trail ",
    "tab\there",
    "line\nbreak",
    "Paracétamol 500 mg — 药",
];

/// Numbers (within the checked ranges) that must read back as the same `f64`.
const AWKWARD_NUMBERS: &[f64] = &[
    0.1,
    0.0,
    1.0 / 3.0,
    1e-300,
    123_456_789.123_456_79,
    999_999_999.999_999_9,
    f64::MIN_POSITIVE,
    2.5e-7,
];

fn awkward_text(rng: &mut StdRng, plain: String) -> String {
    if rng.gen_ratio(1, 3) {
        AWKWARD_TEXTS[rng.gen_range(0..AWKWARD_TEXTS.len())].to_owned()
    } else {
        plain
    }
}

fn record(rng: &mut StdRng, store_id: &str, pool: &str) -> pb::SyncRecord {
    use pb::sync_record::Record;
    let n = rng.gen_range(0..6);
    let value = if rng.gen_ratio(1, 4) {
        AWKWARD_NUMBERS[rng.gen_range(0..AWKWARD_NUMBERS.len())]
    } else {
        f64::from(rng.gen_range(0..1000)) / 4.0
    };
    let record = match rng.gen_range(0..7) {
        0 | 1 => Record::StockLine(pb::StockLine {
            id: id(pool, n),
            store_id: store_id.into(),
            item_id: id("9", 1),
            batch: {
                let plain = format!("B{}", rng.gen_range(0..100));
                awkward_text(rng, plain)
            },
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
            reference: {
                let plain = format!("ref {}", rng.gen_range(0..100));
                awkward_text(rng, plain)
            },
            created_at_ms: rng.gen_range(0..i64::MAX),
            lines: Vec::new(),
            ..Default::default()
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
            ..Default::default()
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
    let records: Vec<pb::SyncRecord> = (0..40).map(|_| record(&mut rng, STORE_B, "b")).collect();
    let batch_b = pb::UpstreamBatch {
        first_seq: 1,
        last_seq: records.len() as u64,
        records,
        trace_context: Default::default(),
        last_tag: 0,
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
            last_tag: 0,
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

/// A table that exists only in this test: a store's memos.
mod memo {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "memo")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub store_id: String,
        pub body: String,
        pub pinned: bool,
        pub amount: f64,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    pub const CREATE: &str = "CREATE TABLE memo (id TEXT PRIMARY KEY, store_id TEXT NOT NULL, \
        body TEXT NOT NULL, pinned BOOLEAN NOT NULL, amount DOUBLE PRECISION NOT NULL, \
        updated_at_ms BIGINT NOT NULL)";
}

/// Its definition: everything a real table's file says, except that it has
/// no record in the contract (the generated `Record` cannot gain a variant in
/// a test), so it never meets the wire.
struct Memo;

impl TableDef for Memo {
    type Entity = memo::Entity;
    const NAME: &'static str = "memo";
    const TABLE: pb::Table = pb::Table::Unspecified;
    const OWNER: Owner = Owner::Store { column: "store_id" };

    fn decode(record: Record) -> Result<memo::Model, Record> {
        Err(record)
    }

    fn encode(_: memo::Model) -> Record {
        unreachable!("memos never travel")
    }

    fn validate(
        memo: &memo::Model,
        field: &dyn Fn(&str) -> String,
    ) -> storesync_shared::Result<()> {
        storesync_shared::domain::validate::optional_text(&field("body"), &memo.body, 16)
    }
}

static MEMO: Memo = Memo;

fn memo_row(id: &str, store_id: &str, body: &str, amount: f64) -> Row {
    Row(vec![
        id.into(),
        store_id.into(),
        body.into(),
        (amount > 1.0).into(),
        amount.into(),
        7i64.into(),
    ])
}

fn upsert(row: Row) -> Incoming<'static> {
    Incoming {
        table: &MEMO,
        change: Change::Upsert(row),
        problem: None,
    }
}

/// Upstream apply of `changes` as one batch from `first_seq`, each read by the
/// memo table's own checks as the wire's records are.
async fn push(
    db: &DatabaseConnection,
    tables: &[&'static dyn SyncTable],
    site: &SiteIdentity,
    first_seq: u64,
    changes: Vec<Incoming<'static>>,
) -> Result<u64, ApplyError> {
    let last_seq = first_seq + changes.len() as u64 - 1;
    apply_records(
        db,
        tables,
        site,
        "s",
        first_seq,
        last_seq,
        0,
        changes,
        |seq, incoming| {
            // What `receive` does for a wire record: the table's field checks.
            let Change::Upsert(row) = &incoming.change else {
                return Ok(incoming);
            };
            let body = row.text(2).unwrap_or_default().to_owned();
            let problem = storesync_shared::domain::validate::optional_text(
                &format!("upstream record {seq}: memo.body"),
                &body,
                16,
            )
            .err();
            Ok(Incoming {
                problem,
                ..incoming
            })
        },
    )
    .await
    .map(|applied| applied.acked_seq)
}

async fn memos(db: &DatabaseConnection, scope: Scope<'_>) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut after = String::new();
    // Pages of two, to go through the keyset paging.
    loop {
        let page = write::page(db, &MEMO, scope, &after, Some(2))
            .await
            .unwrap();
        if page.is_empty() {
            return rows;
        }
        for result in page {
            let row = Row::read(&MEMO, &result).unwrap();
            after = row.id().to_owned();
            rows.push(row);
        }
    }
}

#[tokio::test]
async fn a_table_registered_in_a_test_syncs_both_ways_through_the_generic_path() {
    for backend in backends("a_table_registered_in_a_test_syncs_both_ways_through_the_generic_path")
    {
        let (_master_db, master) = master(backend).await;
        master.execute_unprepared(memo::CREATE).await.unwrap();
        let tables: Vec<&'static dyn SyncTable> = tables::SYNCED
            .iter()
            .copied()
            .chain([&MEMO as &'static dyn SyncTable])
            .collect();
        let site_a = SiteIdentity {
            sync_id: 2,
            store_id: STORE_A.into(),
        };
        let site_b = SiteIdentity {
            sync_id: 3,
            store_id: STORE_B.into(),
        };
        let ids: Vec<String> = (0..5).map(|n| id("7", n)).collect();

        // Upstream: a repeated id ends with its last version, a row sent and
        // then deleted is gone.
        let acked = push(
            &master,
            &tables,
            &site_a,
            1,
            vec![
                upsert(memo_row(&ids[0], STORE_A, "first", 1.0)),
                upsert(memo_row(&ids[1], STORE_A, "second", 2.5)),
                upsert(memo_row(&ids[2], STORE_A, "gone", 3.0)),
                upsert(memo_row(&ids[0], STORE_A, "first, again", 4.0)),
                Incoming {
                    table: &MEMO,
                    change: Change::Delete(ids[2].clone()),
                    problem: None,
                },
            ],
        )
        .await
        .unwrap();
        assert_eq!(acked, 5);
        push(
            &master,
            &tables,
            &site_b,
            1,
            vec![upsert(memo_row(&ids[3], STORE_B, "b's", 1.0))],
        )
        .await
        .unwrap();
        let on_master = memos(&master, Scope::Store(STORE_A)).await;
        assert_eq!(
            on_master,
            vec![
                memo_row(&ids[0], STORE_A, "first, again", 4.0),
                memo_row(&ids[1], STORE_A, "second", 2.5),
            ],
            "{backend:?}"
        );

        // The ownership rules come from the table's owner column.
        let other_store = push(
            &master,
            &tables,
            &site_a,
            6,
            vec![upsert(memo_row(&ids[4], STORE_B, "x", 1.0))],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&other_store, ApplyError::OtherStore { record, .. } if record.table == "memo" && record.id == ids[4]),
            "{other_store}"
        );
        let foreign = push(
            &master,
            &tables,
            &site_a,
            6,
            vec![upsert(memo_row(&ids[3], STORE_A, "taken", 1.0))],
        )
        .await
        .unwrap_err();
        assert_eq!(foreign.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            foreign.to_string(),
            format!("memo {} already exists in store {STORE_B:?}; Sync ID 2 may not change it; nothing of this batch was applied", ids[3])
        );
        assert_eq!(
            foreign.record().map(|r| r.id.as_str()),
            Some(ids[3].as_str())
        );
        let invalid = push(
            &master,
            &tables,
            &site_a,
            6,
            vec![upsert(memo_row(
                &ids[4],
                STORE_A,
                "far too long for a memo",
                1.0,
            ))],
        )
        .await
        .unwrap_err();
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
        assert!(
            invalid
                .to_string()
                .starts_with("upstream record 6: memo.body:"),
            "{invalid}"
        );
        assert_eq!(invalid.record().map(|r| r.table), Some("memo"));
        assert_eq!(
            memos(&master, Scope::Store(STORE_A)).await,
            on_master,
            "refused batches change nothing"
        );

        // Downstream: the snapshot's rows of store A, applied on a satellite.
        let satellite_db = TestDb::new(Backend::Sqlite);
        let satellite = storesync_shared::domain::db::connect(&satellite_db.url(), 1)
            .await
            .unwrap();
        satellite.execute_unprepared(memo::CREATE).await.unwrap();
        assert_eq!(
            write::count(&master, &MEMO, Scope::Store(STORE_A))
                .await
                .unwrap(),
            2
        );
        let mut runs = Vec::new();
        for row in memos(&master, Scope::Store(STORE_A)).await {
            apply::push(&mut runs, &MEMO, row);
        }
        let txn = storesync_shared::domain::db::begin(&satellite)
            .await
            .unwrap();
        for run in runs {
            apply::write(&txn, run).await.unwrap();
        }
        txn.commit().await.unwrap();
        assert_eq!(
            memos(&satellite, Scope::All).await,
            on_master,
            "{backend:?}"
        );

        // A satellite empties it before a new snapshot.
        write::clear(&satellite, &MEMO).await.unwrap();
        assert!(memos(&satellite, Scope::All).await.is_empty());
    }
}
