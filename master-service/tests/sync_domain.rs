//! The sync stream's rules, tested below gRPC on SQLite and PostgreSQL:
//! the change log never lets a reader skip a late commit, and upstream batches
//! apply exactly once and only for the site's own store.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use master_service::changelog::{self, ChangeNotifier};
use master_service::entities::site;
use master_service::schema::Migrator;
use master_service::sync::status::claim;
use master_service::sync::upstream::{apply_batch, SiteIdentity};
use rand::Rng;
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, PaginatorTrait, Set};
use sea_orm_migration::MigratorTrait;
use storesync_shared::domain::entities::{stock_line, store};
use storesync_shared::proto::v1::{
    sync_record::Record, Invoice, Item, RecordRef, StockLine, SyncRecord, Table, Transfer,
    UpstreamBatch,
};
use storesync_tests::{backends, Backend, TestDb};

async fn migrated(db: &TestDb) -> DatabaseConnection {
    let conn = storesync_shared::domain::db::connect(&db.url(), 12)
        .await
        .unwrap();
    Migrator::up(&conn, None).await.unwrap();
    conn
}

fn item_record(n: usize) -> SyncRecord {
    SyncRecord {
        record: Some(Record::Item(Item {
            id: uuid::Uuid::new_v4().to_string(),
            code: format!("C{n}"),
            name: format!("Item {n}"),
            unit: "tab".into(),
            default_pack_size: 10,
            active: true,
            updated_at_ms: 0,
        })),
    }
}

/// DESIGN.md "change-log gaps": writers that commit late must never be skipped
/// by a reader that is tailing the log. Writers hold their transaction open for
/// a random while after taking their number; the reader must still see every
/// number exactly once, in order, without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_log_reader_never_skips_a_late_commit() {
    for backend in backends("change_log_reader_never_skips_a_late_commit") {
        let test_db = TestDb::new(backend);
        let db = migrated(&test_db).await;
        let notifier = ChangeNotifier::default();
        const WRITERS: usize = 8;
        const EACH: usize = 25;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let db = db.clone();
            let notifier = notifier.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let txn = storesync_shared::domain::db::begin(&db).await.unwrap();
                    let seq = changelog::append(&txn, &item_record(w * 1000 + i))
                        .await
                        .unwrap();
                    let hold = rand::thread_rng().gen_range(0..8);
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    txn.commit().await.unwrap();
                    notifier.committed(seq);
                }
            }));
        }
        let mut cursor = 0u64;
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < WRITERS * EACH {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend:?}: reader saw only {} entries",
                seen.len()
            );
            for entry in changelog::read_after(&db, cursor, 7).await.unwrap() {
                let seq = u64::try_from(entry.seq).unwrap();
                assert_eq!(
                    seq,
                    cursor + 1,
                    "{backend:?}: the reader jumped from {cursor} to {seq}: an entry was skipped"
                );
                cursor = seq;
                seen.push(seq);
            }
            tokio::task::yield_now().await;
        }
        for writer in writers {
            writer.await.unwrap();
        }
        assert_eq!(
            seen,
            (1..=(WRITERS * EACH) as u64).collect::<Vec<_>>(),
            "{backend:?}"
        );
        assert_eq!(changelog::head(&db).await.unwrap(), (WRITERS * EACH) as u64);
    }
}

async fn add_site(db: &DatabaseConnection, sync_id: i32, store_id: &str) {
    store::ActiveModel {
        id: Set(store_id.to_owned()),
        code: Set(format!("S{sync_id}")),
        name: Set(format!("Store {sync_id}")),
        sync_id: Set(sync_id),
    }
    .insert(db)
    .await
    .unwrap();
    site::ActiveModel {
        sync_id: Set(sync_id),
        name: Set(format!("site {sync_id}")),
        store_id: Set(store_id.to_owned()),
        url: Set("http://127.0.0.1:1".into()),
        enabled: Set(true),
        sync_user_name: Set(None),
        sync_password_hash: Set(None),
        upstream_acked_seq: Set(0),
        downstream_cursor: Set(0),
        initialised: Set(false),
        created_at_ms: Set(0),
        database_id: Set(String::new()),
        upstream_acked_tag: Set(0),
    }
    .insert(db)
    .await
    .unwrap();
}

fn stock(store_id: &str, id: &str, packs: f64) -> SyncRecord {
    SyncRecord {
        record: Some(Record::StockLine(StockLine {
            id: id.to_owned(),
            store_id: store_id.to_owned(),
            item_id: "2f1c7a4e-0000-4000-8000-000000000001".into(),
            batch: "B1".into(),
            expiry_date: "2028-01-31".into(),
            pack_size: 10,
            available_number_of_packs: packs,
            total_number_of_packs: packs,
            cost_price_per_pack: 1.5,
            sell_price_per_pack: 2.0,
            updated_at_ms: 1,
        })),
    }
}

fn batch(first_seq: u64, records: Vec<SyncRecord>) -> UpstreamBatch {
    UpstreamBatch {
        first_seq,
        last_seq: first_seq + records.len() as u64 - 1,
        records,
        trace_context: Default::default(),
        last_tag: 0,
    }
}

#[tokio::test]
async fn upstream_batches_apply_exactly_once_and_only_for_the_own_store() {
    for backend in backends("upstream_batches_apply_exactly_once_and_only_for_the_own_store") {
        let test_db = TestDb::new(backend);
        let db = migrated(&test_db).await;
        let store_a = "2f1c7a4e-0000-4000-8000-00000000000a";
        let store_b = "2f1c7a4e-0000-4000-8000-00000000000b";
        add_site(&db, 2, store_a).await;
        add_site(&db, 3, store_b).await;
        claim(&db, 2, "session-a", "streaming", "test", 1, 0)
            .await
            .unwrap();
        claim(&db, 3, "session-b", "streaming", "test", 1, 0)
            .await
            .unwrap();
        let site_a = SiteIdentity {
            sync_id: 2,
            store_id: store_a.into(),
        };
        let site_b = SiteIdentity {
            sync_id: 3,
            store_id: store_b.into(),
        };
        let ids: Vec<String> = (0..6).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let three = || {
            vec![
                stock(store_a, &ids[0], 1.0),
                stock(store_a, &ids[1], 2.0),
                stock(store_a, &ids[2], 3.0),
            ]
        };

        let first = apply_batch(&db, &site_a, "session-a", batch(1, three()))
            .await
            .unwrap();
        assert_eq!((first.acked_seq, first.applied), (3, 3));
        // The same batch again (its ack was lost): nothing new.
        let again = apply_batch(&db, &site_a, "session-a", batch(1, three()))
            .await
            .unwrap();
        assert_eq!((again.acked_seq, again.applied), (3, 0));
        // Overlapping 2..=5 applies only 4 and 5; seq 2's different value is NOT re-applied.
        let overlap = vec![
            stock(store_a, &ids[1], 99.0),
            stock(store_a, &ids[2], 3.0),
            stock(store_a, &ids[3], 4.0),
            stock(store_a, &ids[3], 5.0),
        ];
        let overlap = apply_batch(&db, &site_a, "session-a", batch(2, overlap))
            .await
            .unwrap();
        assert_eq!((overlap.acked_seq, overlap.applied), (5, 2));
        let line1 = stock_line::Entity::find_by_id(ids[1].clone())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            line1.total_number_of_packs, 2.0,
            "a skipped entry must not be applied"
        );
        let line3 = stock_line::Entity::find_by_id(ids[3].clone())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            line3.total_number_of_packs, 5.0,
            "the later of two entries for one row wins"
        );

        // A gap is refused.
        let gap = apply_batch(
            &db,
            &site_a,
            "session-a",
            batch(7, vec![stock(store_a, &ids[4], 1.0)]),
        )
        .await
        .unwrap_err();
        assert_eq!(gap.code(), tonic::Code::FailedPrecondition, "{gap}");

        // Another store's record: the whole batch is refused, naming the record.
        let foreign = apply_batch(
            &db,
            &site_a,
            "session-a",
            batch(
                6,
                vec![stock(store_a, &ids[4], 1.0), stock(store_b, &ids[5], 1.0)],
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(foreign.code(), tonic::Code::PermissionDenied);
        assert!(foreign.to_string().contains(&ids[5]), "{foreign}");
        assert!(
            stock_line::Entity::find_by_id(ids[4].clone())
                .one(&db)
                .await
                .unwrap()
                .is_none(),
            "nothing of a refused batch is applied"
        );

        // Reusing another store's row id (to move it into this store): refused.
        let hijack = apply_batch(
            &db,
            &site_b,
            "session-b",
            batch(1, vec![stock(store_b, &ids[0], 1000.0)]),
        )
        .await
        .unwrap_err();
        assert_eq!(hijack.code(), tonic::Code::PermissionDenied, "{hijack}");
        assert!(hijack.to_string().contains(&ids[0]), "{hijack}");

        // Master data pushed upstream: refused.
        let item = apply_batch(&db, &site_a, "session-a", batch(6, vec![item_record(1)]))
            .await
            .unwrap_err();
        assert_eq!(item.code(), tonic::Code::PermissionDenied);
        assert!(item.to_string().contains("master data"), "{item}");
        let tombstone = SyncRecord {
            record: Some(Record::Deleted(RecordRef {
                table: Table::Item as i32,
                id: ids[0].clone(),
            })),
        };
        let delete_item = apply_batch(&db, &site_a, "session-a", batch(6, vec![tombstone]))
            .await
            .unwrap_err();
        assert_eq!(delete_item.code(), tonic::Code::PermissionDenied);

        // Malformed: the message names the record and field.
        let mut bad = stock(store_a, &ids[4], 1.0);
        if let Some(Record::StockLine(line)) = &mut bad.record {
            line.expiry_date = "2028-02-30".into();
        }
        let invalid = apply_batch(&db, &site_a, "session-a", batch(6, vec![bad]))
            .await
            .unwrap_err();
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
        assert!(
            invalid
                .to_string()
                .contains("upstream record 6: stock_line.expiry_date"),
            "{invalid}"
        );

        // Site 2's session is replaced (on this or another replica): the old
        // session can no longer apply anything.
        claim(&db, 2, "session-a2", "streaming", "test", 1, 0)
            .await
            .unwrap();
        let stale = apply_batch(
            &db,
            &site_a,
            "session-a",
            batch(6, vec![stock(store_a, &ids[4], 1.0)]),
        )
        .await
        .unwrap_err();
        assert_eq!(stale.code(), tonic::Code::Aborted, "{stale}");
        assert!(stock_line::Entity::find_by_id(ids[4].clone())
            .one(&db)
            .await
            .unwrap()
            .is_none());

        let acked = site::Entity::find_by_id(2)
            .one(&db)
            .await
            .unwrap()
            .unwrap()
            .upstream_acked_seq;
        assert_eq!(
            acked, 5,
            "refused batches leave the acknowledged sequence alone"
        );
        assert_eq!(stock_line::Entity::find().count(&db).await.unwrap(), 4);
    }
}

/// Tombstones (and every other entry) stay until every initialised site has
/// acknowledged past them; sites still to initialise start from a snapshot.
#[tokio::test]
async fn change_log_keeps_entries_until_every_initialised_site_acknowledged_them() {
    use master_service::entities::change_log;
    use master_service::sync::retention::prune;
    use sea_orm::{ColumnTrait, QueryFilter};
    for backend in
        backends("change_log_keeps_entries_until_every_initialised_site_acknowledged_them")
    {
        let test_db = TestDb::new(backend);
        let db = migrated(&test_db).await;
        add_site(&db, 2, "2f1c7a4e-0000-4000-8000-0000000000a2").await;
        add_site(&db, 3, "2f1c7a4e-0000-4000-8000-0000000000a3").await;
        add_site(&db, 4, "2f1c7a4e-0000-4000-8000-0000000000a4").await;
        for n in 0..10 {
            let txn = storesync_shared::domain::db::begin(&db).await.unwrap();
            let record = if n == 6 {
                SyncRecord {
                    record: Some(Record::Deleted(RecordRef {
                        table: Table::Item as i32,
                        id: uuid::Uuid::new_v4().to_string(),
                    })),
                }
            } else {
                item_record(n)
            };
            changelog::append(&txn, &record).await.unwrap();
            txn.commit().await.unwrap();
        }
        assert_eq!(
            prune(&db).await.unwrap(),
            0,
            "no site is initialised: nothing is known to be safe"
        );
        for (sync_id, cursor) in [(2, 8), (3, 5)] {
            let mut site: site::ActiveModel = site::Entity::find_by_id(sync_id)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
                .into();
            site.downstream_cursor = Set(cursor);
            site.initialised = Set(true);
            site.update(&db).await.unwrap();
        }
        // Site 4 is receiving a snapshot taken at cursor 3: it holds the log
        // from there until its snapshot is acknowledged (issue 13, point 2).
        master_service::sync::status::snapshot_started(&db, 4, 3)
            .await
            .unwrap();
        assert_eq!(prune(&db).await.unwrap(), 2, "entries 1 and 2 go");
        // Its snapshot completes (its last batch acknowledged at cursor 3).
        master_service::sync::status::downstream_acked(&db, 4, 3, true)
            .await
            .unwrap();
        master_service::sync::status::downstream_acked(&db, 4, 9, false)
            .await
            .unwrap();
        // Entries strictly below the lowest cursor go; the entry AT site 3's
        // cursor stays, for the tag check of its next Hello.
        assert_eq!(prune(&db).await.unwrap(), 2);
        let left: Vec<i64> = change_log::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(left, vec![5, 6, 7, 8, 9, 10]);
        let tombstone = change_log::Entity::find()
            .filter(change_log::Column::Deleted.eq(true))
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            tombstone.seq, 7,
            "the delete is kept until site 3 acknowledges past it"
        );
    }
}

/// Entries a transaction gathers (`changelog::Pending`, as a batch that
/// ships stock does) take their numbers only when appended, as its last
/// statements: a writer that commits meanwhile is not held up and gets the
/// lower number, and the gathered entries keep their order and their
/// stores, numbered consecutively after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_change_log_entries_take_their_numbers_last() {
    for backend in backends("gathered_change_log_entries_take_their_numbers_last") {
        let test_db = TestDb::new(backend);
        let db = migrated(&test_db).await;
        // Work of its own first, as a batch's apply does. SQLite has one
        // writer (a transaction takes it as it begins): there the gathering
        // transaction begins after the other writer.
        let mut gathering = None;
        if backend == Backend::Postgres {
            let txn = storesync_shared::domain::db::begin(&db).await.unwrap();
            store::ActiveModel {
                id: Set("store-c".into()),
                code: Set("SC".into()),
                name: Set("Store C".into()),
                sync_id: Set(9),
            }
            .insert(&txn)
            .await
            .unwrap();
            gathering = Some(txn);
        }
        let invoice = SyncRecord {
            record: Some(Record::Invoice(Invoice {
                id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            })),
        };
        let transfer = SyncRecord {
            record: Some(Record::Transfer(Transfer {
                id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            })),
        };
        let mut log = changelog::Pending::default();
        log.for_store("store-a", &[invoice.clone(), transfer.clone()]);
        log.for_store("store-b", std::slice::from_ref(&transfer));
        let other = tokio::time::timeout(Duration::from_secs(20), async {
            let txn = storesync_shared::domain::db::begin(&db).await.unwrap();
            let seq = changelog::append(&txn, &item_record(1)).await.unwrap();
            txn.commit().await.unwrap();
            seq
        })
        .await
        .unwrap_or_else(|_| {
            panic!("{backend:?}: a writer waited for a transaction that had only gathered entries")
        });
        let gathering = match gathering {
            Some(txn) => txn,
            None => storesync_shared::domain::db::begin(&db).await.unwrap(),
        };
        let last = log.append(&gathering).await.unwrap();
        gathering.commit().await.unwrap();
        assert_eq!(last, Some(other + 3), "{backend:?}");
        let id = |record: &SyncRecord| match &record.record {
            Some(Record::Invoice(invoice)) => invoice.id.clone(),
            Some(Record::Transfer(transfer)) => transfer.id.clone(),
            _ => unreachable!(),
        };
        let logged: Vec<(u64, Option<String>, String)> = changelog::read_after(&db, other, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|entry| {
                (
                    u64::try_from(entry.seq).unwrap(),
                    entry.store_id,
                    entry.record_id,
                )
            })
            .collect();
        assert_eq!(
            logged,
            vec![
                (other + 1, Some("store-a".to_owned()), id(&invoice)),
                (other + 2, Some("store-a".to_owned()), id(&transfer)),
                (other + 3, Some("store-b".to_owned()), id(&transfer)),
            ],
            "{backend:?}"
        );
        let txn = storesync_shared::domain::db::begin(&db).await.unwrap();
        assert_eq!(
            changelog::Pending::default().append(&txn).await.unwrap(),
            None,
            "{backend:?}: nothing gathered, nothing appended"
        );
        txn.commit().await.unwrap();
        assert_eq!(
            changelog::head(&db).await.unwrap(),
            other + 3,
            "{backend:?}"
        );
    }
}

/// The backlog a site reported goes down by what it then sends, never below
/// 0: a site that reported a backlog, sent it and disconnected before its
/// next heartbeat does not show that backlog for good.
#[tokio::test]
async fn a_reported_backlog_goes_down_by_what_the_site_sends() {
    use master_service::entities::site_status;
    use master_service::sync::status::synced;
    for backend in backends("a_reported_backlog_goes_down_by_what_the_site_sends") {
        let test_db = TestDb::new(backend);
        let db = migrated(&test_db).await;
        add_site(&db, 2, "2f1c7a4e-0000-4000-8000-00000000000a").await;
        claim(&db, 2, "session-a", "streaming", "test", 1, 5)
            .await
            .unwrap();
        let backlog = |db: DatabaseConnection| async move {
            site_status::Entity::find_by_id(2)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
                .upstream_backlog_reported
        };
        assert_eq!(backlog(db.clone()).await, 5);
        synced(&db, 2, 0).await;
        assert_eq!(backlog(db.clone()).await, 5, "a downstream exchange");
        synced(&db, 2, 3).await;
        assert_eq!(backlog(db.clone()).await, 2);
        synced(&db, 2, 7).await;
        assert_eq!(backlog(db.clone()).await, 0, "never below 0");
    }
}
