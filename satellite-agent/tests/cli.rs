//! The binary refuses a bad configuration at start, saying what to change.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::Command;

/// Runs the binary with only `env` (no STORESYNC_* from the shell); returns
/// the exit code and stderr.
fn run(env: &[(&str, &str)]) -> (Option<i32>, String) {
    run_with(&[], None, env)
}

/// Like [`run`], with command-line `args` and a config `file` (TOML text).
fn run_with(args: &[&str], file: Option<&str>, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_satellite-agent"));
    command.current_dir(dir.path());
    if let Some(text) = file {
        let path = dir.path().join("satellite.toml");
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(path);
    }
    command.args(args);
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
        stderr.contains(
            "STORESYNC_MASTER_URL is required: the master's address, e.g. http://master.example:50051 \
             (--master-url, or `master_url` in the config file)"
        ),
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
        stderr.contains(
            "STORESYNC_SYNC_PASSWORD is required: the sync password the master expects \
             (--sync-password, or `sync_password` in the config file)"
        ),
        "{stderr}"
    );
}

#[test]
fn a_flag_wins_over_the_environment_which_wins_over_the_file() {
    // Each layer sets a different bad value; the message shows which one won.
    let file = "sync_id = 99\nsync_mode = \"from-file\"\nlog_format = \"from-file\"\n";
    let (code, stderr) = run_with(
        &["--sync-id", "97"],
        Some(file),
        &with(
            &[
                ("STORESYNC_SYNC_ID", "98"),
                ("STORESYNC_SYNC_MODE", "from-env"),
            ],
            "",
        ),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("STORESYNC_SYNC_ID: 97 is out of range"),
        "{stderr}"
    );
    assert!(
        stderr.contains("STORESYNC_SYNC_MODE: \"from-env\" must be"),
        "{stderr}"
    );
    assert!(
        stderr.contains("STORESYNC_LOG_FORMAT: \"from-file\" must be"),
        "{stderr}"
    );
    for loser in [
        "STORESYNC_SYNC_ID: 98",
        "STORESYNC_SYNC_ID: 99",
        "\"from-file\" must be `streaming`",
    ] {
        assert!(
            !stderr.contains(loser),
            "{loser:?} lost to a higher layer: {stderr}"
        );
    }
}

#[test]
fn the_old_drain_names_still_set_the_shutdown_grace() {
    for (args, file) in [
        (&["--drain-seconds", "soon"][..], None),
        (&[][..], Some("drain_seconds = \"soon\"")),
    ] {
        let (code, stderr) = run_with(args, file, &with(&[], ""));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("STORESYNC_SHUTDOWN_GRACE_SECONDS: \"soon\" is not a whole number")
                && stderr.contains("old name --drain-seconds / `drain_seconds`"),
            "{stderr}"
        );
    }
}
