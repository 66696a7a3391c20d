//! The `setting` table: small named values (preference values, secret hashes).
//!
//! Keys the master uses, also read by the sync stream:
//! - [`SYNC_USER_NAME`], [`SYNC_PASSWORD_HASH`] (argon2), [`SYNC_INTERVAL_MINUTES`]:
//!   the shared sync preferences;
//! - [`AUTHORISATION_CODE_HASH`] (argon2): the code that unlocks changes.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, EntityTrait, Set};
use storesync_shared::domain::entities::setting;

use crate::error::Result;

/// Shared sync user name that satellites present.
pub const SYNC_USER_NAME: &str = "sync_user_name";
/// argon2 hash of the shared sync password.
pub const SYNC_PASSWORD_HASH: &str = "sync_password_hash";
/// Sync time interval in minutes, as decimal text.
pub const SYNC_INTERVAL_MINUTES: &str = "sync_interval_minutes";
/// argon2 hash of the authorisation code.
pub const AUTHORISATION_CODE_HASH: &str = "authorisation_code_hash";

/// The value of `key`, if set.
pub async fn get<C: ConnectionTrait>(db: &C, key: &str) -> Result<Option<String>> {
    Ok(setting::Entity::find_by_id(key.to_owned())
        .one(db)
        .await?
        .map(|row| row.value))
}

/// Sets `key` to `value`, replacing any value.
pub async fn put<C: ConnectionTrait>(db: &C, key: &str, value: &str) -> Result<()> {
    setting::Entity::insert(row(key, value))
        .on_conflict(
            OnConflict::column(setting::Column::Key)
                .update_column(setting::Column::Value)
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Sets `key` to `value` unless it has a value; true when it was set.
/// Safe when several replicas start at once: one of them wins.
pub async fn put_if_missing<C: ConnectionTrait>(db: &C, key: &str, value: &str) -> Result<bool> {
    let inserted = setting::Entity::insert(row(key, value))
        .on_conflict(
            OnConflict::column(setting::Column::Key)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(inserted > 0)
}

fn row(key: &str, value: &str) -> setting::ActiveModel {
    setting::ActiveModel {
        key: Set(key.to_owned()),
        value: Set(value.to_owned()),
    }
}
