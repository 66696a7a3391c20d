//! The integrity check history is pruned: checks and finished requests older
//! than the retention go, each site's latest check and every request still to
//! run stay. On SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]

use master_service::integrity::record;
use master_service::schema::Migrator;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use sea_orm_migration::MigratorTrait;
use storesync_shared::proto::v1::{SiteVerification, VerifyOutcome};
use storesync_tests::{backends, TestDb};

async fn migrated(db: &TestDb) -> DatabaseConnection {
    let conn = storesync_shared::domain::db::connect(&db.url(), 4)
        .await
        .unwrap();
    Migrator::up(&conn, None).await.unwrap();
    conn
}

fn check(sync_id: u32, finished_at_ms: i64) -> SiteVerification {
    SiteVerification {
        sync_id,
        outcome: VerifyOutcome::Equal as i32,
        started_at_ms: finished_at_ms - 10,
        finished_at_ms,
        ..SiteVerification::default()
    }
}

/// `(sync_id, finished_at_ms)` of every row of `table`, in id order.
async fn rows(db: &DatabaseConnection, table: &str) -> Vec<(i64, i64)> {
    db.query_all(Statement::from_string(
        db.get_database_backend(),
        format!("SELECT CAST(sync_id AS BIGINT), finished_at_ms FROM {table} ORDER BY id"),
    ))
    .await
    .unwrap()
    .iter()
    .map(|row| {
        (
            row.try_get_by_index(0).unwrap(),
            row.try_get_by_index(1).unwrap(),
        )
    })
    .collect()
}

#[tokio::test]
async fn old_checks_and_finished_requests_go_the_latest_and_pending_stay() {
    for backend in backends("old_checks_and_finished_requests_go_the_latest_and_pending_stay") {
        let test_db = TestDb::new(backend);
        let db = migrated(&test_db).await;
        // Times from now: a finished request ends at the earliest when it was
        // requested. The cut-off is a minute ahead; site 2's newest check an
        // hour ahead.
        let now = storesync_shared::domain::validate::now_ms();
        let (cut_off, recent) = (now + 60_000, now + 3_600_000);
        // Site 2: three old checks and a recent one. Site 3: only old checks.
        for (sync_id, ago) in [(2, 5_000), (2, 4_000), (3, 4_500), (2, 3_000), (3, 2_500)] {
            record::save(&db, &check(sync_id, now - ago), &[], "test")
                .await
                .unwrap();
        }
        record::save(&db, &check(2, recent), &[], "test")
            .await
            .unwrap();
        // Requests: one of site 2 finished long ago, one of site 3 still to
        // run (never attempted, however old).
        let done = record::request(&db, 2, false, "test").await.unwrap();
        record::finish(&db, &done, &check(2, now - 2_000))
            .await
            .unwrap();
        let pending = record::request(&db, 3, true, "test").await.unwrap();

        let (checks, requests) = record::prune(&db, cut_off).await.unwrap();
        assert_eq!(
            rows(&db, "integrity_check").await,
            vec![(3, now - 2_500), (2, recent)],
            "site 3's latest check stays though old; site 2's old checks go"
        );
        assert_eq!((checks, requests), (4, 1), "what prune says it deleted");
        let left = rows(&db, "integrity_request").await;
        assert_eq!(left, vec![(3, 0)], "only the request still to run stays");
        assert_eq!(
            record::next_request(&db, 3).await.unwrap().map(|r| r.id),
            Some(pending.id)
        );
        // The latest of each site is unchanged, so SyncStatus shows the same.
        let latest = record::latest(&db).await.unwrap();
        assert_eq!(latest[&2].finished_at_ms, recent);
        assert_eq!(latest[&3].finished_at_ms, now - 2_500);
        // Nothing more to prune at the same cut-off.
        assert_eq!(record::prune(&db, cut_off).await.unwrap(), (0, 0));
    }
}
