//! The satellite's side of the sync stream: one task that keeps a session
//! with the master (streaming), or opens one every sync interval (interval),
//! reconnecting with capped, jittered exponential backoff.
//!
//! In a session:
//! - upstream: outbox entries are sent in sequence order, at most `window`
//!   batches unacknowledged; an `UpstreamAck` deletes what it covers (the master
//!   committed it together with its acknowledged sequence);
//! - downstream: each batch is applied with its cursor in one transaction
//!   ([`apply`]) and acknowledged;
//! - initialisation: a database that is not initialised is emptied and asks
//!   for a snapshot; it becomes initialised with the snapshot's last batch.
//!
//! Not here: local writes (`StoreService`, which fills the outbox) and the
//! operator-facing status (`status::SyncHandle`, which this task drives).

pub mod apply;

use std::collections::VecDeque;
use std::time::Duration;

use prost::Message;
use rand::Rng;
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use storesync_shared::proto::v1::sync_service_client::SyncServiceClient;
use storesync_shared::proto::v1::{
    master_message, satellite_message, ConnectionState, DownstreamAck, Goodbye, Heartbeat, Hello,
    SatelliteMessage, SyncMode, UpstreamBatch, Welcome,
};
use storesync_shared::validate::now_ms;
use storesync_shared::{auth, Error, Result};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::entities::{outbox as outbox_table, sync_state};
use crate::outbox;
use crate::status::SyncHandle;

/// How the satellite talks to the master.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The master's addresses, tried in turn: a failed session moves to the next.
    pub master_urls: Vec<String>,
    pub sync_id: u32,
    pub sync_user: String,
    pub sync_password: String,
    pub mode: SyncMode,
    /// Minutes between sessions in interval mode until the master says otherwise.
    pub interval_minutes: u32,
    /// When set, overrides every interval (for tests and demos that cannot wait minutes).
    pub interval_override: Option<Duration>,
    /// Heartbeat on an idle stream until the master says otherwise.
    pub heartbeat: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Upstream batch bounds: records and encoded bytes.
    pub batch_records: usize,
    pub batch_bytes: usize,
    /// Unacknowledged upstream batches in flight.
    pub window: usize,
    /// TLS towards `https://` master URLs (CA to trust, optional client identity).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// gzip both ways (the master accepts and answers in kind).
    pub compression: bool,
}

impl ClientSettings {
    /// Defaults for everything but the connection details.
    pub fn new(
        master_urls: Vec<String>,
        sync_id: u32,
        sync_user: String,
        sync_password: String,
        mode: SyncMode,
    ) -> Self {
        Self {
            master_urls,
            sync_id,
            sync_user,
            sync_password,
            mode,
            interval_minutes: 5,
            interval_override: None,
            heartbeat: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            batch_records: 2000,
            batch_bytes: 4 * 1024 * 1024,
            window: 4,
            tls: None,
            compression: false,
        }
    }
}

/// The sync task of an opened satellite, for [`crate::serve`].
pub fn start(satellite: &crate::Satellite) -> crate::SyncTask {
    let config = &satellite.config;
    let mode = match config.sync_mode {
        crate::config::SyncMode::Streaming => SyncMode::Streaming,
        crate::config::SyncMode::Interval => SyncMode::Interval,
    };
    let mut settings = ClientSettings::new(
        config
            .master_urls
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
            .collect(),
        config.sync_id.get(),
        config.sync_user.clone(),
        config.sync_password.clone(),
        mode,
    );
    settings.interval_minutes = config.sync_interval_minutes;
    settings.interval_override = config.sync_interval_override;
    settings.heartbeat = config.heartbeat;
    settings.backoff_initial = config.backoff_initial;
    settings.backoff_max = config.backoff_max;
    settings.batch_records = config.upstream_batch_records;
    settings.compression = config.sync_compression;
    if config.master_urls.iter().any(|u| u.scheme() == "https") {
        let identity = config
            .master_client_identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        match storesync_shared::tls::client_config(config.master_ca.as_deref(), identity) {
            Ok(tls) => settings.tls = Some(tls),
            // Reported on every attempt by the session (no TLS config for an https URL).
            Err(error) => tracing::error!(%error, "cannot set up TLS towards the master"),
        }
    }
    Box::pin(run(satellite.db.clone(), settings, satellite.sync.clone()))
}

/// Runs sync sessions until the handle says the server is shutting down.
pub async fn run(db: DatabaseConnection, settings: ClientSettings, handle: SyncHandle) {
    let mut failures: u32 = 0;
    let mut last_logged: Option<String> = None;
    let mut interval = settings.interval_minutes;
    // Which of the master's addresses to use; a failure moves to the next.
    let mut current = 0usize;
    loop {
        if handle.is_shutting_down() {
            break;
        }
        handle.set_state(ConnectionState::Connecting);
        let url = settings
            .master_urls
            .get(current % settings.master_urls.len().max(1))
            .cloned()
            .unwrap_or_default();
        let outcome = tokio::select! {
            outcome = session(&db, &settings, &url, &handle, &mut interval) => outcome,
            () = handle.shutdown_requested() => break,
        };
        let wait = match outcome {
            Ok(()) => {
                failures = 0;
                if last_logged.take().is_some() {
                    tracing::info!("sync with the master works again");
                }
                if settings.mode == SyncMode::Interval {
                    handle.set_state(ConnectionState::Waiting);
                    settings
                        .interval_override
                        .unwrap_or(Duration::from_secs(u64::from(interval.max(1)) * 60))
                } else {
                    handle.set_state(ConnectionState::Disconnected);
                    settings.backoff_initial
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                current = current.wrapping_add(1);
                let cause = error.to_string();
                // Log a cause once, then again only every 20th retry, never in a tight loop.
                if last_logged.as_deref() != Some(cause.as_str()) {
                    tracing::warn!(%cause, "sync with the master failed; retrying with backoff");
                    last_logged = Some(cause.clone());
                } else if failures % 20 == 0 {
                    tracing::warn!(%cause, failures, "sync with the master still failing");
                }
                handle.set_error(cause);
                handle.set_state(ConnectionState::Disconnected);
                backoff(&settings, failures)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            () = handle.sync_now_requested() => {}
            () = handle.shutdown_requested() => break,
        }
    }
    handle.set_state(ConnectionState::Disconnected);
}

/// Full-jitter exponential backoff: a random wait up to `initial * 2^failures`, capped.
fn backoff(settings: &ClientSettings, failures: u32) -> Duration {
    let exp = settings
        .backoff_initial
        .saturating_mul(1u32 << failures.min(16));
    let cap = exp.min(settings.backoff_max);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
}

async fn load_state(db: &DatabaseConnection) -> Result<sync_state::Model> {
    sync_state::Entity::find_by_id(1)
        .one(db)
        .await?
        .ok_or_else(|| Error::Internal("sync_state row is missing".into()))
}

fn status_error(status: tonic::Status) -> Error {
    // Transport failures (TLS refused, connection reset) carry their cause as
    // the status's source: show it, or the operator reads only "transport error".
    let cause = std::error::Error::source(&status)
        .map(|s| format!(" ({})", source_chain(s)))
        .unwrap_or_default();
    let message = format!("{:?}: {}{cause}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unauthenticated => Error::Unauthenticated(message),
        tonic::Code::PermissionDenied => Error::PermissionDenied(message),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(message),
        tonic::Code::InvalidArgument => Error::InvalidArgument(message),
        tonic::Code::Aborted => Error::Aborted(message),
        _ => Error::Unavailable(message),
    }
}

/// One session: connect, hello, exchange until done (interval) or broken.
async fn session(
    db: &DatabaseConnection,
    settings: &ClientSettings,
    master_url: &str,
    handle: &SyncHandle,
    interval: &mut u32,
) -> Result<()> {
    let state = load_state(db).await?;
    let initialise = !state.initialised;
    let backlog = outbox_table::Entity::find().count(db).await?;
    let endpoint = tonic::transport::Endpoint::from_shared(master_url.to_owned())
        .map_err(|e| Error::invalid("master_url", e))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        // HTTP/2 lets a peer send only a window ahead of what this side has
        // read, and this side reads the next batch only after applying the
        // last: with the 64 KiB default a 1 MiB batch crawled over in window
        // round trips while the satellite sat idle (half the machine idle
        // in the downstream benchmark). 8 MiB covers two full batches; it
        // only bounds buffering, an idle stream holds none of it.
        .initial_stream_window_size(8 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let endpoint = if master_url.starts_with("https://") {
        let tls = settings.tls.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{master_url} needs TLS, but its settings could not be read (see the log at start)"
            ))
        })?;
        endpoint
            .tls_config(tls)
            .map_err(|e| Error::invalid("master_url", format!("TLS: {e}")))?
    } else {
        endpoint
    };
    let channel = endpoint.connect().await.map_err(|e| {
        Error::Unavailable(format!(
            "cannot reach the master at {}: {}",
            master_url,
            source_chain(&e)
        ))
    })?;
    let mut client = SyncServiceClient::new(channel)
        .max_decoding_message_size(storesync_shared::server::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(storesync_shared::server::MAX_MESSAGE_BYTES);
    if settings.compression {
        client = client
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    }

    let (tx, rx) = mpsc::channel::<SatelliteMessage>(settings.window * 2 + 8);
    let hello = Hello {
        protocol_version: storesync_shared::PROTOCOL_VERSION,
        sync_id: settings.sync_id,
        agent_version: storesync_shared::VERSION.to_owned(),
        downstream_cursor: if initialise {
            0
        } else {
            u64::try_from(state.downstream_cursor).unwrap_or(0)
        },
        upstream_last_seq: u64::try_from(state.upstream_last_seq).unwrap_or(0),
        needs_initialisation: initialise,
        mode: settings.mode as i32,
        upstream_backlog: backlog,
    };
    send(&tx, satellite_message::Message::Hello(hello)).await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let auth_value = auth::basic_header(&settings.sync_user, &settings.sync_password)
        .parse()
        .map_err(|_| Error::invalid("sync_user", "cannot be sent as a header"))?;
    request.metadata_mut().insert("authorization", auth_value);
    request
        .metadata_mut()
        .insert("x-sync-id", settings.sync_id.into());
    let mut inbound = client
        .sync(request)
        .await
        .map_err(status_error)?
        .into_inner();

    let idle_limit = settings.heartbeat * 3;
    let welcome: Welcome = match tokio::time::timeout(idle_limit, inbound.message()).await {
        Ok(Ok(Some(message))) => match message.message {
            Some(master_message::Message::Welcome(welcome)) => welcome,
            _ => {
                return Err(Error::InvalidArgument(
                    "the master's first message was not a Welcome".into(),
                ))
            }
        },
        Ok(Ok(None)) => {
            return Err(Error::Unavailable(
                "the master closed the stream before its Welcome".into(),
            ))
        }
        Ok(Err(status)) => return Err(status_error(status)),
        Err(_) => {
            return Err(Error::Unavailable(
                "no Welcome from the master in time".into(),
            ))
        }
    };
    tracing::info!(session = %welcome.session_id, initialise, "connected to the master");
    handle.set_state(ConnectionState::Connected);
    if welcome.sync_interval_minutes > 0 {
        *interval = welcome.sync_interval_minutes;
        handle.set_interval(welcome.sync_interval_minutes);
    }
    let heartbeat_every = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.max(1)));
    let idle_limit = heartbeat_every * 3;
    let batch_records = settings
        .batch_records
        .min(welcome.max_batch_records.max(1) as usize);

    let mut initialising = welcome.initialising;
    if initialising {
        // Only now that a snapshot is coming: empty what a half-finished
        // earlier initialisation may have left.
        apply::clear_for_initialisation(db).await?;
    }
    let mut sent_seq = if initialising {
        welcome.upstream_acked_seq
    } else {
        apply::reconcile_upstream(db, welcome.upstream_acked_seq).await?
    };
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut caught_up = false;
    let mut master_error: Option<String> = None;
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        // Fill the upstream window from the outbox.
        while !initialising && in_flight.len() < settings.window {
            let Some(mut batch) =
                next_batch(db, sent_seq, batch_records, settings.batch_bytes).await?
            else {
                break;
            };
            sent_seq = batch.last_seq;
            in_flight.push_back(batch.last_seq);
            // One trace per batch: the master's apply becomes a child of this span.
            let span = tracing::info_span!(parent: None, "sync.upstream.push", otel.kind = "producer", sync_id = settings.sync_id, first_seq = batch.first_seq, last_seq = batch.last_seq, records = batch.records.len());
            batch.trace_context = storesync_shared::telemetry::propagation::inject(&span);
            send(&tx, satellite_message::Message::UpstreamBatch(batch))
                .instrument(span)
                .await?;
        }
        if settings.mode == SyncMode::Interval && caught_up && !initialising && in_flight.is_empty()
        {
            let pending = outbox::read_after(db, sent_seq, 1).await?;
            if pending.is_empty() {
                send(&tx, satellite_message::Message::Goodbye(Goodbye {})).await?;
                handle.set_synced();
                tracing::info!("interval sync complete");
                return Ok(());
            }
            continue;
        }
        tokio::select! {
            next = tokio::time::timeout(idle_limit, inbound.message()) => {
                let message = match next {
                    Err(_) => return Err(Error::Unavailable(format!("nothing from the master for {idle_limit:?}"))),
                    Ok(Err(status)) => {
                        return Err(status_error(match master_error.take() {
                            Some(text) if status.message().is_empty() => tonic::Status::new(status.code(), text),
                            _ => status,
                        }))
                    }
                    Ok(Ok(None)) => return Err(Error::Unavailable("the master ended the session".into())),
                    Ok(Ok(Some(message))) => message,
                };
                match message.message {
                    Some(master_message::Message::DownstreamBatch(batch)) => {
                        let end_cursor = batch.end_cursor;
                        let progress = batch.initialisation;
                        let span = tracing::info_span!(parent: None, "sync.downstream.apply", otel.kind = "consumer", sync_id = settings.sync_id, end_cursor, records = batch.records.len());
                        storesync_shared::telemetry::propagation::set_parent(&span, &batch.trace_context);
                        let tables = crate::metrics::tables_of(&batch.records);
                        let started = std::time::Instant::now();
                        let applied = apply::apply_batch(db, batch, welcome.store.as_ref(), welcome.upstream_acked_seq).instrument(span).await?;
                        crate::metrics::downstream_applied(settings.sync_id, &tables, applied.records, started);
                        if let Some(progress) = &progress {
                            handle.set_initialising(progress.records_done, progress.records_total);
                            if progress.records_done == progress.records_total || progress.records_done % 10_000 < 1000 {
                                tracing::info!(done = progress.records_done, total = progress.records_total, "initialising");
                            }
                        }
                        if applied.initialised {
                            initialising = false;
                            sent_seq = welcome.upstream_acked_seq;
                            handle.set_initialised();
                            tracing::info!(cursor = end_cursor, "initialised from the master's snapshot");
                        }
                        let init_records_done = progress.map(|p| p.records_done).unwrap_or(0);
                        send(&tx, satellite_message::Message::DownstreamAck(DownstreamAck { cursor: end_cursor, init_records_done, initialisation_complete: applied.initialised })).await?;
                        handle.set_synced();
                    }
                    Some(master_message::Message::UpstreamAck(ack)) => {
                        apply::upstream_acked(db, ack.acked_seq).await?;
                        while in_flight.front().is_some_and(|last| *last <= ack.acked_seq) {
                            in_flight.pop_front();
                        }
                        handle.set_synced();
                    }
                    Some(master_message::Message::CaughtUp(_)) => {
                        caught_up = true;
                        handle.set_synced();
                    }
                    Some(master_message::Message::Heartbeat(_)) => {}
                    Some(master_message::Message::Error(error)) => {
                        tracing::warn!(code = error.code, message = %error.message, "the master reports an error");
                        master_error = Some(error.message);
                    }
                    Some(master_message::Message::Welcome(_)) | None => {
                        return Err(Error::InvalidArgument("unexpected message from the master".into()));
                    }
                }
            }
            _ = heartbeat.tick() => {
                let backlog = outbox_table::Entity::find().count(db).await?;
                send(&tx, satellite_message::Message::Heartbeat(Heartbeat { sent_at_ms: now_ms(), upstream_backlog: backlog })).await?;
            }
            _ = handle.outbox_written() => {}
            _ = poll.tick() => {}
        }
    }
}

/// The next upstream batch after `after_seq`, bounded by records and bytes.
async fn next_batch(
    db: &DatabaseConnection,
    after_seq: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Option<UpstreamBatch>> {
    let entries = outbox::read_after(db, after_seq, max_records as u64).await?;
    let Some((first_seq, _)) = entries.first() else {
        return Ok(None);
    };
    let first_seq = *first_seq;
    let mut records = Vec::with_capacity(entries.len());
    let mut bytes = 0usize;
    let mut last_seq = first_seq;
    for (seq, record) in entries {
        let size = record.encoded_len() + 8;
        if !records.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        last_seq = seq;
        records.push(record);
    }
    Ok(Some(UpstreamBatch {
        first_seq,
        last_seq,
        records,
        trace_context: Default::default(),
    }))
}

async fn send(
    tx: &mpsc::Sender<SatelliteMessage>,
    message: satellite_message::Message,
) -> Result<()> {
    tx.send(SatelliteMessage {
        message: Some(message),
    })
    .await
    .map_err(|_| Error::Unavailable("the stream to the master closed".into()))
}

/// An error with its causes, for logs ("transport error: connection refused").
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
