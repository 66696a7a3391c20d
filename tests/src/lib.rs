//! Helpers for the end-to-end tests: start the real binaries on ephemeral
//! loopback ports with a fresh database each, and stop them.
//!
//! The binaries are found next to the test executable (`target/<profile>/`).
//! `cargo test --workspace` builds them because `master-service` and
//! `satellite-agent` have integration tests of their own. Set
//! `STORESYNC_MASTER_BIN` / `STORESYNC_SATELLITE_BIN` to use others.
//!
//! Every database test runs on SQLite, and on PostgreSQL when
//! `TEST_DATABASE_URL` is set (each test gets its own database, dropped at
//! the end); without it the PostgreSQL variants print a loud SKIPPED line.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub mod cluster;
pub mod frozen;
pub mod lazyfs;
pub mod master;
pub mod otlp;
pub mod proxy;
pub mod raw;
pub mod satellite;
pub mod verify;

/// Path of a workspace binary built alongside the tests.
pub fn bin_path(name: &str, override_var: &str) -> PathBuf {
    if let Ok(path) = std::env::var(override_var) {
        return PathBuf::from(path);
    }
    // A test runs from target/<profile>/deps/, a binary (the benchmark) from
    // target/<profile>/: the binaries under test sit in target/<profile>/.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>")
    } else {
        dir
    };
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the suite with `cargo test --workspace` (or set {override_var})",
        path.display()
    );
    path
}

/// Runs an operator command of a real binary (`name`, or the binary
/// `override_var` names) with only the test's operator credentials and `env`
/// in its environment, and returns how it ended.
pub fn cli_output(
    name: &str,
    override_var: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut command = Command::new(bin_path(name, override_var));
    for (key, _) in std::env::vars() {
        if key.starts_with("STORESYNC_") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .env("STORESYNC_OPERATOR_USER", cluster::OPERATOR_USER)
        .env("STORESYNC_OPERATOR_PASSWORD", cluster::OPERATOR_PASSWORD)
        .envs(env.iter().copied())
        .output()
        .expect("run the command")
}

/// As [`cli_output`] without extra settings; returns what it printed,
/// failing the test if it failed.
pub fn run_cli(name: &str, override_var: &str, args: &[&str]) -> String {
    let output = cli_output(name, override_var, args, &[]);
    assert!(
        output.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The database a process under test uses.
pub enum TestDb {
    /// A SQLite file in a temporary directory removed on drop.
    Sqlite {
        dir: tempfile::TempDir,
        path: PathBuf,
    },
    /// A fresh PostgreSQL database, dropped on drop.
    Postgres {
        url: String,
        server_url: String,
        name: String,
    },
}

/// Which backends a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite always; PostgreSQL when `TEST_DATABASE_URL` is set (else a loud skip notice).
pub fn backends(test: &str) -> Vec<Backend> {
    if std::env::var("TEST_DATABASE_URL").is_ok() {
        vec![Backend::Sqlite, Backend::Postgres]
    } else {
        eprintln!(
            "\n*** SKIPPED: the PostgreSQL variant of `{test}`: TEST_DATABASE_URL is not set \
             (set it to e.g. postgres://postgres@127.0.0.1:5432/postgres; .ci/run does) ***\n"
        );
        vec![Backend::Sqlite]
    }
}

impl TestDb {
    /// A fresh, empty database on `backend`.
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("storesync.db");
                Self::Sqlite { dir, path }
            }
            Backend::Postgres => {
                let server_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
                let name = format!("storesync_test_{}", uuid::Uuid::new_v4().simple());
                psql(&server_url, &format!("CREATE DATABASE {name}"));
                let url = replace_database(&server_url, &name);
                Self::Postgres {
                    url,
                    server_url,
                    name,
                }
            }
        }
    }

    /// A fresh SQLite database in a new directory under `parent` (e.g. the
    /// power-cut filesystem of [`lazyfs`]), removed on drop.
    pub fn sqlite_in(parent: &std::path::Path) -> Self {
        let dir = tempfile::tempdir_in(parent).expect("temp dir");
        let path = dir.path().join("storesync.db");
        Self::Sqlite { dir, path }
    }

    /// The `STORESYNC_DATABASE_URL` of this database.
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite { path, .. } => format!("sqlite://{}?mode=rwc", path.display()),
            Self::Postgres { url, .. } => url.clone(),
        }
    }

    /// A directory that lives as long as this database (for other files of a test).
    pub fn scratch_dir(&self) -> PathBuf {
        match self {
            Self::Sqlite { dir, .. } => dir.path().to_path_buf(),
            Self::Postgres { .. } => std::env::temp_dir(),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite { .. } => Backend::Sqlite,
            Self::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Connects to this database directly (to inspect what the binaries stored).
    pub async fn connect(&self) -> sea_orm::DatabaseConnection {
        storesync_shared::domain::db::connect(&self.url(), 2)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Self::Postgres {
            server_url, name, ..
        } = self
        {
            psql(
                server_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

/// `url` with its database name replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

fn psql(url: &str, sql: &str) {
    let status = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .status()
        .expect("psql runs (the PostgreSQL client is needed for TEST_DATABASE_URL)");
    assert!(status.success(), "psql failed: {sql}");
}

/// A running binary under test. Killed (SIGKILL) on drop.
pub struct Process {
    /// The child process.
    pub child: Child,
    /// The address it serves gRPC on.
    pub addr: SocketAddr,
    /// Short name for log prefixes.
    pub label: String,
    /// The last lines it printed (stdout and stderr), for tests that read its logs.
    output: Arc<Mutex<VecDeque<String>>>,
}

/// Lines of a process's output kept for [`Process::output`].
const OUTPUT_LINES: usize = 10_000;

fn keep_line(output: &Mutex<VecDeque<String>>, line: &str) {
    let mut lines = output
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if lines.len() == OUTPUT_LINES {
        lines.pop_front();
    }
    lines.push_back(line.to_owned());
}

impl Process {
    /// Starts `bin` with `env` and waits (at most 60 s) for its
    /// `storesync … listening on <addr>` line on stdout.
    pub fn spawn(
        bin: &std::path::Path,
        label: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let mut command = Command::new(bin);
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        // Only what the test gives: no STORESYNC_* from the developer's shell.
        for (key, _) in std::env::vars() {
            if key.starts_with("STORESYNC_") || key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command.env(
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let prefix = label.to_owned();
        let kept = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                keep_line(&kept, &line);
                eprintln!("[{prefix}] {line}");
            }
        });
        let prefix = label.to_owned();
        let kept = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep_line(&kept, &line);
                eprintln!("[{prefix}] {line}");
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr
                .parse()
                .unwrap_or_else(|e| panic!("{label} printed a bad address {addr:?}: {e}")),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("{label} did not report its address within 60 s (exit: {status:?})");
            }
        };
        Self {
            child,
            addr,
            label: label.to_owned(),
            output,
        }
    }

    /// The last lines the process printed so far, oldest first.
    pub fn output(&self) -> Vec<String> {
        let lines = self
            .output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lines.iter().cloned().collect()
    }

    /// `http://addr`, for a tonic endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `limit` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds `authorization: Basic …` for `user`/`password` to a request.
pub fn with_basic<T>(
    mut request: tonic::Request<T>,
    user: &str,
    password: &str,
) -> tonic::Request<T> {
    let value = storesync_shared::kit::auth::basic_header(user, password)
        .parse()
        .expect("header value");
    request.metadata_mut().insert("authorization", value);
    request
}
