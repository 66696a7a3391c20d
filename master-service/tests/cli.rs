//! The binary refuses a bad configuration with a message that says what to change.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn master() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_master-service"));
    for (key, _) in std::env::vars() {
        if key.starts_with("STORESYNC_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn a_bad_listen_address_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let output = master()
        .current_dir(dir.path())
        .env("STORESYNC_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("STORESYNC_LISTEN") && stderr.contains("ip:port"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("storesync-master.db").exists(),
        "nothing started"
    );
}

#[test]
fn a_config_file_with_an_unknown_key_or_bad_value_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("master.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\nsync_intervall_minutes = 5\n",
    )
    .unwrap();
    let output = master()
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sync_intervall_minutes"), "{stderr}");

    let output = master()
        .current_dir(dir.path())
        .env("STORESYNC_SYNC_INTERVAL_MINUTES", "2000")
        .env("STORESYNC_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("STORESYNC_SYNC_INTERVAL_MINUTES") && stderr.contains("1 to 1440"),
        "{stderr}"
    );
}

#[test]
fn every_bad_setting_is_reported_in_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("master.toml");
    std::fs::write(&file, "heartbeat_seconds = 0\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let output = master()
        .current_dir(dir.path())
        .arg("--config")
        .arg(&file)
        .arg("--db-max-connections")
        .arg("none")
        .env("STORESYNC_LISTEN", "not-an-address")
        .env("STORESYNC_SYNC_USER", "sync")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "STORESYNC_HEARTBEAT_SECONDS: 0 is out of range; set one from 1 to 3600",
        "STORESYNC_LISTEN: \"not-an-address\" is not an address",
        "STORESYNC_DB_MAX_CONNECTIONS: \"none\" is not a whole number",
        "STORESYNC_SYNC_USER (--sync-user) and STORESYNC_SYNC_PASSWORD (--sync-password) go together",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(
        !dir.path().join("storesync-master.db").exists(),
        "nothing started"
    );
}
