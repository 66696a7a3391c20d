//! A change-log batch must continue from the cursor the satellite holds
//! (`DownstreamBatch.after_cursor`): one that does not (a batch lost on the
//! way) is refused whole, nothing of it is applied and the cursor stays, so
//! the next session resumes there. A resend of a batch already applied is
//! still taken as a no-op, and a batch from a master older than the field
//! (no `after_cursor`) is applied as before.
#![allow(clippy::unwrap_used)]

mod common;

use common::{item, satellite_db, store};

use satellite_agent::entities::sync_state;
use satellite_agent::sync::apply::apply_batch;
use sea_orm::{DatabaseConnection, EntityTrait};
use storesync_shared::domain::entities::item;
use storesync_shared::proto::v1::{self as pb, sync_record::Record, SyncRecord};
use storesync_shared::Error;

fn batch(
    records: Vec<SyncRecord>,
    after_cursor: Option<u64>,
    end_cursor: u64,
) -> pb::DownstreamBatch {
    pb::DownstreamBatch {
        records,
        end_cursor,
        end_tag: end_cursor * 100,
        after_cursor,
        ..Default::default()
    }
}

async fn cursor(db: &DatabaseConnection) -> i64 {
    sync_state::Entity::find_by_id(1)
        .one(db)
        .await
        .unwrap()
        .unwrap()
        .downstream_cursor
}

async fn item_ids(db: &DatabaseConnection) -> Vec<String> {
    let mut ids: Vec<String> = item::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_batch_that_skips_entries_is_refused_and_nothing_of_it_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = satellite_db(&dir).await;
    // Initialised at cursor 10.
    let init = pb::DownstreamBatch {
        records: vec![SyncRecord {
            record: Some(Record::Store(store())),
        }],
        end_cursor: 10,
        end_tag: 1,
        initialisation: Some(pb::InitialisationProgress {
            complete: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    apply_batch(&db, init, Some(&store()), 0, 0).await.unwrap();
    assert_eq!(cursor(&db).await, 10);

    // 11..=12 continues from 10: applied.
    apply_batch(
        &db,
        batch(vec![item("a", "A")], Some(10), 12),
        Some(&store()),
        0,
        0,
    )
    .await
    .unwrap();
    assert_eq!(cursor(&db).await, 12);

    // 15..=16 after 14: entries 13 and 14 never arrived. Refused, nothing
    // written, the cursor stays at 12.
    let error = apply_batch(
        &db,
        batch(vec![item("c", "C")], Some(14), 16),
        Some(&store()),
        0,
        0,
    )
    .await
    .expect_err("a batch that skips entries 13 and 14");
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("downstream_batch.after_cursor")
            && message.contains("14")
            && message.contains("12"),
        "{message}"
    );
    assert_eq!(cursor(&db).await, 12);
    assert_eq!(item_ids(&db).await, vec!["a".to_owned()]);

    // A batch that starts before the cursor held and ends after it is not a
    // continuation either.
    let error = apply_batch(
        &db,
        batch(vec![item("b", "B")], Some(11), 13),
        Some(&store()),
        0,
        0,
    )
    .await
    .expect_err("a batch that overlaps the entries held");
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    assert_eq!(cursor(&db).await, 12);

    // A resend of what is held already is a no-op, as before.
    apply_batch(
        &db,
        batch(vec![item("a", "A2")], Some(10), 12),
        Some(&store()),
        0,
        0,
    )
    .await
    .unwrap();
    assert_eq!(cursor(&db).await, 12);

    // The session that resumes from 12 gets 13..=16: applied.
    apply_batch(
        &db,
        batch(vec![item("b", "B"), item("c", "C")], Some(12), 16),
        Some(&store()),
        0,
        0,
    )
    .await
    .unwrap();
    assert_eq!(cursor(&db).await, 16);
    assert_eq!(
        item_ids(&db).await,
        vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]
    );

    // A master older than the field sends no after_cursor: nothing to check.
    apply_batch(
        &db,
        batch(vec![item("d", "D")], None, 20),
        Some(&store()),
        0,
        0,
    )
    .await
    .unwrap();
    assert_eq!(cursor(&db).await, 20);
}
