//! A master-data resync on the satellite's own database (issue 13, point 4):
//! codes freed for the master's records, orphans removed only when the
//! snapshot completes, the store's own data kept, and the cursor, tag and
//! epoch stored with the last batch.
#![allow(clippy::unwrap_used)]

mod common;

use common::{item, satellite_db, store};

use satellite_agent::entities::sync_state;
use satellite_agent::sync::apply::{apply_batch, apply_with, start_resync, Applying};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, Statement};
use storesync_shared::domain::entities::item;
use storesync_shared::proto::v1::{self as pb, sync_record::Record, SyncRecord};

async fn items(db: &DatabaseConnection) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = item::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.id, i.code))
        .collect();
    all.sort();
    all
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
}

fn snapshot(
    records: Vec<SyncRecord>,
    end_cursor: u64,
    end_tag: u64,
    complete: bool,
) -> pb::DownstreamBatch {
    pb::DownstreamBatch {
        records,
        end_cursor,
        initialisation: Some(pb::InitialisationProgress {
            records_done: 0,
            records_total: 0,
            complete,
            ..Default::default()
        }),
        end_tag,
        ..Default::default()
    }
}

#[tokio::test]
async fn resync_frees_codes_removes_orphans_and_keeps_store_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = satellite_db(&dir).await;

    // Initialised from a snapshot holding items x (code X1) and y (Y1), then a
    // store-data row of its own that names x.
    let init = snapshot(
        vec![
            item("x", "X1"),
            item("y", "Y1"),
            SyncRecord {
                record: Some(Record::Store(store())),
            },
        ],
        10,
        1,
        true,
    );
    apply_batch(&db, init, Some(&store()), 0, 0).await.unwrap();
    db.execute_unprepared(
        "INSERT INTO stock_line VALUES ('sl', 'store-2', 'x', 'B', '', 1, 1, 1, 1, 1, 0)",
    )
    .await
    .unwrap();

    // The restored master: x is gone, a new item z has x's old code.
    start_resync(&db).await.unwrap();
    let own_store = store();
    let resync = |batch| {
        apply_with(
            &db,
            batch,
            Applying {
                store: Some(&own_store),
                upstream_acked_seq: 0,
                upstream_acked_tag: 0,
                epoch: "epoch-2",
                resync: true,
            },
        )
    };
    let first = resync(snapshot(
        vec![item("z", "X1"), item("y", "Y1")],
        0,
        0,
        false,
    ))
    .await
    .unwrap();
    assert!(!first.resynced);
    let halfway = items(&db).await;
    assert!(
        halfway.contains(&("x".into(), "~resync~x".into())),
        "until the snapshot completes, x stays (its code moved aside): {halfway:?}"
    );
    let state = sync_state::Entity::find_by_id(1)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.downstream_cursor, state.changelog_epoch.as_str()),
        (10, "")
    );

    let last = resync(snapshot(
        vec![SyncRecord {
            record: Some(Record::Store(store())),
        }],
        7,
        77,
        true,
    ))
    .await
    .unwrap();
    assert!(last.resynced && !last.initialised);
    assert_eq!(
        items(&db).await,
        vec![("y".into(), "Y1".into()), ("z".into(), "X1".into())],
        "the orphan x is removed and z holds the code"
    );
    let state = sync_state::Entity::find_by_id(1)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            state.downstream_cursor,
            state.downstream_tag,
            state.changelog_epoch.as_str()
        ),
        (7, 77, "epoch-2")
    );
    assert!(state.initialised);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM stock_line").await,
        1,
        "store data kept"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM store").await, 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM resync_seen").await, 0);
}
