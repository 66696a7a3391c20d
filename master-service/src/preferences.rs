//! The shared sync preferences: the user name and password every satellite
//! without its own presents, and the sync time interval satellites adopt.
//! Stored in `setting` (keys in [`crate::settings`]); the password only as an
//! argon2 hash, and never answered.

use sea_orm::{ConnectionTrait, DatabaseConnection};
use storesync_shared::kit::auth;
use storesync_shared::proto::v1 as pb;

use crate::audit;
use crate::config::{check_sync_password, check_sync_user, SYNC_INTERVAL_MINUTES};
use crate::error::{Error, Result};
use crate::settings;

/// The preferences as answered (no password, only whether one is set).
pub async fn get<C: ConnectionTrait>(db: &C) -> Result<pb::Preferences> {
    let sync_user_name = settings::get(db, settings::SYNC_USER_NAME)
        .await?
        .unwrap_or_default();
    let sync_password_set = settings::get(db, settings::SYNC_PASSWORD_HASH)
        .await?
        .is_some();
    let sync_interval_minutes = settings::get(db, settings::SYNC_INTERVAL_MINUTES)
        .await?
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    Ok(pb::Preferences {
        sync_user_name,
        sync_password: String::new(),
        sync_interval_minutes,
        sync_password_set,
    })
}

/// Checks the fields given (empty or 0 means "keep").
pub fn check(input: &pb::Preferences) -> Result<()> {
    if !input.sync_user_name.is_empty() {
        check_sync_user("preferences.sync_user_name", &input.sync_user_name)?;
    }
    if !input.sync_password.is_empty() {
        check_sync_password("preferences.sync_password", &input.sync_password)?;
    }
    let (min, max) = SYNC_INTERVAL_MINUTES;
    if input.sync_interval_minutes != 0 && !(min..=max).contains(&input.sync_interval_minutes) {
        return Err(Error::invalid(
            "preferences.sync_interval_minutes",
            format!(
                "{} is out of range; use {min} to {max} minutes",
                input.sync_interval_minutes
            ),
        ));
    }
    Ok(())
}

/// Changes the fields given, audited; returns the preferences after the change.
pub async fn update(
    db: &DatabaseConnection,
    actor: &str,
    input: pb::Preferences,
) -> Result<pb::Preferences> {
    check(&input)?;
    let password_hash = if input.sync_password.is_empty() {
        None
    } else {
        Some(auth::hash_secret(input.sync_password.clone()).await?)
    };
    let txn = storesync_shared::domain::db::begin(db).await?;
    let mut changes = Vec::new();
    if !input.sync_user_name.is_empty() {
        settings::put(&txn, settings::SYNC_USER_NAME, &input.sync_user_name).await?;
        changes.push(format!("sync_user_name={:?}", input.sync_user_name));
    }
    if let Some(hash) = &password_hash {
        settings::put(&txn, settings::SYNC_PASSWORD_HASH, hash).await?;
        changes.push("sync_password changed".to_owned());
    }
    if input.sync_interval_minutes != 0 {
        settings::put(
            &txn,
            settings::SYNC_INTERVAL_MINUTES,
            &input.sync_interval_minutes.to_string(),
        )
        .await?;
        changes.push(format!(
            "sync_interval_minutes={}",
            input.sync_interval_minutes
        ));
    }
    if !changes.is_empty() {
        audit::record(&txn, actor, "update_preferences", changes.join(" ")).await?;
    }
    let after = get(&txn).await?;
    txn.commit().await?;
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_name_the_field() {
        let ok = pb::Preferences {
            sync_user_name: "sync".into(),
            sync_password: "long enough".into(),
            sync_interval_minutes: 10,
            ..Default::default()
        };
        assert!(check(&ok).is_ok());
        assert!(
            check(&pb::Preferences::default()).is_ok(),
            "all empty keeps everything"
        );
        for (bad, field) in [
            (
                pb::Preferences {
                    sync_interval_minutes: 1441,
                    ..ok.clone()
                },
                "preferences.sync_interval_minutes",
            ),
            (
                pb::Preferences {
                    sync_password: "short".into(),
                    ..ok.clone()
                },
                "preferences.sync_password",
            ),
            (
                pb::Preferences {
                    sync_user_name: "a:b".into(),
                    ..ok.clone()
                },
                "preferences.sync_user_name",
            ),
        ] {
            let text = check(&bad).expect_err("rejects").to_string();
            assert!(text.starts_with(field), "{text}");
        }
    }
}
