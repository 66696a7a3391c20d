//! Hostile input on the sync stream: garbage, oversized messages, unknown enum
//! values, malformed ids, absurd quantities, impossible dates, batches out of
//! sequence and replays, compressed chunks that are corrupt, oversized or
//! unasked for. Each gets a precise status, nothing of a bad batch is
//! applied, the master never falls over, and a real satellite keeps syncing
//! throughout.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message;
use storesync_shared::kit::stream_compression::Deflater;
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, store_data,
    store_of, wait_master_data_equal, Master, Satellite, SYNC_PASSWORD, SYNC_USER,
};
use storesync_tests::raw::{hello, open, send_raw, stock_line};
use storesync_tests::{backends, TestDb};

fn message(message: pb::satellite_message::Message) -> Vec<u8> {
    pb::SatelliteMessage {
        message: Some(message),
    }
    .encode_to_vec()
}

fn hello_bytes() -> Vec<u8> {
    message(pb::satellite_message::Message::Hello(hello(2)))
}

fn batch_bytes(first_seq: u64, records: Vec<pb::SyncRecord>) -> Vec<u8> {
    let last_seq = first_seq + records.len() as u64 - 1;
    message(pb::satellite_message::Message::UpstreamBatch(
        pb::UpstreamBatch {
            first_seq,
            last_seq,
            records,
            trace_context: Default::default(),
            last_tag: 0,
        },
    ))
}

/// A stock line of `store_id` with one field spoiled by `spoil`.
fn spoiled(
    store_id: &str,
    item_id: &str,
    spoil: impl FnOnce(&mut pb::StockLine),
) -> pb::SyncRecord {
    let mut record = stock_line(store_id, item_id);
    if let Some(pb::sync_record::Record::StockLine(line)) = &mut record.record {
        spoil(line);
    }
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_gets_precise_statuses_and_changes_nothing() {
    for backend in backends("hostile_input_gets_precise_statuses_and_changes_nothing") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "HOS", 3).await;
        let (supplier, _) = create_trading_partners(&master, "H").await;
        let store = store_of(&db, 2).await.id;
        let item = items[0].id.clone();
        // A well-behaved satellite syncs all along.
        let bystander = Satellite::start(&master.url(), 3, "streaming", &[]);
        bystander.wait_initialised(Duration::from_secs(60)).await;

        let url = master.url();
        let expect = |status: tonic::Status, code: tonic::Code, needle: &str| {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(needle),
                "expected {needle:?} in {:?}",
                status.message()
            );
        };

        // Bytes that are no protobuf at all (wire type 7 does not exist).
        let garbage = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![hello_bytes(), vec![0xff; 64]],
        )
        .await;
        expect(garbage, tonic::Code::InvalidArgument, "malformed message");
        // Garbage instead of the Hello.
        let no_hello = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![vec![0x0f, 0xff, 0xff]],
        )
        .await;
        assert_eq!(
            no_hello.code(),
            tonic::Code::InvalidArgument,
            "{no_hello:?}"
        );
        // A message over the 16 MiB limit.
        let mut huge = stock_line(&store, &item);
        if let Some(pb::sync_record::Record::StockLine(line)) = &mut huge.record {
            line.batch = "x".repeat(17 * 1024 * 1024);
        }
        let oversized = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![hello_bytes(), batch_bytes(1, vec![huge])],
        )
        .await;
        expect(oversized, tonic::Code::InvalidArgument, "size limit");

        // Records the master must refuse, each naming the record and field.
        let cases: Vec<(pb::SyncRecord, &str)> = vec![
            (
                spoiled(&store, &item, |l| l.id = "not-a-uuid".into()),
                "stock_line.id",
            ),
            (
                spoiled(&store, &item, |l| l.item_id = "1234".into()),
                "stock_line.item_id",
            ),
            (
                spoiled(&store, &item, |l| l.total_number_of_packs = -5.0),
                "stock_line.total_number_of_packs",
            ),
            (
                spoiled(&store, &item, |l| l.available_number_of_packs = 1e300),
                "stock_line.available_number_of_packs",
            ),
            (
                spoiled(&store, &item, |l| l.cost_price_per_pack = f64::NAN),
                "stock_line.cost_price_per_pack",
            ),
            (
                spoiled(&store, &item, |l| l.pack_size = 0),
                "stock_line.pack_size",
            ),
            (
                spoiled(&store, &item, |l| l.expiry_date = "9999-12-31".into()),
                "stock_line.expiry_date",
            ),
            (
                spoiled(&store, &item, |l| l.expiry_date = "2027-02-30".into()),
                "stock_line.expiry_date",
            ),
            (
                pb::SyncRecord {
                    record: Some(pb::sync_record::Record::Invoice(pb::Invoice {
                        id: uuid::Uuid::new_v4().to_string(),
                        store_id: store.clone(),
                        name_id: supplier.id.clone(),
                        kind: 99,
                        ..Default::default()
                    })),
                },
                "invoice.kind",
            ),
            (
                pb::SyncRecord {
                    record: Some(pb::sync_record::Record::Deleted(pb::RecordRef {
                        table: 42,
                        id: uuid::Uuid::new_v4().to_string(),
                    })),
                },
                "deleted.table",
            ),
            (pb::SyncRecord { record: None }, "record"),
        ];
        for (record, field) in cases {
            // A good record first: it must not be applied either.
            let good = stock_line(&store, &item);
            let status = send_raw(
                &url,
                2,
                SYNC_USER,
                SYNC_PASSWORD,
                vec![hello_bytes(), batch_bytes(1, vec![good, record])],
            )
            .await;
            expect(
                status,
                tonic::Code::InvalidArgument,
                &format!("upstream record 2: {field}"),
            );
        }
        // Sequence numbers that do not match the records.
        let mut lying = pb::UpstreamBatch {
            first_seq: 1,
            last_seq: 5,
            records: vec![stock_line(&store, &item)],
            trace_context: Default::default(),
            last_tag: 0,
        };
        let status = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![
                hello_bytes(),
                message(pb::satellite_message::Message::UpstreamBatch(lying.clone())),
            ],
        )
        .await;
        expect(status, tonic::Code::InvalidArgument, "does not match");
        lying.first_seq = 0;
        lying.last_seq = 0;
        let status = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![
                hello_bytes(),
                message(pb::satellite_message::Message::UpstreamBatch(lying)),
            ],
        )
        .await;
        expect(status, tonic::Code::InvalidArgument, "first_seq");
        // A second Hello; an empty message (or one of a kind this master does
        // not know) is skipped, so the Hello after it is the one refused.
        let status = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![hello_bytes(), hello_bytes()],
        )
        .await;
        expect(status, tonic::Code::InvalidArgument, "one Hello");
        let status = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![hello_bytes(), Vec::new(), hello_bytes()],
        )
        .await;
        expect(status, tonic::Code::InvalidArgument, "one Hello");

        // Compressed chunks (`StreamCompression`): one in a session that did
        // not agree on them; then, in sessions that did, a chunk that does
        // not inflate, one that inflates beyond the message limit, and one
        // holding a good batch followed by a cut-off message (refused whole:
        // the good batch is not applied either).
        let chunk = |deflate: Vec<u8>| {
            message(pb::satellite_message::Message::Compressed(
                pb::CompressedChunk { deflate },
            ))
        };
        let status = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![
                hello_bytes(),
                chunk(
                    Deflater::new()
                        .deflate(&batch_bytes(1, vec![stock_line(&store, &item)]))
                        .unwrap(),
                ),
            ],
        )
        .await;
        expect(
            status,
            tonic::Code::InvalidArgument,
            "did not agree on stream compression",
        );
        let offering = message(pb::satellite_message::Message::Hello(pb::Hello {
            stream_compression: pb::StreamCompression::Deflate as i32,
            ..hello(2)
        }));
        let status = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![offering.clone(), chunk(vec![0xff; 64])],
        )
        .await;
        expect(status, tonic::Code::InvalidArgument, "does not inflate");
        let bomb = Deflater::new()
            .deflate(&vec![0u8; 17 * 1024 * 1024])
            .unwrap();
        let status = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![offering.clone(), chunk(bomb)],
        )
        .await;
        expect(
            status,
            tonic::Code::InvalidArgument,
            "beyond the message limit",
        );
        let good =
            pb::SatelliteMessage::decode(&batch_bytes(1, vec![stock_line(&store, &item)])[..])
                .unwrap()
                .encode_length_delimited_to_vec();
        let mut cut_off = good.clone();
        cut_off.extend_from_slice(&good[..good.len() / 2]);
        let status = send_raw(
            &url,
            2,
            SYNC_USER,
            SYNC_PASSWORD,
            vec![offering, chunk(Deflater::new().deflate(&cut_off).unwrap())],
        )
        .await;
        expect(
            status,
            tonic::Code::InvalidArgument,
            "partial or malformed message",
        );

        assert!(
            store_data(&db, &store).await.stock_lines.is_empty(),
            "nothing of any refused batch was applied"
        );

        // Out of sequence, and a replay of an old batch.
        let mut session = open(&url, "2", SYNC_USER, SYNC_PASSWORD, hello(2))
            .await
            .unwrap();
        session
            .push(
                1,
                vec![stock_line(&store, &item), stock_line(&store, &item)],
            )
            .await;
        let ack = loop {
            match session.inbound.message().await.unwrap().unwrap().message {
                Some(pb::master_message::Message::UpstreamAck(ack)) => break ack,
                _ => continue,
            }
        };
        assert_eq!((ack.acked_seq, ack.applied), (2, 2));
        session
            .push(
                1,
                vec![stock_line(&store, &item), stock_line(&store, &item)],
            )
            .await;
        let replay = loop {
            match session.inbound.message().await.unwrap().unwrap().message {
                Some(pb::master_message::Message::UpstreamAck(ack)) => break ack,
                _ => continue,
            }
        };
        assert_eq!(
            (replay.acked_seq, replay.applied),
            (2, 0),
            "a replayed batch is acknowledged, not applied again"
        );
        session.push(9, vec![stock_line(&store, &item)]).await;
        let gap = loop {
            match session.inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        };
        expect(gap, tonic::Code::FailedPrecondition, "out of sequence");
        assert_eq!(store_data(&db, &store).await.stock_lines.len(), 2);

        // The bystander was never disturbed.
        goods_in(&mut bystander.store().await, &supplier, &items, 1.0, "CALM").await;
        wait_master_data_equal(&db, &bystander, Duration::from_secs(60)).await;
        assert_store_copies_equal(&db, &bystander, Duration::from_secs(60)).await;
        assert!(bystander.status().await.last_error.is_empty());
    }
}
