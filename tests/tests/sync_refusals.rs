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
        let window = format!(
            "accepts versions {} to {}",
            storesync_shared::MIN_PROTOCOL_VERSION,
            storesync_shared::PROTOCOL_VERSION
        );
        assert!(
            version.message().contains("version 99")
                && version.message().contains(&window)
                && version.message().contains("upgrade the master-service"),
            "names both versions and what to upgrade: {version:?}"
        );
        // Older than the window: the satellite is the one to upgrade.
        let mut past = hello(2);
        past.protocol_version = 0;
        let version = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, past)
            .await
            .err()
            .unwrap();
        assert_eq!(version.code(), tonic::Code::FailedPrecondition);
        assert!(
            version.message().contains("upgrade the satellite-agent"),
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

/// An invoice of `store_id` as an upstream record.
fn invoice(store_id: &str, name_id: &str, number: i64) -> (String, pb::SyncRecord) {
    let id = uuid::Uuid::new_v4().to_string();
    let record = pb::SyncRecord {
        record: Some(pb::sync_record::Record::Invoice(pb::Invoice {
            id: id.clone(),
            store_id: store_id.to_owned(),
            name_id: name_id.to_owned(),
            kind: pb::InvoiceKind::SupplierInvoice as i32,
            status: pb::InvoiceStatus::Finalised as i32,
            invoice_number: number,
            reference: String::new(),
            created_at_ms: storesync_shared::domain::validate::now_ms(),
            lines: Vec::new(),
            ..Default::default()
        })),
    };
    (id, record)
}

/// A line of `store_id` on `invoice_id`, moving `stock_line_id`.
fn line(store_id: &str, invoice_id: &str, item_id: &str, stock_line_id: &str) -> pb::SyncRecord {
    pb::SyncRecord {
        record: Some(pb::sync_record::Record::InvoiceLine(pb::InvoiceLine {
            id: uuid::Uuid::new_v4().to_string(),
            invoice_id: invoice_id.to_owned(),
            store_id: store_id.to_owned(),
            item_id: item_id.to_owned(),
            stock_line_id: stock_line_id.to_owned(),
            batch: "X1".into(),
            expiry_date: "2030-01-31".into(),
            pack_size: 10,
            number_of_packs: 5.0,
            cost_price_per_pack: 1.0,
            sell_price_per_pack: 1.5,
            ..Default::default()
        })),
    }
}

fn id_of(record: &pb::SyncRecord) -> String {
    match &record.record {
        Some(pb::sync_record::Record::StockLine(r)) => r.id.clone(),
        Some(pb::sync_record::Record::InvoiceLine(r)) => r.id.clone(),
        other => panic!("no id here: {other:?}"),
    }
}

/// A site's line that names another store's invoice or stock line is refused
/// whole, naming the line; the other store's data and reports stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_may_not_name_another_stores_rows() {
    for backend in backends("a_site_may_not_name_another_stores_rows") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "XST", 1).await;
        let item = &items[0].id;
        let store_2 = store_of(&db, 2).await;
        let store_3 = store_of(&db, 3).await;

        // Store 3's own goods in: a stock line, an invoice and its line.
        let session_3 = open(&master.url(), "3", SYNC_USER, SYNC_PASSWORD, hello(3))
            .await
            .unwrap();
        let stock_3 = stock_line(&store_3.id, item);
        let stock_3_id = id_of(&stock_3);
        let (invoice_3_id, invoice_3) = invoice(&store_3.id, &store_3.id, 1);
        let line_3 = line(&store_3.id, &invoice_3_id, item, &stock_3_id);
        session_3
            .push(
                session_3.welcome.upstream_acked_seq + 1,
                vec![stock_3, invoice_3, line_3],
            )
            .await;
        let before = eventually(
            Duration::from_secs(20),
            "store 3's goods in on the master",
            || async {
                // Three reads, not one snapshot: wait until each sees the batch.
                let data = store_data(&db, &store_3.id).await;
                (data.stock_lines.len() == 1
                    && data.invoices.len() == 1
                    && data.invoice_lines.len() == 1)
                    .then_some(data)
            },
        )
        .await;
        let activity = || async {
            master
                .reports()
                .await
                .store_activity(pb::StoreActivityRequest {
                    from_date: "2020-01-01".into(),
                    to_date: "2029-12-31".into(),
                    store_ids: vec![store_3.id.clone()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .rows
        };
        let activity_before = activity().await;
        assert!(!activity_before.is_empty(), "store 3 has activity to keep");

        // Site 2 attaches a line of its own to store 3's invoice.
        let stock_2 = stock_line(&store_2.id, item);
        let stock_2_id = id_of(&stock_2);
        let on_their_invoice = line(&store_2.id, &invoice_3_id, item, &stock_2_id);
        let on_their_invoice_id = id_of(&on_their_invoice);
        let mut session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        let (status, sync_error) =
            push_expecting_refusal(&mut session, vec![stock_2.clone(), on_their_invoice]).await;
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains(&on_their_invoice_id)
                && status.message().contains(&invoice_3_id),
            "the status names the line and the invoice it named: {status:?}"
        );
        assert_eq!(
            sync_error.and_then(|e| e.record),
            Some(pb::RecordRef {
                table: pb::Table::InvoiceLine as i32,
                id: on_their_invoice_id,
            })
        );

        // Site 2's own invoice, with a line that takes from store 3's stock line.
        let (invoice_2_id, invoice_2) = invoice(&store_2.id, &store_2.id, 1);
        let their_stock = line(&store_2.id, &invoice_2_id, item, &stock_3_id);
        let their_stock_id = id_of(&their_stock);
        let mut session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        let (status, _) =
            push_expecting_refusal(&mut session, vec![stock_2, invoice_2, their_stock]).await;
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains(&their_stock_id) && status.message().contains(&stock_3_id),
            "{status:?}"
        );

        // Nothing of either batch: store 2 has nothing, store 3 is as it was.
        let data_2 = store_data(&db, &store_2.id).await;
        assert!(
            data_2.stock_lines.is_empty()
                && data_2.invoices.is_empty()
                && data_2.invoice_lines.is_empty(),
            "a refused batch applies nothing"
        );
        let after = store_data(&db, &store_3.id).await;
        assert_eq!(after.invoice_lines, before.invoice_lines);
        assert_eq!(after.stock_lines, before.stock_lines);
        assert_eq!(after.invoices, before.invoices);
        assert_eq!(activity().await, activity_before);

        // The same shapes within one store are accepted.
        let session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        let stock_2 = stock_line(&store_2.id, item);
        let stock_2_id = id_of(&stock_2);
        let (invoice_2_id, invoice_2) = invoice(&store_2.id, &store_2.id, 1);
        let own = line(&store_2.id, &invoice_2_id, item, &stock_2_id);
        session
            .push(
                session.welcome.upstream_acked_seq + 1,
                vec![stock_2, invoice_2, own],
            )
            .await;
        eventually(
            Duration::from_secs(20),
            "site 2's own goods in on the master",
            || async {
                (store_data(&db, &store_2.id).await.invoice_lines.len() == 1).then_some(())
            },
        )
        .await;
    }
}

/// A refused batch is on record for the operator: listed with its reason and
/// record, its retries counted on one row, counted in SyncStatus, printed by
/// `master-service report rejections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_on_record() {
    for backend in backends("refused_batches_are_on_record") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "REC", 1).await;
        let mut item = items[0].clone();
        item.name = "Renamed by a site".into();
        let batch = vec![pb::SyncRecord {
            record: Some(pb::sync_record::Record::Item(item)),
        }];

        // The same batch three times, as a satellite retrying after each refusal.
        for _ in 0..3 {
            let mut session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
                .await
                .unwrap();
            let (status, _) = push_expecting_refusal(&mut session, batch.clone()).await;
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
        }

        let mut admin = master.admin().await;
        let listed = admin
            .list_refusals(pb::ListRefusalsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.refusals.len(), 1, "one row per batch: {listed:?}");
        let refusal = &listed.refusals[0];
        assert_eq!(refusal.sync_id, 2);
        assert_eq!(refusal.attempts, 3);
        assert_eq!((refusal.first_seq, refusal.last_seq), (1, 1));
        assert_eq!(refusal.code, "PERMISSION_DENIED");
        assert!(refusal.reason.contains("master data"), "{refusal:?}");
        assert_eq!(
            refusal.record,
            Some(pb::RecordRef {
                table: pb::Table::Item as i32,
                id: items[0].id.clone(),
            })
        );
        assert!(refusal.first_at_ms <= refusal.last_at_ms && refusal.first_at_ms > 0);

        // Filters: another site has none; a time after the last has none.
        let other = admin
            .list_refusals(pb::ListRefusalsRequest {
                sync_id: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(other.refusals.is_empty());
        let later = admin
            .list_refusals(pb::ListRefusalsRequest {
                since_ms: refusal.last_at_ms + 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(later.refusals.is_empty());
        // Bad paging: INVALID_ARGUMENT naming the field.
        for (request, field) in [
            (
                pb::ListRefusalsRequest {
                    page_token: "not-a-token".into(),
                    ..Default::default()
                },
                "page_token",
            ),
            (
                pb::ListRefusalsRequest {
                    page_size: 5000,
                    ..Default::default()
                },
                "page_size",
            ),
        ] {
            let status = admin.list_refusals(request).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(field), "{status:?}");
        }

        // A second, different refusal of site 2; paged one per page.
        let mut session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        let db = master_db.connect().await;
        let store_3 = store_of(&db, 3).await;
        let foreign = stock_line(&store_3.id, &items[0].id);
        push_expecting_refusal(&mut session, vec![foreign]).await;
        let first_page = admin
            .list_refusals(pb::ListRefusalsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first_page.refusals.len(), 1);
        assert_eq!(
            first_page.refusals[0].record.as_ref().map(|r| r.table),
            Some(pb::Table::StockLine as i32),
            "the most recent first"
        );
        let second_page = admin
            .list_refusals(pb::ListRefusalsRequest {
                page_size: 1,
                page_token: first_page.next_page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second_page.refusals, listed.refusals);
        assert!(second_page.next_page_token.is_empty());

        // SyncStatus counts them per site.
        let sites = master
            .reports()
            .await
            .sync_status(pb::SyncStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .sites;
        let site = |id: u32| sites.iter().find(|s| s.sync_id == id).unwrap();
        assert_eq!(site(2).refusals, 2);
        assert!(site(2).last_refusal_at_ms >= refusal.last_at_ms);
        assert_eq!((site(3).refusals, site(3).last_refusal_at_ms), (0, 0));

        // The operator's command prints them.
        let address = master.process.addr.to_string();
        let json = storesync_tests::run_cli(
            "master-service",
            "STORESYNC_MASTER_BIN",
            &[
                "report",
                "rejections",
                "--sync-id",
                "2",
                "--address",
                &address,
                "--format",
                "json",
            ],
        );
        let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 2, "{json}");
        assert_eq!(rows[1]["attempts"], 3, "{json}");
        assert!(
            rows[1]["record"]
                .as_str()
                .is_some_and(|r| r == format!("item {}", items[0].id)),
            "{json}"
        );
    }
}
