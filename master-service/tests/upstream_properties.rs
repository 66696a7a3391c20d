//! Property tests of what the master accepts upstream: whatever a satellite
//! sends — well-formed, malformed, or bytes that only happen to decode — the
//! apply either commits the whole batch with the acknowledged sequence, or
//! refuses it with a status that is not INTERNAL and changes nothing. It
//! never panics. (A fixed number of cases, so CI time stays bounded.)
#![allow(clippy::unwrap_used)]

use master_service::entities::site;
use master_service::schema::Migrator;
use master_service::sync::status::claim;
use master_service::sync::upstream::{apply_batch, SiteIdentity};
use proptest::prelude::*;
use prost::Message;
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, PaginatorTrait, Set};
use sea_orm_migration::MigratorTrait;
use storesync_shared::domain::entities::{invoice, invoice_line, stock_line, store};
use storesync_shared::proto::v1 as pb;

const STORE: &str = "2f1c7a4e-0000-4000-8000-0000000000a2";
const OTHER_STORE: &str = "2f1c7a4e-0000-4000-8000-0000000000a3";

async fn master() -> (tempfile::TempDir, DatabaseConnection) {
    let dir = tempfile::tempdir().unwrap();
    let db = storesync_shared::domain::db::connect(
        &storesync_shared::domain::db::sqlite_url(&dir.path().join("m.db")),
        1,
    )
    .await
    .unwrap();
    Migrator::up(&db, None).await.unwrap();
    store::ActiveModel {
        id: Set(STORE.into()),
        code: Set("S2".into()),
        name: Set("Store 2".into()),
        sync_id: Set(2),
    }
    .insert(&db)
    .await
    .unwrap();
    site::ActiveModel {
        sync_id: Set(2),
        name: Set("site 2".into()),
        store_id: Set(STORE.into()),
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
    claim(&db, 2, "s", "streaming", "test", 1, 0).await.unwrap();
    (dir, db)
}

async fn rows(db: &DatabaseConnection) -> (u64, u64, u64, i64) {
    (
        stock_line::Entity::find().count(db).await.unwrap(),
        invoice::Entity::find().count(db).await.unwrap(),
        invoice_line::Entity::find().count(db).await.unwrap(),
        site::Entity::find_by_id(2)
            .one(db)
            .await
            .unwrap()
            .unwrap()
            .upstream_acked_seq,
    )
}

fn uuidish() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(uuid::Uuid::new_v4().to_string()),
        Just(uuid::Uuid::new_v4().to_string()),
        Just(String::new()),
        "[0-9a-f-]{0,40}",
        Just("2F1C7A4E-0000-4000-8000-0000000000A2".to_owned()),
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..1000.0f64,
        Just(-1.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(1e300),
        Just(0.0)
    ]
}

fn date() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2027-03-31".to_owned()),
        Just(String::new()),
        Just("2027-02-30".to_owned()),
        Just("9999-01-01".to_owned()),
        "[0-9-]{0,12}"
    ]
}

fn store_id() -> impl Strategy<Value = String> {
    prop_oneof![4 => Just(STORE.to_owned()), 1 => Just(OTHER_STORE.to_owned()), 1 => uuidish()]
}

fn record() -> impl Strategy<Value = pb::SyncRecord> {
    let stock = (
        uuidish(),
        store_id(),
        uuidish(),
        ".{0,8}",
        date(),
        -2..2000i32,
        number(),
        number(),
        number(),
        number(),
    )
        .prop_map(
            |(id, store_id, item_id, batch, expiry_date, pack_size, a, t, c, s)| {
                pb::sync_record::Record::StockLine(pb::StockLine {
                    id,
                    store_id,
                    item_id,
                    batch,
                    expiry_date,
                    pack_size,
                    available_number_of_packs: a,
                    total_number_of_packs: t,
                    cost_price_per_pack: c,
                    sell_price_per_pack: s,
                    updated_at_ms: 1,
                })
            },
        );
    let invoice = (uuidish(), store_id(), uuidish(), -1..5i32, ".{0,10}").prop_map(
        |(id, store_id, name_id, kind, reference)| {
            pb::sync_record::Record::Invoice(pb::Invoice {
                id,
                store_id,
                name_id,
                kind,
                reference,
                status: 1,
                ..Default::default()
            })
        },
    );
    let line = (
        uuidish(),
        uuidish(),
        store_id(),
        uuidish(),
        date(),
        0..200i32,
        number(),
        number(),
    )
        .prop_map(
            |(id, invoice_id, store_id, item_id, expiry_date, pack_size, packs, price)| {
                pb::sync_record::Record::InvoiceLine(pb::InvoiceLine {
                    id,
                    invoice_id,
                    store_id,
                    item_id,
                    stock_line_id: String::new(),
                    batch: "B".into(),
                    expiry_date,
                    pack_size,
                    number_of_packs: packs,
                    cost_price_per_pack: price,
                    sell_price_per_pack: price,
                    ..Default::default()
                })
            },
        );
    let deleted = (-1..8i32, uuidish())
        .prop_map(|(table, id)| pb::sync_record::Record::Deleted(pb::RecordRef { table, id }));
    let item = uuidish().prop_map(|id| {
        pb::sync_record::Record::Item(pb::Item {
            id,
            code: "X".into(),
            ..Default::default()
        })
    });
    prop_oneof![4 => stock, 2 => invoice, 2 => line, 1 => deleted, 1 => item].prop_map(|record| {
        pb::SyncRecord {
            record: Some(record),
        }
    })
}

/// What a batch does to the database: all of it with the sequence, or nothing.
/// (On the runtime that opened `db`: its pool lives there.)
fn check(
    runtime: &tokio::runtime::Runtime,
    db: &DatabaseConnection,
    batch: pb::UpstreamBatch,
) -> Result<(), TestCaseError> {
    runtime.block_on(async {
        let before = rows(db).await;
        let identity = SiteIdentity {
            sync_id: 2,
            store_id: STORE.into(),
        };
        let first = batch.first_seq;
        let last = batch.last_seq;
        match apply_batch(db, &identity, "s", batch).await {
            Ok(applied) => {
                let after = rows(db).await;
                prop_assert!(applied.acked_seq >= before.3 as u64);
                if last as i64 > before.3 {
                    prop_assert_eq!(
                        after.3,
                        last as i64,
                        "the acknowledged sequence moves with the batch"
                    );
                }
                prop_assert!(first >= 1);
            }
            Err(error) => {
                prop_assert_ne!(
                    error.code(),
                    tonic::Code::Internal,
                    "a bad batch is the sender's fault: {}",
                    error
                );
                prop_assert_eq!(
                    rows(db).await,
                    before,
                    "a refused batch changes nothing ({})",
                    error
                );
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_structured_batch_commits_whole_or_changes_nothing(records in prop::collection::vec(record(), 1..6), gap in 0..3u64) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (_dir, db) = runtime.block_on(master());
        let acked = runtime.block_on(rows(&db)).3 as u64;
        let first_seq = acked + 1 + if gap == 2 { 5 } else { 0 };
        let last_seq = first_seq + records.len() as u64 - 1;
        check(&runtime, &db, pb::UpstreamBatch { first_seq, last_seq, records, trace_context: Default::default(), last_tag: 0 })?;
    }

    #[test]
    fn any_bytes_that_decode_as_a_batch_commit_whole_or_change_nothing(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(batch) = pb::UpstreamBatch::decode(bytes.as_slice()) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (_dir, db) = runtime.block_on(master());
            check(&runtime, &db, batch)?;
        }
    }
}
