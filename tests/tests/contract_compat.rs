//! The contract grows only additively within the master's version window: a
//! satellite built from the frozen copy of protocol version 1
//! (`tests/contract/v1`, generated in `storesync_tests::frozen`) syncs with the
//! current master. It initialises, receives a master-data change, pushes a
//! batch and is acknowledged; the master's newer fields do not disturb it.
//! It never offers stream compression (Hello 26), so it gets plain messages
//! (a chunk would be a kind it cannot read, and fail its test); a current
//! satellite gets chunks only when it offers them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use storesync_shared::kit::stream_compression::{Deflater, Inflater};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    create_items, create_trading_partners, goods_in, store_data, store_of, Master, SYNC_PASSWORD,
    SYNC_USER,
};
use storesync_tests::frozen::v1 as old;
use storesync_tests::raw::{hello, open, stock_line};
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

/// Opens a session as a protocol-1 satellite of `sync_id`.
async fn open_v1(
    master: &Master,
    sync_id: u32,
    hello: old::Hello,
) -> Result<
    (
        mpsc::Sender<old::SatelliteMessage>,
        tonic::Streaming<old::MasterMessage>,
    ),
    tonic::Status,
> {
    let channel = tonic::transport::Endpoint::from_shared(master.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    send(&tx, old::satellite_message::Message::Hello(hello));
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        storesync_shared::kit::auth::basic_header(SYNC_USER, SYNC_PASSWORD)
            .parse()
            .unwrap(),
    );
    request
        .metadata_mut()
        .insert("x-sync-id", sync_id.to_string().parse().unwrap());
    let mut inbound = old::sync_service_client::SyncServiceClient::new(channel)
        .sync(request)
        .await?
        .into_inner();
    // The first message tells whether the master took the Hello.
    match inbound.message().await? {
        Some(old::MasterMessage {
            message: Some(old::master_message::Message::Welcome(_)),
        }) => Ok((tx, inbound)),
        other => panic!("a Welcome or a refusal first, not {other:?}"),
    }
}

/// A protocol-1 satellite cannot read a transfer: it is never sent one nor
/// moved past one. Its downstream waits before the entry that hands its store
/// an inbound shipment (later master data waits too; nothing is skipped), it
/// is told it is caught up there so interval mode still ends, and a new
/// protocol-1 database for a store that holds transfers is refused plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_version_1_satellite_is_held_before_a_transfer_it_cannot_read() {
    for backend in
        backends("a_protocol_version_1_satellite_is_held_before_a_transfer_it_cannot_read")
    {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        master.add_site(2).await;
        let items = create_items(&master, "HOLD", 1).await;
        let (supplier, _) = create_trading_partners(&master, "H").await;
        let db = master_db.connect().await;
        let clinic = store_of(&db, 2).await;
        let hello = |needs_initialisation: bool, cursor: u64| old::Hello {
            protocol_version: 1,
            sync_id: 2,
            agent_version: "frozen-v1".into(),
            downstream_cursor: cursor,
            upstream_last_seq: 0,
            needs_initialisation,
            mode: old::SyncMode::Interval as i32,
            upstream_backlog: 0,
        };

        // Initialised as protocol 1, before any transfer.
        let (tx, mut inbound) = open_v1(&master, 2, hello(true, 0)).await.unwrap();
        let cursor = loop {
            let old::master_message::Message::DownstreamBatch(batch) = next(&mut inbound).await
            else {
                continue;
            };
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
        send(
            &tx,
            old::satellite_message::Message::Goodbye(old::Goodbye {}),
        );
        drop(inbound);

        // The warehouse ships to the clinic, then an item changes.
        let mut store = master.store().await;
        let stock = goods_in(&mut store, &supplier, &items, 10.0, "HOLD")
            .await
            .stock_lines;
        let draft = store
            .create_transfer(pb::CreateTransferRequest {
                to_store_id: clinic.id.clone(),
                reference: "TO-V1".into(),
                requisition_id: String::new(),
                lines: vec![pb::InvoiceLine {
                    stock_line_id: stock[0].id.clone(),
                    number_of_packs: 3.0,
                    sell_price_per_pack: 2.0,
                    ..Default::default()
                }],
            })
            .await
            .unwrap()
            .into_inner();
        store
            .ship_transfer(pb::ShipTransferRequest { id: draft.id })
            .await
            .unwrap();
        let later = create_items(&master, "LATER", 1).await;

        // The protocol-1 site continues: told it is caught up, short of the
        // handover; it gets neither the transfer nor the item after it.
        let (tx, mut inbound) = open_v1(&master, 2, hello(false, cursor)).await.unwrap();
        let held_at = loop {
            match next(&mut inbound).await {
                old::master_message::Message::CaughtUp(caught_up) => break caught_up.cursor,
                old::master_message::Message::DownstreamBatch(batch) => {
                    for record in &batch.records {
                        match &record.record {
                            Some(old::sync_record::Record::Item(item)) => {
                                assert_ne!(
                                    item.id, later[0].id,
                                    "the item after the handover was sent"
                                )
                            }
                            Some(old::sync_record::Record::Invoice(invoice)) => {
                                panic!("a protocol-1 site was sent an invoice: {invoice:?}")
                            }
                            None => panic!("a record protocol 1 cannot read was sent"),
                            _ => {}
                        }
                    }
                    send(
                        &tx,
                        old::satellite_message::Message::DownstreamAck(old::DownstreamAck {
                            cursor: batch.end_cursor,
                            ..Default::default()
                        }),
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        let handover: i64 = {
            use sea_orm::{ConnectionTrait, Statement};
            let row = db
                .query_one(Statement::from_string(
                    db.get_database_backend(),
                    format!(
                        "SELECT MIN(seq) FROM change_log WHERE store_id = '{}'",
                        clinic.id
                    ),
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index(0).unwrap()
        };
        assert_eq!(
            held_at + 1,
            u64::try_from(handover).unwrap(),
            "held just before the handover"
        );
        send(
            &tx,
            old::satellite_message::Message::Goodbye(old::Goodbye {}),
        );
        drop(inbound);

        // A new protocol-1 database for the clinic's store: refused plainly.
        let refused = open_v1(&master, 2, hello(true, 0)).await;
        let status = match refused {
            Err(status) => status,
            Ok((_, mut inbound)) => inbound
                .message()
                .await
                .expect_err("the master refuses the initialisation"),
        };
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("transfer") && status.message().contains("upgrade"),
            "{status:?}"
        );
    }
}

/// The messages of `session` up to its CaughtUp, inflating chunks; also
/// whether any came as a chunk, and whether all after the Welcome did.
async fn until_caught_up(
    session: &mut storesync_tests::raw::RawSession,
    inflater: &mut Inflater,
) -> (Vec<pb::master_message::Message>, bool, bool) {
    let (mut got, mut any_chunk, mut all_chunks) = (Vec::new(), false, true);
    loop {
        let message = tokio::time::timeout(WAIT, session.inbound.message())
            .await
            .expect("the master answers in time")
            .expect("the stream is healthy")
            .expect("the stream is open");
        let messages = match message.message {
            Some(pb::master_message::Message::Compressed(chunk)) => {
                any_chunk = true;
                inflater
                    .unpack::<pb::MasterMessage>(&chunk.deflate)
                    .expect("the chunk inflates")
            }
            other => {
                all_chunks = false;
                vec![pb::MasterMessage { message: other }]
            }
        };
        for message in messages {
            let message = message.message.expect("a known kind");
            let done = matches!(message, pb::master_message::Message::CaughtUp(_));
            got.push(message);
            if done {
                return (got, any_chunk, all_chunks);
            }
        }
    }
}

/// Stream compression (Hello 26, Welcome 22) is used only when the
/// satellite offers it: a satellite that does not (every older one) gets
/// today's plain messages; one that offers it gets every message after the
/// Welcome as chunks of one deflate stream, and its own chunks are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_compression_is_used_only_when_the_satellite_offers_it() {
    for backend in backends("stream_compression_is_used_only_when_the_satellite_offers_it") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "ZIP", 3).await;
        let db = master_db.connect().await;

        let mut plain = open(&master.url(), "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        assert_eq!(
            plain.welcome.stream_compression(),
            pb::StreamCompression::None
        );
        let (messages, any_chunk, _) = until_caught_up(&mut plain, &mut Inflater::new(1)).await;
        assert!(!any_chunk, "no chunk for a satellite that did not offer");
        assert!(messages.iter().any(
            |m| matches!(m, pb::master_message::Message::DownstreamBatch(b) if b.records.len() >= 3)
        ));

        let offering = pb::Hello {
            stream_compression: pb::StreamCompression::Deflate as i32,
            ..hello(3)
        };
        let mut compressed = open(&master.url(), "3", SYNC_USER, SYNC_PASSWORD, offering)
            .await
            .unwrap();
        assert_eq!(
            compressed.welcome.stream_compression(),
            pb::StreamCompression::Deflate
        );
        let mut inflater = Inflater::new(storesync_shared::kit::server::MAX_MESSAGE_BYTES);
        let (messages, _, all_chunks) = until_caught_up(&mut compressed, &mut inflater).await;
        assert!(all_chunks, "every message after the Welcome is a chunk");
        assert!(messages.iter().any(
            |m| matches!(m, pb::master_message::Message::DownstreamBatch(b) if b.records.len() >= 3)
        ));

        // Upstream in chunks of the satellite's own stream.
        let store = store_of(&db, 3).await;
        let mut deflater = Deflater::new();
        for seq in 1..=2u64 {
            let batch = pb::SatelliteMessage {
                message: Some(pb::satellite_message::Message::UpstreamBatch(
                    pb::UpstreamBatch {
                        first_seq: seq,
                        last_seq: seq,
                        records: vec![stock_line(&store.id, &items[0].id)],
                        ..Default::default()
                    },
                )),
            };
            let chunk = deflater.pack(batch);
            assert!(matches!(
                chunk.message,
                Some(pb::satellite_message::Message::Compressed(_))
            ));
            compressed.tx.send(chunk).await.unwrap();
        }
        let acked = tokio::time::timeout(WAIT, async {
            loop {
                let message = compressed.inbound.message().await.unwrap().unwrap();
                let Some(pb::master_message::Message::Compressed(chunk)) = message.message else {
                    panic!("a plain message after the Welcome: {message:?}");
                };
                for message in inflater
                    .unpack::<pb::MasterMessage>(&chunk.deflate)
                    .unwrap()
                {
                    if let Some(pb::master_message::Message::UpstreamAck(ack)) = message.message {
                        if ack.acked_seq == 2 {
                            return ack;
                        }
                    }
                }
            }
        })
        .await
        .expect("both batches acknowledged");
        assert_eq!(acked.acked_seq, 2);
        assert_eq!(store_data(&db, &store.id).await.stock_lines.len(), 2);
    }
}

/// A master from before stream compression, in front of this one: it relays
/// every session to the real master, but the Hello it passes on has no field
/// 26 (a master that does not know the field drops it when it decodes the
/// Hello), so the Welcome the satellite gets has no field 22. It counts the
/// messages that crossed it and every `CompressedChunk` either way.
#[derive(Clone)]
struct OldMaster {
    master: String,
    /// Drop Hello field 26 (false: relay untouched, to watch a session).
    strip: bool,
    seen: std::sync::Arc<std::sync::Mutex<Relayed>>,
}

#[derive(Debug, Default)]
struct Relayed {
    offered: u32,
    welcomes_with_compression: u32,
    up: u32,
    down: u32,
    chunks_up: u32,
    chunks_down: u32,
}

#[tonic::async_trait]
impl pb::sync_service_server::SyncService for OldMaster {
    type SyncStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::MasterMessage, tonic::Status>> + Send>,
    >;

    async fn sync(
        &self,
        request: tonic::Request<tonic::Streaming<pb::SatelliteMessage>>,
    ) -> Result<tonic::Response<Self::SyncStream>, tonic::Status> {
        use futures::StreamExt;
        let (metadata, _, mut from_satellite) = request.into_parts();
        let (tx, rx) = mpsc::channel::<pb::SatelliteMessage>(64);
        let (seen, strip) = (self.seen.clone(), self.strip);
        tokio::spawn(async move {
            while let Ok(Some(mut message)) = from_satellite.message().await {
                {
                    let mut seen = seen.lock().unwrap();
                    seen.up += 1;
                    match &mut message.message {
                        Some(pb::satellite_message::Message::Hello(hello)) => {
                            if hello.stream_compression() == pb::StreamCompression::Deflate {
                                seen.offered += 1;
                            }
                            if strip {
                                hello.stream_compression = 0;
                            }
                        }
                        Some(pb::satellite_message::Message::Compressed(_)) => seen.chunks_up += 1,
                        _ => {}
                    }
                }
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(self.master.clone())
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        *request.metadata_mut() = metadata;
        let from_master = pb::sync_service_client::SyncServiceClient::new(channel)
            .max_decoding_message_size(storesync_shared::kit::server::MAX_MESSAGE_BYTES)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .sync(request)
            .await?
            .into_inner();
        let seen = self.seen.clone();
        Ok(tonic::Response::new(Box::pin(from_master.map(
            move |message| {
                if let Ok(message) = &message {
                    let mut seen = seen.lock().unwrap();
                    seen.down += 1;
                    match &message.message {
                        Some(pb::master_message::Message::Welcome(welcome))
                            if welcome.stream_compression != 0 =>
                        {
                            seen.welcomes_with_compression += 1;
                        }
                        Some(pb::master_message::Message::Compressed(_)) => seen.chunks_down += 1,
                        _ => {}
                    }
                }
                message
            },
        ))))
    }
}

impl OldMaster {
    /// Serves on an ephemeral loopback port in front of `master`; returns
    /// its URL.
    async fn start(master: &Master, strip: bool) -> (String, Self) {
        let relay = Self {
            master: master.url(),
            strip,
            seen: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // gRPC's gzip as the master offers it (a gzip satellite asks for it).
        let service = pb::sync_service_server::SyncServiceServer::new(relay.clone())
            .max_decoding_message_size(storesync_shared::kit::server::MAX_MESSAGE_BYTES)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (format!("http://{addr}"), relay)
    }
}

/// A satellite set to compress its sessions (`deflate`) works with a master
/// that does not know stream compression: it offers it in the Hello, the
/// Welcome has no field 22, and both sides speak plain messages all session
/// long (initialisation, master data down, store data up). And a satellite
/// that does not offer it (every older one; here `gzip`, gRPC's own) gets
/// plain messages from this master and sends plain ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_compression_falls_back_to_plain_messages_with_a_peer_that_does_not_know_it() {
    for backend in backends(
        "stream_compression_falls_back_to_plain_messages_with_a_peer_that_does_not_know_it",
    ) {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        let items = create_items(&master, "OLDM", 20).await;
        let (supplier, _) = create_trading_partners(&master, "OM").await;

        for (sync_id, compression, strip) in [(2, "deflate", true), (3, "gzip", false)] {
            master.add_site(sync_id).await;
            let (url, relay) = OldMaster::start(&master, strip).await;
            let satellite = storesync_tests::cluster::Satellite::start(
                &url,
                sync_id,
                "streaming",
                &[("STORESYNC_SYNC_COMPRESSION", compression)],
            );
            satellite.wait_initialised(Duration::from_secs(60)).await;
            create_items(&master, &format!("OLDM{sync_id}"), 2).await;
            goods_in(
                &mut satellite.store().await,
                &supplier,
                &items[..2],
                4.0,
                &format!("OLDMASTER{sync_id}"),
            )
            .await;
            storesync_tests::cluster::wait_master_data_equal(
                &db,
                &satellite,
                Duration::from_secs(60),
            )
            .await;
            storesync_tests::cluster::assert_store_copies_equal(
                &db,
                &satellite,
                Duration::from_secs(60),
            )
            .await;
            let seen = relay.seen.lock().unwrap();
            eprintln!("{compression} satellite, relayed: {seen:?}");
            assert_eq!(
                seen.offered > 0,
                compression == "deflate",
                "only the deflate satellite offers"
            );
            assert_eq!(seen.welcomes_with_compression, 0, "no Welcome agrees");
            assert_eq!(
                (seen.chunks_up, seen.chunks_down),
                (0, 0),
                "plain messages both ways"
            );
            assert!(
                seen.up > 3 && seen.down > 3,
                "the sessions went through the relay: {seen:?}"
            );
        }
    }
}
