//! `SyncService.Sync`: the one bidirectional stream per satellite.
//!
//! A session authenticates from metadata before reading anything, reads the
//! satellite's Hello, answers Welcome, then runs two halves until either ends:
//! - the inbound half reads the satellite's messages: upstream batches are
//!   applied in order ([`upstream`]) and acknowledged; downstream acks move the
//!   site's cursor; heartbeats refresh its status;
//! - the downstream half ([`downstream`]) sends the snapshot (when asked), the
//!   change log and live changes, and heartbeats.
//!
//! One live session per Sync ID: a newer one replaces the older, which ends
//! with `ABORTED`. Status codes are listed in `proto/storesync/v1/sync.proto`.
//!
//! Not here: how master data is written (`master_data`, `changelog`), the
//! "sync with" list and credentials (`admin`; this module only reads them).
//!
//! # Layout
//! - this file: the public surface ([`SyncContext`], [`SyncSettings`], the
//!   tonic adapter [`SyncHandler`], which only chains the steps below);
//! - `handshake`: credentials, the Hello, the database that owns the Sync ID, the Welcome;
//! - `registry`: the sessions live on this process, one per Sync ID;
//! - `session`: one session's life: claim, run both halves, end and report;
//! - `inbound`: the satellite's messages, one handler per kind;
//! - [`upstream`]: applying an upstream batch, exactly once;
//! - [`downstream`]: the snapshot, the change log and live changes;
//! - [`status`]: what is recorded per site: the claim, the downstream cursor,
//!   the status operators see;
//! - [`cluster`]: wake-ups and claims between replicas (PostgreSQL);
//! - [`retention`]: how long the change log keeps entries;
//! - [`refusals`]: the refused upstream batches on record, per site.

pub mod cluster;
pub mod downstream;
pub mod error;
mod handshake;
mod inbound;
pub mod refusals;
mod registry;
pub mod retention;
mod session;
pub mod shared_snapshot;
pub mod status;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sea_orm::DatabaseConnection;
use storesync_shared::kit::stream_compression::{Deflater, Unpacking};
use storesync_shared::proto::v1::sync_service_server::{SyncService, SyncServiceServer};
use storesync_shared::proto::v1::{
    master_message, MasterMessage, SatelliteMessage, StreamCompression,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::changelog::ChangeNotifier;
use crate::unlock::Throttle;
use registry::Sessions;
pub use registry::SiteChanges;

/// Tunables of the sync stream.
#[derive(Clone, Debug)]
pub struct SyncSettings {
    /// How often each side sends a heartbeat on an idle stream; a peer silent for
    /// three of these is considered gone.
    pub heartbeat: Duration,
    /// Largest upstream batch accepted (records).
    pub max_batch_records: u32,
    /// Records per downstream batch.
    pub downstream_batch_records: usize,
    /// Bytes per downstream batch (encoded records), well under the message limit.
    pub downstream_batch_bytes: usize,
    /// Unacknowledged downstream batches allowed in flight.
    pub downstream_window: usize,
    /// Snapshot batches held in memory at once by all sessions together
    /// (gathered, sent or unacknowledged; see `downstream`).
    pub snapshot_batches_in_flight: usize,
    /// How long to wait for the Hello.
    pub hello_timeout: Duration,
    /// Re-read the change log this often even without a wake-up (a missed
    /// notification then costs at most this long).
    pub poll_fallback: Duration,
    /// Scheduled integrity checks: how often per site (`None`: off), and
    /// whether they only report (see `crate::integrity::schedule`).
    pub verify_every: Option<Duration>,
    pub verify_report_only: bool,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(storesync_shared::kit::config::HEARTBEAT_SECONDS),
            max_batch_records: 5000,
            // Large batches: a satellite's SQLite writes each touched page once
            // per commit, and keys arrive in random order, so records per
            // commit decide its apply rate (1,000 → 10,000 per batch: snapshot
            // 49k → 80k records/s in `cargo bench -p satellite-agent --bench apply`).
            // Two in flight keep the satellite busy while the next one travels,
            // and bound what a session holds (63 sessions × 2 × ≤ 4 MiB).
            downstream_batch_records: 10_000,
            downstream_batch_bytes: 4 * 1024 * 1024,
            downstream_window: 2,
            // A 10,000-record batch of master data is about 1 MiB encoded and
            // 3 MiB decoded: this bounds what initialising sites hold at once
            // (they share two cores, so more at once is not faster).
            snapshot_batches_in_flight: 16,
            hello_timeout: Duration::from_secs(30),
            poll_fallback: Duration::from_secs(5),
            verify_every: None,
            verify_report_only: false,
        }
    }
}

/// Everything a session needs; cheap to clone.
#[derive(Clone)]
pub struct SyncContext {
    pub db: DatabaseConnection,
    pub notifier: ChangeNotifier,
    pub settings: Arc<SyncSettings>,
    sessions: Arc<Sessions>,
    /// The copy of master data new snapshots send (see `shared_snapshot`).
    pub(crate) master_data: Arc<shared_snapshot::Latest>,
    /// Slots of snapshot batches, `settings.snapshot_batches_in_flight`.
    pub(crate) snapshot_slots: Arc<tokio::sync::Semaphore>,
    /// The integrity checks of this process's sessions.
    pub(crate) verifiers: Arc<crate::integrity::Verifiers>,
    /// Wrong sync credentials, counted per Sync ID and per source address.
    failures_by_site: Arc<Throttle<u32>>,
    failures_by_source: Arc<Throttle<Option<std::net::IpAddr>>>,
    shutdown: watch::Sender<bool>,
}

impl SyncContext {
    /// `site_changes`: the handle the admin service uses to tell this
    /// process's sessions that an operator changed their site.
    pub fn new(
        db: DatabaseConnection,
        notifier: ChangeNotifier,
        settings: SyncSettings,
        site_changes: &SiteChanges,
    ) -> Self {
        Self {
            db,
            notifier,
            snapshot_slots: Arc::new(tokio::sync::Semaphore::new(
                settings.snapshot_batches_in_flight.max(1),
            )),
            settings: Arc::new(settings),
            master_data: Arc::default(),
            sessions: site_changes.sessions.clone(),
            verifiers: site_changes.verifiers.clone(),
            failures_by_site: Arc::new(Throttle::default()),
            failures_by_source: Arc::new(Throttle::default()),
            shutdown: watch::channel(false).0,
        }
    }

    /// The gRPC service, with explicit message size limits. A satellite that
    /// sends gzip is understood, and one that accepts gzip is answered in it
    /// (`STORESYNC_SYNC_COMPRESSION` on the satellite); others get plain messages.
    /// The size limits apply to the decompressed message.
    ///
    /// A satellite that offers `Hello.stream_compression` gets it
    /// (`storesync_shared::kit::stream_compression`): every message after
    /// the Welcome travels as a chunk of one deflate stream per direction.
    /// tonic cannot switch its gzip off per message on a stream, so such a
    /// satellite asks for no gzip in its headers (nothing is compressed twice).
    pub fn service(&self) -> SyncServiceServer<SyncHandler> {
        SyncServiceServer::new(SyncHandler { ctx: self.clone() })
            .max_decoding_message_size(storesync_shared::kit::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(storesync_shared::kit::server::MAX_MESSAGE_BYTES)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
    }

    /// Listens for other replicas' changes and session claims (PostgreSQL only).
    pub fn start_cluster_listener(&self, database_url: String) -> tokio::task::JoinHandle<()> {
        tokio::spawn(cluster::listen(
            database_url,
            self.notifier.clone(),
            self.sessions.clone(),
        ))
    }

    /// Ends every session with `UNAVAILABLE` (the server is draining): the
    /// satellites reconnect elsewhere or later.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Sync IDs with a live session on this process.
    pub fn connected_sites(&self) -> Vec<u32> {
        self.sessions.live()
    }
}

/// The tonic adapter: it chains the handshake steps and hands the stream to
/// a session task (`session::run`); the work is in the modules.
pub struct SyncHandler {
    ctx: SyncContext,
}

type MasterStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<MasterMessage, Status>> + Send>,
>;

#[tonic::async_trait]
impl SyncService for SyncHandler {
    type SyncStream = MasterStream;

    async fn sync(
        &self,
        request: Request<Streaming<SatelliteMessage>>,
    ) -> std::result::Result<Response<MasterStream>, Status> {
        let ctx = self.ctx.clone();
        let source = request.remote_addr().map(|a| a.ip());
        let (_, identity) = handshake::authenticate(&ctx, source, request.metadata()).await?;
        let mut inbound = Unpacking::new(request.into_inner());
        let hello = handshake::read_hello(&ctx, &mut inbound, identity.sync_id).await?;
        let site = handshake::check_database(&ctx, &identity, &hello).await?;
        let welcome = handshake::welcome(&ctx, &site, &identity, &hello).await?;
        inbound.inflate(
            welcome.stream_compression(),
            storesync_shared::kit::server::MAX_MESSAGE_BYTES,
        );
        let (tx, rx) = mpsc::channel(16);
        downstream::send(&tx, master_message::Message::Welcome(welcome.clone())).await?;
        // Compressed as tonic takes each message off the channel, in order:
        // the Welcome (sent above) stays plain, statuses pass through.
        let outbound: MasterStream = if welcome.stream_compression() == StreamCompression::Deflate {
            let mut deflater = Deflater::new();
            Box::pin(ReceiverStream::new(rx).map(move |item| item.map(|m| deflater.pack(m))))
        } else {
            Box::pin(ReceiverStream::new(rx))
        };
        let start = if welcome.initialising && welcome.snapshot_resumed {
            downstream::Start::ResumeInitialisation(handshake::resume_of(&hello))
        } else if welcome.initialising {
            downstream::Start::Initialise
        } else if welcome.resync_master_data && welcome.snapshot_resumed {
            downstream::Start::ResumeResync(handshake::resume_of(&hello))
        } else if welcome.resync_master_data {
            downstream::Start::ResyncMasterData
        } else {
            downstream::Start::Continue
        };
        tokio::spawn(session::run(
            ctx,
            identity,
            hello,
            (welcome.session_id, welcome.integrity_check_due),
            start,
            inbound,
            tx,
        ));
        Ok(Response::new(outbound))
    }
}
