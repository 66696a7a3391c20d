//! The start of a session, before any batch: authentication from metadata,
//! the satellite's Hello, and the master's Welcome.
//!
//! Each refusal is a status the satellite can act on: wrong credentials
//! `UNAUTHENTICATED`; a site the master does not sync with, or a Hello for
//! another Sync ID, `PERMISSION_DENIED`; no Hello first `INVALID_ARGUMENT`;
//! another protocol version `FAILED_PRECONDITION`, as is a database that does
//! not own the Sync ID. A cursor the change log cannot continue from (pruned
//! under the site, another epoch, a rewound log) is not refused: the Welcome
//! asks for a master-data resync. The only writes here are the owner of a site
//! without one and the refusal in the site's status (see the invariant below),
//! and a new change-log epoch when a Hello shows the log was rewound; failed
//! logins are only counted, in memory, to slow the next tries down.
//!
//! Not here: the session's registration and claim (`session`, `registry`).
//!
//! # Invariant: one database per Sync ID
//! Only the satellite database that owns a Sync ID (`site.database_id`) gets
//! a Welcome. The first database to connect to a site without an owner
//! becomes it, by one conditional UPDATE (which holds the site's row lock, so
//! two new databases racing cannot both win); an operator moves ownership with
//! `AdminService.AdoptDatabase`. Any other database, or an older copy of the
//! owner (the master has applied more of its entries than it ever wrote), is
//! refused before the session claims the site or applies anything, so it
//! never disturbs the owner's live session. The refusal is recorded in the
//! site's status for operators.

use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter};
use storesync_shared::domain::entities::{setting, store};
use storesync_shared::kit::stream_compression::Unpacking;
use storesync_shared::proto::v1::{
    satellite_message, Hello, SatelliteMessage, StreamCompression, Welcome,
};
use storesync_shared::{kit::auth, Error, Result};

use super::upstream::{sync_id_i32, SiteIdentity};
use super::SyncContext;
use crate::changelog;
use crate::entities::{site, site_status};
use crate::metrics;

/// Checks `authorization` and `x-sync-id` before any message is read.
///
/// Wrong user name or password, or a missing or malformed Sync ID: UNAUTHENTICATED,
/// with one message. Right credentials for a Sync ID that is unknown, the
/// master's own or disabled: PERMISSION_DENIED saying which.
///
/// Repeated failures are answered ever more slowly, per Sync ID and per source
/// address (see [`crate::unlock::Throttle`]), so guessing a password costs seconds a try.
pub(super) async fn authenticate(
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
    let site = site.ok_or_else(|| not_listed(sync_id))?;
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

/// A master preference (`setting` table), if set.
async fn setting_value(db: &DatabaseConnection, key: &str) -> Result<Option<String>> {
    Ok(setting::Entity::find_by_id(key.to_owned())
        .one(db)
        .await?
        .map(|s| s.value))
}

/// Reads the satellite's first message, which must be a Hello of this
/// protocol version and of the authenticated Sync ID.
pub(super) async fn read_hello(
    ctx: &SyncContext,
    inbound: &mut Unpacking<SatelliteMessage>,
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
    check_version(hello.protocol_version)?;
    if hello.sync_id != sync_id {
        return Err(Error::PermissionDenied(format!(
            "Hello.sync_id {} does not match the authenticated Sync ID {sync_id}",
            hello.sync_id
        )));
    }
    Ok(hello)
}

/// Refuses a protocol version outside the window this master accepts,
/// naming both and which side to upgrade.
fn check_version(version: u32) -> Result<()> {
    let (oldest, newest) = (
        storesync_shared::MIN_PROTOCOL_VERSION,
        storesync_shared::PROTOCOL_VERSION,
    );
    let upgrade = if version < oldest {
        "upgrade the satellite-agent"
    } else if version > newest {
        "upgrade the master-service (a master accepts satellites older than itself, not newer)"
    } else {
        return Ok(());
    };
    Err(Error::FailedPrecondition(format!(
        "the satellite speaks sync protocol version {version}; this master (version {}) accepts versions {oldest} to {newest}: {upgrade}",
        storesync_shared::VERSION
    )))
}

/// Checks that `hello` comes from the database that owns the site (making
/// it the owner when the site has none yet) and is not an older copy of it;
/// returns the site as it is now. See the module's invariant.
pub(super) async fn check_database(
    ctx: &SyncContext,
    identity: &SiteIdentity,
    hello: &Hello,
) -> Result<site::Model> {
    let db = &ctx.db;
    let sync_id = identity.sync_id;
    check_store(ctx, identity, hello).await?;
    if hello.database_id.is_empty() {
        return legacy_database(db, sync_id).await;
    }
    if uuid::Uuid::parse_str(&hello.database_id).is_err() {
        return Err(Error::invalid(
            "hello.database_id",
            format!(
                "{:?} is not a UUID; a satellite-agent from before database identities must be upgraded",
                hello.database_id
            ),
        ));
    }
    site::Entity::update_many()
        .col_expr(
            site::Column::DatabaseId,
            Expr::value(hello.database_id.clone()),
        )
        .filter(site::Column::SyncId.eq(sync_id_i32(sync_id)))
        .filter(site::Column::DatabaseId.eq(""))
        .exec(db)
        .await?;
    let site = listed_site(db, sync_id).await?;
    let refusal = if site.database_id != hello.database_id {
        let last = site_status::Entity::find_by_id(sync_id_i32(sync_id))
            .one(db)
            .await?;
        let (synced_at, backlog) = last
            .map(|s| (s.last_sync_at_ms, s.upstream_backlog_reported))
            .unwrap_or((0, 0));
        let synced_at = chrono::DateTime::from_timestamp_millis(synced_at)
            .filter(|_| synced_at > 0)
            .map_or("never".to_owned(), |at| {
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            });
        Some(format!(
            "Sync ID {sync_id} belongs to satellite database {owner} (last synced {synced_at}, \
             it then reported {backlog} unsent entries); this is another database, {this}, and it is refused. \
             If this machine replaces that one, adopt this database: AdminService.AdoptDatabase \
             {{\"sync_id\": {sync_id}, \"database_id\": \"{this}\"}}. Move the old machine's unsent entries with \
             `satellite-agent handover export --out FILE` there and `satellite-agent handover import FILE` on \
             the database that syncs (see README, \"Replaced machine\")",
            owner = site.database_id,
            this = hello.database_id,
        ))
    } else if !hello.needs_initialisation
        && u64::try_from(site.upstream_acked_seq).unwrap_or(0) > hello.upstream_last_seq
    {
        Some(format!(
            "satellite database {this} of Sync ID {sync_id} is an older copy: the master has applied its upstream \
             entries up to {acked}, but this copy only ever wrote up to {last} (a restored backup, or a cloned \
             machine that fell behind). It is refused and deletes nothing: move its unsent entries with \
             `satellite-agent handover export --out FILE` and `satellite-agent handover import FILE` into a new \
             database adopted with AdminService.AdoptDatabase (see README, \"Restored or cloned site\")",
            this = hello.database_id,
            acked = site.upstream_acked_seq,
            last = hello.upstream_last_seq,
        ))
    } else {
        None
    };
    if let Some(message) = refusal {
        tracing::warn!(sync_id, database_id = %hello.database_id, owner = %site.database_id, "sync refused: {message}");
        super::status::refused(db, sync_id, &message).await;
        return Err(Error::FailedPrecondition(message));
    }
    Ok(site)
}

/// Refuses a database of another store than the site hosts: the Sync ID was
/// removed and added again (which makes a new store), so the database holds
/// a store the master no longer syncs with this site. Checked before the
/// database can become the site's owner.
async fn check_store(ctx: &SyncContext, identity: &SiteIdentity, hello: &Hello) -> Result<()> {
    if hello.needs_initialisation
        || hello.store_id.is_empty()
        || hello.store_id == identity.store_id
    {
        return Ok(());
    }
    let sync_id = identity.sync_id;
    let message = format!(
        "this satellite database holds store {held}, but Sync ID {sync_id} now hosts store {now}: the site was \
         removed from the master's sync-with list and added again, which made a new store. Start this site on a \
         new, empty database (it initialises as the new store); `satellite-agent handover export --out FILE` \
         lists this database's unsent invoices, to enter again there",
        held = hello.store_id,
        now = identity.store_id,
    );
    tracing::warn!(sync_id, "sync refused: {message}");
    super::status::refused(&ctx.db, sync_id, &message).await;
    Err(Error::FailedPrecondition(message))
}

/// The site of `sync_id`, read again; PERMISSION_DENIED if it is gone from
/// the sync-with list.
async fn listed_site(db: &DatabaseConnection, sync_id: u32) -> Result<site::Model> {
    site::Entity::find_by_id(sync_id_i32(sync_id))
        .one(db)
        .await?
        .ok_or_else(|| not_listed(sync_id))
}

fn not_listed(sync_id: u32) -> Error {
    Error::PermissionDenied(format!(
        "Sync ID {sync_id} is not in the master's sync-with list; add it with AdminService.AddSite"
    ))
}

/// A satellite of protocol version 1 sends no database identity. It may sync
/// as before (without the identity checks) only while no database owns the
/// Sync ID; once one does, it must be upgraded.
async fn legacy_database(db: &DatabaseConnection, sync_id: u32) -> Result<site::Model> {
    let site = listed_site(db, sync_id).await?;
    if site.database_id.is_empty() {
        tracing::info!(
            sync_id,
            "a satellite without a database identity (protocol version 1): no clone or copy detection until it is upgraded"
        );
        return Ok(site);
    }
    let message = format!(
        "Sync ID {sync_id} belongs to satellite database {}; this satellite-agent sends no database identity \
         (protocol version 1): upgrade it",
        site.database_id
    );
    super::status::refused(db, sync_id, &message).await;
    Err(Error::FailedPrecondition(message))
}

/// The master's answer to `hello`. For an initialised satellite it decides
/// whether its master data can continue from the change log or must be
/// re-synchronised from a master-data snapshot (`resync_master_data`); a
/// satellite is never told to throw its database away.
pub(super) async fn welcome(
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
    let mut epoch = changelog::epoch(db).await?;
    let mut resync_master_data = false;
    if !hello.needs_initialisation {
        match continuity(db, &epoch, hello).await? {
            Continuity::Continues => {}
            Continuity::FellBehind(why) => {
                tracing::warn!(
                    sync_id = identity.sync_id,
                    cursor = hello.downstream_cursor,
                    "{why}: re-synchronising the site's master data"
                );
                resync_master_data = true;
            }
            Continuity::Rewound(why) => {
                epoch = changelog::start_new_epoch(db).await?;
                tracing::warn!(sync_id = identity.sync_id, cursor = hello.downstream_cursor, %epoch, "{why}: the master's change log was rewound (restored from a backup?); started a new change-log epoch, every site re-synchronises its master data");
                resync_master_data = true;
            }
        }
    }
    if hello.needs_initialisation {
        refuse_records_unknown_to(db, identity, hello.protocol_version).await?;
    }
    // The snapshot the satellite holds in part: its initialisation's, or
    // (initialised) the master-data resync's.
    let snapshot_epoch = if hello.needs_initialisation {
        &hello.changelog_epoch
    } else {
        &hello.resync_changelog_epoch
    };
    let snapshot_resumed = (hello.needs_initialisation || resync_master_data)
        && hello.snapshot_in_progress
        && match can_resume(db, site, &epoch, snapshot_epoch, hello).await? {
            Ok(()) => {
                tracing::info!(
                    sync_id = identity.sync_id,
                    cursor = hello.snapshot_cursor,
                    records_done = hello.snapshot_records_done,
                    resync = resync_master_data,
                    "resuming the site's snapshot where it was cut"
                );
                true
            }
            Err(why) => {
                tracing::info!(
                    sync_id = identity.sync_id,
                    cursor = hello.snapshot_cursor,
                    resync = resync_master_data,
                    "the site's snapshot starts again: {why}"
                );
                false
            }
        };
    // A check due in this session: the satellite stays for it (interval mode).
    let integrity_check_due = !hello.needs_initialisation
        && !resync_master_data
        && hello.protocol_version >= storesync_shared::VERIFY_PROTOCOL_VERSION
        && crate::integrity::due_in_session(
            db,
            identity.sync_id,
            hello.mode() == storesync_shared::proto::v1::SyncMode::Interval,
            ctx.settings.verify_every,
            ctx.settings.verify_report_only,
        )
        .await;
    let interval = setting_value(db, "sync_interval_minutes")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    Ok(Welcome {
        protocol_version: storesync_shared::PROTOCOL_VERSION,
        master_version: storesync_shared::VERSION.to_owned(),
        upstream_acked_seq: u64::try_from(site.upstream_acked_seq).unwrap_or(0),
        upstream_acked_tag: u64::try_from(site.upstream_acked_tag).unwrap_or(0),
        store: Some(store.into()),
        sync_interval_minutes: interval,
        heartbeat_interval_seconds: u32::try_from(ctx.settings.heartbeat.as_secs())
            .unwrap_or(u32::MAX)
            .max(1),
        max_batch_records: ctx.settings.max_batch_records,
        max_message_bytes: u32::try_from(storesync_shared::kit::server::MAX_MESSAGE_BYTES)
            .unwrap_or(u32::MAX),
        initialising: hello.needs_initialisation,
        session_id: uuid::Uuid::new_v4().to_string(),
        changelog_epoch: epoch,
        resync_master_data,
        min_protocol_version: storesync_shared::MIN_PROTOCOL_VERSION,
        max_protocol_version: storesync_shared::PROTOCOL_VERSION,
        snapshot_resumed,
        // Offered by the satellite: always taken (see `SyncContext::service`
        // for why tonic's gzip then stays off).
        stream_compression: if hello.stream_compression() == StreamCompression::Deflate {
            StreamCompression::Deflate as i32
        } else {
            StreamCompression::None as i32
        },
        integrity_check_due,
    })
}

/// Refuses to initialise a site speaking `version` whose store holds rows of
/// a table that version does not know (a transfer, after protocol 1): its
/// snapshot would carry records it cannot read, and leaving them out would
/// leave its copy short for good.
async fn refuse_records_unknown_to(
    db: &sea_orm::DatabaseConnection,
    identity: &SiteIdentity,
    version: u32,
) -> Result<()> {
    for table in storesync_shared::domain::tables::SYNCED {
        if storesync_shared::knows_table(version, table.table()) {
            continue;
        }
        let rows = storesync_shared::domain::tables::write::count(
            db,
            *table,
            storesync_shared::domain::tables::write::Scope::Store(&identity.store_id),
        )
        .await?;
        if rows > 0 {
            return Err(Error::FailedPrecondition(format!(
                "the store of Sync ID {} holds {rows} {} record(s), which sync protocol {version} cannot carry; upgrade the satellite-agent (protocol {} or later) and start it again",
                identity.sync_id,
                table.name(),
                storesync_shared::HANDOVER_PROTOCOL_VERSION
            )));
        }
    }
    Ok(())
}

/// Where the snapshot a Hello says is in progress continues.
pub(super) fn resume_of(hello: &Hello) -> super::downstream::Resume {
    super::downstream::Resume {
        cursor: hello.snapshot_cursor,
        after_table: hello.snapshot_after_table(),
        after_id: hello.snapshot_after_id.clone(),
        records_done: hello.snapshot_records_done,
    }
}

/// Whether the snapshot the satellite holds in part (of change-log epoch
/// `snapshot_epoch`) can continue (Ok), or why it must start again: the
/// change log must still hold everything after the snapshot's cursor, which
/// the site's snapshot hold guarantees while it is in place at or below that
/// cursor (`retention`), and be of the same epoch; the position must name a
/// table snapshots send.
async fn can_resume(
    db: &DatabaseConnection,
    site: &site::Model,
    epoch: &str,
    snapshot_epoch: &str,
    hello: &Hello,
) -> Result<std::result::Result<(), String>> {
    if snapshot_epoch != epoch {
        return Ok(Err(format!(
            "its part of the snapshot is of change-log epoch {snapshot_epoch:?}, the master's is {epoch}"
        )));
    }
    let known_table = storesync_shared::domain::tables::SYNCED
        .iter()
        .any(|table| table.table() == hello.snapshot_after_table());
    if !known_table || hello.snapshot_after_id.is_empty() {
        return Ok(Err("its position in the snapshot names no record".into()));
    }
    let row = db
        .query_one(sea_orm::Statement::from_sql_and_values(
            db.get_database_backend(),
            match db.get_database_backend() {
                sea_orm::DbBackend::Postgres => {
                    "SELECT snapshot_cursor FROM site WHERE sync_id = $1"
                }
                _ => "SELECT snapshot_cursor FROM site WHERE sync_id = ?",
            },
            [site.sync_id.into()],
        ))
        .await?;
    let hold: Option<i64> = match row {
        Some(row) => row.try_get_by_index(0)?,
        None => None,
    };
    let cursor = hello.snapshot_cursor;
    match hold.and_then(|h| u64::try_from(h).ok()) {
        None => Ok(Err("the master holds no snapshot in progress for it".into())),
        Some(hold) if hold > cursor => Ok(Err(format!(
            "the master holds the change log only from {hold}, after the snapshot's cursor {cursor}"
        ))),
        Some(_) if cursor > changelog::head(db).await? => Ok(Err(format!(
            "the snapshot's cursor {cursor} is past the end of the change log"
        ))),
        Some(_) => Ok(Ok(())),
    }
}

/// Whether an initialised satellite's master data continues from the log.
#[derive(Debug, PartialEq, Eq)]
enum Continuity {
    /// Its cursor names an entry of this log (or the empty start).
    Continues,
    /// The log no longer holds what follows its cursor (pruned under it).
    FellBehind(String),
    /// Its cursor names an entry this log never had: the log was rewound.
    Rewound(String),
}

async fn continuity(db: &DatabaseConnection, epoch: &str, hello: &Hello) -> Result<Continuity> {
    if !hello.changelog_epoch.is_empty() && hello.changelog_epoch != epoch {
        return Ok(Continuity::FellBehind(format!(
            "the satellite's master data is of change-log epoch {}, the master's is {epoch}",
            hello.changelog_epoch
        )));
    }
    let cursor = hello.downstream_cursor;
    let head = changelog::head(db).await?;
    if cursor > head {
        return Ok(Continuity::Rewound(format!(
            "the satellite has applied master data up to cursor {cursor} but the change log ends at {head}"
        )));
    }
    if cursor == 0 {
        return Ok(Continuity::Continues);
    }
    let oldest = changelog::oldest(db).await?;
    match changelog::tag_at(db, cursor).await? {
        // 0: the satellite does not know the tag (an entry written before
        // tags, or an agent older than them): nothing to compare.
        Some(tag) if tag == hello.cursor_tag || hello.cursor_tag == 0 => {
            // The reader refuses a gap after the cursor (`downstream`): so does this.
            if cursor < head && changelog::tag_at(db, cursor + 1).await?.is_none() {
                return Ok(Continuity::FellBehind(format!(
                    "the change log no longer holds the entry after the satellite's cursor {cursor}"
                )));
            }
            Ok(Continuity::Continues)
        }
        Some(tag) => Ok(Continuity::Rewound(format!(
            "the change-log entry at the satellite's cursor {cursor} has tag {tag}, the satellite applied tag {}",
            hello.cursor_tag
        ))),
        None if oldest.is_none_or(|oldest| cursor < oldest) => Ok(Continuity::FellBehind(format!(
            "the change log no longer holds the satellite's cursor {cursor} (it keeps from {})",
            oldest.map_or_else(|| "nothing".to_owned(), |o| o.to_string())
        ))),
        None => Ok(Continuity::Rewound(format!(
            "the change log holds no entry at the satellite's cursor {cursor}"
        ))),
    }
}
