//! The contract grows only additively within the master's version window: a
//! satellite built from the frozen copy of protocol version 1
//! (`tests/contract/v1`, generated in `storesync_tests::frozen`) syncs with the
//! current master. It initialises, receives a master-data change, pushes a
//! batch and is acknowledged; the master's newer fields do not disturb it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use storesync_tests::cluster::{
    create_items, store_data, store_of, Master, SYNC_PASSWORD, SYNC_USER,
};
use storesync_tests::frozen::v1 as old;
use storesync_tests::{backends, TestDb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(30);

/// The next message from the master that is not a heartbeat.
async fn next(inbound: &mut tonic::Streaming<old::MasterMessage>) -> old::master_message::Message {
    loop {
        let message = tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("the master answers in time")
            .expect("the stream is healthy")
            .expect("the stream is open")
            .message
            .expect("a message of a kind protocol version 1 knows");
        if !matches!(message, old::master_message::Message::Heartbeat(_)) {
            return message;
        }
    }
}

fn send(tx: &mpsc::Sender<old::SatelliteMessage>, message: old::satellite_message::Message) {
    tx.try_send(old::SatelliteMessage {
        message: Some(message),
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_version_1_satellite_syncs_with_this_master() {
    for backend in backends("a_protocol_version_1_satellite_syncs_with_this_master") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        master.add_site(2).await;
        let items = create_items(&master, "OLD", 3).await;
        let db = master_db.connect().await;
        let store = store_of(&db, 2).await;

        let channel = tonic::transport::Endpoint::from_shared(master.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        send(
            &tx,
            old::satellite_message::Message::Hello(old::Hello {
                protocol_version: 1,
                sync_id: 2,
                agent_version: "frozen-v1".into(),
                downstream_cursor: 0,
                upstream_last_seq: 0,
                needs_initialisation: true,
                mode: old::SyncMode::Streaming as i32,
                upstream_backlog: 0,
            }),
        );
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            storesync_shared::kit::auth::basic_header(SYNC_USER, SYNC_PASSWORD)
                .parse()
                .unwrap(),
        );
        request
            .metadata_mut()
            .insert("x-sync-id", "2".parse().unwrap());
        let mut inbound = old::sync_service_client::SyncServiceClient::new(channel)
            .sync(request)
            .await
            .unwrap()
            .into_inner();

        let old::master_message::Message::Welcome(welcome) = next(&mut inbound).await else {
            panic!("a Welcome first")
        };
        assert!(welcome.initialising);
        assert_eq!(
            welcome.store.as_ref().map(|s| s.id.clone()),
            Some(store.id.clone())
        );

        // The snapshot, acknowledged as a version 1 satellite does.
        let mut received_items = 0;
        let cursor = loop {
            let old::master_message::Message::DownstreamBatch(batch) = next(&mut inbound).await
            else {
                continue;
            };
            received_items += batch
                .records
                .iter()
                .filter(|r| matches!(r.record, Some(old::sync_record::Record::Item(_))))
                .count();
            let progress = batch.initialisation.unwrap_or_default();
            send(
                &tx,
                old::satellite_message::Message::DownstreamAck(old::DownstreamAck {
                    cursor: batch.end_cursor,
                    init_records_done: progress.records_done,
                    initialisation_complete: progress.complete,
                }),
            );
            if progress.complete {
                break batch.end_cursor;
            }
        };
        assert_eq!(received_items, items.len());

        // A change made now reaches it.
        let added = create_items(&master, "NEW", 1).await;
        let batch = loop {
            if let old::master_message::Message::DownstreamBatch(batch) = next(&mut inbound).await {
                break batch;
            }
        };
        assert!(batch.end_cursor > cursor);
        assert!(batch.records.iter().any(|r| matches!(
            &r.record,
            Some(old::sync_record::Record::Item(item)) if item.id == added[0].id
        )));
        send(
            &tx,
            old::satellite_message::Message::DownstreamAck(old::DownstreamAck {
                cursor: batch.end_cursor,
                ..Default::default()
            }),
        );

        // Its store data goes up and is acknowledged.
        let stock_line = old::StockLine {
            id: uuid::Uuid::new_v4().to_string(),
            store_id: store.id.clone(),
            item_id: items[0].id.clone(),
            batch: "V1".into(),
            expiry_date: "2030-01-31".into(),
            pack_size: 10,
            available_number_of_packs: 4.0,
            total_number_of_packs: 4.0,
            cost_price_per_pack: 1.0,
            sell_price_per_pack: 2.0,
            updated_at_ms: 1,
        };
        let first_seq = welcome.upstream_acked_seq + 1;
        send(
            &tx,
            old::satellite_message::Message::UpstreamBatch(old::UpstreamBatch {
                first_seq,
                last_seq: first_seq,
                records: vec![old::SyncRecord {
                    record: Some(old::sync_record::Record::StockLine(stock_line.clone())),
                }],
                trace_context: Default::default(),
            }),
        );
        let ack = loop {
            match next(&mut inbound).await {
                old::master_message::Message::UpstreamAck(ack) => break ack,
                old::master_message::Message::Error(error) => panic!("refused: {error:?}"),
                _ => continue,
            }
        };
        assert_eq!((ack.acked_seq, ack.applied), (first_seq, 1));
        let stored = store_data(&db, &store.id).await.stock_lines;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].id, stock_line.id);

        send(
            &tx,
            old::satellite_message::Message::Goodbye(old::Goodbye {}),
        );
    }
}
