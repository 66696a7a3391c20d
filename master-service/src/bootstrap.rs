//! First start (and every start): make sure the master has what it needs to be
//! administered: an operator, the authorisation code, the shared sync
//! preferences and site 1 with the master's own store.
//!
//! Generated secrets are printed once to `out` (stdout) and stored only as
//! argon2 hashes. Every step is idempotent and safe when replicas start at
//! once. What the configuration says on later starts is ignored, except for
//! the authorisation code: a configured code that differs from the stored one
//! replaces it (audited), so an operator who lost it can set a new one.

use std::io::Write;

use sea_orm::sea_query::OnConflict;
use sea_orm::{DatabaseConnection, EntityTrait, Set};
use storesync_shared::domain::entities::operator;
use storesync_shared::domain::validate::now_ms;
use storesync_shared::kit::auth;

use crate::audit;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::settings;
use crate::sites;

/// Length of generated passwords and codes.
const GENERATED_LEN: usize = 24;

/// Runs every bootstrap step; prints generated secrets to `out`.
pub async fn run(db: &DatabaseConnection, config: &Config, out: &mut dyn Write) -> Result<()> {
    ensure_operator(db, config, out).await?;
    ensure_authorisation_code(db, config, out).await?;
    seed_preferences(db, config).await?;
    if sites::ensure_master_site(db, config).await? {
        tracing::info!(store = %config.master_store_code, "created site 1 (the master) and its store");
    }
    Ok(())
}

fn say(out: &mut dyn Write, line: &str) -> Result<()> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|source| Error::Io {
            what: "printing a generated secret".into(),
            source,
        })
}

async fn ensure_operator(
    db: &DatabaseConnection,
    config: &Config,
    out: &mut dyn Write,
) -> Result<()> {
    let user = &config.operator_user;
    if let Some(existing) = operator::Entity::find_by_id(user.clone()).one(db).await? {
        if let Some(password) = &config.operator_password {
            if !auth::verify_secret(password.0.clone(), existing.password_hash).await {
                tracing::warn!(
                    %user,
                    "STORESYNC_OPERATOR_PASSWORD differs from the stored password, which stays: \
                     the variable only sets the password of a new operator"
                );
            }
        }
        return Ok(());
    }
    let (password, generated) = match &config.operator_password {
        Some(password) => (password.0.clone(), false),
        None => (auth::generate_secret(GENERATED_LEN), true),
    };
    let hash = auth::hash_secret(password.clone()).await?;
    let txn = storesync_shared::domain::db::begin(db).await?;
    let inserted = operator::Entity::insert(operator::ActiveModel {
        user_name: Set(user.clone()),
        password_hash: Set(hash),
        created_at_ms: Set(now_ms()),
    })
    .on_conflict(
        OnConflict::column(operator::Column::UserName)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    if inserted > 0 {
        audit::record(
            &txn,
            audit::SYSTEM,
            "create_operator",
            format!("user={user:?}"),
        )
        .await?;
    }
    txn.commit().await?;
    if inserted > 0 && generated {
        say(
            out,
            &format!(
                "storesync master generated the password of operator {user:?}: {password} \
                 (shown only this once; set STORESYNC_OPERATOR_PASSWORD to choose one)"
            ),
        )?;
    }
    Ok(())
}

async fn ensure_authorisation_code(
    db: &DatabaseConnection,
    config: &Config,
    out: &mut dyn Write,
) -> Result<()> {
    let stored = settings::get(db, settings::AUTHORISATION_CODE_HASH).await?;
    match (stored, &config.authorisation_code) {
        (Some(hash), Some(code)) => {
            if auth::verify_secret(code.0.clone(), hash).await {
                return Ok(());
            }
            let hash = auth::hash_secret(code.0.clone()).await?;
            let txn = storesync_shared::domain::db::begin(db).await?;
            settings::put(&txn, settings::AUTHORISATION_CODE_HASH, &hash).await?;
            audit::record(
                &txn,
                audit::SYSTEM,
                "replace_authorisation_code",
                "from STORESYNC_AUTHORISATION_CODE",
            )
            .await?;
            txn.commit().await?;
            tracing::info!("the authorisation code was replaced by STORESYNC_AUTHORISATION_CODE");
        }
        (Some(_), None) => {}
        (None, configured) => {
            let (code, generated) = match configured {
                Some(code) => (code.0.clone(), false),
                None => (auth::generate_secret(GENERATED_LEN), true),
            };
            let hash = auth::hash_secret(code.clone()).await?;
            let txn = storesync_shared::domain::db::begin(db).await?;
            let set =
                settings::put_if_missing(&txn, settings::AUTHORISATION_CODE_HASH, &hash).await?;
            if set {
                audit::record(&txn, audit::SYSTEM, "set_authorisation_code", "first start").await?;
            }
            txn.commit().await?;
            if set && generated {
                say(
                    out,
                    &format!(
                        "storesync master generated the authorisation code: {code} \
                         (shown only this once; set STORESYNC_AUTHORISATION_CODE to choose one)"
                    ),
                )?;
            }
        }
    }
    Ok(())
}

/// Seeds each sync preference that has no value yet.
async fn seed_preferences(db: &DatabaseConnection, config: &Config) -> Result<()> {
    let txn = storesync_shared::domain::db::begin(db).await?;
    settings::put_if_missing(
        &txn,
        settings::SYNC_INTERVAL_MINUTES,
        &config.sync_interval_minutes.to_string(),
    )
    .await?;
    txn.commit().await?;
    if let (Some(user), Some(password)) = (&config.sync_user, &config.sync_password) {
        if settings::get(db, settings::SYNC_PASSWORD_HASH)
            .await?
            .is_none()
        {
            let hash = auth::hash_secret(password.0.clone()).await?;
            let txn = storesync_shared::domain::db::begin(db).await?;
            settings::put_if_missing(&txn, settings::SYNC_USER_NAME, user).await?;
            if settings::put_if_missing(&txn, settings::SYNC_PASSWORD_HASH, &hash).await? {
                audit::record(
                    &txn,
                    audit::SYSTEM,
                    "seed_preferences",
                    format!("sync_user_name={user:?} sync_password set"),
                )
                .await?;
            }
            txn.commit().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use sea_orm_migration::MigratorTrait;

    async fn fresh() -> (tempfile::TempDir, DatabaseConnection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = storesync_shared::domain::db::sqlite_url(&dir.path().join("m.db"));
        let db = storesync_shared::domain::db::connect(&url, 1)
            .await
            .expect("connect");
        crate::schema::Migrator::up(&db, None)
            .await
            .expect("migrate");
        (dir, db)
    }

    #[tokio::test]
    async fn first_start_generates_and_prints_secrets_once_and_env_code_wins_later() {
        let (_dir, db) = fresh().await;
        let mut config = Config::for_database("sqlite://unused.db").expect("config");
        let mut out = Vec::new();
        run(&db, &config, &mut out).await.expect("bootstrap");
        let printed = String::from_utf8(out).expect("utf8");
        assert!(
            printed.contains("password of operator \"admin\""),
            "{printed}"
        );
        let code = printed
            .lines()
            .find_map(|l| l.split("authorisation code: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("code printed")
            .to_owned();

        // A second start prints nothing and keeps site 1.
        let mut out = Vec::new();
        run(&db, &config, &mut out).await.expect("bootstrap again");
        assert!(out.is_empty());
        assert_eq!(sites::list(&db).await.expect("sites").len(), 1);

        // The printed code works; a configured new one replaces it.
        crate::unlock::unlock(&db, "admin", &code)
            .await
            .expect("printed code unlocks");
        config.authorisation_code = Some(Secret("brand-new-code".into()));
        run(&db, &config, &mut Vec::new())
            .await
            .expect("bootstrap with code");
        assert!(crate::unlock::unlock(&db, "admin", &code).await.is_err());
        crate::unlock::unlock(&db, "admin", "brand-new-code")
            .await
            .expect("new code unlocks");
        let audit = audit::newest(&db, 10).await.expect("audit");
        assert!(audit
            .iter()
            .any(|e| e.action == "replace_authorisation_code"));
        assert!(audit.iter().all(|e| !e.detail.contains("brand-new-code")));
    }
}
