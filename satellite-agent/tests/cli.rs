//! The binary refuses a bad configuration at start, saying what to change.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::Command;

/// Runs the binary with only `env` (no STORESYNC_* from the shell); returns
/// the exit code and stderr.
fn run(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_satellite-agent"));
    command.current_dir(dir.path());
    for (key, _) in std::env::vars() {
        if key.starts_with("STORESYNC_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let output = command.output().unwrap();
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout before listening"
    );
    assert!(
        !dir.path().join("storesync-satellite.db").exists(),
        "no database is created for a bad configuration"
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const GOOD: [(&str, &str); 4] = [
    ("STORESYNC_MASTER_URL", "http://127.0.0.1:50051"),
    ("STORESYNC_SYNC_ID", "2"),
    ("STORESYNC_SYNC_USER", "sync"),
    ("STORESYNC_SYNC_PASSWORD", "secret"),
];

fn with(
    changes: &[(&'static str, &'static str)],
    remove: &str,
) -> Vec<(&'static str, &'static str)> {
    let mut env: Vec<_> = GOOD.iter().copied().filter(|(k, _)| *k != remove).collect();
    for (key, value) in changes {
        env.retain(|(k, _)| k != key);
        env.push((key, value));
    }
    env
}

#[test]
fn sync_id_1_is_the_masters() {
    let (code, stderr) = run(&with(&[("STORESYNC_SYNC_ID", "1")], ""));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("STORESYNC_SYNC_ID: 1 is the master's Sync ID"),
        "{stderr}"
    );
}

#[test]
fn sync_id_65_is_out_of_range() {
    let (code, stderr) = run(&with(&[("STORESYNC_SYNC_ID", "65")], ""));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("65 is out of range; a satellite's Sync ID is 2 to 64"),
        "{stderr}"
    );
}

#[test]
fn the_master_url_is_required_and_must_be_http() {
    let (code, stderr) = run(&with(&[], "STORESYNC_MASTER_URL"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr
            .contains("STORESYNC_MASTER_URL (--master-url, or master_url in the file) is required"),
        "{stderr}"
    );
    let (code, stderr) = run(&with(&[("STORESYNC_MASTER_URL", "ftp://master")], ""));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("must be an http:// or https:// URL"),
        "{stderr}"
    );
}

#[test]
fn a_bad_mode_and_a_missing_password_are_both_reported() {
    let (code, stderr) = run(&with(
        &[("STORESYNC_SYNC_MODE", "sometimes")],
        "STORESYNC_SYNC_PASSWORD",
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("STORESYNC_SYNC_MODE: \"sometimes\" must be `streaming` or `interval`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("STORESYNC_SYNC_PASSWORD (--sync-password) is required"),
        "{stderr}"
    );
}
