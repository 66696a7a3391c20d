//! The operator's commands against the real binaries: `satellite-agent
//! status --watch` follows a catch-up and exits once the site has sent
//! everything. (TLS for the commands: `tls.rs`.)
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storesync_tests::cluster::{
    create_items, create_trading_partners, goods_in, Master, Satellite, OPERATOR_PASSWORD,
    OPERATOR_USER,
};
use storesync_tests::{bin_path, Backend, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_catch_up_and_exits_when_done() {
    let master_db = TestDb::new(Backend::Sqlite);
    let mut master = Master::start(&master_db, &[]);
    master.add_site(2).await;
    let items = create_items(&master, "WAT", 3).await;
    let (supplier, _) = create_trading_partners(&master, "WAT").await;
    let satellite = Satellite::start(&master.url(), 2, "streaming", &[]);
    satellite.wait_initialised(Duration::from_secs(60)).await;

    // The master goes away; the site keeps working, so changes wait to be sent.
    let stopped = master.process.terminate(Duration::from_secs(30));
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    let mut store = satellite.store().await;
    for n in 0..3 {
        goods_in(&mut store, &supplier, &items, 5.0, &format!("WATCH-{n}")).await;
    }
    assert!(satellite.status().await.upstream_backlog > 0);

    let address = satellite.process.addr.to_string();
    let mut watch = Command::new(bin_path("satellite-agent", "STORESYNC_SATELLITE_BIN"))
        .args([
            "status",
            "--watch",
            "--address",
            &address,
            "--format",
            "json",
        ])
        .env("STORESYNC_OPERATOR_USER", OPERATOR_USER)
        .env("STORESYNC_OPERATOR_PASSWORD", OPERATOR_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        watch.try_wait().unwrap().is_none(),
        "--watch must wait while changes are unsent"
    );
    master.start_again();

    let deadline = Instant::now() + Duration::from_secs(90);
    while watch.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "--watch did not exit once done");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let output = watch.wait_with_output().unwrap();
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{progress}");
    assert!(
        progress.lines().any(|l| l.starts_with("sending [")),
        "progress while changes were waiting: {progress}"
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["upstream_backlog"], 0, "{status}");
    assert_eq!(status["initialised"], true, "{status}");
}
