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
//!
//! # Layout
//! - this file: [`ClientSettings`], [`start`], and [`run`], the loop of
//!   sessions with its backoff; a session chains the three steps below;
//! - `connect`: the master's addresses, the channel and TLS, transport errors;
//! - `handshake`: the Hello, the credentials, the Welcome, and what it
//!   decides locally (empty the database for a snapshot, or resume upstream);
//! - `session`: the `Session` after the Welcome, with one
//!   method per message kind from the master, and the upstream sender;
//! - [`apply`]: each downstream batch and its cursor, in one transaction.

pub mod apply;
mod connect;
mod handshake;
pub mod repush;
mod session;
mod verify;

use std::time::Duration;

use rand::Rng;
use sea_orm::DatabaseConnection;
use storesync_shared::proto::v1::{ConnectionState, SyncMode};
use storesync_shared::Result;

use crate::status::SyncHandle;
use session::Session;

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
    /// How the stream is compressed both ways (see
    /// [`crate::config::SyncCompression`]).
    pub compression: crate::config::SyncCompression,
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
            interval_minutes: storesync_shared::kit::config::SYNC_INTERVAL_MINUTES,
            interval_override: None,
            heartbeat: Duration::from_secs(storesync_shared::kit::config::HEARTBEAT_SECONDS),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            batch_records: 2000,
            batch_bytes: 4 * 1024 * 1024,
            window: 4,
            tls: None,
            compression: crate::config::SyncCompression::None,
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
        match storesync_shared::kit::tls::client_config(config.master_ca.as_deref(), identity) {
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
        let url = connect::master_url(&settings, current);
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

/// One session: connect, hello, exchange until done (interval) or broken.
async fn session(
    db: &DatabaseConnection,
    settings: &ClientSettings,
    master_url: &str,
    handle: &SyncHandle,
    interval: &mut u32,
) -> Result<()> {
    let hello = handshake::hello(db, settings).await?;
    let client = connect::client(settings, master_url).await?;
    let opened = handshake::open(db, settings, client, hello, handle, interval).await?;
    let (session, inbound) = Session::new(db, settings, handle, opened);
    session.run(inbound).await
}
