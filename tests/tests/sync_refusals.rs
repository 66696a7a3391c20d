//! Scenario 4: what the master refuses on the sync stream, and that a refused
//! batch applies nothing. A hand-driven client plays the satellite, so the
//! test can send what a correct satellite never would.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    create_items, store_data, store_of, Master, Satellite, SYNC_PASSWORD, SYNC_USER,
};
use storesync_tests::raw::{hello, open, stock_line, RawSession};
use storesync_tests::{backends, eventually, TestDb};

/// Sends `records` as one batch and returns the status that ends the stream,
/// with the `SyncError` the master sent before it.
async fn push_expecting_refusal(
    session: &mut RawSession,
    records: Vec<pb::SyncRecord>,
) -> (tonic::Status, Option<pb::SyncError>) {
    let first_seq = session.welcome.upstream_acked_seq + 1;
    let batch = pb::UpstreamBatch {
        first_seq,
        last_seq: first_seq + records.len() as u64 - 1,
        records,
        trace_context: Default::default(),
        last_tag: 0,
    };
    session
        .tx
        .send(pb::SatelliteMessage {
            message: Some(pb::satellite_message::Message::UpstreamBatch(batch)),
        })
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        let mut sync_error = None;
        loop {
            match session.inbound.message().await {
                Ok(Some(pb::MasterMessage {
                    message: Some(pb::master_message::Message::UpstreamAck(ack)),
                })) => {
                    panic!("the master acknowledged a batch it must refuse: {ack:?}")
                }
                Ok(Some(pb::MasterMessage {
                    message: Some(pb::master_message::Message::Error(error)),
                })) => sync_error = Some(error),
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return (status, sync_error),
            }
        }
    })
    .await;
    outcome.expect("the master answers a bad batch promptly")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_refuses_strangers_forgers_and_foreign_records() {
    for backend in backends("the_master_refuses_strangers_forgers_and_foreign_records") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "SEC", 1).await;
        let store_2 = store_of(&db, 2).await;
        let store_3 = store_of(&db, 3).await;

        // Wrong password and wrong user name: UNAUTHENTICATED, one message.
        let wrong_password = open(&master.url(), "2", SYNC_USER, "not-the-password", hello(2))
            .await
            .err()
            .unwrap();
        let wrong_user = open(&master.url(), "2", "mallory", SYNC_PASSWORD, hello(2))
            .await
            .err()
            .unwrap();
        assert_eq!(wrong_password.code(), tonic::Code::Unauthenticated);
        assert_eq!(wrong_user.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            wrong_password.message(),
            wrong_user.message(),
            "the message must not tell which part was wrong"
        );
        let no_sync_id = open(&master.url(), "two", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .err()
            .unwrap();
        // Repeated failures are answered ever more slowly (three so far from here).
        let started = std::time::Instant::now();
        let slowed = open(&master.url(), "2", SYNC_USER, "still-wrong", hello(2))
            .await
            .err()
            .unwrap();
        assert_eq!(slowed.code(), tonic::Code::Unauthenticated);
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(900),
            "the fourth failure in a row came back in {:?}",
            started.elapsed()
        );
        assert_eq!(no_sync_id.code(), tonic::Code::Unauthenticated);

        // Unknown Sync ID and the master's own: PERMISSION_DENIED saying why.
        let unknown = open(&master.url(), "9", SYNC_USER, SYNC_PASSWORD, hello(9))
            .await
            .err()
            .unwrap();
        assert_eq!(unknown.code(), tonic::Code::PermissionDenied);
        assert!(unknown.message().contains("Sync ID 9"), "{unknown:?}");
        let own = open(&master.url(), "1", SYNC_USER, SYNC_PASSWORD, hello(1))
            .await
            .err()
            .unwrap();
        assert_eq!(own.code(), tonic::Code::PermissionDenied);

        // A Hello that claims another Sync ID than the credentials.
        let forged = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(3))
            .await
            .err()
            .unwrap();
        assert_eq!(forged.code(), tonic::Code::PermissionDenied, "{forged:?}");

        // A protocol version the master does not speak.
        let mut future = hello(2);
        future.protocol_version = 99;
        let version = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, future)
            .await
            .err()
            .unwrap();
        assert_eq!(version.code(), tonic::Code::FailedPrecondition);
        assert!(
            version.message().contains("99") && version.message().contains('1'),
            "{version:?}"
        );

        // Site 2 pushes store 3's record among its own: refused whole.
        let mut session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        let own_record = stock_line(&store_2.id, &items[0].id);
        let foreign = stock_line(&store_3.id, &items[0].id);
        let foreign_id = match &foreign.record {
            Some(pb::sync_record::Record::StockLine(l)) => l.id.clone(),
            _ => unreachable!(),
        };
        let (status, sync_error) =
            push_expecting_refusal(&mut session, vec![own_record, foreign]).await;
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains(&foreign_id),
            "the status names the record: {status:?}"
        );
        let sync_error = sync_error.expect("a SyncError before the status");
        assert_eq!(sync_error.message, status.message());
        assert_eq!(
            sync_error.record,
            Some(pb::RecordRef {
                table: pb::Table::StockLine as i32,
                id: foreign_id.clone(),
            }),
            "the SyncError names the refused record's table and id"
        );

        // Site 2 pushes an item (master data): refused.
        let mut session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        let mut item = items[0].clone();
        item.name = "Hijacked".into();
        let (status, sync_error) = push_expecting_refusal(
            &mut session,
            vec![pb::SyncRecord {
                record: Some(pb::sync_record::Record::Item(item)),
            }],
        )
        .await;
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("master data"), "{status:?}");
        assert_eq!(
            sync_error.and_then(|error| error.record),
            Some(pb::RecordRef {
                table: pb::Table::Item as i32,
                id: items[0].id.clone(),
            })
        );

        // Nothing of any refused batch was applied.
        assert!(store_data(&db, &store_2.id).await.stock_lines.is_empty());
        assert!(store_data(&db, &store_3.id).await.stock_lines.is_empty());
        let (stored_items, _) = storesync_tests::cluster::master_data(&db).await;
        assert_eq!(stored_items[0].name, items[0].name);

        // A real satellite with a wrong password shows why it cannot sync.
        let satellite = Satellite::start(
            &master.url(),
            3,
            "streaming",
            &[("STORESYNC_SYNC_PASSWORD", "wrong")],
        );
        let status = eventually(
            Duration::from_secs(30),
            "the satellite to report the refusal",
            || async {
                let status = satellite.status().await;
                (!status.last_error.is_empty()).then_some(status)
            },
        )
        .await;
        assert!(
            status.last_error.contains("invalid sync credentials"),
            "{}",
            status.last_error
        );
        assert!(!status.initialised);
    }
}
