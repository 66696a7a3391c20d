//! Transfers between the network's stores (see docs/TRANSFERS.md): an
//! outbound shipment at one store becomes, through the master, the inbound
//! shipment of another, exactly once, with either end offline.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use storesync_shared::domain::entities::{invoice, invoice_line, transfer};
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

/// A request line taking `packs` from `stock` at `sell` per pack.
fn take(stock: &pb::StockLine, packs: f64, sell: f64) -> pb::InvoiceLine {
    pb::InvoiceLine {
        stock_line_id: stock.id.clone(),
        number_of_packs: packs,
        sell_price_per_pack: sell,
        ..Default::default()
    }
}

/// (available, total) packs of a stock line, as its store reports them.
async fn packs(store: &mut Store, stock_line_id: &str) -> (f64, f64) {
    let lines = store
        .list_stock(pb::ListStockRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .stock_lines;
    let line = lines
        .iter()
        .find(|line| line.id == stock_line_id)
        .unwrap_or_else(|| panic!("stock line {stock_line_id} is listed"));
    (line.available_number_of_packs, line.total_number_of_packs)
}

async fn transfers(store: &mut Store, direction: pb::TransferDirection) -> Vec<pb::TransferEntry> {
    store
        .list_transfers(pb::ListTransfersRequest {
            direction: direction as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .transfers
}

/// The inbound shipments the master holds for outbound `outbound_id`.
async fn inbound_of(db: &DatabaseConnection, outbound_id: &str) -> Vec<invoice::Model> {
    invoice::Entity::find()
        .filter(invoice::Column::LinkedInvoiceId.eq(outbound_id))
        .all(db)
        .await
        .unwrap()
}

async fn transfer_row(db: &DatabaseConnection, outbound_id: &str) -> Option<transfer::Model> {
    transfer::Entity::find_by_id(outbound_id.to_owned())
        .one(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_warehouse_ships_to_a_clinic_that_is_down_and_the_clinic_receives_one_line_short() {
    for backend in backends(
        "the_warehouse_ships_to_a_clinic_that_is_down_and_the_clinic_receives_one_line_short",
    ) {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(4).await;
        let items = create_items(&master, "TRF", 2).await;
        let (supplier, customer) = create_trading_partners(&master, "T").await;
        let clinic = store_of(&db, 2).await;
        let warehouse = store_of(&db, 1).await;
        let mut store = master.store().await;
        let stock = goods_in(&mut store, &supplier, &items, 50.0, "WH")
            .await
            .stock_lines;
        assert_eq!(stock.len(), 2);

        // A draft reserves: available packs go down, total packs stay.
        let draft = store
            .create_transfer(pb::CreateTransferRequest {
                requisition_id: String::new(),
                to_store_id: clinic.id.clone(),
                reference: "TO-CLINIC-2".into(),
                lines: vec![take(&stock[0], 10.0, 4.0), take(&stock[1], 20.0, 5.0)],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(draft.kind(), pb::InvoiceKind::OutboundShipment);
        assert_eq!(draft.status(), pb::InvoiceStatus::Draft);
        assert_eq!(packs(&mut store, &stock[0].id).await, (40.0, 50.0));
        assert_eq!(packs(&mut store, &stock[1].id).await, (30.0, 50.0));

        // Editing the draft moves the reservation.
        store
            .update_transfer(pb::UpdateTransferRequest {
                id: draft.id.clone(),
                reference: "TO-CLINIC-2".into(),
                lines: vec![take(&stock[0], 12.0, 4.0), take(&stock[1], 20.0, 5.0)],
            })
            .await
            .unwrap();
        assert_eq!(packs(&mut store, &stock[0].id).await, (38.0, 50.0));

        // Shipping more than is available is refused and changes nothing.
        assert_status(
            store
                .create_transfer(pb::CreateTransferRequest {
                    requisition_id: String::new(),
                    to_store_id: clinic.id.clone(),
                    reference: String::new(),
                    lines: vec![take(&stock[0], 39.0, 4.0)],
                })
                .await,
            tonic::Code::FailedPrecondition,
            &format!(
                "stock line {} (batch \"WH-0\") has 38 packs available",
                stock[0].id
            ),
        );
        // To a store not in the sync-with list: site 4's store, removed
        // (its name stays, inactive, because an invoice names it), a name
        // that is no store, this store itself, an unknown id.
        let name_of_4 = pb::Name {
            id: store_of(&db, 4).await.id,
            ..Default::default()
        };
        goods_out(&mut store, &name_of_4, &stock[1], 1.0)
            .await
            .unwrap();
        let token = master.unlock().await;
        let mut remove = tonic::Request::new(pb::RemoveSiteRequest { sync_id: 4 });
        remove
            .metadata_mut()
            .insert("x-unlock-token", token.parse().unwrap());
        master.admin().await.remove_site(remove).await.unwrap();
        for (to, code, needle) in [
            (
                name_of_4.id.clone(),
                tonic::Code::FailedPrecondition,
                "is not in the sync-with list",
            ),
            (
                customer.id.clone(),
                tonic::Code::FailedPrecondition,
                "is not a store of the network",
            ),
            (
                warehouse.id.clone(),
                tonic::Code::FailedPrecondition,
                "cannot ship to itself",
            ),
            (
                uuid::Uuid::new_v4().to_string(),
                tonic::Code::NotFound,
                "to_store_id: no store",
            ),
        ] {
            assert_status(
                store
                    .create_transfer(pb::CreateTransferRequest {
                        requisition_id: String::new(),
                        to_store_id: to,
                        reference: String::new(),
                        lines: vec![take(&stock[0], 1.0, 4.0)],
                    })
                    .await,
                code,
                needle,
            );
        }
        assert_eq!(packs(&mut store, &stock[0].id).await, (38.0, 50.0));
        assert_eq!(
            transfers(&mut store, pb::TransferDirection::Outbound)
                .await
                .len(),
            1,
            "no refused transfer was created"
        );

        // Shipped: total packs go down; it can no longer change.
        let shipped = store
            .ship_transfer(pb::ShipTransferRequest {
                id: draft.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(shipped.status(), pb::InvoiceStatus::Shipped);
        assert!(shipped.shipped_at_ms > 0);
        assert_eq!(packs(&mut store, &stock[0].id).await, (38.0, 38.0));
        assert_eq!(packs(&mut store, &stock[1].id).await, (29.0, 29.0));
        assert_status(
            store
                .update_transfer(pb::UpdateTransferRequest {
                    id: draft.id.clone(),
                    reference: String::new(),
                    lines: vec![take(&stock[0], 1.0, 4.0)],
                })
                .await,
            tonic::Code::FailedPrecondition,
            "is SHIPPED, not DRAFT",
        );
        assert_status(
            store
                .ship_transfer(pb::ShipTransferRequest {
                    id: draft.id.clone(),
                })
                .await,
            tonic::Code::FailedPrecondition,
            "is SHIPPED",
        );
        assert_eq!(packs(&mut store, &stock[0].id).await, (38.0, 38.0));

        // The master created the clinic's inbound shipment at once, while
        // the clinic is down: one, linked, SHIPPED, at the sender's prices.
        let inbound = inbound_of(&db, &draft.id).await;
        assert_eq!(inbound.len(), 1);
        let inbound = inbound.into_iter().next().unwrap();
        assert_eq!(inbound.store_id, clinic.id);
        assert_eq!(inbound.name_id, warehouse.id);
        assert_eq!(inbound.kind, "INBOUND_SHIPMENT");
        assert_eq!(inbound.status, "SHIPPED");
        let mut lines = invoice_line::Entity::find()
            .filter(invoice_line::Column::InvoiceId.eq(inbound.id.as_str()))
            .all(&db)
            .await
            .unwrap();
        lines.sort_by(|a, b| a.number_of_packs.total_cmp(&b.number_of_packs));
        assert_eq!(
            lines
                .iter()
                .map(|l| (l.number_of_packs, l.cost_price_per_pack, l.batch.as_str()))
                .collect::<Vec<_>>(),
            vec![(12.0, 4.0, "WH-0"), (20.0, 5.0, "WH-1")]
        );
        let record = transfer_row(&db, &draft.id).await.unwrap();
        assert_eq!(record.packs_shipped, 32.0);
        assert_eq!(record.delivered_at_ms, 0, "the clinic has not had it yet");

        // A store cannot receive another store's shipment.
        assert_status(
            store
                .receive_transfer(pb::ReceiveTransferRequest {
                    id: inbound.id.clone(),
                    lines: Vec::new(),
                })
                .await,
            tonic::Code::NotFound,
            "no inbound shipment",
        );

        // The clinic starts: its inbound shipment is there, and delivered.
        let clinic_site = Satellite::start(&master.url(), 2, "streaming", &[]);
        clinic_site.wait_initialised(LIMIT).await;
        let mut clinic_store = clinic_site.store().await;
        let entry = eventually(LIMIT, "the clinic's inbound shipment", || {
            let mut clinic_store = clinic_store.clone();
            async move {
                transfers(&mut clinic_store, pb::TransferDirection::Inbound)
                    .await
                    .into_iter()
                    .find(|e| e.transfer.is_some())
            }
        })
        .await;
        let invoice = entry.invoice.unwrap();
        assert_eq!(invoice.id, inbound.id);
        assert_eq!(invoice.status(), pb::InvoiceStatus::Shipped);
        eventually(LIMIT, "the master to record the delivery", || async {
            (transfer_row(&db, &draft.id).await.unwrap().delivered_at_ms > 0).then_some(())
        })
        .await;

        // Received, the 12-pack line 3 short.
        let full = clinic_store
            .get_invoice(pb::GetInvoiceRequest {
                id: inbound.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let short_line = full
            .lines
            .iter()
            .find(|l| l.number_of_packs == 12.0)
            .unwrap()
            .id
            .clone();
        let received = clinic_store
            .receive_transfer(pb::ReceiveTransferRequest {
                id: inbound.id.clone(),
                lines: vec![pb::ReceivedLine {
                    line_id: short_line,
                    received_number_of_packs: 9.0,
                }],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(received.status(), pb::InvoiceStatus::Received);
        let mut received_packs: Vec<f64> = received
            .lines
            .iter()
            .map(|l| l.received_number_of_packs)
            .collect();
        received_packs.sort_by(f64::total_cmp);
        assert_eq!(received_packs, vec![9.0, 20.0]);
        assert_status(
            clinic_store
                .receive_transfer(pb::ReceiveTransferRequest {
                    id: inbound.id.clone(),
                    lines: Vec::new(),
                })
                .await,
            tonic::Code::FailedPrecondition,
            "is RECEIVED",
        );
        let clinic_stock: f64 = clinic_store
            .list_stock(pb::ListStockRequest::default())
            .await
            .unwrap()
            .into_inner()
            .stock_lines
            .iter()
            .map(|l| l.total_number_of_packs)
            .sum();
        assert_eq!(clinic_stock, 29.0);

        // Both ends and the master agree.
        let record = eventually(LIMIT, "the master to record the receipt", || async {
            transfer_row(&db, &draft.id)
                .await
                .filter(|t| t.received_at_ms > 0)
        })
        .await;
        assert_eq!(
            (
                record.packs_shipped,
                record.packs_received,
                record.discrepancy
            ),
            (32.0, 29.0, -3.0)
        );
        assert_eq!(inbound_of(&db, &draft.id).await[0].status, "RECEIVED");
        let at_warehouse = transfers(&mut store, pb::TransferDirection::Outbound).await;
        let seen = at_warehouse[0].transfer.clone().unwrap();
        assert_eq!((seen.packs_received, seen.discrepancy), (29.0, -3.0));
        eventually(LIMIT, "the clinic to see the discrepancy", || {
            let mut clinic_store = clinic_store.clone();
            async move {
                transfers(&mut clinic_store, pb::TransferDirection::Inbound)
                    .await
                    .into_iter()
                    .find(|e| e.transfer.as_ref().is_some_and(|t| t.discrepancy == -3.0))
            }
        })
        .await;
        assert_store_copies_equal(&db, &clinic_site, LIMIT).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_between_satellites_reaches_an_interval_site_and_the_sender_sees_receipt_later()
{
    for backend in backends(
        "a_transfer_between_satellites_reaches_an_interval_site_and_the_sender_sees_receipt_later",
    ) {
        let master_db = TestDb::new(backend);
        let mut master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "SAT", 1).await;
        let (supplier, _) = create_trading_partners(&master, "S").await;
        let store_3 = store_of(&db, 3).await;
        let mut sender = Satellite::start(&master.url(), 2, "streaming", &[]);
        sender.wait_initialised(LIMIT).await;
        let mut sender_store = sender.store().await;
        let stock = goods_in(&mut sender_store, &supplier, &items, 30.0, "C2")
            .await
            .stock_lines;
        let outbound = sender_store
            .create_transfer(pb::CreateTransferRequest {
                requisition_id: String::new(),
                to_store_id: store_3.id.clone(),
                reference: "LOAN".into(),
                lines: vec![take(&stock[0], 10.0, 3.0)],
            })
            .await
            .unwrap()
            .into_inner();
        sender_store
            .ship_transfer(pb::ShipTransferRequest {
                id: outbound.id.clone(),
            })
            .await
            .unwrap();
        sender.wait_drained(LIMIT).await;
        assert_eq!(inbound_of(&db, &outbound.id).await.len(), 1);

        // The master is killed once the shipment is applied, before the
        // receiving site (not started) was sent anything; after its
        // restart there is still exactly one inbound shipment.
        master.restart_after_kill();

        // The sender goes offline; the receiver, in interval mode, gets the
        // shipment at a session and receives it.
        sender.process.terminate(Duration::from_secs(10));
        let receiver = Satellite::start(
            &master.url(),
            3,
            "interval",
            &[("STORESYNC_SYNC_INTERVAL_SECONDS", "3")],
        );
        receiver.wait_initialised(LIMIT).await;
        let mut receiver_store = receiver.store().await;
        let entry = eventually(LIMIT, "the inbound shipment at the receiver", || {
            let mut receiver_store = receiver_store.clone();
            async move {
                transfers(&mut receiver_store, pb::TransferDirection::Inbound)
                    .await
                    .into_iter()
                    .next()
            }
        })
        .await;
        let inbound_id = entry.invoice.unwrap().id;
        receiver_store
            .receive_transfer(pb::ReceiveTransferRequest {
                id: inbound_id.clone(),
                lines: Vec::new(),
            })
            .await
            .unwrap();
        let record = eventually(LIMIT, "the master to record the receipt", || async {
            transfer_row(&db, &outbound.id)
                .await
                .filter(|t| t.received_at_ms > 0)
        })
        .await;
        assert_eq!((record.packs_received, record.discrepancy), (10.0, 0.0));
        assert_eq!(inbound_of(&db, &outbound.id).await.len(), 1);
        assert_eq!(
            invoice::Entity::find()
                .filter(invoice::Column::StoreId.eq(store_3.id.as_str()))
                .filter(invoice::Column::Kind.eq("INBOUND_SHIPMENT"))
                .count(&db)
                .await
                .unwrap(),
            1,
            "one inbound shipment at the receiving store"
        );

        // The sender, back, sees it received.
        sender.start_again();
        let mut sender_store = sender.store().await;
        eventually(LIMIT, "the sender to see the receipt", || {
            let mut sender_store = sender_store.clone();
            async move {
                transfers(&mut sender_store, pb::TransferDirection::Outbound)
                    .await
                    .into_iter()
                    .find(|e| {
                        e.transfer
                            .as_ref()
                            .is_some_and(|t| t.packs_received == 10.0)
                    })
            }
        })
        .await;
        assert_eq!(packs(&mut sender_store, &stock[0].id).await, (20.0, 20.0));
        assert_store_copies_equal(&db, &receiver, LIMIT).await;
        assert_store_copies_equal(&db, &sender, LIMIT).await;
        // The product's own check agrees with the streaming sender, stock
        // ledger included (its shipped stock line is accounted for by the
        // outbound's lines), and the receiving store's ledger on the master
        // accounts for the packs received. (An on-demand check of the
        // interval-mode receiver only runs if it arrives during one of its
        // short sessions; its scheduled check runs at a session.)
        let result = storesync_tests::verify::settled_check(&master, 2, true, LIMIT).await;
        assert_eq!(result.outcome(), pb::VerifyOutcome::Equal, "{result:?}");
        assert!(
            result.site_ledger.is_empty() && result.master_ledger.is_empty(),
            "the sender's stock ledger does not account for the transfer: {result:?}"
        );
        let (problems, _) =
            storesync_shared::domain::integrity::ledger(&db, Some(store_3.id.as_str()))
                .await
                .unwrap();
        assert!(
            problems.is_empty(),
            "the receiver's stock ledger does not account for the receipt: {problems:?}"
        );
        let (problems, _) =
            storesync_shared::domain::integrity::ledger(&db, Some(store_3.id.as_str()))
                .await
                .unwrap();
        assert!(
            problems.is_empty(),
            "the receiver's stock ledger does not account for the receipt: {problems:?}"
        );
    }
}

fn invoice_record(invoice: pb::Invoice) -> pb::SyncRecord {
    pb::SyncRecord {
        record: Some(pb::sync_record::Record::Invoice(invoice)),
    }
}

fn line_record(line: pb::InvoiceLine) -> pb::SyncRecord {
    pb::SyncRecord {
        record: Some(pb::sync_record::Record::InvoiceLine(line)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resent_shipment_makes_one_inbound_and_a_site_cannot_forge_one() {
    for backend in backends("a_resent_shipment_makes_one_inbound_and_a_site_cannot_forge_one") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "RAW", 1).await;
        let store_2 = store_of(&db, 2).await;
        let store_3 = store_of(&db, 3).await;

        // Site 2 ships (as a correct satellite would send it).
        let outbound = pb::Invoice {
            id: uuid::Uuid::new_v4().to_string(),
            store_id: store_2.id.clone(),
            name_id: store_3.id.clone(),
            kind: pb::InvoiceKind::OutboundShipment as i32,
            status: pb::InvoiceStatus::Shipped as i32,
            invoice_number: 1,
            created_at_ms: 1,
            shipped_at_ms: 2,
            ..Default::default()
        };
        let outbound_line = pb::InvoiceLine {
            id: uuid::Uuid::new_v4().to_string(),
            invoice_id: outbound.id.clone(),
            store_id: store_2.id.clone(),
            item_id: items[0].id.clone(),
            batch: "R1".into(),
            expiry_date: "2030-01-31".into(),
            pack_size: 10,
            number_of_packs: 7.0,
            sell_price_per_pack: 2.0,
            ..Default::default()
        };
        let shipment = vec![
            invoice_record(outbound.clone()),
            line_record(outbound_line.clone()),
        ];
        let mut session = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        let first = session.welcome.upstream_acked_seq + 1;
        let acked = push_acked(&mut session, first, shipment.clone()).await;
        // The ack was lost: the same batch again, then the same records again
        // under new sequence numbers (a site re-sending its history).
        assert_eq!(
            push_acked(&mut session, first, shipment.clone()).await,
            acked
        );
        push_acked(&mut session, acked + 1, shipment.clone()).await;
        drop(session);

        let inbound = inbound_of(&db, &outbound.id).await;
        assert_eq!(inbound.len(), 1, "one inbound shipment");
        let inbound = inbound.into_iter().next().unwrap();
        assert_eq!(inbound.store_id, store_3.id);
        let inbound_lines = invoice_line::Entity::find()
            .filter(invoice_line::Column::InvoiceId.eq(inbound.id.as_str()))
            .all(&db)
            .await
            .unwrap();
        assert_eq!(inbound_lines.len(), 1);
        assert_eq!(inbound_lines[0].number_of_packs, 7.0);
        assert_eq!(inbound_lines[0].cost_price_per_pack, 2.0);
        let handovers = storesync_tests::master::change_log(&db)
            .await
            .into_iter()
            .filter(|entry| entry.record_id == inbound.id)
            .count();
        assert_eq!(handovers, 1, "the inbound shipment was handed over once");
        assert!(transfer_row(&db, &outbound.id).await.is_some());

        // Site 3 may receive its inbound shipment, but not forge one, nor
        // change what links it to the outbound.
        let forged = pb::Invoice {
            id: uuid::Uuid::new_v4().to_string(),
            store_id: store_3.id.clone(),
            name_id: store_2.id.clone(),
            kind: pb::InvoiceKind::InboundShipment as i32,
            status: pb::InvoiceStatus::Shipped as i32,
            invoice_number: 9,
            created_at_ms: 1,
            linked_invoice_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        };
        let mut relinked: pb::Invoice = inbound.clone().into();
        relinked.linked_invoice_id = forged.linked_invoice_id.clone();
        let mut more_packs: pb::InvoiceLine = inbound_lines[0].clone().into();
        more_packs.number_of_packs = 70.0;
        // A line added to the inbound shipment: alone, next to the shipment
        // sent again as it is, and next to the shipment sent as another
        // kind (a line naming an invoice the same batch writes is looked up
        // unless that invoice is written as not inbound, which is refused).
        let added = pb::InvoiceLine {
            id: uuid::Uuid::new_v4().to_string(),
            invoice_id: inbound.id.clone(),
            store_id: store_3.id.clone(),
            item_id: items[0].id.clone(),
            batch: "R2".into(),
            expiry_date: "2030-01-31".into(),
            pack_size: 10,
            number_of_packs: 3.0,
            ..Default::default()
        };
        // A line of the inbound shipment moved onto another invoice of the
        // store (one the same batch creates), after a line of that invoice
        // that is fine: on PostgreSQL the upsert itself leaves the moved line
        // unwritten (the lines of other invoices are not read back first).
        let elsewhere = pb::Invoice {
            id: uuid::Uuid::new_v4().to_string(),
            kind: pb::InvoiceKind::SupplierInvoice as i32,
            status: pb::InvoiceStatus::Finalised as i32,
            invoice_number: 10,
            linked_invoice_id: String::new(),
            ..forged.clone()
        };
        let fine_line = pb::InvoiceLine {
            id: uuid::Uuid::new_v4().to_string(),
            invoice_id: elsewhere.id.clone(),
            ..added.clone()
        };
        let mut moved: pb::InvoiceLine = inbound_lines[0].clone().into();
        moved.invoice_id = elsewhere.id.clone();
        let unchanged: pb::Invoice = inbound.clone().into();
        let mut rekinded: pb::Invoice = inbound.clone().into();
        rekinded.kind = pb::InvoiceKind::SupplierInvoice as i32;
        for (records, refused_id, needle) in [
            (
                vec![invoice_record(forged.clone())],
                forged.id.clone(),
                "creates an inbound shipment",
            ),
            (
                vec![invoice_record(relinked)],
                inbound.id.clone(),
                "changes linked_invoice_id",
            ),
            (
                vec![line_record(more_packs)],
                inbound_lines[0].id.clone(),
                "changes the shipped packs",
            ),
            (
                vec![line_record(added.clone())],
                added.id.clone(),
                "adds a line to an inbound shipment",
            ),
            (
                vec![invoice_record(unchanged), line_record(added.clone())],
                added.id.clone(),
                "adds a line to an inbound shipment",
            ),
            (
                vec![invoice_record(rekinded), line_record(added.clone())],
                inbound.id.clone(),
                "changes the kind of an inbound shipment",
            ),
            (
                vec![
                    invoice_record(elsewhere.clone()),
                    line_record(fine_line.clone()),
                    line_record(moved),
                ],
                inbound_lines[0].id.clone(),
                "changes the shipped packs, item or shipment of an inbound line",
            ),
        ] {
            let mut session = open(&master.url(), "3", SYNC_USER, SYNC_PASSWORD, hello(3))
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
        assert!(invoice::Entity::find_by_id(forged.id.clone())
            .one(&db)
            .await
            .unwrap()
            .is_none());
        let kept = inbound_of(&db, &outbound.id).await;
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].linked_invoice_id, outbound.id);
        assert!(invoice_line::Entity::find_by_id(added.id.clone())
            .one(&db)
            .await
            .unwrap()
            .is_none());
        assert_eq!(kept[0].kind, "INBOUND_SHIPMENT");
        let kept_line = invoice_line::Entity::find_by_id(inbound_lines[0].id.clone())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept_line.number_of_packs, 7.0);
        assert_eq!(kept_line.invoice_id, inbound.id);
        assert!(invoice::Entity::find_by_id(elsewhere.id.clone())
            .one(&db)
            .await
            .unwrap()
            .is_none());
        assert!(invoice_line::Entity::find_by_id(fine_line.id.clone())
            .one(&db)
            .await
            .unwrap()
            .is_none());

        // The receipt itself is accepted and moves the transfer.
        let mut received: pb::Invoice = inbound.clone().into();
        received.status = pb::InvoiceStatus::Received as i32;
        received.received_at_ms = 5;
        let mut received_line: pb::InvoiceLine = inbound_lines[0].clone().into();
        received_line.received_number_of_packs = 6.0;
        let mut session = open(&master.url(), "3", SYNC_USER, SYNC_PASSWORD, hello(3))
            .await
            .unwrap();
        let first = session.welcome.upstream_acked_seq + 1;
        push_acked(
            &mut session,
            first,
            vec![invoice_record(received), line_record(received_line)],
        )
        .await;
        let record = transfer_row(&db, &outbound.id).await.unwrap();
        assert_eq!((record.packs_received, record.discrepancy), (6.0, -1.0));
    }
}

/// What a master restored from a backup older than a shipment does with the
/// receiving site's copy of the inbound shipment it lost (see
/// docs/TRANSFERS.md, "Across a master restore"): set aside, never written,
/// until the sender's outbound is back; then created again with the same
/// id and updated by the site's copy. A shipment naming a requisition the
/// master does not hold waits (UNAVAILABLE), nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_inbound_shipment_is_set_aside_until_its_outbound_is_back() {
    for backend in backends("a_lost_inbound_shipment_is_set_aside_until_its_outbound_is_back") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "LOST", 1).await;
        let store_2 = store_of(&db, 2).await;
        let store_3 = store_of(&db, 3).await;
        let outbound = pb::Invoice {
            id: uuid::Uuid::new_v4().to_string(),
            store_id: store_2.id.clone(),
            name_id: store_3.id.clone(),
            kind: pb::InvoiceKind::OutboundShipment as i32,
            status: pb::InvoiceStatus::Shipped as i32,
            invoice_number: 1,
            created_at_ms: 1,
            shipped_at_ms: 2,
            ..Default::default()
        };
        let outbound_line = pb::InvoiceLine {
            id: uuid::Uuid::new_v4().to_string(),
            invoice_id: outbound.id.clone(),
            store_id: store_2.id.clone(),
            item_id: items[0].id.clone(),
            batch: "L1".into(),
            expiry_date: "2030-01-31".into(),
            pack_size: 10,
            number_of_packs: 7.0,
            sell_price_per_pack: 2.0,
            ..Default::default()
        };
        let shipment = vec![
            invoice_record(outbound.clone()),
            line_record(outbound_line.clone()),
        ];
        let mut sender = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        let first = sender.welcome.upstream_acked_seq + 1;
        let sender_acked = push_acked(&mut sender, first, shipment.clone()).await;
        drop(sender);
        // The receiving site's copy, received 6 of 7 (as it would hold it).
        let inbound = inbound_of(&db, &outbound.id).await.pop().unwrap();
        let inbound_line = invoice_line::Entity::find()
            .filter(invoice_line::Column::InvoiceId.eq(inbound.id.as_str()))
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        let mut received: pb::Invoice = inbound.clone().into();
        received.status = pb::InvoiceStatus::Received as i32;
        received.received_at_ms = 5;
        received.invoice_number = 42;
        let mut received_line: pb::InvoiceLine = inbound_line.clone().into();
        received_line.received_number_of_packs = 6.0;
        let copy = vec![invoice_record(received.clone()), line_record(received_line)];

        // The master forgets the shipment, as a restore from a backup taken
        // before it would: outbound, inbound, their lines, the transfer.
        invoice_line::Entity::delete_many()
            .filter(
                invoice_line::Column::Id.is_in([outbound_line.id.clone(), inbound_line.id.clone()]),
            )
            .exec(&db)
            .await
            .unwrap();
        invoice::Entity::delete_many()
            .filter(invoice::Column::Id.is_in([outbound.id.clone(), inbound.id.clone()]))
            .exec(&db)
            .await
            .unwrap();
        transfer::Entity::delete_by_id(outbound.id.clone())
            .exec(&db)
            .await
            .unwrap();

        // The receiver pushes its copy first: acknowledged, set aside.
        let mut receiver = open(&master.url(), "3", SYNC_USER, SYNC_PASSWORD, hello(3))
            .await
            .unwrap();
        let first = receiver.welcome.upstream_acked_seq + 1;
        let receiver_acked = push_acked(&mut receiver, first, copy.clone()).await;
        drop(receiver);
        assert!(
            invoice::Entity::find_by_id(inbound.id.clone())
                .one(&db)
                .await
                .unwrap()
                .is_none(),
            "an inbound shipment no outbound backs was written"
        );
        assert!(transfer_row(&db, &outbound.id).await.is_none());

        // A shipment supplying a requisition the master does not hold waits,
        // nothing of its batch applied.
        let supplying = pb::Invoice {
            id: uuid::Uuid::new_v4().to_string(),
            invoice_number: 2,
            requisition_id: uuid::Uuid::new_v4().to_string(),
            ..outbound.clone()
        };
        // (A raw site's Hello says how far it wrote, as a satellite's does.)
        let written = |sync_id, last| pb::Hello {
            upstream_last_seq: last,
            ..hello(sync_id)
        };
        let mut sender = open(
            &master.url(),
            "2",
            SYNC_USER,
            SYNC_PASSWORD,
            written(2, sender_acked),
        )
        .await
        .unwrap();
        let first = sender.welcome.upstream_acked_seq + 1;
        let (status, named) = push_refused(
            &mut sender,
            first,
            vec![
                invoice_record(outbound.clone()),
                invoice_record(supplying.clone()),
            ],
        )
        .await;
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains(&supplying.requisition_id),
            "{status:?}"
        );
        assert_eq!(named.map(|r| r.id), Some(supplying.id.clone()));
        assert!(invoice::Entity::find_by_id(outbound.id.clone())
            .one(&db)
            .await
            .unwrap()
            .is_none());
        drop(sender);

        // The sender's re-push creates the inbound again, same id, and the
        // receiver's copy updates it: the receipt moves the transfer.
        let mut sender = open(
            &master.url(),
            "2",
            SYNC_USER,
            SYNC_PASSWORD,
            written(2, sender_acked + 2),
        )
        .await
        .unwrap();
        let first = sender.welcome.upstream_acked_seq + 1;
        assert!(push_acked(&mut sender, first, shipment).await > sender_acked);
        drop(sender);
        let again = inbound_of(&db, &outbound.id).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, inbound.id);
        let mut receiver = open(
            &master.url(),
            "3",
            SYNC_USER,
            SYNC_PASSWORD,
            written(3, receiver_acked),
        )
        .await
        .unwrap();
        let first = receiver.welcome.upstream_acked_seq + 1;
        push_acked(&mut receiver, first, copy).await;
        let kept = invoice::Entity::find_by_id(inbound.id.clone())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (kept.status.as_str(), kept.invoice_number),
            ("RECEIVED", 42)
        );
        let record = transfer_row(&db, &outbound.id).await.unwrap();
        assert_eq!(
            (
                record.packs_shipped,
                record.packs_received,
                record.discrepancy
            ),
            (7.0, 6.0, -1.0)
        );
    }
}
