//! Issue 13, point 4: the master restored from an older backup.
//!
//! A backup of the master is taken; then items A and B are created and a
//! satellite's invoice is acknowledged; then the backup is restored (a
//! PostgreSQL dump into a fresh database, or over the same database with
//! `pg_restore --clean`; a SQLite file copied back while the master is
//! stopped), the master restarted and item C created. The satellite must end
//! with A and B gone and C present (its master data equal to the master's),
//! its invoice back on the master (the master's copy of its store equal to its
//! own), its local data intact, and never a FAILED_PRECONDITION.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, store_data,
    wait_master_data_equal, Master, Satellite,
};
use storesync_tests::proxy::Proxy;
use storesync_tests::{backends, Backend, TestDb};

const LIMIT: Duration = Duration::from_secs(60);

/// How the backup is taken and put back.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Restore {
    /// pg_dump, then pg_restore into a new database the master is pointed at.
    PostgresIntoFreshDatabase,
    /// pg_dump, then pg_restore --clean over the master's own database.
    PostgresInPlace,
    /// The SQLite file (and its WAL) copied while the master is stopped, and back.
    SqliteFileCopy,
}

fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?} failed");
}

fn sqlite_files(path: &Path) -> Vec<(PathBuf, &'static str)> {
    ["", "-wal", "-shm"]
        .into_iter()
        .map(|suffix| (PathBuf::from(format!("{}{suffix}", path.display())), suffix))
        .collect()
}

async fn scenario(restore: Restore) {
    let master_db = TestDb::new(match restore {
        Restore::SqliteFileCopy => Backend::Sqlite,
        _ => Backend::Postgres,
    });
    let mut master = Master::start(&master_db, &[]);
    let proxy = Proxy::start(master.process.addr).await;
    let mut db = master_db.connect().await;
    master.add_site(2).await;
    let base = create_items(&master, "BASE", 3).await;
    let (supplier, _customer) = create_trading_partners(&master, "P").await;
    let satellite = Satellite::start(&proxy.url(), 2, "streaming", &[]);
    satellite.wait_initialised(LIMIT).await;
    let mut store = satellite.store().await;
    goods_in(&mut store, &supplier, &base[..1], 10.0, "before-backup").await;
    assert_store_copies_equal(&db, &satellite, LIMIT).await;
    wait_master_data_equal(&db, &satellite, LIMIT).await;

    // The backup.
    let backup_dir = tempfile::tempdir().unwrap();
    let dump = backup_dir.path().join("master.dump");
    match restore {
        Restore::SqliteFileCopy => {
            master.process.terminate(Duration::from_secs(10));
            let TestDb::Sqlite { path, .. } = &master_db else {
                unreachable!()
            };
            for (file, suffix) in sqlite_files(path) {
                if file.exists() {
                    std::fs::copy(&file, backup_dir.path().join(format!("copy{suffix}"))).unwrap();
                }
            }
            master.start_again();
            db = master_db.connect().await;
        }
        _ => run(Command::new("pg_dump")
            .args(["-Fc", "-f"])
            .arg(&dump)
            .arg(master_db.url())),
    }

    // After the backup: items A and B, and an invoice the master acknowledges.
    let lost = create_items(&master, "LOST", 2).await;
    goods_in(&mut store, &supplier, &base[1..2], 5.0, "after-backup").await;
    let acknowledged = assert_store_copies_equal(&db, &satellite, LIMIT).await;
    wait_master_data_equal(&db, &satellite, LIMIT).await;
    assert_eq!(acknowledged.invoices.len(), 2);

    // The restore, and the master restarted on it.
    master.process.terminate(Duration::from_secs(10));
    drop(db);
    let mut fresh = None;
    match restore {
        Restore::PostgresIntoFreshDatabase => {
            let new_db = TestDb::new(Backend::Postgres);
            run(Command::new("pg_restore")
                .args(["--no-owner", "-d"])
                .arg(new_db.url())
                .arg(&dump));
            master = Master::start(&new_db, &[]);
            proxy.set_target(master.process.addr);
            fresh = Some(new_db);
        }
        Restore::PostgresInPlace => {
            run(Command::new("pg_restore")
                .args(["--clean", "--if-exists", "--no-owner", "-d"])
                .arg(master_db.url())
                .arg(&dump));
            master.start_again();
        }
        Restore::SqliteFileCopy => {
            let TestDb::Sqlite { path, .. } = &master_db else {
                unreachable!()
            };
            for (file, suffix) in sqlite_files(path) {
                let _ = std::fs::remove_file(&file);
                let copy = backup_dir.path().join(format!("copy{suffix}"));
                if copy.exists() {
                    std::fs::copy(&copy, &file).unwrap();
                }
            }
            master.start_again();
        }
    }
    let restored_db = fresh.as_ref().unwrap_or(&master_db);
    let db = restored_db.connect().await;
    let created = create_items(&master, "NEW", 1).await;

    // The satellite follows the restored master without losing anything.
    wait_master_data_equal(&db, &satellite, LIMIT).await;
    let local = assert_store_copies_equal(&db, &satellite, LIMIT).await;
    assert_eq!(local, acknowledged, "the satellite's own data is intact");
    let sat_db = satellite.db.connect().await;
    let (items, _) = storesync_tests::cluster::master_data(&sat_db).await;
    for gone in &lost {
        assert!(
            items.iter().all(|item| item.id != gone.id),
            "{restore:?}: item {} created after the backup is gone on the satellite",
            gone.code
        );
    }
    assert!(items.iter().any(|item| item.id == created[0].id));
    // A re-created code is freed on the satellite: LOST0001 again, new id.
    let mut client = master.master_data().await;
    let again = client
        .upsert_item(pb::UpsertItemRequest {
            item: Some(pb::Item {
                code: lost[0].code.clone(),
                name: "Re-created after the restore".into(),
                unit: "tab".into(),
                default_pack_size: 10,
                active: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_ne!(again.id, lost[0].id);
    wait_master_data_equal(&db, &satellite, LIMIT).await;
    // Still syncing both ways, and never told to wipe anything.
    goods_in(&mut store, &supplier, &base[2..3], 1.0, "after-restore").await;
    let after = assert_store_copies_equal(&db, &satellite, LIMIT).await;
    assert_eq!(after.invoices.len(), 3);
    let status = satellite.status().await;
    assert!(
        !status.last_error.contains("delete the satellite")
            && !status.last_error.contains("FAILED_PRECONDITION"),
        "{restore:?}: {}",
        status.last_error
    );
    let store_id = status.store.unwrap().id;
    assert_eq!(store_data(&sat_db, &store_id).await, after);
    let refused = satellite
        .process
        .output()
        .iter()
        .chain(master.process.output().iter())
        .any(|line| line.contains("FailedPrecondition") || line.contains("FAILED_PRECONDITION"));
    assert!(!refused, "{restore:?}: a FAILED_PRECONDITION was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_master_file_copied_back() {
    scenario(Restore::SqliteFileCopy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_master_dump_restored_into_a_fresh_database() {
    if backends("postgres_master_dump_restored_into_a_fresh_database").contains(&Backend::Postgres)
    {
        scenario(Restore::PostgresIntoFreshDatabase).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_master_dump_restored_in_place() {
    if backends("postgres_master_dump_restored_in_place").contains(&Backend::Postgres) {
        scenario(Restore::PostgresInPlace).await;
    }
}
