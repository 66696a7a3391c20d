//! A hand-driven sync session: the test plays the satellite, so it can send
//! what a correct satellite never would.

use storesync_shared::proto::v1 as pb;
use storesync_shared::proto::v1::sync_service_client::SyncServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// An open session after its Welcome.
pub struct RawSession {
    pub tx: mpsc::Sender<pb::SatelliteMessage>,
    pub inbound: tonic::Streaming<pb::MasterMessage>,
    pub welcome: pb::Welcome,
}

/// A streaming-mode Hello of `sync_id` with nothing applied yet (from the
/// database [`database_id`] of that Sync ID).
pub fn hello(sync_id: u32) -> pb::Hello {
    pb::Hello {
        protocol_version: 1,
        sync_id,
        agent_version: "test".into(),
        mode: pb::SyncMode::Streaming as i32,
        database_id: database_id(sync_id),
        ..Default::default()
    }
}

/// The database id the raw sessions of `sync_id` present: one per Sync ID,
/// so that they are all the same database to the master.
pub fn database_id(sync_id: u32) -> String {
    format!("00000000-0000-4000-8000-{sync_id:012}")
}

/// Opens a session with `x-sync-id: sync_id_header` and Basic `user:password`,
/// sends `hello` and reads the Welcome; a refusal comes back as its status.
pub async fn open(
    url: &str,
    sync_id_header: &str,
    user: &str,
    password: &str,
    hello: pb::Hello,
) -> Result<RawSession, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = SyncServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::SatelliteMessage {
        message: Some(pb::satellite_message::Message::Hello(hello)),
    })
    .await
    .expect("queue hello");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        storesync_shared::kit::auth::basic_header(user, password)
            .parse()
            .expect("header"),
    );
    request
        .metadata_mut()
        .insert("x-sync-id", sync_id_header.parse().expect("header"));
    let mut inbound = client.sync(request).await?.into_inner();
    let first = inbound.message().await?.expect("a first message");
    let Some(pb::master_message::Message::Welcome(welcome)) = first.message else {
        panic!("expected Welcome, got {first:?}")
    };
    Ok(RawSession {
        tx,
        inbound,
        welcome,
    })
}

impl RawSession {
    /// Sends `records` as one upstream batch starting at `first_seq`.
    pub async fn push(&self, first_seq: u64, records: Vec<pb::SyncRecord>) {
        let batch = pb::UpstreamBatch {
            first_seq,
            last_seq: first_seq + records.len() as u64 - 1,
            records,
            trace_context: Default::default(),
            last_tag: 0,
        };
        // A closed stream shows up when the caller reads the answer.
        let _ = self
            .tx
            .send(pb::SatelliteMessage {
                message: Some(pb::satellite_message::Message::UpstreamBatch(batch)),
            })
            .await;
    }
}

/// A new stock line of `store_id` as an upstream record.
pub fn stock_line(store_id: &str, item_id: &str) -> pb::SyncRecord {
    pb::SyncRecord {
        record: Some(pb::sync_record::Record::StockLine(pb::StockLine {
            id: uuid::Uuid::new_v4().to_string(),
            store_id: store_id.to_owned(),
            item_id: item_id.to_owned(),
            batch: "X1".into(),
            expiry_date: "2030-01-31".into(),
            pack_size: 10,
            available_number_of_packs: 5.0,
            total_number_of_packs: 5.0,
            cost_price_per_pack: 1.0,
            sell_price_per_pack: 1.5,
            updated_at_ms: 1,
        })),
    }
}

/// Sends pre-encoded bytes as messages, so a test can send what no encoder
/// would; decodes the master's answers as usual.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawBytesCodec;

/// Writes each `Vec<u8>` as one gRPC message body, verbatim.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawEncoder;

/// Decodes `MasterMessage`s.
#[derive(Clone, Copy, Debug, Default)]
pub struct MasterDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for MasterDecoder {
    type Item = pb::MasterMessage;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<pb::MasterMessage>, tonic::Status> {
        prost::Message::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawBytesCodec {
    type Encode = Vec<u8>;
    type Decode = pb::MasterMessage;
    type Encoder = RawEncoder;
    type Decoder = MasterDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> MasterDecoder {
        MasterDecoder
    }
}

/// Opens a sync stream as `sync_id` with the given credentials and sends each
/// of `messages` (raw message bodies, e.g. a valid Hello then garbage); returns
/// the status that ends the stream (or OK if it ends cleanly within 20 s).
pub async fn send_raw(
    url: &str,
    sync_id: u32,
    user: &str,
    password: &str,
    messages: Vec<Vec<u8>>,
) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(64 * 1024 * 1024);
    grpc.ready().await.expect("ready");
    let (tx, rx) = mpsc::channel(messages.len().max(1));
    for message in messages {
        tx.send(message).await.expect("queue");
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        storesync_shared::kit::auth::basic_header(user, password)
            .parse()
            .expect("header"),
    );
    request
        .metadata_mut()
        .insert("x-sync-id", sync_id.to_string().parse().expect("header"));
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/storesync.v1.SyncService/Sync");
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut inbound = grpc
            .streaming(request, path, RawBytesCodec)
            .await?
            .into_inner();
        while inbound.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    })
    .await;
    drop(tx);
    match outcome {
        Ok(Ok(())) => tonic::Status::ok("stream ended"),
        Ok(Err(status)) => status,
        Err(_) => tonic::Status::deadline_exceeded("no answer within 20 s"),
    }
}

/// Sends `records` at `first_seq` and waits for the master's acknowledgement.
pub async fn push_acked(
    session: &mut RawSession,
    first_seq: u64,
    records: Vec<pb::SyncRecord>,
) -> u64 {
    session.push(first_seq, records).await;
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match session.inbound.message().await {
                Ok(Some(pb::MasterMessage {
                    message: Some(pb::master_message::Message::UpstreamAck(ack)),
                })) => return ack.acked_seq,
                Ok(Some(_)) => continue,
                other => panic!("the master did not acknowledge: {other:?}"),
            }
        }
    })
    .await
    .expect("an acknowledgement")
}

/// Sends `records` as the next batch and returns the status that ends the
/// stream, with the record the master's `SyncError` names.
pub async fn push_refused(
    session: &mut RawSession,
    first_seq: u64,
    records: Vec<pb::SyncRecord>,
) -> (tonic::Status, Option<pb::RecordRef>) {
    session.push(first_seq, records).await;
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut named = None;
        loop {
            match session.inbound.message().await {
                Ok(Some(pb::MasterMessage {
                    message: Some(pb::master_message::Message::UpstreamAck(ack)),
                })) => panic!("the master acknowledged a batch it must refuse: {ack:?}"),
                Ok(Some(pb::MasterMessage {
                    message: Some(pb::master_message::Message::Error(error)),
                })) => named = error.record,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return (status, named),
            }
        }
    })
    .await
    .expect("the master answers promptly")
}
