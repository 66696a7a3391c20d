//! A satellite on its own, before any master has answered: it serves, shows
//! that it is waiting for the master, and refuses what it must refuse.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use storesync_shared::proto::v1 as pb;
use storesync_tests::satellite::{as_operator, spawn_satellite, NOWHERE};
use storesync_tests::{backends, with_basic, TestDb};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn an_uninitialised_satellite_serves_waits_and_refuses() {
    for backend in backends("an_uninitialised_satellite_serves_waits_and_refuses") {
        let db = TestDb::new(backend);
        let mut satellite = spawn_satellite(&db, NOWHERE, 7, &[]);
        let channel = satellite.channel().await;

        // Health and reflection answer without credentials.
        let mut health = HealthClient::new(channel.clone());
        for service in ["", "storesync.v1.StoreService", "storesync.v1.AgentService"] {
            let answer = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
        }
        let services = list_services(channel.clone()).await;
        for wanted in [
            "storesync.v1.StoreService",
            "storesync.v1.MasterDataService",
            "storesync.v1.AgentService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                services.iter().any(|s| s == wanted),
                "{wanted} in {services:?}"
            );
        }

        // Status: not connected, not initialised, the master its only peer.
        let mut agent = satellite.agent().await;
        let status = agent
            .status(as_operator(pb::AgentStatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.sync_id, 7);
        assert_eq!(status.state(), pb::ConnectionState::Disconnected);
        assert_eq!(status.mode(), pb::SyncMode::Streaming);
        assert!(!status.initialised);
        assert!(status.store.is_none());
        assert_eq!(
            status.sync_with,
            [pb::SyncPeer {
                sync_id: 1,
                name: "master".into(),
                url: NOWHERE.into()
            }]
        );
        assert_eq!((status.upstream_last_seq, status.upstream_backlog), (0, 0));
        assert_eq!(
            status.sync_interval_minutes,
            storesync_shared::kit::config::SYNC_INTERVAL_MINUTES
        );
        assert!(!status.agent_version.is_empty());
        agent
            .sync_now(as_operator(pb::SyncNowRequest {}))
            .await
            .unwrap();

        // Store writes and reads wait for initialisation.
        let mut store = satellite.store().await;
        let refused = store
            .create_invoice(as_operator(pb::CreateInvoiceRequest {
                invoice: Some(pb::Invoice {
                    kind: pb::InvoiceKind::SupplierInvoice as i32,
                    ..Default::default()
                }),
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("not initialised yet"),
            "{refused:?}"
        );
        let refused = store
            .list_stock(as_operator(pb::ListStockRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        // Master data reads work (empty), writes are the master's alone.
        let items = store
            .list_items(as_operator(pb::ListItemsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert!(items.items.is_empty());
        let mut master_data = satellite.master_data().await;
        let refused = master_data
            .upsert_item(as_operator(pb::UpsertItemRequest {
                item: Some(pb::Item {
                    code: "X".into(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("master data can only be changed on the master (Sync ID 1)"),
            "{refused:?}"
        );
        let refused = master_data
            .delete_name(as_operator(pb::DeleteNameRequest { id: "x".into() }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        let missing = master_data
            .get_item(as_operator(pb::GetItemRequest {
                id: "2f1c7a4e-0000-4000-8000-000000000000".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);

        // Without credentials, or with wrong ones: UNAUTHENTICATED.
        let anonymous = agent
            .status(tonic::Request::new(pb::AgentStatusRequest {}))
            .await
            .unwrap_err();
        assert_eq!(anonymous.code(), Code::Unauthenticated);
        let wrong = store
            .list_items(with_basic(
                tonic::Request::new(pb::ListItemsRequest::default()),
                "operator",
                "wrong",
            ))
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);

        // SIGTERM: a clean exit, soon.
        drop((agent, store, master_data, health, channel));
        let status = satellite
            .process
            .terminate(Duration::from_secs(15))
            .expect("exits within 15 s of SIGTERM");
        assert!(status.success(), "exit status {status:?}");
    }
}

#[tokio::test]
async fn locked_sync_settings_need_the_authorisation_code() {
    let db = TestDb::new(storesync_tests::Backend::Sqlite);
    let code = [("STORESYNC_AUTHORISATION_CODE", "open-sesame")];
    let mut first = spawn_satellite(&db, NOWHERE, 3, &code);
    assert!(first
        .process
        .terminate(Duration::from_secs(15))
        .unwrap()
        .success());

    // Another Sync ID without the code: refused at start, saying why.
    let bin = storesync_tests::bin_path("satellite-agent", "STORESYNC_SATELLITE_BIN");
    let output = std::process::Command::new(bin)
        .env_clear()
        .envs([
            ("STORESYNC_MASTER_URL", NOWHERE),
            ("STORESYNC_SYNC_ID", "4"),
            ("STORESYNC_SYNC_USER", storesync_tests::satellite::SYNC_USER),
            (
                "STORESYNC_SYNC_PASSWORD",
                storesync_tests::satellite::SYNC_PASSWORD,
            ),
            ("STORESYNC_DATABASE_URL", &db.url()),
            ("STORESYNC_LISTEN", "127.0.0.1:0"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("sync settings are locked"), "{stderr}");
    assert!(stderr.contains("STORESYNC_AUTHORISATION_CODE"), "{stderr}");
    assert!(stderr.contains("sync_id"), "names what changed: {stderr}");

    // With the code it starts, with the new Sync ID.
    let second = spawn_satellite(&db, NOWHERE, 4, &code);
    let status = second
        .agent()
        .await
        .status(as_operator(pb::AgentStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.sync_id, 4);
}

/// Service names listed by reflection, asked over both v1 and v1alpha.
async fn list_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha as alpha;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut v1 = ServerReflectionClient::new(channel.clone());
    let mut answers = v1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };

    let mut v1alpha = alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = v1alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let alpha_answer = answers.message().await.unwrap().expect("a v1alpha answer");
    assert!(alpha_answer.message_response.is_some());

    list.service.into_iter().map(|s| s.name).collect()
}

/// Makes the satellite's database look initialised by the master: a store and
/// some master data, written straight into it (the sync stream does this in
/// the real system).
async fn pretend_initialised(db: &TestDb) {
    use sea_orm::ConnectionTrait;
    let conn = db.connect().await;
    for statement in [
        "UPDATE sync_state SET initialised = TRUE, store_id = '5e1f0000-0000-4000-8000-000000000007', \
         store_code = 'S7', store_name = 'Store seven', sync_interval_minutes = 3 WHERE id = 1",
        "INSERT INTO item VALUES ('17e40000-0000-4000-8000-00000000000a', 'AMOX250', 'Amoxicillin 250', 'tab', 10, TRUE, 1)",
        "INSERT INTO name VALUES ('0a4e0000-0000-4000-8000-00000000000a', 'SUP', 'Supplier', FALSE, TRUE, FALSE, TRUE, 1)",
        "INSERT INTO name VALUES ('0a4e0000-0000-4000-8000-00000000000b', 'CUST', 'Customer', TRUE, FALSE, FALSE, TRUE, 1)",
    ] {
        conn.execute_unprepared(statement).await.unwrap();
    }
    conn.close().await.unwrap();
}

#[tokio::test]
async fn store_writes_on_an_initialised_satellite_fill_the_outbox() {
    for backend in backends("store_writes_on_an_initialised_satellite_fill_the_outbox") {
        let db = TestDb::new(backend);
        let satellite = spawn_satellite(&db, NOWHERE, 7, &[]);
        pretend_initialised(&db).await;
        let mut store = satellite.store().await;
        let mut agent = satellite.agent().await;

        let line = |packs: f64| pb::InvoiceLine {
            item_id: "17e40000-0000-4000-8000-00000000000a".into(),
            batch: "B1".into(),
            expiry_date: "2027-03-31".into(),
            pack_size: 10,
            number_of_packs: packs,
            cost_price_per_pack: 1.25,
            ..Default::default()
        };
        let goods_in = store
            .create_invoice(as_operator(pb::CreateInvoiceRequest {
                invoice: Some(pb::Invoice {
                    kind: pb::InvoiceKind::SupplierInvoice as i32,
                    name_id: "0a4e0000-0000-4000-8000-00000000000a".into(),
                    lines: vec![line(10.0), line(5.0)],
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner();
        let invoice = goods_in.invoice.unwrap();
        assert_eq!(invoice.store_id, "5e1f0000-0000-4000-8000-000000000007");
        assert_eq!(invoice.invoice_number, 1);

        // Two stock lines, the invoice and two lines: five outbox entries.
        let status = agent
            .status(as_operator(pb::AgentStatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert!(status.initialised);
        assert_eq!(status.store.unwrap().code, "S7");
        assert_eq!((status.upstream_last_seq, status.upstream_backlog), (5, 5));
        // The stored preference is read at start; written later, it waits for a restart.
        assert_eq!(
            status.sync_interval_minutes,
            storesync_shared::kit::config::SYNC_INTERVAL_MINUTES
        );

        // Too much out: refused, and nothing reaches the outbox.
        let stock_line_id = goods_in.stock_lines[1].id.clone();
        let refused = store
            .create_invoice(as_operator(pb::CreateInvoiceRequest {
                invoice: Some(pb::Invoice {
                    kind: pb::InvoiceKind::CustomerInvoice as i32,
                    name_id: "0a4e0000-0000-4000-8000-00000000000b".into(),
                    lines: vec![pb::InvoiceLine {
                        stock_line_id: stock_line_id.clone(),
                        number_of_packs: 6.0,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains(&stock_line_id), "{refused:?}");
        let status = agent
            .status(as_operator(pb::AgentStatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.upstream_last_seq, 5);

        let on_hand = store
            .stock_on_hand(as_operator(pb::StoreStockOnHandRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(on_hand.rows.len(), 1);
        assert_eq!(
            (on_hand.rows[0].packs_on_hand, on_hand.rows[0].units_on_hand),
            (15.0, 150.0)
        );
        let read = store
            .get_invoice(as_operator(pb::GetInvoiceRequest {
                id: invoice.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.lines.len(), 2);
    }
}
