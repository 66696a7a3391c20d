//! AdminService end to end: the unlock dance, the "sync with" list and its
//! Sync ID rules, write-only passwords, preferences, and the audit trail.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Statement};
use storesync_shared::proto::v1 as pb;
use storesync_tests::master::{
    assert_status, change_log, execute, plant_stock_line, satellite_site, Master,
    MASTER_STORE_CODE, SYNC_INTERVAL_MINUTES, SYNC_PASSWORD, SYNC_USER,
};
use storesync_tests::{backends, TestDb};
use tonic::Code;

#[tokio::test]
async fn changes_need_an_unlock_token_from_the_authorisation_code() {
    for backend in backends("changes_need_an_unlock_token_from_the_authorisation_code") {
        let db = TestDb::new(backend);
        let master = Master::spawn(&db).await;
        let mut admin = master.admin();

        // Reading needs no unlock; changing does, and the message says how.
        admin.list_sites(pb::ListSitesRequest {}).await.unwrap();
        admin
            .get_preferences(pb::GetPreferencesRequest {})
            .await
            .unwrap();
        let add = || pb::AddSiteRequest {
            site: Some(satellite_site(2, "S2")),
        };
        assert_status(
            admin.add_site(add()).await,
            Code::PermissionDenied,
            "Unlock",
        );
        assert_status(
            admin
                .update_preferences(pb::UpdatePreferencesRequest {
                    preferences: Some(pb::Preferences {
                        sync_interval_minutes: 5,
                        ..Default::default()
                    }),
                })
                .await,
            Code::PermissionDenied,
            "Unlock",
        );
        assert_status(
            admin
                .remove_site(pb::RemoveSiteRequest { sync_id: 2 })
                .await,
            Code::PermissionDenied,
            "Unlock",
        );
        assert_status(
            master
                .admin_with(master.auth().with_unlock("made-up-token"))
                .add_site(add())
                .await,
            Code::PermissionDenied,
            "invalid or has expired",
        );

        // Wrong and empty codes.
        let unlock = |code: &str| pb::UnlockRequest {
            authorisation_code: code.to_owned(),
        };
        assert_status(
            admin.unlock(unlock("")).await,
            Code::InvalidArgument,
            "authorisation_code",
        );
        assert_status(
            admin.unlock(unlock("guess-1")).await,
            Code::PermissionDenied,
            "wrong",
        );
        assert_status(
            admin.unlock(unlock("guess-2")).await,
            Code::PermissionDenied,
            "wrong",
        );
        // Repeated wrong codes are answered more slowly (500 ms after two).
        let started = Instant::now();
        assert_status(
            admin.unlock(unlock("guess-3")).await,
            Code::PermissionDenied,
            "wrong",
        );
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );

        // The right code gives a token for about ten minutes, and changes work.
        let answer = admin
            .unlock(unlock(&master.authorisation_code))
            .await
            .unwrap()
            .into_inner();
        let now_ms = storesync_shared::domain::validate::now_ms();
        assert!(
            answer.expires_at_ms > now_ms + 9 * 60_000
                && answer.expires_at_ms <= now_ms + 11 * 60_000
        );
        assert!(!answer.expires_at.is_empty());
        let mut unlocked = master.admin_with(master.auth().with_unlock(&answer.token));
        unlocked.add_site(add()).await.unwrap();

        // Only the token's hash is stored.
        let conn = db.connect().await;
        let rows = conn
            .query_all(Statement::from_string(
                conn.get_database_backend(),
                "SELECT token_hash FROM unlock_token",
            ))
            .await
            .unwrap();
        assert!(!rows.is_empty());
        for row in rows {
            let hash: String = row.try_get("", "token_hash").unwrap();
            assert_ne!(hash, answer.token);
            assert_eq!(hash.len(), 64, "sha-256 hex");
        }

        // An expired token stops working.
        execute(&conn, "UPDATE unlock_token SET expires_at_ms = 1").await;
        assert_status(
            unlocked
                .remove_site(pb::RemoveSiteRequest { sync_id: 2 })
                .await,
            Code::PermissionDenied,
            "invalid or has expired",
        );
    }
}

#[tokio::test]
async fn the_sync_with_list_follows_the_sync_id_rules() {
    for backend in backends("the_sync_with_list_follows_the_sync_id_rules") {
        let db = TestDb::new(backend);
        let master = Master::spawn(&db).await;
        let conn = db.connect().await;
        let mut admin = master.unlocked_admin().await;

        // Site 1, the master with its own store, is there from the start.
        let sites = admin
            .list_sites(pb::ListSitesRequest {})
            .await
            .unwrap()
            .into_inner()
            .sites;
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].sync_id, 1);
        let master_store = sites[0].store.clone().unwrap();
        assert_eq!(master_store.code, MASTER_STORE_CODE);
        assert_eq!(master_store.sync_id, 1);

        // Sync IDs 0, 1 and 65 are refused, each with its reason.
        for (sync_id, why) in [
            (0, "missing or 0"),
            (1, "reserved for the master"),
            (65, "above 64"),
        ] {
            assert_status(
                admin
                    .add_site(pb::AddSiteRequest {
                        site: Some(satellite_site(sync_id, "SX")),
                    })
                    .await,
                Code::InvalidArgument,
                why,
            );
        }
        // URLs must be http(s) with a host.
        for url in [
            "",
            "store.example.org",
            "ftp://store.example.org",
            "http://",
        ] {
            let mut site = satellite_site(2, "S2");
            site.url = url.to_owned();
            assert_status(
                admin
                    .add_site(pb::AddSiteRequest { site: Some(site) })
                    .await,
                Code::InvalidArgument,
                "site.url",
            );
        }
        let mut site = satellite_site(2, "S2");
        site.store = None;
        assert_status(
            admin
                .add_site(pb::AddSiteRequest { site: Some(site) })
                .await,
            Code::InvalidArgument,
            "site.store",
        );

        // A satellite with its own credentials: the password is never answered.
        let mut site = satellite_site(2, "S2");
        site.sync_user_name = "site2".into();
        site.sync_password = "site-2-secret".into();
        let added = admin
            .add_site(pb::AddSiteRequest { site: Some(site) })
            .await
            .unwrap()
            .into_inner()
            .site
            .unwrap();
        assert_eq!(added.sync_id, 2);
        assert!(added.enabled && added.has_own_password);
        assert!(added.sync_password.is_empty());
        let store2 = added.store.clone().unwrap();
        assert_eq!((store2.code.as_str(), store2.sync_id), ("S2", 2));
        uuid::Uuid::parse_str(&store2.id).unwrap();

        // Taken Sync ID, taken store code (also the master's).
        assert_status(
            admin
                .add_site(pb::AddSiteRequest {
                    site: Some(satellite_site(2, "S9")),
                })
                .await,
            Code::AlreadyExists,
            "site.sync_id",
        );
        for code in ["S2", MASTER_STORE_CODE] {
            assert_status(
                admin
                    .add_site(pb::AddSiteRequest {
                        site: Some(satellite_site(3, code)),
                    })
                    .await,
                Code::AlreadyExists,
                "site.store.code",
            );
        }
        admin
            .add_site(pb::AddSiteRequest {
                site: Some(satellite_site(3, "S3")),
            })
            .await
            .unwrap();

        let sites = admin
            .list_sites(pb::ListSitesRequest {})
            .await
            .unwrap()
            .into_inner()
            .sites;
        assert_eq!(
            sites.iter().map(|s| s.sync_id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(sites.iter().all(|s| s.sync_password.is_empty()));
        let hash: String = conn
            .query_one(Statement::from_string(
                conn.get_database_backend(),
                "SELECT sync_password_hash FROM site WHERE sync_id = 2",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get("", "sync_password_hash")
            .unwrap();
        assert!(hash.starts_with("$argon2"), "{hash}");

        // Each store is also a name, sent to satellites through the change log.
        let log = change_log(&conn).await;
        for store in [&master_store, &store2] {
            let entry = log
                .iter()
                .find(|e| e.record_id == store.id)
                .expect("store name logged");
            match &entry.record.record {
                Some(pb::sync_record::Record::Name(name)) => {
                    assert!(name.is_store);
                    assert_eq!(name.code, store.code);
                }
                other => panic!("unexpected record {other:?}"),
            }
        }

        // UpdateSite: rename, disable, rename the store (and its name), drop own credentials.
        let updated = admin
            .update_site(pb::UpdateSiteRequest {
                site: Some(pb::Site {
                    sync_id: 2,
                    name: "Northern clinic".into(),
                    store: Some(pb::Store {
                        name: "Northern store".into(),
                        ..Default::default()
                    }),
                    enabled: false,
                    ..Default::default()
                }),
                clear_own_credentials: true,
            })
            .await
            .unwrap()
            .into_inner()
            .site
            .unwrap();
        assert_eq!(updated.name, "Northern clinic");
        assert_eq!(updated.store.unwrap().name, "Northern store");
        assert!(!updated.enabled && !updated.has_own_password);
        assert!(
            updated.url.starts_with("https://site2."),
            "empty url keeps the value"
        );
        let last = change_log(&conn).await.pop().unwrap();
        match last.record.record {
            Some(pb::sync_record::Record::Name(name)) => assert_eq!(name.name, "Northern store"),
            other => panic!("unexpected record {other:?}"),
        }
        // The master's own store can be renamed; store codes never change.
        admin
            .update_site(pb::UpdateSiteRequest {
                site: Some(pb::Site {
                    sync_id: 1,
                    store: Some(pb::Store {
                        name: "Central store".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                clear_own_credentials: false,
            })
            .await
            .unwrap();
        let sites = admin
            .list_sites(pb::ListSitesRequest {})
            .await
            .unwrap()
            .into_inner()
            .sites;
        assert_eq!(sites[0].store.as_ref().unwrap().name, "Central store");
        assert!(sites[0].enabled, "the master stays enabled");
        let update = |sync_id: u32, store_code: &str, url: &str| pb::UpdateSiteRequest {
            site: Some(pb::Site {
                sync_id,
                url: url.into(),
                store: Some(pb::Store {
                    code: store_code.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            clear_own_credentials: false,
        };
        assert_status(
            admin.update_site(update(2, "OTHER", "")).await,
            Code::InvalidArgument,
            "site.store.code",
        );
        assert_status(
            admin.update_site(update(2, "", "gopher://x")).await,
            Code::InvalidArgument,
            "site.url",
        );
        assert_status(
            admin.update_site(update(9, "", "")).await,
            Code::NotFound,
            "9",
        );

        // RemoveSite: never the master; not a store holding data; otherwise gone,
        // with a tombstone for its store's name.
        assert_status(
            admin
                .remove_site(pb::RemoveSiteRequest { sync_id: 1 })
                .await,
            Code::FailedPrecondition,
            "master",
        );
        plant_stock_line(&conn, &store2.id, &uuid::Uuid::new_v4().to_string()).await;
        assert_status(
            admin
                .remove_site(pb::RemoveSiteRequest { sync_id: 2 })
                .await,
            Code::FailedPrecondition,
            "1 stock line",
        );
        let store3_id = sites[2].store.as_ref().unwrap().id.clone();
        admin
            .remove_site(pb::RemoveSiteRequest { sync_id: 3 })
            .await
            .unwrap();
        assert_status(
            admin
                .remove_site(pb::RemoveSiteRequest { sync_id: 3 })
                .await,
            Code::NotFound,
            "3",
        );
        let last = change_log(&conn).await.pop().unwrap();
        assert!(last.deleted && last.record_id == store3_id, "{last:?}");
        let sites = admin
            .list_sites(pb::ListSitesRequest {})
            .await
            .unwrap()
            .into_inner()
            .sites;
        assert_eq!(
            sites.iter().map(|s| s.sync_id).collect::<Vec<_>>(),
            vec![1, 2]
        );

        // Every change is in the audit trail, by the operator, without secrets.
        let entries = admin
            .list_audit(pb::ListAuditRequest { limit: 0 })
            .await
            .unwrap()
            .into_inner()
            .entries;
        for action in ["add_site", "update_site", "remove_site"] {
            assert!(
                entries
                    .iter()
                    .any(|e| e.action == action && e.actor == master.operator_user),
                "no {action} in {entries:?}"
            );
        }
        assert!(
            entries.windows(2).all(|w| w[0].id > w[1].id),
            "newest first"
        );
        assert!(entries.iter().all(|e| !e.detail.contains("site-2-secret")
            && !e.detail.contains(&master.authorisation_code)));
        assert_status(
            admin.list_audit(pb::ListAuditRequest { limit: 5000 }).await,
            Code::InvalidArgument,
            "limit",
        );
    }
}

#[tokio::test]
async fn preferences_are_seeded_locked_validated_and_write_only() {
    for backend in backends("preferences_are_seeded_locked_validated_and_write_only") {
        let db = TestDb::new(backend);
        let master = Master::spawn(&db).await;
        let conn = db.connect().await;

        // Seeded from the environment on first start.
        let prefs = master
            .admin()
            .get_preferences(pb::GetPreferencesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(prefs.sync_user_name, SYNC_USER);
        assert_eq!(prefs.sync_interval_minutes, SYNC_INTERVAL_MINUTES);
        assert!(prefs.sync_password_set && prefs.sync_password.is_empty());

        let mut admin = master.unlocked_admin().await;
        let update = |prefs: pb::Preferences| pb::UpdatePreferencesRequest {
            preferences: Some(prefs),
        };
        for (bad, field) in [
            (
                pb::Preferences {
                    sync_interval_minutes: 1441,
                    ..Default::default()
                },
                "sync_interval_minutes",
            ),
            (
                pb::Preferences {
                    sync_password: "short".into(),
                    ..Default::default()
                },
                "sync_password",
            ),
            (
                pb::Preferences {
                    sync_user_name: "a:b".into(),
                    ..Default::default()
                },
                "sync_user_name",
            ),
        ] {
            assert_status(
                admin.update_preferences(update(bad)).await,
                Code::InvalidArgument,
                field,
            );
        }
        let after = admin
            .update_preferences(update(pb::Preferences {
                sync_user_name: "sync2".into(),
                sync_password: "a-new-sync-password".into(),
                sync_interval_minutes: 30,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(after.sync_user_name, "sync2");
        assert_eq!(after.sync_interval_minutes, 30);
        assert!(after.sync_password.is_empty() && after.sync_password_set);

        // Only what was given changes.
        let after = admin
            .update_preferences(update(pb::Preferences {
                sync_interval_minutes: 1,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (after.sync_user_name.as_str(), after.sync_interval_minutes),
            ("sync2", 1)
        );

        // Stored under the keys the sync stream reads, the password hashed.
        let setting = |key: &'static str| {
            let conn = &conn;
            async move {
                conn.query_one(Statement::from_sql_and_values(
                    conn.get_database_backend(),
                    match conn.get_database_backend() {
                        sea_orm::DbBackend::Postgres => "SELECT value FROM setting WHERE key = $1",
                        _ => "SELECT value FROM setting WHERE key = ?",
                    },
                    [key.into()],
                ))
                .await
                .unwrap()
                .map(|row| row.try_get::<String>("", "value").unwrap())
            }
        };
        assert_eq!(setting("sync_user_name").await.as_deref(), Some("sync2"));
        assert_eq!(setting("sync_interval_minutes").await.as_deref(), Some("1"));
        let hash = setting("sync_password_hash").await.unwrap();
        assert!(hash.starts_with("$argon2") && !hash.contains("a-new-sync-password"));

        let entries = admin
            .list_audit(pb::ListAuditRequest { limit: 10 })
            .await
            .unwrap()
            .into_inner()
            .entries;
        let changes: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "update_preferences")
            .collect();
        assert_eq!(changes.len(), 2, "{entries:?}");
        assert!(changes
            .iter()
            .all(|e| !e.detail.contains("a-new-sync-password")));
        assert!(entries.iter().all(|e| !e.detail.contains(SYNC_PASSWORD)));
    }
}
