//! The refusals on record are bounded per site and keep the latest.
#![allow(clippy::unwrap_used)]

use master_service::sync::error::{ApplyError, RecordId};
use master_service::sync::refusals::{self, Filter, KEEP_PER_SITE};
use sea_orm_migration::MigratorTrait;
use storesync_shared::proto::v1::Table;
use storesync_tests::{backends, TestDb};

#[tokio::test]
async fn each_site_keeps_its_latest_refusals_only() {
    for backend in backends("each_site_keeps_its_latest_refusals_only") {
        let test_db = TestDb::new(backend);
        let db = storesync_shared::domain::db::connect(&test_db.url(), 2)
            .await
            .unwrap();
        master_service::schema::Migrator::up(&db, None)
            .await
            .unwrap();
        let refused = |id: u64| ApplyError::MasterData {
            record: RecordId {
                table: "item",
                contract: Table::Item,
                id: format!("item-{id}"),
            },
            seq: id,
            sync_id: 2,
        };
        let extra = 5;
        for seq in 1..=KEEP_PER_SITE + extra {
            refusals::record(&db, 2, seq, seq, &refused(seq))
                .await
                .unwrap();
        }
        // Site 3's one refusal is not pushed out by site 2's.
        refusals::record(&db, 3, 1, 1, &refused(1)).await.unwrap();
        // A retry of a kept batch raises its attempts, adds no row.
        let last = KEEP_PER_SITE + extra;
        refusals::record(&db, 2, last, last, &refused(last))
            .await
            .unwrap();

        let site_2 = Filter {
            sync_id: Some(2),
            since_ms: 0,
        };
        let kept = refusals::list(&db, site_2, 0, 10_000).await.unwrap();
        assert_eq!(kept.len() as u64, KEEP_PER_SITE);
        let mut seqs: Vec<u64> = kept.iter().map(|r| r.first_seq).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (extra + 1..=last).collect::<Vec<_>>(),
            "the oldest went"
        );
        assert_eq!(kept[0].first_seq, last, "the latest refused first");
        assert_eq!(kept[0].attempts, 2);
        let counts = refusals::counts(&db).await.unwrap();
        assert_eq!(counts[&2].0, KEEP_PER_SITE);
        assert_eq!(counts[&3].0, 1);
    }
}
