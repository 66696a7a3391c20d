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

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, Statement,
};
use storesync_shared::domain::entities::{invoice, transfer};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, store_data,
    store_of, wait_master_data_equal, Master, Satellite,
};
use storesync_tests::proxy::Proxy;
use storesync_tests::{backends, eventually, Backend, TestDb};

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

/// Which site the restored master hears from first.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FirstBack {
    /// The receiving site pushes back its inbound shipment (and its
    /// receipt) before the sending site pushes back the outbound.
    Receiver,
    /// The sending site pushes back the outbound before the receiving
    /// site is back.
    Sender,
    /// As `Sender`, but the receiving site had not received the shipment
    /// yet: it has nothing to re-push, and the master's new inbound shipment
    /// (its number, its creation time) must give way to the site's copy.
    /// It receives after the restore. (Here the receiver re-synchronises
    /// after the rewound change log past the new handover entry, so its
    /// copy comes back by the integrity check's repair, within its
    /// interval, rather than by the handover's push-back.)
    SenderBeforeReceipt,
}

/// Receives inbound shipment `id` at `store`, its first line one pack short.
async fn receive_one_short(
    store: &mut pb::store_service_client::StoreServiceClient<storesync_tests::cluster::Authed>,
    id: &str,
) {
    let inbound = store
        .get_invoice(pb::GetInvoiceRequest { id: id.to_owned() })
        .await
        .unwrap()
        .into_inner();
    let short = &inbound.lines[0];
    store
        .receive_transfer(pb::ReceiveTransferRequest {
            id: id.to_owned(),
            lines: vec![pb::ReceivedLine {
                line_id: short.id.clone(),
                received_number_of_packs: short.number_of_packs - 1.0,
            }],
        })
        .await
        .unwrap();
}

/// A backup of `master_db` into `dir`: `pg_dump` while the master runs, or
/// the SQLite files copied while it is stopped.
fn take_backup(master: &mut Master, master_db: &TestDb, dir: &Path) {
    match master_db {
        TestDb::Sqlite { path, .. } => {
            master.process.terminate(Duration::from_secs(10));
            for (file, suffix) in sqlite_files(path) {
                if file.exists() {
                    std::fs::copy(&file, dir.join(format!("copy{suffix}"))).unwrap();
                }
            }
            master.start_again();
        }
        _ => run(Command::new("pg_dump")
            .args(["-Fc", "-f"])
            .arg(dir.join("master.dump"))
            .arg(master_db.url())),
    }
}

/// The master stopped, `master_db` put back as [`take_backup`] took it
/// (`pg_restore --clean` in place), the master started again.
fn restore_backup(master: &mut Master, master_db: &TestDb, dir: &Path) {
    master.process.terminate(Duration::from_secs(10));
    match master_db {
        TestDb::Sqlite { path, .. } => {
            for (file, suffix) in sqlite_files(path) {
                let _ = std::fs::remove_file(&file);
                let copy = dir.join(format!("copy{suffix}"));
                if copy.exists() {
                    std::fs::copy(&copy, &file).unwrap();
                }
            }
        }
        _ => run(Command::new("pg_restore")
            .args(["--clean", "--if-exists", "--no-owner", "-d"])
            .arg(master_db.url())
            .arg(dir.join("master.dump"))),
    }
    master.start_again();
}

async fn inbound_of(db: &DatabaseConnection, outbound_id: &str) -> Vec<invoice::Model> {
    invoice::Entity::find()
        .filter(invoice::Column::LinkedInvoiceId.eq(outbound_id))
        .all(db)
        .await
        .unwrap()
}

async fn transfer_row(db: &DatabaseConnection, outbound_id: &str) -> Option<transfer::Model> {
    transfer::Entity::find_by_id(outbound_id.to_owned())
        .one(db)
        .await
        .unwrap()
}

/// A transfer shipped and received (one line short) after the master's
/// backup; the master restored from it, the sites back in the order
/// `first`. Everything converges to what it was before the restore: the
/// inbound shipment with its receipt, both stores' stock, the transfer's
/// figures; no site is refused or left behind; and before the sender is
/// back, the master holds no inbound shipment it cannot derive.
async fn transfer_across_a_restore(backend: Backend, first: FirstBack) {
    let master_db = TestDb::new(backend);
    let mut master = Master::start(&master_db, &[]);
    master.add_site(2).await;
    master.add_site(3).await;
    let items = create_items(&master, "TRX", 2).await;
    let (supplier, _customer) = create_trading_partners(&master, "T").await;
    let db = master_db.connect().await;
    let store_3 = store_of(&db, 3).await;
    let sender_proxy = Proxy::start(master.process.addr).await;
    let receiver_proxy = Proxy::start(master.process.addr).await;
    let sender = Satellite::start(&sender_proxy.url(), 2, "streaming", &[]);
    let receiver = Satellite::start(&receiver_proxy.url(), 3, "streaming", &[]);
    sender.wait_initialised(LIMIT).await;
    receiver.wait_initialised(LIMIT).await;
    let mut sender_store = sender.store().await;
    let mut receiver_store = receiver.store().await;
    let stock = goods_in(&mut sender_store, &supplier, &items, 20.0, "BEFORE")
        .await
        .stock_lines;
    goods_in(&mut receiver_store, &supplier, &items[..1], 3.0, "OWN").await;
    assert_store_copies_equal(&db, &sender, LIMIT).await;
    assert_store_copies_equal(&db, &receiver, LIMIT).await;
    drop(db);

    let backup_dir = tempfile::tempdir().unwrap();
    take_backup(&mut master, &master_db, backup_dir.path());
    let db = master_db.connect().await;

    // After the backup: 6 + 4 packs shipped, 5 + 4 received.
    let line = |stock: &pb::StockLine, packs: f64| pb::InvoiceLine {
        stock_line_id: stock.id.clone(),
        number_of_packs: packs,
        sell_price_per_pack: 2.5,
        ..Default::default()
    };
    let outbound = sender_store
        .create_transfer(pb::CreateTransferRequest {
            requisition_id: String::new(),
            to_store_id: store_3.id.clone(),
            reference: "ACROSS".into(),
            lines: vec![line(&stock[0], 6.0), line(&stock[1], 4.0)],
        })
        .await
        .unwrap()
        .into_inner();
    sender_store
        .ship_transfer(pb::ShipTransferRequest {
            id: outbound.id.clone(),
        })
        .await
        .unwrap();
    let inbound_id = eventually(LIMIT, "the inbound shipment at the receiver", || {
        let mut receiver_store = receiver_store.clone();
        async move {
            receiver_store
                .list_transfers(pb::ListTransfersRequest {
                    direction: pb::TransferDirection::Inbound as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .transfers
                .into_iter()
                .find_map(|entry| entry.invoice)
                .map(|invoice| invoice.id)
        }
    })
    .await;
    let received_before = first != FirstBack::SenderBeforeReceipt;
    if received_before {
        receive_one_short(&mut receiver_store, &inbound_id).await;
    }
    let record_before = eventually(LIMIT, "the master to record the transfer", || async {
        transfer_row(&db, &outbound.id)
            .await
            .filter(|t| !received_before || t.received_at_ms > 0)
    })
    .await;
    let sender_before = assert_store_copies_equal(&db, &sender, LIMIT).await;
    let receiver_before = assert_store_copies_equal(&db, &receiver, LIMIT).await;
    drop(db);

    // The restore, with the site that comes back second offline.
    let second_proxy = match first {
        FirstBack::Receiver => &sender_proxy,
        FirstBack::Sender | FirstBack::SenderBeforeReceipt => &receiver_proxy,
    };
    second_proxy.refuse(true);
    second_proxy.cut_all();
    restore_backup(&mut master, &master_db, backup_dir.path());
    sender_proxy.set_target(master.process.addr);
    receiver_proxy.set_target(master.process.addr);
    let db = master_db.connect().await;
    let receiver_id = store_3.id.clone();
    assert!(
        transfer_row(&db, &outbound.id).await.is_none(),
        "{first:?}: the restored master has lost the transfer"
    );
    match first {
        FirstBack::Receiver => {
            // The receiver's re-push is taken (the stock its receipt
            // created is back), but not its inbound shipment, which no
            // outbound the master holds backs yet.
            eventually(LIMIT, "the receiver's re-push to be applied", || async {
                let copy = store_data(&db, &receiver_id).await;
                (copy.stock_lines == receiver_before.stock_lines
                    && receiver.status().await.upstream_backlog == 0)
                    .then_some(())
            })
            .await;
            assert!(
                inbound_of(&db, &outbound.id).await.is_empty(),
                "{first:?}: an inbound shipment without its outbound was let in"
            );
        }
        FirstBack::Sender | FirstBack::SenderBeforeReceipt => {
            eventually(LIMIT, "the master to create the inbound again", || async {
                (inbound_of(&db, &outbound.id).await.len() == 1).then_some(())
            })
            .await;
        }
    }
    second_proxy.refuse(false);

    // Both stores end as before the restore, on both sides. Where the
    // receiver's copy comes back by the integrity check's repair (see
    // `FirstBack::SenderBeforeReceipt`), the schedule looks for sites due
    // once a minute: allow for that tick and the check on a busy machine.
    let receiver_back = if first == FirstBack::SenderBeforeReceipt {
        LIMIT * 3
    } else {
        LIMIT
    };
    eventually(
        receiver_back,
        "the receiver's store on the master as before",
        || async { (store_data(&db, &receiver_id).await == receiver_before).then_some(()) },
    )
    .await;
    assert_eq!(
        assert_store_copies_equal(&db, &receiver, LIMIT).await,
        receiver_before,
        "{first:?}: the receiving store"
    );
    assert_eq!(
        assert_store_copies_equal(&db, &sender, LIMIT).await,
        sender_before,
        "{first:?}: the sending store"
    );
    if !received_before {
        // Received now, after the restore.
        receive_one_short(&mut receiver_store, &inbound_id).await;
        assert_store_copies_equal(&db, &receiver, LIMIT).await;
    }
    let inbound = inbound_of(&db, &outbound.id).await;
    assert_eq!(inbound.len(), 1, "{first:?}: one inbound shipment");
    assert_eq!(inbound[0].id, inbound_id);
    assert_eq!(inbound[0].status, "RECEIVED");
    let record = eventually(LIMIT, "the master to record the receipt", || async {
        transfer_row(&db, &outbound.id)
            .await
            .filter(|t| t.received_at_ms > 0)
    })
    .await;
    // Stock is conserved: 10 packs left the sender, 9 were received, 1 is
    // the discrepancy, as before the restore.
    assert_eq!(
        (
            record.packs_shipped,
            record.packs_received,
            record.discrepancy,
            record.inbound_invoice_id.as_str()
        ),
        (10.0, 9.0, -1.0, inbound_id.as_str()),
        "{first:?}: the transfer's figures"
    );
    if received_before {
        assert_eq!(
            (record.received_at_ms, record.packs_received),
            (record_before.received_at_ms, record_before.packs_received),
            "{first:?}: the receipt as before the restore"
        );
    }
    // Both sites healthy: connected, nothing left to send, never refused.
    for site in [&sender, &receiver] {
        eventually(LIMIT, "the site to be connected", || async {
            let status = site.status().await;
            (status.state == pb::ConnectionState::Connected as i32 && status.upstream_backlog == 0)
                .then_some(())
        })
        .await;
    }
    // No batch of either site was ever refused (nor held) by the restored master.
    let refusals = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT sync_id, code, reason FROM refusal",
        ))
        .await
        .unwrap();
    let refusals: Vec<(i32, String, String)> = refusals
        .iter()
        .map(|row| {
            (
                row.try_get_by_index(0).unwrap(),
                row.try_get_by_index(1).unwrap(),
                row.try_get_by_index(2).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refusals,
        Vec::new(),
        "{first:?}: a site's batch was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_shipped_after_the_backup_converges_when_the_receiver_is_back_first() {
    for backend in
        backends("a_transfer_shipped_after_the_backup_converges_when_the_receiver_is_back_first")
    {
        transfer_across_a_restore(backend, FirstBack::Receiver).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_shipped_after_the_backup_converges_when_the_sender_is_back_first() {
    for backend in
        backends("a_transfer_shipped_after_the_backup_converges_when_the_sender_is_back_first")
    {
        transfer_across_a_restore(backend, FirstBack::Sender).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_shipped_after_the_backup_and_received_after_the_restore_converges() {
    for backend in
        backends("a_transfer_shipped_after_the_backup_and_received_after_the_restore_converges")
    {
        transfer_across_a_restore(backend, FirstBack::SenderBeforeReceipt).await;
    }
}
