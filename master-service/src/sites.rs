//! The "sync with" list: the master itself (Sync ID 1) and each satellite,
//! with the store it hosts.
//!
//! A store is also a *name* (same id, code and display name, `is_store`), so
//! that invoices between the network's stores can name their counterpart, as
//! in mSupply. That name is master data: it enters the change log with the
//! store, in the same transaction. The `store` row itself is not in the change
//! log (the log holds items and names only); the sync stream sends a site its
//! store row when it initialises.
//!
//! Every change is audited in its own transaction. Unlocking is checked by the
//! caller ([`crate::admin`]); this module holds the rules.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, Set,
};
use storesync_shared::domain::entities::{invoice, name, store};
use storesync_shared::domain::tables::write::{self, Scope};
use storesync_shared::domain::tables::Owner;
use storesync_shared::domain::validate::{self, now_ms};
use storesync_shared::kit::auth;
use storesync_shared::proto::v1::{self as pb, Table};

use crate::changelog::{self, ChangeNotifier};
use crate::config::{check_sync_password, check_sync_user};
use crate::entities::site;
use crate::error::{unique_violation_as, Error, Result};
use crate::master_data::{name_record, tombstone};
use crate::{audit, config};

/// The master's own Sync ID.
pub const MASTER_SYNC_ID: u32 = 1;
/// Largest Sync ID.
pub const MAX_SYNC_ID: u32 = 64;

/// Checks the Sync ID of a new satellite.
pub fn check_new_sync_id(sync_id: u32) -> Result<()> {
    match sync_id {
        0 => Err(Error::invalid(
            "site.sync_id",
            "is missing or 0; satellites use Sync IDs 2 to 64",
        )),
        MASTER_SYNC_ID => Err(Error::invalid(
            "site.sync_id",
            "1 is reserved for the master itself; satellites use Sync IDs 2 to 64",
        )),
        id if id > MAX_SYNC_ID => Err(Error::invalid(
            "site.sync_id",
            format!("{id} is above 64, the largest Sync ID; satellites use 2 to 64"),
        )),
        _ => Ok(()),
    }
}

/// Checks a site URL: absolute http or https with a host.
pub fn check_url(field: &str, value: &str) -> Result<()> {
    let parsed = url::Url::parse(value).map_err(|e| {
        Error::invalid(
            field,
            format!("{value:?} is not a URL ({e}); give the full URL, e.g. https://store.example.org:50051"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(
            field,
            format!("{value:?} must start with http:// or https://"),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid(field, format!("{value:?} has no host")));
    }
    Ok(())
}

/// Checks the fields of a new site (not yet against the database).
pub fn check_new_site(site: &pb::Site) -> Result<()> {
    check_new_sync_id(site.sync_id)?;
    validate::text("site.name", &site.name, 256)?;
    let store = site.store.as_ref().ok_or_else(|| {
        Error::invalid("site.store", "is required: give the store's code and name")
    })?;
    validate::code("site.store.code", &store.code)?;
    validate::text("site.store.name", &store.name, 256)?;
    check_url("site.url", &site.url)?;
    check_own_credentials(&site.sync_user_name, &site.sync_password)?;
    if site.sync_user_name.is_empty() != site.sync_password.is_empty() {
        return Err(Error::invalid(
            "site.sync_password",
            "a site's own credentials need both sync_user_name and sync_password (or neither)",
        ));
    }
    Ok(())
}

fn check_own_credentials(user: &str, password: &str) -> Result<()> {
    if !user.is_empty() {
        check_sync_user("site.sync_user_name", user)?;
    }
    if !password.is_empty() {
        check_sync_password("site.sync_password", password)?;
    }
    Ok(())
}

/// A site as answered: the password never, only whether there is one.
pub fn to_proto(site: site::Model, store: Option<store::Model>) -> pb::Site {
    pb::Site {
        sync_id: u32::try_from(site.sync_id).unwrap_or(0),
        name: site.name,
        store: store.map(pb::Store::from),
        url: site.url,
        enabled: site.enabled,
        sync_user_name: site.sync_user_name.unwrap_or_default(),
        sync_password: String::new(),
        has_own_password: site.sync_password_hash.is_some(),
    }
}

/// The whole list, by Sync ID.
pub async fn list<C: ConnectionTrait>(db: &C) -> Result<Vec<pb::Site>> {
    let sites = site::Entity::find()
        .order_by_asc(site::Column::SyncId)
        .all(db)
        .await?;
    let stores = store::Entity::find().all(db).await?;
    Ok(sites
        .into_iter()
        .map(|site| {
            let store = stores.iter().find(|s| s.id == site.store_id).cloned();
            to_proto(site, store)
        })
        .collect())
}

/// The name row that stands for a store.
fn store_name(store: &store::Model) -> pb::Name {
    pb::Name {
        id: store.id.clone(),
        code: store.code.clone(),
        name: store.name.clone(),
        // Stores supply and receive goods from each other.
        is_customer: true,
        is_supplier: true,
        is_store: true,
        active: true,
        updated_at_ms: now_ms(),
    }
}

/// Creates the store of `sync_id` and its name (with its change-log entry)
/// inside `txn`; returns the store and the change-log sequence number.
pub async fn create_store<C: ConnectionTrait>(
    txn: &C,
    sync_id: u32,
    code: &str,
    display_name: &str,
) -> Result<(store::Model, u64)> {
    if let Some(other) = store::Entity::find()
        .filter(store::Column::Code.eq(code))
        .one(txn)
        .await?
    {
        return Err(Error::already_exists(format!(
            "site.store.code: {code:?} is taken by the store of Sync ID {}",
            other.sync_id
        )));
    }
    if let Some(other) = name::Entity::find()
        .filter(name::Column::Code.eq(code))
        .one(txn)
        .await?
    {
        return Err(Error::already_exists(format!(
            "site.store.code: {code:?} is taken by name {} (a store's code is also its name's code)",
            other.id
        )));
    }
    let store = store::Model {
        id: validate::new_id(),
        code: code.to_owned(),
        name: display_name.to_owned(),
        sync_id: i32::try_from(sync_id)
            .map_err(|_| Error::invalid("site.sync_id", "is out of range"))?,
    };
    let taken = || format!("site.store.code: {code:?} is taken");
    store::Entity::insert(store.clone().into_active_model().reset_all())
        .exec_without_returning(txn)
        .await
        .map_err(|e| unique_violation_as(e, taken))?;
    let name = store_name(&store);
    name::Entity::insert(
        name::Model::from(name.clone())
            .into_active_model()
            .reset_all(),
    )
    .exec_without_returning(txn)
    .await
    .map_err(|e| unique_violation_as(e, taken))?;
    let seq = changelog::append(txn, &name_record(name)).await?;
    Ok((store, seq))
}

/// Adds a satellite and its store.
pub async fn add(
    db: &DatabaseConnection,
    notifier: &ChangeNotifier,
    actor: &str,
    input: pb::Site,
) -> Result<pb::Site> {
    check_new_site(&input)?;
    let store_input = input.store.clone().unwrap_or_default();
    // Hash before the transaction: it is slow, and needs no database.
    let password_hash = if input.sync_password.is_empty() {
        None
    } else {
        Some(auth::hash_secret(input.sync_password.clone()).await?)
    };
    let sync_id = i32::try_from(input.sync_id)
        .map_err(|_| Error::invalid("site.sync_id", "is out of range"))?;

    let txn = storesync_shared::domain::db::begin(db).await?;
    if let Some(other) = site::Entity::find_by_id(sync_id).one(&txn).await? {
        return Err(Error::already_exists(format!(
            "site.sync_id: {sync_id} is taken by site {:?}",
            other.name
        )));
    }
    let (store, seq) =
        create_store(&txn, input.sync_id, &store_input.code, &store_input.name).await?;
    let row = site::Model {
        sync_id,
        name: input.name.clone(),
        store_id: store.id.clone(),
        url: input.url.clone(),
        // New sites can sync at once; disable one with UpdateSite.
        enabled: true,
        sync_user_name: non_empty(&input.sync_user_name),
        sync_password_hash: password_hash,
        upstream_acked_seq: 0,
        downstream_cursor: 0,
        initialised: false,
        created_at_ms: now_ms(),
        database_id: String::new(),
        upstream_acked_tag: 0,
    };
    site::Entity::insert(row.clone().into_active_model().reset_all())
        .exec_without_returning(&txn)
        .await
        .map_err(|e| unique_violation_as(e, || format!("site.sync_id: {sync_id} is taken")))?;
    audit::record(
        &txn,
        actor,
        "add_site",
        format!(
            "sync_id={sync_id} name={:?} store={:?} ({:?}) url={} own_credentials={}",
            row.name,
            store.code,
            store.name,
            row.url,
            row.sync_user_name.is_some()
        ),
    )
    .await?;
    txn.commit().await?;
    notifier.committed(seq);
    Ok(to_proto(row, Some(store)))
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// Changes a site; empty fields keep their value, `enabled` is taken as given
/// (except for the master, which is always enabled).
pub async fn update(
    db: &DatabaseConnection,
    notifier: &ChangeNotifier,
    actor: &str,
    input: pb::Site,
    clear_own_credentials: bool,
) -> Result<pb::Site> {
    if !input.name.is_empty() {
        validate::text("site.name", &input.name, 256)?;
    }
    if !input.url.is_empty() {
        check_url("site.url", &input.url)?;
    }
    let store_input = input.store.clone().unwrap_or_default();
    if !store_input.name.is_empty() {
        validate::text("site.store.name", &store_input.name, 256)?;
    }
    check_own_credentials(&input.sync_user_name, &input.sync_password)?;
    if clear_own_credentials && !(input.sync_user_name.is_empty() && input.sync_password.is_empty())
    {
        return Err(Error::invalid(
            "clear_own_credentials",
            "cannot be combined with new site.sync_user_name or site.sync_password",
        ));
    }
    let password_hash = if input.sync_password.is_empty() {
        None
    } else {
        Some(auth::hash_secret(input.sync_password.clone()).await?)
    };
    let sync_id = i32::try_from(input.sync_id).unwrap_or(i32::MAX);

    let txn = storesync_shared::domain::db::begin(db).await?;
    let Some(current) = site::Entity::find_by_id(sync_id).one(&txn).await? else {
        return Err(Error::not_found(format!(
            "site.sync_id: no site has Sync ID {}",
            input.sync_id
        )));
    };
    let Some(mut store) = store::Entity::find_by_id(current.store_id.clone())
        .one(&txn)
        .await?
    else {
        return Err(Error::internal(format!("site {sync_id} has no store row")));
    };
    if !store_input.code.is_empty() && store_input.code != store.code {
        return Err(Error::invalid(
            "site.store.code",
            format!("a store's code cannot change (it is {:?})", store.code),
        ));
    }
    let mut changes = Vec::new();
    let mut row = current.clone();
    if !input.name.is_empty() && input.name != row.name {
        changes.push(format!("name={:?}", input.name));
        row.name = input.name.clone();
    }
    if !input.url.is_empty() && input.url != row.url {
        changes.push(format!("url={}", input.url));
        row.url = input.url.clone();
    }
    let enabled = input.sync_id == MASTER_SYNC_ID || input.enabled;
    if enabled != row.enabled {
        changes.push(format!("enabled={enabled}"));
        row.enabled = enabled;
    }
    if clear_own_credentials && (row.sync_user_name.is_some() || row.sync_password_hash.is_some()) {
        changes.push("own credentials cleared".to_owned());
        row.sync_user_name = None;
        row.sync_password_hash = None;
    }
    if !input.sync_user_name.is_empty()
        && Some(&input.sync_user_name) != row.sync_user_name.as_ref()
    {
        changes.push(format!("sync_user_name={:?}", input.sync_user_name));
        row.sync_user_name = Some(input.sync_user_name.clone());
    }
    if password_hash.is_some() {
        changes.push("sync_password changed".to_owned());
        row.sync_password_hash = password_hash;
    }
    if row.sync_user_name.is_some() != row.sync_password_hash.is_some() {
        return Err(Error::invalid(
            "site.sync_password",
            "a site's own credentials need both sync_user_name and sync_password (or neither)",
        ));
    }
    let mut seq = None;
    if !store_input.name.is_empty() && store_input.name != store.name {
        changes.push(format!("store name={:?}", store_input.name));
        store.name = store_input.name.clone();
        store
            .clone()
            .into_active_model()
            .reset_all()
            .update(&txn)
            .await?;
        // The store's name row follows, and reaches the satellites as master data.
        let mut name_row = match name::Entity::find_by_id(store.id.clone()).one(&txn).await? {
            Some(existing) => pb::Name::from(existing),
            None => store_name(&store),
        };
        name_row.name = store.name.clone();
        name_row.updated_at_ms = now_ms();
        name::Entity::insert(
            name::Model::from(name_row.clone())
                .into_active_model()
                .reset_all(),
        )
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(name::Column::Id)
                .update_columns([name::Column::Name, name::Column::UpdatedAtMs])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        seq = Some(changelog::append(&txn, &name_record(name_row)).await?);
    }
    if !changes.is_empty() {
        let mut active = row.clone().into_active_model();
        active.name = Set(row.name.clone());
        active.url = Set(row.url.clone());
        active.enabled = Set(row.enabled);
        active.sync_user_name = Set(row.sync_user_name.clone());
        active.sync_password_hash = Set(row.sync_password_hash.clone());
        // Only the columns an operator may change: the sync positions belong to
        // the sync stream and must not be overwritten with a stale read.
        active.update(&txn).await?;
        audit::record(
            &txn,
            actor,
            "update_site",
            format!("sync_id={sync_id} {}", changes.join(" ")),
        )
        .await?;
    }
    txn.commit().await?;
    if let Some(seq) = seq {
        notifier.committed(seq);
    }
    Ok(to_proto(row, Some(store)))
}

/// Removes a satellite whose store holds no data, with its store and the
/// store's name (deleted with a tombstone, or made inactive if invoices of
/// other stores still name it).
///
/// # Invariant
/// The check that the store holds no data and the delete run under the
/// site's row lock, which every upstream apply of the site also takes: no
/// batch is applied to a removed site's store.
pub async fn remove(
    db: &DatabaseConnection,
    notifier: &ChangeNotifier,
    actor: &str,
    sync_id: u32,
) -> Result<()> {
    if sync_id == MASTER_SYNC_ID {
        return Err(Error::failed_precondition(
            "Sync ID 1 is the master itself and cannot be removed",
        ));
    }
    let id = i32::try_from(sync_id).unwrap_or(i32::MAX);
    let txn = storesync_shared::domain::db::begin(db).await?;
    // The site's row lock first, the one an upstream apply takes
    // (`sync::upstream`): a batch being applied finishes before the count
    // below, and one that starts later waits for this transaction and then
    // finds the site gone. So either the removal sees the batch's data and
    // is refused, or the batch is refused; never a removed site with data.
    // A no-op UPDATE locks the row on PostgreSQL and takes SQLite's write
    // lock at once (instead of at the first delete, after the count).
    txn.execute(sea_orm::Statement::from_sql_and_values(
        txn.get_database_backend(),
        match txn.get_database_backend() {
            sea_orm::DbBackend::Postgres => "UPDATE site SET sync_id = sync_id WHERE sync_id = $1",
            _ => "UPDATE site SET sync_id = sync_id WHERE sync_id = ?",
        },
        [id.into()],
    ))
    .await?;
    let Some(current) = site::Entity::find_by_id(id).one(&txn).await? else {
        return Err(Error::not_found(format!(
            "sync_id: no site has Sync ID {sync_id}"
        )));
    };
    let store_id = current.store_id.clone();
    // Each table of store data, as "3 stock line(s)".
    let mut held = Vec::new();
    let mut rows = 0;
    for table in storesync_shared::domain::tables::SYNCED {
        if !matches!(table.owner(), Owner::Store { .. }) {
            continue;
        }
        let count = write::count(&txn, *table, Scope::Store(&store_id)).await?;
        rows += count;
        held.push(format!("{count} {}(s)", table.name().replace('_', " ")));
    }
    if rows > 0 {
        let last = held.pop().unwrap_or_default();
        return Err(Error::failed_precondition(format!(
            "the store of Sync ID {sync_id} holds {} and {last}; disable the site instead (UpdateSite with enabled false)",
            held.join(", ")
        )));
    }
    let store = store::Entity::find_by_id(store_id.clone())
        .one(&txn)
        .await?;
    site::Entity::delete_by_id(id).exec(&txn).await?;
    crate::entities::site_status::Entity::delete_by_id(id)
        .exec(&txn)
        .await?;
    store::Entity::delete_by_id(store_id.clone())
        .exec(&txn)
        .await?;
    let named_by = invoice::Entity::find()
        .filter(invoice::Column::NameId.eq(store_id.as_str()))
        .count(&txn)
        .await?;
    let seq = match name::Entity::find_by_id(store_id.clone()).one(&txn).await? {
        Some(existing) if named_by > 0 => {
            let mut kept = pb::Name::from(existing);
            kept.active = false;
            kept.updated_at_ms = now_ms();
            name::Model::from(kept.clone())
                .into_active_model()
                .reset_all()
                .update(&txn)
                .await?;
            Some(changelog::append(&txn, &name_record(kept)).await?)
        }
        Some(_) => {
            name::Entity::delete_by_id(store_id.clone())
                .exec(&txn)
                .await?;
            Some(changelog::append(&txn, &tombstone(Table::Name, &store_id)).await?)
        }
        None => None,
    };
    audit::record(
        &txn,
        actor,
        "remove_site",
        format!(
            "sync_id={sync_id} name={:?} store={:?}",
            current.name,
            store.map(|s| s.code).unwrap_or_default()
        ),
    )
    .await?;
    txn.commit().await?;
    if let Some(seq) = seq {
        notifier.committed(seq);
    }
    Ok(())
}

/// Makes `database_id` the satellite database that owns `sync_id` (a
/// replacement machine); returns the previous owner (empty: none).
///
/// The previous owner's claim on the site is dropped in the same
/// transaction, so a session it still has open applies nothing more (the
/// upstream apply checks the claim under the site's row lock) and ends at
/// its next heartbeat; its next connection is refused by the handshake.
/// The site's positions stay: a new database initialises from the master
/// and continues after its acknowledged sequence. A database that is an
/// older copy or a clone of the owner is still stopped by the lineage check
/// (tags), whoever owns the Sync ID: its entries are handed over instead.
pub async fn adopt(
    db: &DatabaseConnection,
    actor: &str,
    sync_id: u32,
    database_id: &str,
) -> Result<String> {
    if sync_id == MASTER_SYNC_ID {
        return Err(Error::invalid(
            "sync_id",
            "1 is the master itself; adopt a satellite's database (Sync IDs 2 to 64)",
        ));
    }
    let database_id = uuid::Uuid::parse_str(database_id.trim())
        .map_err(|_| {
            Error::invalid(
                "database_id",
                format!(
                    "{database_id:?} is not a UUID; give the id the refused satellite reported"
                ),
            )
        })?
        .to_string();
    let id = i32::try_from(sync_id).unwrap_or(i32::MAX);
    let txn = storesync_shared::domain::db::begin(db).await?;
    let Some(current) = site::Entity::find_by_id(id).one(&txn).await? else {
        return Err(Error::not_found(format!(
            "sync_id: no site has Sync ID {sync_id}"
        )));
    };
    site::Entity::update_many()
        .col_expr(
            site::Column::DatabaseId,
            sea_orm::sea_query::Expr::value(database_id.clone()),
        )
        .filter(site::Column::SyncId.eq(id))
        .exec(&txn)
        .await?;
    if current.database_id != database_id {
        crate::entities::site_status::Entity::update_many()
            .col_expr(
                crate::entities::site_status::Column::SessionId,
                sea_orm::sea_query::Expr::value(Option::<String>::None),
            )
            .filter(crate::entities::site_status::Column::SyncId.eq(id))
            .exec(&txn)
            .await?;
    }
    audit::record(
        &txn,
        actor,
        "adopt_database",
        format!(
            "sync_id={sync_id} database_id={database_id} previous={}",
            if current.database_id.is_empty() {
                "none"
            } else {
                current.database_id.as_str()
            }
        ),
    )
    .await?;
    txn.commit().await?;
    // Other replicas end the previous owner's live session at once.
    if let Err(error) = crate::sync::cluster::notify(
        db,
        crate::sync::cluster::SESSIONS_CHANNEL,
        &format!("{sync_id}:adopted-{database_id}"),
    )
    .await
    {
        tracing::warn!(sync_id, %error, "could not tell the replicas about the adoption; the old session ends at its next heartbeat");
    }
    Ok(current.database_id)
}

/// Creates site 1 (the master) and its store unless it exists. Serialised with
/// every change-log writer (it takes the counter row lock first), so replicas
/// starting together create it once.
pub async fn ensure_master_site(db: &DatabaseConnection, config: &config::Config) -> Result<bool> {
    let txn = storesync_shared::domain::db::begin(db).await?;
    let backend = txn.get_database_backend();
    txn.execute(sea_orm::Statement::from_string(
        backend,
        "UPDATE counter SET value = value WHERE name = 'change_log'",
    ))
    .await?;
    if site::Entity::find_by_id(1).one(&txn).await?.is_some() {
        txn.rollback().await?;
        return Ok(false);
    }
    let (store, _seq) = create_store(
        &txn,
        MASTER_SYNC_ID,
        &config.master_store_code,
        &config.master_store_name,
    )
    .await?;
    site::Entity::insert(site::ActiveModel {
        sync_id: Set(1),
        name: Set("Master".to_owned()),
        store_id: Set(store.id.clone()),
        // The master does not sync with itself; an operator may record its URL.
        url: Set(String::new()),
        enabled: Set(true),
        sync_user_name: Set(None),
        sync_password_hash: Set(None),
        created_at_ms: Set(now_ms()),
        ..Default::default()
    })
    .exec_without_returning(&txn)
    .await?;
    audit::record(
        &txn,
        audit::SYSTEM,
        "create_master_site",
        format!("sync_id=1 store={:?} ({:?})", store.code, store.name),
    )
    .await?;
    txn.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_ids_outside_2_to_64_are_refused_with_the_reason() {
        for (id, why) in [
            (0, "missing or 0"),
            (1, "reserved for the master"),
            (65, "above 64"),
        ] {
            let err = check_new_sync_id(id).expect_err("rejects");
            let text = err.to_string();
            assert!(
                text.starts_with("site.sync_id:") && text.contains(why),
                "{text}"
            );
        }
        assert!(check_new_sync_id(2).is_ok());
        assert!(check_new_sync_id(64).is_ok());
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(check_url("u", "https://store.example.org:50051").is_ok());
        assert!(check_url("u", "http://10.0.0.7").is_ok());
        for bad in [
            "",
            "store.example.org",
            "ftp://x.org",
            "http://",
            "mailto:a@b",
        ] {
            assert!(check_url("site.url", bad).is_err(), "{bad} accepted");
        }
    }
}
