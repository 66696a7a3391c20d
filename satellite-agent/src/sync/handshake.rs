//! The start of a session: the Hello (from the local database), the
//! credentials, the master's Welcome, and what the Welcome decides locally.
//!
//! # Invariant
//! The local database is emptied for initialisation only once the master's
//! Welcome confirms that a snapshot is coming, and not at all when it
//! resumes the one this database holds in part (`Welcome.snapshot_resumed`): a master that refuses the
//! session leaves a half-initialised database as it was, and the next
//! attempt asks again.
//!
//! Not here: the channel (`connect`), the exchange after the Welcome (`session`).

use std::time::Duration;

use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use storesync_shared::proto::v1::sync_service_client::SyncServiceClient;

use futures::StreamExt;
use storesync_shared::kit::stream_compression::{Deflater, Unpacking};
use storesync_shared::proto::v1::{
    master_message, satellite_message, ConnectionState, Hello, MasterMessage, SatelliteMessage,
    StreamCompression, Welcome,
};
use storesync_shared::{kit::auth, Error, Result};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::connect::status_error;
use super::session::send;
use super::{apply, ClientSettings};
use crate::entities::{outbox as outbox_table, sync_state};
use crate::status::SyncHandle;

/// A session the master has welcomed.
pub(super) struct Opened {
    /// Everything sent to the master goes through here.
    pub(super) tx: mpsc::Sender<SatelliteMessage>,
    /// The master's messages, chunks inflated (when the Welcome agreed).
    pub(super) inbound: Unpacking<MasterMessage>,
    pub(super) welcome: Welcome,
    /// Upstream entries up to here are sent (or acknowledged) already.
    pub(super) sent_seq: u64,
}

/// The Hello this satellite sends, from its `sync_state` and outbox; a
/// database halted for good (a diverged copy, see `apply::reconcile_upstream`)
/// does not connect at all.
pub(super) async fn hello(db: &DatabaseConnection, settings: &ClientSettings) -> Result<Hello> {
    let state = load_state(db).await?;
    if !state.halted.is_empty() {
        return Err(Error::FailedPrecondition(state.halted));
    }
    let initialise = !state.initialised;
    let backlog = outbox_table::Entity::find().count(db).await?;
    // A snapshot cut before its end continues where it stopped (`apply`):
    // an initialisation's, or (initialised) a master-data resync's.
    let position = apply::snapshot_position(db).await?;
    Ok(Hello {
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
        changelog_epoch: match (&position, initialise) {
            (Some(position), true) => position.epoch.clone(),
            (None, true) => String::new(),
            (_, false) => state.changelog_epoch.clone(),
        },
        cursor_tag: if initialise {
            0
        } else {
            u64::try_from(state.downstream_tag).unwrap_or(0)
        },
        store_id: if initialise {
            String::new()
        } else {
            state.store_id.clone()
        },
        database_id: state.database_id,
        snapshot_in_progress: position.is_some(),
        snapshot_cursor: position.as_ref().map_or(0, |p| p.cursor),
        snapshot_after_table: position.as_ref().map_or(0, |p| p.last_table),
        snapshot_after_id: position
            .as_ref()
            .map(|p| p.last_id.clone())
            .unwrap_or_default(),
        snapshot_records_done: position.as_ref().map_or(0, |p| p.records_done),
        resync_changelog_epoch: match (&position, initialise) {
            (Some(position), false) => position.epoch.clone(),
            _ => String::new(),
        },
        stream_compression: if settings.compression == crate::config::SyncCompression::Deflate {
            StreamCompression::Deflate as i32
        } else {
            StreamCompression::None as i32
        },
    })
}

async fn load_state(db: &DatabaseConnection) -> Result<sync_state::Model> {
    sync_state::Entity::find_by_id(1)
        .one(db)
        .await?
        .ok_or_else(|| Error::Internal("sync_state row is missing".into()))
}

/// Opens the stream with `hello` and the credentials, waits for the Welcome
/// and prepares the local database for what it says (see the invariant).
/// The master's sync interval, when it states one, replaces `interval`.
pub(super) async fn open(
    db: &DatabaseConnection,
    settings: &ClientSettings,
    mut client: SyncServiceClient<Channel>,
    hello: Hello,
    handle: &SyncHandle,
    interval: &mut u32,
) -> Result<Opened> {
    let initialise = hello.needs_initialisation;
    let offered = hello.stream_compression() == StreamCompression::Deflate;
    let (tx, rx) = mpsc::channel::<SatelliteMessage>(settings.window * 2 + 8);
    send(&tx, satellite_message::Message::Hello(hello)).await?;
    // Set once the Welcome accepts the offer; only the Hello was sent before
    // (and it stays plain anyway), so every later message is compressed.
    let compressing = Arc::new(AtomicBool::new(false));
    let outbound = ReceiverStream::new(rx).map({
        let compressing = compressing.clone();
        let mut deflater = Deflater::new();
        move |message| {
            if compressing.load(Ordering::Acquire) {
                deflater.pack(message)
            } else {
                message
            }
        }
    });
    let mut request = tonic::Request::new(outbound);
    let auth_value = auth::basic_header(&settings.sync_user, &settings.sync_password)
        .parse()
        .map_err(|_| Error::invalid("sync_user", "cannot be sent as a header"))?;
    request.metadata_mut().insert("authorization", auth_value);
    request
        .metadata_mut()
        .insert("x-sync-id", settings.sync_id.into());
    let mut inbound = Unpacking::new(
        client
            .sync(request)
            .await
            .map_err(status_error)?
            .into_inner(),
    );

    let welcome = read_welcome(&mut inbound, settings.heartbeat * 3).await?;
    if offered && welcome.stream_compression() == StreamCompression::Deflate {
        inbound.inflate(
            StreamCompression::Deflate,
            storesync_shared::kit::server::MAX_MESSAGE_BYTES,
        );
        compressing.store(true, Ordering::Release);
        tracing::debug!("the session's messages are compressed as one stream per direction");
    }
    tracing::info!(session = %welcome.session_id, initialise, "connected to the master");
    handle.set_state(ConnectionState::Connected);
    if welcome.sync_interval_minutes > 0 {
        *interval = welcome.sync_interval_minutes;
        handle.set_interval(welcome.sync_interval_minutes);
    }

    if welcome.initialising && welcome.snapshot_resumed {
        // The snapshot continues after what this database holds: keep it.
        tracing::info!("the master resumes this site's initialisation where it was cut");
    } else if welcome.initialising {
        // Only now that a snapshot is coming: empty what a half-finished
        // earlier initialisation may have left.
        apply::clear_for_initialisation(db).await?;
    } else if welcome.resync_master_data && welcome.snapshot_resumed {
        // The resync continues after what this database recorded of it: keep it.
        tracing::info!(epoch = %welcome.changelog_epoch, "the master resumes this site's master-data resync where it was cut");
    } else if welcome.resync_master_data {
        // A master-data snapshot is coming: forget what an interrupted
        // earlier resync recorded.
        tracing::warn!(epoch = %welcome.changelog_epoch, "the master re-synchronises this site's master data (its change log was restored or pruned past this site)");
        apply::start_resync(db).await?;
    } else {
        // The change log continues: a resync position left from before
        // (an older master's resync, cut) names nothing any more.
        apply::forget_snapshot_position(db).await?;
    }
    let sent_seq = if welcome.initialising {
        welcome.upstream_acked_seq
    } else {
        apply::reconcile_upstream(db, welcome.upstream_acked_seq, welcome.upstream_acked_tag)
            .await?
    };
    Ok(Opened {
        tx,
        inbound,
        welcome,
        sent_seq,
    })
}

/// The master's first message, which must be a Welcome within `idle_limit`.
async fn read_welcome(
    inbound: &mut Unpacking<MasterMessage>,
    idle_limit: Duration,
) -> Result<Welcome> {
    match tokio::time::timeout(idle_limit, inbound.message()).await {
        Ok(Ok(Some(message))) => match message.message {
            Some(master_message::Message::Welcome(welcome)) => Ok(welcome),
            _ => Err(Error::InvalidArgument(
                "the master's first message was not a Welcome".into(),
            )),
        },
        Ok(Ok(None)) => Err(Error::Unavailable(
            "the master closed the stream before its Welcome".into(),
        )),
        Ok(Err(status)) => Err(status_error(status)),
        Err(_) => Err(Error::Unavailable(
            "no Welcome from the master in time".into(),
        )),
    }
}
