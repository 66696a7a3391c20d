//! What happens once at start, after migrations: the first operator account,
//! and the lock on the sync settings.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
use storesync_shared::domain::entities::{operator, setting};
use storesync_shared::domain::validate::now_ms;
use storesync_shared::kit::auth;

use crate::config::Config;
use crate::error::{Error, Result};

/// Creates the configured operator if it does not exist yet. When the
/// database has no operator at all and no password was configured, one is
/// generated and printed once (to stderr: stdout carries only the
/// `listening on` line). Only the argon2 hash is stored; an existing
/// operator's password is never changed here.
pub async fn ensure_operator<C: ConnectionTrait>(db: &C, config: &Config) -> Result<()> {
    let exists = operator::Entity::find_by_id(config.operator_user.clone())
        .one(db)
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let password = match &config.operator_password {
        Some(password) => password.clone(),
        None if operator::Entity::find().count(db).await? > 0 => {
            // Someone else can already log in; do not invent another account.
            tracing::warn!(user = %config.operator_user, "operator does not exist and STORESYNC_OPERATOR_PASSWORD is not set: not created");
            return Ok(());
        }
        None => {
            let generated = auth::generate_secret(20);
            eprintln!(
                "\n  storesync satellite: created operator {:?} with password {generated}\n  \
                 (shown once; set STORESYNC_OPERATOR_PASSWORD to choose it)\n",
                config.operator_user
            );
            generated
        }
    };
    let password_hash = auth::hash_secret(password).await?;
    operator::Entity::insert(operator::ActiveModel {
        user_name: Set(config.operator_user.clone()),
        password_hash: Set(password_hash),
        created_at_ms: Set(now_ms()),
    })
    .exec_without_returning(db)
    .await?;
    tracing::info!(user = %config.operator_user, "operator created");
    Ok(())
}

const CODE_HASH: &str = "satellite.authorisation_code_hash";
/// The locked sync settings, as stored at the last start.
const LOCKED: [&str; 3] = [
    "satellite.sync_id",
    "satellite.master_url",
    "satellite.sync_user",
];

/// Sync settings are locked as in mSupply: once an authorisation code has been
/// set (the first start that configures `STORESYNC_AUTHORISATION_CODE`),
/// changing the Sync ID, master URL or sync user needs that code. Without a
/// code ever set, changes are allowed and logged.
pub async fn check_locked_settings<C: ConnectionTrait>(db: &C, config: &Config) -> Result<()> {
    let stored: std::collections::HashMap<String, String> = setting::Entity::find()
        .filter(setting::Column::Key.starts_with("satellite."))
        .all(db)
        .await?
        .into_iter()
        .map(|row| (row.key, row.value))
        .collect();
    let wanted = [
        config.sync_id.to_string(),
        config.master_urls_text(),
        config.sync_user.clone(),
    ];
    let changed: Vec<String> = LOCKED
        .iter()
        .zip(&wanted)
        .filter_map(|(key, value)| match stored.get(*key) {
            Some(old) if old != value => Some(format!(
                "{} ({old:?} -> {value:?})",
                key.trim_start_matches("satellite.")
            )),
            _ => None,
        })
        .collect();
    let code_hash = stored.get(CODE_HASH).cloned();
    if !changed.is_empty() {
        match (&code_hash, &config.authorisation_code) {
            (Some(hash), Some(code)) if auth::verify_secret(code.clone(), hash.clone()).await => {
                tracing::warn!(changed = %changed.join(", "), "sync settings changed with the authorisation code");
            }
            (Some(_), _) => {
                return Err(Error::Locked(format!(
                    "the sync settings are locked and these changed: {}. Set STORESYNC_AUTHORISATION_CODE to this satellite's authorisation code to change them, or restore the previous values",
                    changed.join(", ")
                )))
            }
            (None, _) => {
                tracing::warn!(changed = %changed.join(", "), "sync settings changed (no authorisation code is set, so they are not locked)");
            }
        }
    }
    let mut rows: Vec<setting::ActiveModel> = LOCKED
        .iter()
        .zip(wanted)
        .map(|(key, value)| setting::ActiveModel {
            key: Set((*key).to_owned()),
            value: Set(value),
        })
        .collect();
    if let (None, Some(code)) = (&code_hash, &config.authorisation_code) {
        rows.push(setting::ActiveModel {
            key: Set(CODE_HASH.to_owned()),
            value: Set(auth::hash_secret(code.clone()).await?),
        });
        tracing::info!("authorisation code set: the sync settings are now locked");
    }
    setting::Entity::insert_many(rows)
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(setting::Column::Key)
                .update_column(setting::Column::Value)
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}
