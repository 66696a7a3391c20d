//! The same Sync ID on two databases (issue 13, point 3): a replacement
//! machine while the old one holds unsent invoices, a cloned database, and a
//! site restored from an old copy of its database. Each database has an
//! identity; the master lets only the one that owns the Sync ID sync, a copy
//! whose history diverged stops by itself, and the operator adopts the new
//! database and hands the old one's invoices over: nothing lost, nothing twice.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, Statement,
};
use storesync_shared::domain::entities::invoice;
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, database_id, goods_in,
    goods_out, Master, Satellite,
};
use storesync_tests::proxy::Proxy;
use storesync_tests::{backends, eventually, Backend, TestDb};

const LIMIT: Duration = Duration::from_secs(60);

/// The site's last error as the master's SyncStatus shows it.
async fn master_last_error(db: &DatabaseConnection, sync_id: u32) -> String {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT last_error FROM site_status WHERE sync_id = {sync_id}"),
        ))
        .await
        .unwrap();
    row.map(|r| r.try_get_by_index::<String>(0).unwrap())
        .unwrap_or_default()
}

/// Waits until the satellite reports an error containing one of `needles`.
async fn wait_refused(satellite: &Satellite, needles: &[&str]) -> String {
    eventually(LIMIT, "the satellite to be refused", || async {
        let error = satellite.status().await.last_error;
        needles
            .iter()
            .any(|needle| error.contains(needle))
            .then_some(error)
    })
    .await
}

/// How many times each invoice is on the master.
async fn copies_on_master(db: &DatabaseConnection, ids: &[String]) -> Vec<usize> {
    let mut counts = Vec::new();
    for id in ids {
        counts.push(
            invoice::Entity::find()
                .filter(invoice::Column::Id.eq(id.as_str()))
                .all(db)
                .await
                .unwrap()
                .len(),
        );
    }
    counts
}

/// A copy of a satellite's SQLite files (taken while it is idle).
fn copy_database(from: &TestDb) -> TestDb {
    let TestDb::Sqlite { path, .. } = from else {
        panic!("satellites keep SQLite files")
    };
    let copy = TestDb::new(Backend::Sqlite);
    let TestDb::Sqlite { path: to, .. } = &copy else {
        unreachable!()
    };
    for suffix in ["", "-wal"] {
        let source = format!("{}{suffix}", path.display());
        if std::path::Path::new(&source).exists() {
            std::fs::copy(&source, format!("{}{suffix}", to.display())).unwrap();
        }
    }
    copy
}

/// Export from `old` (stopped) and import into `new`; returns the import's report.
fn hand_over(old: &mut Satellite, new: &Satellite) -> String {
    old.process.kill();
    let file = new
        .db
        .scratch_dir()
        .join(format!("handover-{}.json", uuid::Uuid::new_v4().simple()));
    let file = file.to_str().unwrap();
    let (exported, text) = old.command(&["handover", "export", "--out", file]);
    assert!(exported, "export: {text}");
    let (imported, report) = new.command(&["handover", "import", file]);
    assert!(imported, "import: {report}");
    // A second import changes nothing.
    let (again, text) = new.command(&["handover", "import", file]);
    assert!(
        again && text.contains("0 imported"),
        "second import: {text}"
    );
    report
}

/// The old machine holds 2 unsent invoices and is offline; a new machine
/// with the same Sync ID is refused until the operator adopts it; the old one
/// comes back and is refused; its invoices are handed over; the master ends
/// with both exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replacement_machine_is_adopted_and_the_old_ones_invoices_are_handed_over() {
    for backend in
        backends("a_replacement_machine_is_adopted_and_the_old_ones_invoices_are_handed_over")
    {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        let items = create_items(&master, "RPL", 2).await;
        let (supplier, customer) = create_trading_partners(&master, "RP").await;
        let proxy = Proxy::start(master.process.addr).await;
        let mut old = Satellite::start(&proxy.url(), 2, "streaming", &[]);
        old.wait_initialised(LIMIT).await;
        let received = goods_in(&mut old.store().await, &supplier, &items, 10.0, "first").await;
        old.wait_drained(LIMIT).await;
        let old_id = database_id(&old.db).await;

        // The old machine goes offline with two unsent invoices, then dies.
        proxy.refuse(true);
        proxy.cut_all();
        let mut unsent = Vec::new();
        for line in &received.stock_lines {
            let made = goods_out(&mut old.store().await, &customer, line, 2.0)
                .await
                .unwrap();
            unsent.push(made.invoice.unwrap().id);
        }
        assert!(old.status().await.upstream_backlog > 0);
        old.process.kill();

        // The replacement: a new database under the same Sync ID is refused…
        let new = Satellite::start(&master.url(), 2, "streaming", &[]);
        let new_id = database_id(&new.db).await;
        assert_ne!(new_id, old_id);
        let refusal = wait_refused(&new, &["belongs to satellite database"]).await;
        assert!(
            refusal.contains(&old_id)
                && refusal.contains(&new_id)
                && refusal.contains("AdoptDatabase"),
            "the refusal names both databases and what to do: {refusal}"
        );
        assert!(
            master_last_error(&db, 2).await.contains(&new_id),
            "the master's status shows the refusal"
        );
        assert!(!new.status().await.initialised);
        // …until the operator adopts it.
        let adopted = master.adopt(2, &new_id).await;
        assert_eq!(adopted.previous_database_id, old_id);
        new.wait_initialised(LIMIT).await;

        // The old machine comes back: refused, and it keeps its invoices.
        proxy.refuse(false);
        old.start_again();
        wait_refused(&old, &["belongs to satellite database"]).await;
        assert!(old.status().await.upstream_backlog > 0, "nothing deleted");
        assert_eq!(copies_on_master(&db, &unsent).await, vec![0, 0]);

        // Its invoices are handed over to the new machine, and reach the master once.
        let report = hand_over(&mut old, &new);
        assert!(report.contains("2 imported"), "{report}");
        new.wait_drained(LIMIT).await;
        assert_eq!(copies_on_master(&db, &unsent).await, vec![1, 1]);
        let copy = assert_store_copies_equal(&db, &new, LIMIT).await;
        assert_eq!(copy.invoices.len(), 3, "goods in and the two handed over");
        // The old database no longer syncs, even if started again.
        old.start_again();
        wait_refused(&old, &["handed its 2 unsent invoice(s) over"]).await;
    }
}

/// A database file copied while the site was idle, and a site restored from
/// an old copy of its database: each is refused or stops, deletes nothing,
/// and the real site keeps syncing; the clone's invoice is handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clone_and_a_restored_backup_are_stopped_and_the_real_site_keeps_syncing() {
    for backend in
        backends("a_clone_and_a_restored_backup_are_stopped_and_the_real_site_keeps_syncing")
    {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        let db = master_db.connect().await;
        master.add_site(2).await;
        let items = create_items(&master, "CLN", 2).await;
        let (supplier, customer) = create_trading_partners(&master, "CL").await;
        let real = Satellite::start(&master.url(), 2, "streaming", &[]);
        real.wait_initialised(LIMIT).await;
        let received = goods_in(&mut real.store().await, &supplier, &items, 10.0, "in").await;
        real.wait_drained(LIMIT).await;
        let backup = copy_database(&real.db);
        let first = goods_out(
            &mut real.store().await,
            &customer,
            &received.stock_lines[0],
            1.0,
        )
        .await
        .unwrap();
        real.wait_drained(LIMIT).await;

        // A clone, taken while idle, writes an invoice while its link is down;
        // the real site writes one too and syncs first.
        let clone_db = copy_database(&real.db);
        let proxy = Proxy::start(master.process.addr).await;
        proxy.refuse(true);
        let mut clone = Satellite::start_on(clone_db, &proxy.url(), 2, "streaming", &[]);
        let cloned = goods_out(
            &mut clone.store().await,
            &customer,
            &received.stock_lines[1],
            3.0,
        )
        .await
        .unwrap()
        .invoice
        .unwrap()
        .id;
        let real_second = goods_out(
            &mut real.store().await,
            &customer,
            &received.stock_lines[1],
            1.0,
        )
        .await
        .unwrap()
        .invoice
        .unwrap()
        .id;
        real.wait_drained(LIMIT).await;
        proxy.refuse(false);
        let stopped = wait_refused(&clone, &["another history", "older copy"]).await;
        assert!(stopped.contains("handover"), "says what to do: {stopped}");
        assert!(
            clone.status().await.upstream_backlog > 0,
            "the clone deleted nothing"
        );
        assert_eq!(
            copies_on_master(&db, std::slice::from_ref(&cloned)).await,
            vec![0]
        );

        // The real site keeps syncing.
        let third = goods_out(
            &mut real.store().await,
            &customer,
            &received.stock_lines[0],
            1.0,
        )
        .await
        .unwrap()
        .invoice
        .unwrap()
        .id;
        real.wait_drained(LIMIT).await;

        // A restored backup (older than what the master has): refused.
        clone.process.kill();
        let mut restored = Satellite::start_on(backup, &master.url(), 2, "streaming", &[]);
        wait_refused(&restored, &["older copy"]).await;
        assert!(master_last_error(&db, 2).await.contains("older copy"));
        restored.process.kill();

        // The clone's invoice is handed over to the real site.
        let report = hand_over(&mut clone, &real);
        assert!(report.contains("1 imported"), "{report}");
        real.wait_drained(LIMIT).await;
        let ids = [first.invoice.unwrap().id, real_second, third, cloned];
        assert_eq!(copies_on_master(&db, &ids).await, vec![1, 1, 1, 1]);
        let copy = assert_store_copies_equal(&db, &real, LIMIT).await;
        assert_eq!(
            copy.invoices.len(),
            5,
            "goods in and four goods out, each once"
        );
        // The real site still syncs after all of it.
        goods_out(
            &mut real.store().await,
            &customer,
            &received.stock_lines[0],
            1.0,
        )
        .await
        .unwrap();
        real.wait_drained(LIMIT).await;
        assert_store_copies_equal(&db, &real, LIMIT).await;
    }
}

/// AdoptDatabase needs the unlock token, names the field at fault, and is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adopting_a_database_is_locked_checked_and_audited() {
    for backend in backends("adopting_a_database_is_locked_checked_and_audited") {
        let master_db = TestDb::new(backend);
        let master = Master::start(&master_db, &[]);
        master.add_site(2).await;
        let id = uuid::Uuid::new_v4().to_string();
        let adopt = |sync_id: u32, database_id: &str, token: Option<String>| {
            let mut request = tonic::Request::new(pb::AdoptDatabaseRequest {
                sync_id,
                database_id: database_id.to_owned(),
            });
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("x-unlock-token", token.parse().unwrap());
            }
            request
        };
        let mut admin = master.admin().await;
        let denied = admin.adopt_database(adopt(2, &id, None)).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        let token = master.unlock().await;
        for (sync_id, database_id, code, field) in [
            (9, id.as_str(), tonic::Code::NotFound, "sync_id"),
            (1, id.as_str(), tonic::Code::InvalidArgument, "sync_id"),
            (2, "not-a-uuid", tonic::Code::InvalidArgument, "database_id"),
        ] {
            let refused = admin
                .adopt_database(adopt(sync_id, database_id, Some(token.clone())))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), code, "{refused:?}");
            assert!(refused.message().starts_with(field), "{refused:?}");
        }
        let adopted = admin
            .adopt_database(adopt(2, &id, Some(token.clone())))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(adopted.previous_database_id, "");
        let audit = admin
            .list_audit(pb::ListAuditRequest { limit: 10 })
            .await
            .unwrap()
            .into_inner()
            .entries;
        let entry = audit
            .iter()
            .find(|e| e.action == "adopt_database")
            .expect("the adoption is audited");
        assert!(
            entry.detail.contains(&id) && entry.detail.contains("sync_id=2"),
            "{entry:?}"
        );
    }
}
