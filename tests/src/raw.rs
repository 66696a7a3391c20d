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

/// A streaming-mode Hello of `sync_id` with nothing applied yet.
pub fn hello(sync_id: u32) -> pb::Hello {
    pb::Hello {
        protocol_version: 1,
        sync_id,
        agent_version: "test".into(),
        mode: pb::SyncMode::Streaming as i32,
        ..Default::default()
    }
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
        storesync_shared::auth::basic_header(user, password)
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
