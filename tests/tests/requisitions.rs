//! Requisitions between the network's stores (see docs/TRANSFERS.md): a
//! store's sent request becomes, through the master, the supplying store's
//! response, exactly once; the supplier ships against it and both ends, and
//! the master's reports, agree on what was supplied.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use storesync_shared::domain::entities::{requisition, requisition_line};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, goods_out,
    store_of, Authed, Master, Satellite, SYNC_PASSWORD, SYNC_USER,
};
use storesync_tests::master::assert_status;
use storesync_tests::raw::{hello, open, push_acked, push_refused};
use storesync_tests::{backends, eventually, TestDb};

const LIMIT: Duration = Duration::from_secs(60);

type Store = pb::store_service_client::StoreServiceClient<Authed>;

fn ask(item: &pb::Item, units: f64) -> pb::RequisitionLineInput {
    pb::RequisitionLineInput {
        item_id: item.id.clone(),
        requested_quantity: units,
    }
}

async fn requisitions(store: &mut Store, kind: pb::RequisitionKind) -> Vec<pb::Requisition> {
    store
        .list_requisitions(pb::ListRequisitionsRequest {
            kind: kind as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .requisitions
}

/// The responses the master holds for request `request_id`.
async fn responses_of(db: &DatabaseConnection, request_id: &str) -> Vec<requisition::Model> {
    requisition::Entity::find()
        .filter(requisition::Column::LinkedRequisitionId.eq(request_id))
        .all(db)
        .await
        .unwrap()
}

/// Units supplied per item of a requisition, as its store lists it.
fn supplied(requisition: &pb::Requisition, item: &pb::Item) -> f64 {
    requisition
        .lines
        .iter()
        .find(|line| line.item_id == item.id)
        .map(|line| line.supplied_quantity)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clinic_3_requisitions_from_clinic_2_which_supplies_part_and_every_view_agrees() {
    for backend in
        backends("clinic_3_requisitions_from_clinic_2_which_supplies_part_and_every_view_agrees")
    {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "REQ", 2).await;
        let (supplier, customer) = create_trading_partners(&master, "R").await;
        let store_2 = store_of(&db, 2).await;
        let store_3 = store_of(&db, 3).await;
        let clinic_2 = Satellite::start(&master.url(), 2, "streaming", &[]);
        let clinic_3 = Satellite::start(&master.url(), 3, "streaming", &[]);
        clinic_2.wait_initialised(LIMIT).await;
        clinic_3.wait_initialised(LIMIT).await;
        let mut supplying = clinic_2.store().await;
        let mut requesting = clinic_3.store().await;
        let stock_2 = goods_in(&mut supplying, &supplier, &items, 40.0, "C2")
            .await
            .stock_lines;
        // Clinic 3 has some stock of the first item and has issued 6 packs
        // of it (pack size 100): 600 units over 3 months, 200 a month.
        let stock_3 = goods_in(&mut requesting, &supplier, &items[..1], 10.0, "C3")
            .await
            .stock_lines;
        goods_out(&mut requesting, &customer, &stock_3[0], 6.0)
            .await
            .unwrap();

        // Refused: from itself, from a name that is no store, from an
        // unknown store, an item twice; nothing is created.
        for (to, lines, code, needle) in [
            (
                store_3.id.clone(),
                vec![ask(&items[0], 100.0)],
                tonic::Code::FailedPrecondition,
                "supplier_store_id: a store cannot request from itself",
            ),
            (
                customer.id.clone(),
                vec![ask(&items[0], 100.0)],
                tonic::Code::FailedPrecondition,
                "is not a store of the network",
            ),
            (
                uuid::Uuid::new_v4().to_string(),
                vec![ask(&items[0], 100.0)],
                tonic::Code::NotFound,
                "supplier_store_id: no store",
            ),
            (
                store_2.id.clone(),
                vec![ask(&items[0], 100.0), ask(&items[0], 5.0)],
                tonic::Code::InvalidArgument,
                "lines[1].item_id",
            ),
            (
                store_2.id.clone(),
                vec![ask(&items[0], 0.0)],
                tonic::Code::InvalidArgument,
                "lines[0].requested_quantity",
            ),
        ] {
            assert_status(
                requesting
                    .create_requisition(pb::CreateRequisitionRequest {
                        supplier_store_id: to,
                        reference: String::new(),
                        lines,
                    })
                    .await,
                code,
                needle,
            );
        }
        assert!(
            requisitions(&mut requesting, pb::RequisitionKind::Unspecified)
                .await
                .is_empty()
        );

        // A draft with stock on hand and consumption beside each line.
        let draft = requesting
            .create_requisition(pb::CreateRequisitionRequest {
                supplier_store_id: store_2.id.clone(),
                reference: "MONTHLY".into(),
                lines: vec![ask(&items[0], 100.0), ask(&items[1], 50.0)],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(draft.kind(), pb::RequisitionKind::Request);
        assert_eq!(draft.status(), pb::RequisitionStatus::RequisitionDraft);
        let first = &draft.lines[0];
        assert_eq!(first.item_id, items[0].id);
        assert_eq!(first.stock_on_hand, 400.0, "4 packs of 100 left");
        assert_eq!(first.average_monthly_consumption, 200.0);
        assert_eq!(
            (
                draft.lines[1].stock_on_hand,
                draft.lines[1].average_monthly_consumption
            ),
            (0.0, 0.0)
        );
        let draft = requesting
            .update_requisition(pb::UpdateRequisitionRequest {
                id: draft.id.clone(),
                reference: "MONTHLY".into(),
                lines: vec![ask(&items[0], 1000.0), ask(&items[1], 500.0)],
            })
            .await
            .unwrap()
            .into_inner();
        let sent = requesting
            .send_requisition(pb::SendRequisitionRequest {
                id: draft.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sent.status(), pb::RequisitionStatus::RequisitionSent);
        assert_status(
            requesting
                .update_requisition(pb::UpdateRequisitionRequest {
                    id: draft.id.clone(),
                    reference: String::new(),
                    lines: vec![ask(&items[0], 1.0)],
                })
                .await,
            tonic::Code::FailedPrecondition,
            "is REQUISITION_SENT, not REQUISITION_DRAFT",
        );
        assert_status(
            requesting
                .finalise_requisition(pb::FinaliseRequisitionRequest {
                    id: draft.id.clone(),
                })
                .await,
            tonic::Code::NotFound,
            "no response requisition",
        );

        // The master creates clinic 2's response; clinic 2 gets it.
        let response = eventually(LIMIT, "the response on the master", || async {
            responses_of(&db, &draft.id).await.into_iter().next()
        })
        .await;
        assert_eq!(response.store_id, store_2.id);
        assert_eq!(response.other_store_id, store_3.id);
        let listed = eventually(LIMIT, "the response at clinic 2", || {
            let mut supplying = supplying.clone();
            async move {
                requisitions(&mut supplying, pb::RequisitionKind::Response)
                    .await
                    .into_iter()
                    .next()
            }
        })
        .await;
        assert_eq!(listed.id, response.id);
        assert_eq!(listed.status(), pb::RequisitionStatus::RequisitionSent);
        let mut requested: Vec<f64> = listed.lines.iter().map(|l| l.requested_quantity).collect();
        requested.sort_by(f64::total_cmp);
        assert_eq!(requested, vec![500.0, 1000.0]);

        // Supplying against the response to another store is refused.
        let line = |packs| pb::InvoiceLine {
            stock_line_id: stock_2[0].id.clone(),
            number_of_packs: packs,
            sell_price_per_pack: 3.0,
            ..Default::default()
        };
        assert_status(
            supplying
                .create_transfer(pb::CreateTransferRequest {
                    to_store_id: store_of(&db, 1).await.id,
                    reference: String::new(),
                    lines: vec![line(1.0)],
                    requisition_id: response.id.clone(),
                })
                .await,
            tonic::Code::FailedPrecondition,
            "answers store",
        );
        // Clinic 2 supplies part: 7 packs of 100 of the first item.
        let outbound = supplying
            .create_transfer(pb::CreateTransferRequest {
                to_store_id: store_3.id.clone(),
                reference: "PART".into(),
                lines: vec![line(7.0)],
                requisition_id: response.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outbound.requisition_id, response.id);
        supplying
            .ship_transfer(pb::ShipTransferRequest {
                id: outbound.id.clone(),
            })
            .await
            .unwrap();
        let listed = requisitions(&mut supplying, pb::RequisitionKind::Response).await;
        assert_eq!(supplied(&listed[0], &items[0]), 700.0);
        assert_eq!(supplied(&listed[0], &items[1]), 0.0);

        // The master's reports: open requisition 700 of 1500 supplied, the
        // shipment in transit from clinic 2 to clinic 3.
        let mut reports = master.reports().await;
        let open_row = eventually(LIMIT, "the supply in the open requisitions", || {
            let mut reports = reports.clone();
            async move {
                reports
                    .open_requisitions(pb::OpenRequisitionsRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .rows
                    .into_iter()
                    .find(|row| row.units_supplied > 0.0)
            }
        })
        .await;
        assert_eq!(open_row.requisition_id, draft.id);
        assert_eq!(open_row.response_id, response.id);
        assert_eq!((open_row.lines, open_row.units_requested), (2, 1500.0));
        assert_eq!(open_row.units_supplied, 700.0);
        let transit = reports
            .stock_in_transit(pb::StockInTransitRequest::default())
            .await
            .unwrap()
            .into_inner()
            .rows;
        assert_eq!(transit.len(), 1);
        assert_eq!(
            (
                transit[0].from_store_id.as_str(),
                transit[0].to_store_id.as_str()
            ),
            (store_2.id.as_str(), store_3.id.as_str())
        );
        assert_eq!((transit[0].transfers, transit[0].packs), (1, 7.0));
        assert!(transit[0].oldest_shipped_at_ms > 0);

        // Clinic 3 sees the supply against its request and receives 2 short.
        let request_view = eventually(LIMIT, "the supply at clinic 3", || {
            let mut requesting = requesting.clone();
            let item = items[0].clone();
            async move {
                requisitions(&mut requesting, pb::RequisitionKind::Request)
                    .await
                    .into_iter()
                    .find(|r| supplied(r, &item) > 0.0)
            }
        })
        .await;
        assert_eq!(supplied(&request_view, &items[0]), 700.0);
        assert_eq!(supplied(&request_view, &items[1]), 0.0);
        let inbound = requesting
            .list_transfers(pb::ListTransfersRequest {
                direction: pb::TransferDirection::Inbound as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .transfers
            .remove(0)
            .invoice
            .unwrap();
        assert_eq!(inbound.requisition_id, draft.id);
        let full = requesting
            .get_invoice(pb::GetInvoiceRequest {
                id: inbound.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        requesting
            .receive_transfer(pb::ReceiveTransferRequest {
                id: inbound.id.clone(),
                lines: vec![pb::ReceivedLine {
                    line_id: full.lines[0].id.clone(),
                    received_number_of_packs: 5.0,
                }],
            })
            .await
            .unwrap();
        let discrepancy = eventually(LIMIT, "the short receipt in the report", || {
            let mut reports = reports.clone();
            async move {
                reports
                    .receipt_discrepancies(pb::ReceiptDiscrepanciesRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .rows
                    .into_iter()
                    .next()
            }
        })
        .await;
        assert_eq!(discrepancy.transfer_id, outbound.id);
        assert_eq!(
            (
                discrepancy.packs_shipped,
                discrepancy.packs_received,
                discrepancy.discrepancy
            ),
            (7.0, 5.0, -2.0)
        );
        assert!(reports
            .stock_in_transit(pb::StockInTransitRequest::default())
            .await
            .unwrap()
            .into_inner()
            .rows
            .is_empty());

        // Clinic 2 finalises: no more supply, and it is no longer open.
        let finalised = supplying
            .finalise_requisition(pb::FinaliseRequisitionRequest {
                id: response.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            finalised.status(),
            pb::RequisitionStatus::RequisitionFinalised
        );
        assert_eq!(supplied(&finalised, &items[0]), 700.0);
        assert_status(
            supplying
                .finalise_requisition(pb::FinaliseRequisitionRequest {
                    id: response.id.clone(),
                })
                .await,
            tonic::Code::FailedPrecondition,
            "is REQUISITION_FINALISED",
        );
        assert_status(
            supplying
                .create_transfer(pb::CreateTransferRequest {
                    to_store_id: store_3.id.clone(),
                    reference: String::new(),
                    lines: vec![line(1.0)],
                    requisition_id: response.id.clone(),
                })
                .await,
            tonic::Code::FailedPrecondition,
            "only an open (REQUISITION_SENT) one can be supplied",
        );
        eventually(LIMIT, "the requisition closed in the report", || {
            let mut reports = reports.clone();
            async move {
                reports
                    .open_requisitions(pb::OpenRequisitionsRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .rows
                    .is_empty()
                    .then_some(())
            }
        })
        .await;
        assert_eq!(responses_of(&db, &draft.id).await.len(), 1);
        assert_store_copies_equal(&db, &clinic_2, LIMIT).await;
        assert_store_copies_equal(&db, &clinic_3, LIMIT).await;
    }
}

/// A Hello of a site that has written its outbox up to a far sequence
/// number (the master must not take it for an older copy when it reopens).
fn wrote(sync_id: u32) -> pb::Hello {
    pb::Hello {
        upstream_last_seq: 1000,
        ..hello(sync_id)
    }
}

fn record(record: pb::sync_record::Record) -> pb::SyncRecord {
    pb::SyncRecord {
        record: Some(record),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resent_request_makes_one_response_and_a_site_cannot_forge_or_relink_one() {
    for backend in
        backends("a_resent_request_makes_one_response_and_a_site_cannot_forge_or_relink_one")
    {
        let master_db = TestDb::new(backend);
        let mut master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "RRQ", 1).await;
        let store_2 = store_of(&db, 2).await;
        let store_3 = store_of(&db, 3).await;

        // Site 3 sends a request to store 2 (as a correct satellite would).
        let request = pb::Requisition {
            id: uuid::Uuid::new_v4().to_string(),
            store_id: store_3.id.clone(),
            kind: pb::RequisitionKind::Request as i32,
            status: pb::RequisitionStatus::RequisitionSent as i32,
            other_store_id: store_2.id.clone(),
            requisition_number: 1,
            created_at_ms: 1,
            sent_at_ms: 2,
            ..Default::default()
        };
        let request_line = pb::RequisitionLine {
            id: uuid::Uuid::new_v4().to_string(),
            requisition_id: request.id.clone(),
            store_id: store_3.id.clone(),
            item_id: items[0].id.clone(),
            requested_quantity: 300.0,
            stock_on_hand: 20.0,
            average_monthly_consumption: 90.0,
            ..Default::default()
        };
        let batch = vec![
            record(pb::sync_record::Record::Requisition(request.clone())),
            record(pb::sync_record::Record::RequisitionLine(
                request_line.clone(),
            )),
        ];
        let mut session = open(&master.url(), "3", SYNC_USER, SYNC_PASSWORD, wrote(3))
            .await
            .unwrap();
        let first = session.welcome.upstream_acked_seq + 1;
        let acked = push_acked(&mut session, first, batch.clone()).await;
        drop(session);
        // The master is killed after the apply; the same batch comes again
        // (a lost ack), then the same records under new sequence numbers.
        master.restart_after_kill();
        let mut session = open(&master.url(), "3", SYNC_USER, SYNC_PASSWORD, wrote(3))
            .await
            .unwrap();
        assert_eq!(push_acked(&mut session, first, batch.clone()).await, acked);
        push_acked(&mut session, acked + 1, batch.clone()).await;
        drop(session);

        let responses = responses_of(&db, &request.id).await;
        assert_eq!(responses.len(), 1, "one response");
        let response = responses.into_iter().next().unwrap();
        assert_eq!(response.store_id, store_2.id);
        assert_eq!(response.kind, "RESPONSE");
        assert_eq!(response.status, "REQUISITION_SENT");
        let response_lines = requisition_line::Entity::find()
            .filter(requisition_line::Column::RequisitionId.eq(response.id.as_str()))
            .all(&db)
            .await
            .unwrap();
        assert_eq!(response_lines.len(), 1);
        assert_eq!(response_lines[0].requested_quantity, 300.0);
        assert_eq!(response_lines[0].store_id, store_2.id);
        let handovers = storesync_tests::master::change_log(&db)
            .await
            .into_iter()
            .filter(|entry| entry.record_id == response.id)
            .count();
        assert_eq!(handovers, 1, "the response was handed over once");

        // Forged or relinked rows are refused, naming the record.
        let forged = pb::Requisition {
            id: uuid::Uuid::new_v4().to_string(),
            store_id: store_2.id.clone(),
            kind: pb::RequisitionKind::Response as i32,
            status: pb::RequisitionStatus::RequisitionSent as i32,
            other_store_id: store_3.id.clone(),
            requisition_number: 9,
            linked_requisition_id: request.id.clone(),
            ..Default::default()
        };
        let mut relinked: pb::Requisition = response.clone().into();
        relinked.linked_requisition_id = uuid::Uuid::new_v4().to_string();
        let extra_line = pb::RequisitionLine {
            id: uuid::Uuid::new_v4().to_string(),
            requisition_id: response.id.clone(),
            store_id: store_2.id.clone(),
            item_id: items[0].id.clone(),
            requested_quantity: 1.0,
            ..Default::default()
        };
        let mut more: pb::RequisitionLine = response_lines[0].clone().into();
        more.requested_quantity = 3000.0;
        let wrong_link = pb::Invoice {
            id: uuid::Uuid::new_v4().to_string(),
            store_id: store_2.id.clone(),
            name_id: store_of(&db, 1).await.id,
            kind: pb::InvoiceKind::OutboundShipment as i32,
            status: pb::InvoiceStatus::Draft as i32,
            invoice_number: 1,
            created_at_ms: 1,
            requisition_id: response.id.clone(),
            ..Default::default()
        };
        let mut own = request.clone();
        own.id = uuid::Uuid::new_v4().to_string();
        own.store_id = store_2.id.clone();
        own.other_store_id = store_2.id.clone();
        let mut outside = own.clone();
        outside.id = uuid::Uuid::new_v4().to_string();
        outside.other_store_id = uuid::Uuid::new_v4().to_string();
        for (records, refused_id, needle) in [
            (
                vec![record(pb::sync_record::Record::Requisition(forged.clone()))],
                forged.id.clone(),
                "creates a response requisition",
            ),
            (
                vec![record(pb::sync_record::Record::Requisition(relinked))],
                response.id.clone(),
                "changes the link of a response requisition",
            ),
            (
                vec![record(pb::sync_record::Record::RequisitionLine(
                    extra_line.clone(),
                ))],
                extra_line.id.clone(),
                "adds a line to a response requisition",
            ),
            (
                vec![record(pb::sync_record::Record::RequisitionLine(more))],
                response_lines[0].id.clone(),
                "changes the item, quantity or requisition of a response line",
            ),
            (
                vec![record(pb::sync_record::Record::Invoice(wrong_link.clone()))],
                wrong_link.id.clone(),
                "which is not a response of its store to the receiving store",
            ),
            (
                vec![record(pb::sync_record::Record::Requisition(own.clone()))],
                own.id.clone(),
                "requests from its own store",
            ),
            (
                vec![record(pb::sync_record::Record::Requisition(
                    outside.clone(),
                ))],
                outside.id.clone(),
                "which is not a store of the sync-with list",
            ),
        ] {
            let mut session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
                .await
                .unwrap();
            let first = session.welcome.upstream_acked_seq + 1;
            let (status, named) = push_refused(&mut session, first, records).await;
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            assert!(status.message().contains(needle), "{status:?}");
            assert!(status.message().contains(&refused_id), "{status:?}");
            assert_eq!(named.map(|r| r.id), Some(refused_id));
        }
        // Nothing of the refused batches was applied.
        for id in [&forged.id, &own.id, &outside.id] {
            assert!(requisition::Entity::find_by_id(id.clone())
                .one(&db)
                .await
                .unwrap()
                .is_none());
        }
        assert!(requisition_line::Entity::find_by_id(extra_line.id.clone())
            .one(&db)
            .await
            .unwrap()
            .is_none());
        let kept = requisition::Entity::find_by_id(response.id.clone())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.linked_requisition_id, request.id);
        let kept_line = requisition_line::Entity::find_by_id(response_lines[0].id.clone())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept_line.requested_quantity, 300.0);
        assert_eq!(
            storesync_shared::domain::entities::invoice::Entity::find()
                .filter(
                    storesync_shared::domain::entities::invoice::Column::Id
                        .eq(wrong_link.id.as_str())
                )
                .count(&db)
                .await
                .unwrap(),
            0
        );

        // Site 2 may finalise its response.
        let mut finalised: pb::Requisition = response.clone().into();
        finalised.status = pb::RequisitionStatus::RequisitionFinalised as i32;
        finalised.finalised_at_ms = 5;
        let mut session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        let first = session.welcome.upstream_acked_seq + 1;
        push_acked(
            &mut session,
            first,
            vec![record(pb::sync_record::Record::Requisition(finalised))],
        )
        .await;
        let kept = requisition::Entity::find_by_id(response.id.clone())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.status, "REQUISITION_FINALISED");

        // The master's own store requests: its response exists at once.
        let mut warehouse = master.store().await;
        let own_request = warehouse
            .create_requisition(pb::CreateRequisitionRequest {
                supplier_store_id: store_2.id.clone(),
                reference: "WH".into(),
                lines: vec![ask(&items[0], 10.0)],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(responses_of(&db, &own_request.id).await.is_empty());
        warehouse
            .send_requisition(pb::SendRequisitionRequest {
                id: own_request.id.clone(),
            })
            .await
            .unwrap();
        assert_eq!(responses_of(&db, &own_request.id).await.len(), 1);
    }
}
