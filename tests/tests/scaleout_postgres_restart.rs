//! PostgreSQL stopped and started again while two master replicas serve
//! satellites: the replicas report NOT_SERVING while the database is gone,
//! recover by themselves, the satellites reconnect and nothing is lost.
//!
//! It stops the PostgreSQL server that TEST_DATABASE_URL points at, so it lives
//! in a test binary of its own (cargo runs test binaries one at a time) and is
//! skipped, loudly, when that server is not a local cluster this process can
//! control with `pg_ctlcluster`.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in,
    wait_master_data_equal, Master, Satellite,
};
use storesync_tests::{backends, eventually, Backend, TestDb};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const LIMIT: Duration = Duration::from_secs(90);

/// The local cluster (`<version> main`), if this machine has one.
fn local_cluster() -> Option<String> {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .next()?
        .file_name();
    Some(version.to_string_lossy().into_owned())
}

fn pg_ctl(version: &str, action: &str) -> bool {
    Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", action])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the cluster again however the test ends.
struct RestartGuard(String);

impl Drop for RestartGuard {
    fn drop(&mut self) {
        pg_ctl(&self.0, "start");
    }
}

async fn health(url: &str) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .ok()?
        .connect()
        .await
        .ok()?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(answer.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_survive_a_postgres_restart() {
    if !backends("replicas_survive_a_postgres_restart").contains(&Backend::Postgres) {
        return;
    }
    let url = std::env::var("TEST_DATABASE_URL").unwrap();
    let Some(version) =
        local_cluster().filter(|_| url.contains("127.0.0.1") || url.contains("localhost"))
    else {
        eprintln!("*** SKIPPED replicas_survive_a_postgres_restart: TEST_DATABASE_URL is not a local pg_ctlcluster cluster ***");
        return;
    };
    let db = TestDb::new(Backend::Postgres);
    let m1 = Master::start(&db, &[]);
    let m2 = Master::start(&db, &[]);
    let conn = db.connect().await;
    m1.add_site(2).await;
    m1.add_site(3).await;
    let items = create_items(&m1, "PGR", 6).await;
    let (supplier, _) = create_trading_partners(&m1, "G").await;
    let satellites = [
        Satellite::start(&m1.url(), 2, "streaming", &[]),
        Satellite::start(&m2.url(), 3, "streaming", &[]),
    ];
    for satellite in &satellites {
        satellite.wait_initialised(LIMIT).await;
        goods_in(
            &mut satellite.store().await,
            &supplier,
            &items[..3],
            5.0,
            "BEFORE",
        )
        .await;
    }
    drop(conn);

    let guard = RestartGuard(version.clone());
    assert!(pg_ctl(&version, "stop"), "pg_ctlcluster stop");
    for master in [&m1, &m2] {
        eventually(
            LIMIT,
            "a replica to report NOT_SERVING without its database",
            || async {
                (health(&master.url()).await == Some(ServingStatus::NotServing as i32))
                    .then_some(())
            },
        )
        .await;
    }
    // Satellites keep working locally while the master cannot store anything.
    for satellite in &satellites {
        goods_in(
            &mut satellite.store().await,
            &supplier,
            &items[3..],
            2.0,
            "DURING",
        )
        .await;
    }
    assert!(pg_ctl(&version, "start"), "pg_ctlcluster start");
    drop(guard);
    for master in [&m1, &m2] {
        eventually(LIMIT, "a replica to report SERVING again", || async {
            (health(&master.url()).await == Some(ServingStatus::Serving as i32)).then_some(())
        })
        .await;
    }
    let conn = db.connect().await;
    let after = create_items(&m2, "AFTER", 2).await;
    assert_eq!(after.len(), 2);
    for satellite in &satellites {
        wait_master_data_equal(&conn, satellite, LIMIT).await;
        assert_store_copies_equal(&conn, satellite, LIMIT).await;
    }
}
