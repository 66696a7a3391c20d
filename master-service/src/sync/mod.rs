//! `SyncService.Sync`: the one bidirectional stream per satellite.
//!
//! A session authenticates from metadata before reading anything, reads the
//! satellite's Hello, answers Welcome, then runs two halves until either ends:
//! - the inbound half (this module) reads the satellite's messages: upstream
//!   batches are applied in order ([`upstream`]) and acknowledged; downstream
//!   acks move the site's cursor; heartbeats refresh its status;
//! - the downstream half ([`downstream`]) sends the snapshot (when asked), the
//!   change log and live changes, and heartbeats.
//!
//! One live session per Sync ID ([`Sessions`]): a newer one replaces the older,
//! which ends with `ABORTED`. Status codes are listed in `proto/storesync/v1/sync.proto`.
//!
//! Not here: how master data is written (`master_data`, `changelog`), the
//! "sync with" list and credentials (`admin`; this module only reads them).

pub mod cluster;
pub mod downstream;
pub mod error;
pub mod retention;
pub mod status;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use storesync_shared::entities::{setting, store};
use storesync_shared::proto::v1::sync_service_server::{SyncService, SyncServiceServer};
use storesync_shared::proto::v1::{
    master_message, satellite_message, Hello, MasterMessage, SatelliteMessage, SyncError, SyncMode,
    UpstreamAck, Welcome,
};
use storesync_shared::{auth, Error, Result};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::changelog::{self, ChangeNotifier};
use crate::entities::{change_log, site};
use crate::metrics;
use crate::unlock::Throttle;
use downstream::Acked;
use upstream::{sync_id_i32, SiteIdentity};

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
    /// How long to wait for the Hello.
    pub hello_timeout: Duration,
    /// Re-read the change log this often even without a wake-up (a missed
    /// notification then costs at most this long).
    pub poll_fallback: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
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
            hello_timeout: Duration::from_secs(30),
            poll_fallback: Duration::from_secs(5),
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
    /// Wrong sync credentials, counted per Sync ID and per source address.
    failures_by_site: Arc<Throttle<u32>>,
    failures_by_source: Arc<Throttle<Option<std::net::IpAddr>>>,
    shutdown: watch::Sender<bool>,
}

impl SyncContext {
    pub fn new(db: DatabaseConnection, notifier: ChangeNotifier, settings: SyncSettings) -> Self {
        Self {
            db,
            notifier,
            settings: Arc::new(settings),
            sessions: Arc::new(Sessions::default()),
            failures_by_site: Arc::new(Throttle::default()),
            failures_by_source: Arc::new(Throttle::default()),
            shutdown: watch::channel(false).0,
        }
    }

    /// The gRPC service, with explicit message size limits. A satellite that
    /// sends gzip is understood, and one that accepts gzip is answered in it
    /// (`STORESYNC_SYNC_COMPRESSION` on the satellite); others get plain messages.
    /// The size limits apply to the decompressed message.
    pub fn service(&self) -> SyncServiceServer<SyncHandler> {
        SyncServiceServer::new(SyncHandler { ctx: self.clone() })
            .max_decoding_message_size(storesync_shared::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(storesync_shared::server::MAX_MESSAGE_BYTES)
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

/// Live sessions by Sync ID.
#[derive(Default)]
struct Sessions {
    active: Mutex<HashMap<u32, (String, watch::Sender<bool>)>>,
}

impl Sessions {
    /// Registers a session; the one it replaces (if any) is told to end.
    fn register(&self, sync_id: u32, session_id: &str) -> watch::Receiver<bool> {
        let (replaced_tx, replaced_rx) = watch::channel(false);
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((old_id, old)) = active.insert(sync_id, (session_id.to_owned(), replaced_tx)) {
            tracing::info!(sync_id, old_session = %old_id, new_session = %session_id, "a newer session replaces the old one");
            old.send_replace(true);
        }
        replaced_rx
    }

    /// Another replica's session `session_id` claimed `sync_id`: a different
    /// session of that site here must end.
    fn claimed_elsewhere(&self, sync_id: u32, session_id: &str) {
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if active.get(&sync_id).is_some_and(|(id, _)| id != session_id) {
            if let Some((old_id, old)) = active.remove(&sync_id) {
                tracing::info!(sync_id, old_session = %old_id, new_session = %session_id, "a session on another replica replaces this one");
                old.send_replace(true);
            }
        }
    }

    fn unregister(&self, sync_id: u32, session_id: &str) {
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if active.get(&sync_id).is_some_and(|(id, _)| id == session_id) {
            active.remove(&sync_id);
        }
    }

    fn live(&self) -> Vec<u32> {
        let active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ids: Vec<u32> = active.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// The tonic adapter.
pub struct SyncHandler {
    ctx: SyncContext,
}

type MasterStream = ReceiverStream<std::result::Result<MasterMessage, Status>>;

#[tonic::async_trait]
impl SyncService for SyncHandler {
    type SyncStream = MasterStream;

    async fn sync(
        &self,
        request: Request<Streaming<SatelliteMessage>>,
    ) -> std::result::Result<Response<MasterStream>, Status> {
        let ctx = self.ctx.clone();
        let source = request.remote_addr().map(|a| a.ip());
        let (site, identity) = authenticate(&ctx, source, request.metadata()).await?;
        let mut inbound = request.into_inner();
        let hello = read_hello(&ctx, &mut inbound, identity.sync_id).await?;
        let welcome = welcome(&ctx, &site, &identity, &hello).await?;
        let (tx, rx) = mpsc::channel(16);
        downstream::send(&tx, master_message::Message::Welcome(welcome.clone())).await?;
        tokio::spawn(run_session(
            ctx,
            identity,
            hello,
            welcome.session_id,
            inbound,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Checks `authorization` and `x-sync-id` before any message is read.
///
/// Wrong user name or password, or a missing or malformed Sync ID: UNAUTHENTICATED,
/// with one message. Right credentials for a Sync ID that is unknown, the
/// master's own or disabled: PERMISSION_DENIED saying which.
///
/// Repeated failures are answered ever more slowly, per Sync ID and per source
/// address (see [`Throttle`]), so guessing a password costs seconds a try.
async fn authenticate(
    ctx: &SyncContext,
    source: Option<std::net::IpAddr>,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<(site::Model, SiteIdentity)> {
    let db = &ctx.db;
    let unauthenticated = || Error::Unauthenticated(SYNC_BAD_CREDENTIALS.to_owned());
    let sync_id_header: Option<u32> = metadata
        .get("x-sync-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let delay = ctx
        .failures_by_source
        .delay(source)
        .max(sync_id_header.map_or(Duration::ZERO, |id| ctx.failures_by_site.delay(id)));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let failed = |sync_id: Option<u32>, user: &str| {
        let in_a_row = ctx.failures_by_source.failed(source);
        let for_site = sync_id.map_or(0, |id| ctx.failures_by_site.failed(id));
        metrics::auth_failed(sync_id);
        // The user name helps an operator find a misconfigured site; the password never appears.
        tracing::warn!(sync_id, %user, source = ?source, failures_from_source = in_a_row, failures_for_site = for_site, "sync authentication failed");
        unauthenticated()
    };
    let Some(sync_id) = sync_id_header else {
        return Err(failed(None, ""));
    };
    let Ok(credentials) = auth::basic_credentials(metadata) else {
        return Err(failed(Some(sync_id), ""));
    };
    let site = site::Entity::find_by_id(sync_id_i32(sync_id))
        .one(db)
        .await?;
    let (expected_user, expected_hash) = match site
        .as_ref()
        .and_then(|s| Some((s.sync_user_name.clone()?, s.sync_password_hash.clone()?)))
    {
        Some(own) => (Some(own.0), Some(own.1)),
        None => (
            setting_value(db, "sync_user_name").await?,
            setting_value(db, "sync_password_hash").await?,
        ),
    };
    let Some(expected_hash) = expected_hash else {
        tracing::warn!(
            sync_id,
            "sync refused: no sync password is set on the master (AdminService.UpdatePreferences)"
        );
        return Err(unauthenticated());
    };
    let password_ok = auth::verify_secret(credentials.password, expected_hash).await;
    if !password_ok || expected_user.as_deref() != Some(credentials.user.as_str()) {
        return Err(failed(Some(sync_id), &credentials.user));
    }
    ctx.failures_by_source.succeeded(source);
    ctx.failures_by_site.succeeded(sync_id);
    if sync_id == 1 {
        return Err(Error::PermissionDenied(
            "Sync ID 1 is the master itself; a satellite has a Sync ID from 2 to 64".into(),
        ));
    }
    let site = site.ok_or_else(|| {
        Error::PermissionDenied(format!(
            "Sync ID {sync_id} is not in the master's sync-with list; add it with AdminService.AddSite"
        ))
    })?;
    if !site.enabled {
        return Err(Error::PermissionDenied(format!(
            "Sync ID {sync_id} is disabled on the master"
        )));
    }
    let identity = SiteIdentity {
        sync_id,
        store_id: site.store_id.clone(),
    };
    Ok((site, identity))
}

/// The one message for every failed sync login.
const SYNC_BAD_CREDENTIALS: &str = "invalid sync credentials: send `authorization: Basic base64(user:password)` with the master's sync user name and password, and `x-sync-id` with this site's Sync ID";

async fn setting_value(db: &DatabaseConnection, key: &str) -> Result<Option<String>> {
    Ok(setting::Entity::find_by_id(key.to_owned())
        .one(db)
        .await?
        .map(|s| s.value))
}

async fn read_hello(
    ctx: &SyncContext,
    inbound: &mut Streaming<SatelliteMessage>,
    sync_id: u32,
) -> Result<Hello> {
    let first = tokio::time::timeout(ctx.settings.hello_timeout, inbound.message())
        .await
        .map_err(|_| Error::InvalidArgument("no Hello within the time limit".into()))?
        .map_err(|status| {
            Error::InvalidArgument(format!("reading the Hello: {}", status.message()))
        })?;
    let Some(SatelliteMessage {
        message: Some(satellite_message::Message::Hello(hello)),
    }) = first
    else {
        return Err(Error::InvalidArgument(
            "the first message of a sync session must be a Hello".into(),
        ));
    };
    if hello.protocol_version != storesync_shared::PROTOCOL_VERSION {
        return Err(Error::FailedPrecondition(format!(
            "the satellite speaks sync protocol version {}, this master speaks version {}; upgrade the older side",
            hello.protocol_version,
            storesync_shared::PROTOCOL_VERSION
        )));
    }
    if hello.sync_id != sync_id {
        return Err(Error::PermissionDenied(format!(
            "Hello.sync_id {} does not match the authenticated Sync ID {sync_id}",
            hello.sync_id
        )));
    }
    Ok(hello)
}

async fn welcome(
    ctx: &SyncContext,
    site: &site::Model,
    identity: &SiteIdentity,
    hello: &Hello,
) -> Result<Welcome> {
    let db = &ctx.db;
    let store = store::Entity::find_by_id(site.store_id.clone())
        .one(db)
        .await?
        .ok_or_else(|| {
            Error::Internal(format!("store of Sync ID {} is missing", identity.sync_id))
        })?;
    if !hello.needs_initialisation {
        let head = changelog::head(db).await?;
        if hello.downstream_cursor > head {
            return Err(Error::FailedPrecondition(format!(
                "the satellite has applied master data up to cursor {} but the master's change log ends at {head} \
                 (was the master restored from an older backup?); delete the satellite's database to re-initialise it",
                hello.downstream_cursor
            )));
        }
        let oldest: Option<i64> = change_log::Entity::find()
            .select_only()
            .column_as(Expr::col(change_log::Column::Seq).min(), "m")
            .into_tuple()
            .one(db)
            .await?
            .flatten();
        if let Some(oldest) = oldest.and_then(|o| u64::try_from(o).ok()) {
            if hello.downstream_cursor + 1 < oldest {
                return Err(Error::FailedPrecondition(format!(
                    "the satellite's cursor {} is older than the master's change log keeps (from {oldest}); delete the satellite's database to re-initialise it",
                    hello.downstream_cursor
                )));
            }
        }
    }
    let interval = setting_value(db, "sync_interval_minutes")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    Ok(Welcome {
        protocol_version: storesync_shared::PROTOCOL_VERSION,
        master_version: storesync_shared::VERSION.to_owned(),
        upstream_acked_seq: u64::try_from(site.upstream_acked_seq).unwrap_or(0),
        store: Some(store.into()),
        sync_interval_minutes: interval,
        heartbeat_interval_seconds: u32::try_from(ctx.settings.heartbeat.as_secs())
            .unwrap_or(u32::MAX)
            .max(1),
        max_batch_records: ctx.settings.max_batch_records,
        max_message_bytes: u32::try_from(storesync_shared::server::MAX_MESSAGE_BYTES)
            .unwrap_or(u32::MAX),
        initialising: hello.needs_initialisation,
        session_id: uuid::Uuid::new_v4().to_string(),
    })
}

/// Runs one session to its end and reports how it ended.
async fn run_session(
    ctx: SyncContext,
    identity: SiteIdentity,
    hello: Hello,
    session_id: String,
    inbound: Streaming<SatelliteMessage>,
    tx: downstream::Outbound,
) {
    let sync_id = identity.sync_id;
    let span = tracing::info_span!("sync_session", sync_id, session = %session_id);
    let mode = if hello.mode() == SyncMode::Interval {
        "interval"
    } else {
        "streaming"
    };
    tracing::info!(parent: &span, mode, agent_version = %hello.agent_version, initialise = hello.needs_initialisation, cursor = hello.downstream_cursor, "session started");
    let mut replaced = ctx.sessions.register(sync_id, &session_id);
    // The claim in the database decides which session may apply this site's
    // batches, across replicas; without it the session cannot go on.
    let claimed = status::claim(
        &ctx.db,
        sync_id,
        &session_id,
        mode,
        &hello.agent_version,
        hello.upstream_backlog,
    )
    .await;
    if let Err(error) = claimed {
        tracing::warn!(parent: &span, %error, "could not claim the site; ending the session");
        let _ = tx
            .send(Err(Status::unavailable(
                "the master cannot record this session; reconnect later",
            )))
            .await;
        ctx.sessions.unregister(sync_id, &session_id);
        return;
    }
    metrics::session_opened(sync_id);

    let (ack_tx, ack_rx) = watch::channel(Acked {
        cursor: hello.downstream_cursor,
        init_records_done: 0,
    });
    let mut downstream = tokio::spawn(downstream::run(
        ctx.clone(),
        sync_id,
        identity.store_id.clone(),
        hello.needs_initialisation,
        hello.downstream_cursor,
        tx.clone(),
        ack_rx,
    ));
    let mut shutdown = ctx.shutdown.subscribe();
    // The record an upstream batch was refused for, for the SyncError.
    let refused = std::sync::OnceLock::new();
    let inbound_half = inbound_loop(
        &ctx,
        &identity,
        &session_id,
        hello.needs_initialisation,
        inbound,
        &tx,
        &ack_tx,
        &refused,
    );
    tokio::pin!(inbound_half);
    let outcome: Result<()> = tokio::select! {
        result = &mut inbound_half => result,
        joined = &mut downstream => match joined {
            Ok(result) => result,
            Err(e) => Err(Error::Internal(format!("downstream task: {e}"))),
        },
        _ = replaced.wait_for(|r| *r) => Err(Error::Aborted(format!("a newer session for Sync ID {sync_id} replaced this one"))),
        _ = shutdown.wait_for(|s| *s) => Err(Error::Unavailable("the master is shutting down; reconnect later".into())),
    };
    downstream.abort();
    match outcome {
        Ok(()) => tracing::info!(parent: &span, "session ended by the satellite"),
        Err(error) => {
            let status = Status::from(clone_error(&error));
            match &error {
                Error::Unavailable(_) | Error::Aborted(_) => {
                    tracing::info!(parent: &span, %error, "session ended")
                }
                _ => {
                    tracing::warn!(parent: &span, %error, "session failed");
                    status::error(&ctx.db, sync_id, status.message()).await;
                }
            }
            let record = refused.get().cloned();
            let _ = tx
                .send(Ok(MasterMessage {
                    message: Some(master_message::Message::Error(SyncError {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        record,
                    })),
                }))
                .await;
            let _ = tx.send(Err(status)).await;
        }
    }
    metrics::session_closed(sync_id);
    ctx.sessions.unregister(sync_id, &session_id);
    status::disconnected(&ctx.db, sync_id, &session_id).await;
}

/// A copy of an error for the status (the database variant becomes internal).
fn clone_error(error: &Error) -> Error {
    match error {
        Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::AlreadyExists(m) => Error::AlreadyExists(m.clone()),
        Error::FailedPrecondition(m) => Error::FailedPrecondition(m.clone()),
        Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
        Error::Unauthenticated(m) => Error::Unauthenticated(m.clone()),
        Error::Aborted(m) => Error::Aborted(m.clone()),
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        other => Error::Internal(other.to_string()),
    }
}

/// Why reading the satellite's stream failed, as the status to end it with.
/// tonic reports a message it cannot decode as INTERNAL and one over the size
/// limit as OUT_OF_RANGE; both are the sender's fault, not the master's.
fn inbound_failure(status: &Status) -> Error {
    match status.code() {
        tonic::Code::Internal => {
            Error::InvalidArgument(format!("a malformed message: {}", status.message()))
        }
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Error::InvalidArgument(format!(
                "a message over the size limit of {} bytes: {}",
                storesync_shared::server::MAX_MESSAGE_BYTES,
                status.message()
            ))
        }
        _ => Error::Unavailable(format!("the stream broke: {}", status.message())),
    }
}

/// Reads the satellite's messages until it says Goodbye, goes away or errs.
#[allow(clippy::too_many_arguments)]
async fn inbound_loop(
    ctx: &SyncContext,
    identity: &SiteIdentity,
    session_id: &str,
    initialising: bool,
    mut inbound: Streaming<SatelliteMessage>,
    tx: &downstream::Outbound,
    acks: &watch::Sender<Acked>,
    refused: &std::sync::OnceLock<storesync_shared::proto::v1::RecordRef>,
) -> Result<()> {
    let sync_id = identity.sync_id;
    let idle_limit = ctx.settings.heartbeat * 3;
    let mut initialising = initialising;
    loop {
        let next = tokio::time::timeout(idle_limit, inbound.message())
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "no message from the satellite for {idle_limit:?}; closing the session"
                ))
            })?;
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(status) => return Err(inbound_failure(&status)),
        };
        match message.message {
            Some(satellite_message::Message::UpstreamBatch(batch)) => {
                if batch.records.len() > ctx.settings.max_batch_records as usize {
                    let error = error::ApplyError::invalid(
                        "upstream_batch.records",
                        format!(
                            "{} records exceed the limit of {}",
                            batch.records.len(),
                            ctx.settings.max_batch_records
                        ),
                    );
                    metrics::upstream_rejected(sync_id, &error);
                    return Err(error.into());
                }
                let (first, last) = (batch.first_seq, batch.last_seq);
                // One trace per batch: this apply is a child of the satellite's push.
                let span = tracing::info_span!(parent: None, "sync.upstream.apply", otel.kind = "consumer", sync_id, first_seq = first, last_seq = last, records = batch.records.len());
                storesync_shared::telemetry::propagation::set_parent(&span, &batch.trace_context);
                let tables = metrics::tables_of(&batch.records);
                let started = Instant::now();
                let applied = upstream::apply_batch(&ctx.db, identity, session_id, batch)
                    .instrument(span)
                    .await
                    .inspect_err(|error| {
                        metrics::upstream_rejected(sync_id, error);
                        if let Some(record) = error.record() {
                            let _ = refused.set(record.to_ref());
                        }
                    })?;
                metrics::upstream_applied(sync_id, &tables, applied.applied, started);
                tracing::debug!(
                    sync_id,
                    first,
                    last,
                    applied = applied.applied,
                    "upstream batch applied"
                );
                downstream::send(
                    tx,
                    master_message::Message::UpstreamAck(UpstreamAck {
                        acked_seq: applied.acked_seq,
                        applied: applied.applied,
                    }),
                )
                .await?;
                status::synced(&ctx.db, sync_id, u64::from(applied.applied)).await;
            }
            Some(satellite_message::Message::DownstreamAck(ack)) => {
                if ack.cursor > 0 {
                    let update = site::Entity::update_many()
                        .col_expr(
                            site::Column::DownstreamCursor,
                            Expr::value(i64::try_from(ack.cursor).unwrap_or(i64::MAX)),
                        )
                        .col_expr(site::Column::Initialised, Expr::value(true))
                        .filter(site::Column::SyncId.eq(sync_id_i32(sync_id)))
                        .filter(
                            site::Column::DownstreamCursor
                                .lt(i64::try_from(ack.cursor).unwrap_or(i64::MAX)),
                        );
                    if initialising {
                        // The site becomes initialised: from now on tombstones
                        // wait for it, so this must survive any crash.
                        update.exec(&ctx.db).await?;
                    } else {
                        // Not flushed: after a database crash an older cursor
                        // only keeps tombstones a little longer.
                        status::without_flush(&ctx.db, update).await?;
                    }
                }
                if initialising && ack.cursor > 0 {
                    initialising = false;
                    let done = ack.init_records_done;
                    status::initialisation(&ctx.db, sync_id, false, done, done).await;
                    tracing::info!(sync_id, records = done, "site initialised");
                }
                // send_modify, not send_replace(… acks.borrow() …): a read guard
                // held while sending would deadlock on the watch's lock.
                acks.send_modify(|acked| {
                    acked.cursor = acked.cursor.max(ack.cursor);
                    acked.init_records_done = ack.init_records_done;
                });
                status::synced(&ctx.db, sync_id, 0).await;
            }
            Some(satellite_message::Message::Heartbeat(beat)) => {
                if !status::heartbeat(&ctx.db, sync_id, session_id, beat.upstream_backlog).await {
                    return Err(Error::Aborted(format!(
                        "a newer session for Sync ID {sync_id} replaced this one"
                    )));
                }
            }
            Some(satellite_message::Message::Goodbye(_)) => return Ok(()),
            Some(satellite_message::Message::Hello(_)) => {
                return Err(Error::InvalidArgument(
                    "a session takes one Hello, at its start".into(),
                ));
            }
            None => return Err(Error::InvalidArgument("an empty SatelliteMessage".into())),
        }
    }
}
