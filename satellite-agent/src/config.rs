//! The satellite's configuration: one typed struct, layered
//! defaults → TOML file (`--config` / `STORESYNC_CONFIG`) → `STORESYNC_*`
//! environment → command-line flags, and checked once at start with messages
//! that say what to change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Where the satellite listens when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";
/// SQLite file name inside the data directory.
pub const DEFAULT_DATABASE_FILE: &str = "storesync-satellite.db";
/// Minutes between sessions in interval mode until the master says otherwise.
pub const DEFAULT_SYNC_INTERVAL_MINUTES: u32 = 5;

/// The Sync ID of a site: 1 is the master, 2 to 64 are satellites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncId(u32);

impl SyncId {
    /// The master's Sync ID.
    pub const MASTER: SyncId = SyncId(1);

    /// A satellite's Sync ID (2 to 64), or why not.
    pub fn satellite(value: u32) -> Result<Self, String> {
        match value {
            1 => Err("1 is the master's Sync ID; a satellite needs its own, from 2 to 64".into()),
            2..=64 => Ok(Self(value)),
            other => Err(format!(
                "{other} is out of range; a satellite's Sync ID is 2 to 64"
            )),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for SyncId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How the satellite keeps in touch with the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// The stream stays open; changes travel as they commit.
    Streaming,
    /// Connect every sync interval, exchange everything pending, disconnect.
    Interval,
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The checked configuration of a satellite.
#[derive(Clone)]
pub struct Config {
    /// The master's gRPC address (`http://` or `https://`): the first of `master_urls`.
    pub master_url: url::Url,
    /// Every address of the master to try, in order, moving to the next on a
    /// connection failure (replicas behind one Service need only one).
    pub master_urls: Vec<url::Url>,
    /// This site's Sync ID (2 to 64).
    pub sync_id: SyncId,
    /// Sync user name and password; both ends must agree on them.
    pub sync_user: String,
    pub sync_password: String,
    pub sync_mode: SyncMode,
    /// Used until the master's preference is known (it wins after that).
    pub sync_interval_minutes: u32,
    /// `sqlite://…` (the default, a file in the data directory) or `postgres://…`.
    pub database_url: String,
    /// Address of the local gRPC server.
    pub listen: SocketAddr,
    /// Unlocks changes of this satellite's sync settings (Sync ID, master
    /// URL, sync user) once a code has been set.
    pub authorisation_code: Option<String>,
    /// The operator account created when the database has none yet.
    pub operator_user: String,
    /// Its password; generated and printed once when missing.
    pub operator_password: Option<String>,
    pub log_format: LogFormat,
    /// Idle heartbeat period on the stream (the master's Welcome may override).
    pub heartbeat: Duration,
    /// Reconnection backoff: first delay, and the cap it doubles up to (with jitter).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long shutdown waits for calls in flight and the sync task.
    pub drain_timeout: Duration,
    /// When set, the wait between interval-mode sessions, overriding the
    /// configured and the master's interval (minutes are too coarse for tests
    /// and demos).
    pub sync_interval_override: Option<Duration>,
    /// Largest upstream batch in records (the master's limit still applies).
    pub upstream_batch_records: usize,
    /// Whether sync messages are gzip-compressed both ways (for slow links:
    /// fewer bytes for more CPU at both ends).
    pub sync_compression: bool,
    /// CA that signed the master's certificate (https master URLs); the system
    /// roots when unset.
    pub master_ca: Option<PathBuf>,
    /// This site's client certificate and key, for a master that requires them.
    pub master_client_identity: Option<(PathBuf, PathBuf)>,
    /// TLS of the local gRPC server: certificate, key, optional client CA.
    pub tls: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
}

impl std::fmt::Debug for Config {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("master_url", &self.master_url.as_str())
            .field("sync_id", &self.sync_id)
            .field("sync_user", &self.sync_user)
            .field("sync_mode", &self.sync_mode)
            .field("sync_interval_minutes", &self.sync_interval_minutes)
            .field("database_url", &self.database_url)
            .field("listen", &self.listen)
            .field("operator_user", &self.operator_user)
            .field("log_format", &self.log_format)
            .field("heartbeat", &self.heartbeat)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .finish_non_exhaustive()
    }
}

/// Command-line flags; each also reads its `STORESYNC_*` variable (flags win).
#[derive(Debug, Default, Parser)]
#[command(
    name = "satellite-agent",
    version,
    about = "storesync satellite: hosts one store's data and syncs it with the master"
)]
pub struct Args {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "STORESYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// The master's URL, e.g. http://master.example:50051.
    #[arg(long, env = "STORESYNC_MASTER_URL")]
    pub master_url: Option<String>,
    /// This site's Sync ID, 2 to 64 (1 is the master).
    #[arg(long, env = "STORESYNC_SYNC_ID")]
    pub sync_id: Option<u32>,
    #[arg(long, env = "STORESYNC_SYNC_USER")]
    pub sync_user: Option<String>,
    #[arg(long, env = "STORESYNC_SYNC_PASSWORD", hide_env_values = true)]
    pub sync_password: Option<String>,
    /// `streaming` (default) or `interval`.
    #[arg(long, env = "STORESYNC_SYNC_MODE")]
    pub sync_mode: Option<String>,
    /// Minutes between sessions in interval mode (default 5; the master's preference wins).
    #[arg(long, env = "STORESYNC_SYNC_INTERVAL_MINUTES")]
    pub sync_interval_minutes: Option<u32>,
    /// Default: a SQLite file `storesync-satellite.db` in the data directory.
    #[arg(long, env = "STORESYNC_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of the default SQLite file (default: the working directory).
    #[arg(long, env = "STORESYNC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve gRPC on (default 127.0.0.1:50052).
    #[arg(long, env = "STORESYNC_LISTEN")]
    pub listen: Option<String>,
    /// Code that unlocks changes of the sync settings.
    #[arg(long, env = "STORESYNC_AUTHORISATION_CODE", hide_env_values = true)]
    pub authorisation_code: Option<String>,
    /// Operator created on first start (default `admin`).
    #[arg(long, env = "STORESYNC_OPERATOR_USER")]
    pub operator_user: Option<String>,
    #[arg(long, env = "STORESYNC_OPERATOR_PASSWORD", hide_env_values = true)]
    pub operator_password: Option<String>,
    /// `text` (default) or `json`.
    #[arg(long, env = "STORESYNC_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[arg(long, env = "STORESYNC_HEARTBEAT_SECONDS", hide = true)]
    pub heartbeat_seconds: Option<u64>,
    #[arg(long, env = "STORESYNC_BACKOFF_INITIAL_MS", hide = true)]
    pub backoff_initial_ms: Option<u64>,
    #[arg(long, env = "STORESYNC_BACKOFF_MAX_MS", hide = true)]
    pub backoff_max_ms: Option<u64>,
    #[arg(long, env = "STORESYNC_SHUTDOWN_GRACE_SECONDS", hide = true)]
    pub drain_seconds: Option<u64>,
    /// Seconds between interval-mode sessions, overriding the minutes (tests, demos).
    #[arg(long, env = "STORESYNC_SYNC_INTERVAL_SECONDS", hide = true)]
    pub sync_interval_seconds: Option<u64>,
    #[arg(long, env = "STORESYNC_UPSTREAM_BATCH_RECORDS", hide = true)]
    pub upstream_batch_records: Option<usize>,
    /// `none` (default) or `gzip`: compress the sync stream both ways.
    #[arg(long, env = "STORESYNC_SYNC_COMPRESSION")]
    pub sync_compression: Option<String>,
    /// PEM CA of the master's certificate (https URLs) [default: system roots].
    #[arg(long, env = "STORESYNC_MASTER_CA")]
    pub master_ca: Option<PathBuf>,
    /// PEM client certificate for a master that requires one (with --master-client-key).
    #[arg(long, env = "STORESYNC_MASTER_CLIENT_CERT")]
    pub master_client_cert: Option<PathBuf>,
    #[arg(long, env = "STORESYNC_MASTER_CLIENT_KEY")]
    pub master_client_key: Option<PathBuf>,
    /// PEM certificate and key: the local gRPC server serves TLS only.
    #[arg(long, env = "STORESYNC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "STORESYNC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA: the local server requires client certificates it signed.
    #[arg(long, env = "STORESYNC_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The same settings in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    master_url: Option<String>,
    sync_id: Option<u32>,
    sync_user: Option<String>,
    sync_password: Option<String>,
    sync_mode: Option<String>,
    sync_interval_minutes: Option<u32>,
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    authorisation_code: Option<String>,
    operator_user: Option<String>,
    operator_password: Option<String>,
    log_format: Option<String>,
    heartbeat_seconds: Option<u64>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    drain_seconds: Option<u64>,
    sync_interval_seconds: Option<u64>,
    upstream_batch_records: Option<usize>,
    sync_compression: Option<String>,
    master_ca: Option<PathBuf>,
    master_client_cert: Option<PathBuf>,
    master_client_key: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
}

/// Everything wrong with a configuration, one problem a line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Config {
    /// Layers the file named by `args.config` under `args` (which already hold
    /// the environment under the flags) over the defaults, and checks the result.
    pub fn load(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::layer(args, file)
    }

    fn layer(args: Args, file: FileConfig) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |p: String| problems.push(p);

        // One URL, or several separated by commas (master replicas, or a
        // Service address first and replicas after): tried in turn on failure.
        let mut master_urls = Vec::new();
        match args.master_url.or(file.master_url) {
            None => {
                problem("STORESYNC_MASTER_URL (--master-url, or master_url in the file) is required: the master's address, e.g. http://master.example:50051".into());
            }
            Some(list) => {
                for text in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    match url::Url::parse(text) {
                        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                            master_urls.push(url)
                        }
                        Ok(_) => problem(format!(
                            "STORESYNC_MASTER_URL: {text:?} must be an http:// or https:// URL with a host"
                        )),
                        Err(e) => problem(format!("STORESYNC_MASTER_URL: {text:?} is not a URL ({e})")),
                    }
                }
                if master_urls.is_empty() && !list.trim().is_empty() {
                    problem(format!("STORESYNC_MASTER_URL: {list:?} holds no URL"));
                } else if list.trim().is_empty() {
                    problem("STORESYNC_MASTER_URL is empty: give the master's address, e.g. http://master.example:50051".into());
                }
            }
        }
        let master_url = master_urls.first().cloned();
        let sync_id = match args.sync_id.or(file.sync_id) {
            None => {
                problem(
                    "STORESYNC_SYNC_ID (--sync-id) is required: this site's Sync ID, 2 to 64"
                        .into(),
                );
                None
            }
            Some(value) => SyncId::satellite(value)
                .map_err(|why| problem(format!("STORESYNC_SYNC_ID: {why}")))
                .ok(),
        };
        let sync_user = args.sync_user.or(file.sync_user).unwrap_or_default();
        if sync_user.trim().is_empty() {
            problem("STORESYNC_SYNC_USER (--sync-user) is required: the sync user name the master expects".into());
        }
        let sync_password = args
            .sync_password
            .or(file.sync_password)
            .unwrap_or_default();
        if sync_password.is_empty() {
            problem("STORESYNC_SYNC_PASSWORD (--sync-password) is required: the sync password the master expects".into());
        }
        let sync_mode = match args.sync_mode.or(file.sync_mode).as_deref() {
            None | Some("streaming") => SyncMode::Streaming,
            Some("interval") => SyncMode::Interval,
            Some(other) => {
                problem(format!(
                    "STORESYNC_SYNC_MODE: {other:?} must be `streaming` or `interval`"
                ));
                SyncMode::Streaming
            }
        };
        let sync_interval_minutes = args
            .sync_interval_minutes
            .or(file.sync_interval_minutes)
            .unwrap_or(DEFAULT_SYNC_INTERVAL_MINUTES);
        if !(1..=1440).contains(&sync_interval_minutes) {
            problem(format!("STORESYNC_SYNC_INTERVAL_MINUTES: {sync_interval_minutes} must be 1 to 1440 minutes"));
        }
        let database_url = match args.database_url.or(file.database_url) {
            Some(url) => {
                if !(url.starts_with("sqlite:") || storesync_shared::db::is_postgres(&url)) {
                    problem(
                        "STORESYNC_DATABASE_URL must start with sqlite:// or postgres://".into(),
                    );
                }
                url
            }
            None => {
                let dir = args
                    .data_dir
                    .or(file.data_dir)
                    .unwrap_or_else(|| PathBuf::from("."));
                storesync_shared::db::sqlite_url(&dir.join(DEFAULT_DATABASE_FILE))
            }
        };
        let listen_text = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| {
                problem(format!(
                    "STORESYNC_LISTEN: {listen_text:?} must be an address such as 127.0.0.1:50052"
                ))
            })
            .ok();
        let operator_user = args
            .operator_user
            .or(file.operator_user)
            .unwrap_or_else(|| "admin".into());
        if let Err(e) = storesync_shared::validate::code("STORESYNC_OPERATOR_USER", &operator_user)
        {
            problem(e.to_string());
        }
        let log_format = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                problem(format!(
                    "STORESYNC_LOG_FORMAT: {other:?} must be `text` or `json`"
                ));
                LogFormat::Text
            }
        };
        let heartbeat = Duration::from_secs(
            args.heartbeat_seconds
                .or(file.heartbeat_seconds)
                .unwrap_or(15)
                .max(1),
        );
        let backoff_initial = Duration::from_millis(
            args.backoff_initial_ms
                .or(file.backoff_initial_ms)
                .unwrap_or(500)
                .max(10),
        );
        let backoff_max = Duration::from_millis(
            args.backoff_max_ms
                .or(file.backoff_max_ms)
                .unwrap_or(30_000),
        )
        .max(backoff_initial);
        let drain_timeout =
            Duration::from_secs(args.drain_seconds.or(file.drain_seconds).unwrap_or(10));

        let sync_interval_override = args
            .sync_interval_seconds
            .or(file.sync_interval_seconds)
            .map(|seconds| Duration::from_secs(seconds.max(1)));
        let upstream_batch_records = args
            .upstream_batch_records
            .or(file.upstream_batch_records)
            .unwrap_or(2000);
        if !(1..=5000).contains(&upstream_batch_records) {
            problem(format!(
                "STORESYNC_UPSTREAM_BATCH_RECORDS: {upstream_batch_records} must be 1 to 5000"
            ));
        }

        let sync_compression = match args.sync_compression.or(file.sync_compression).as_deref() {
            None | Some("none") => false,
            Some("gzip") => true,
            Some(other) => {
                problem(format!(
                    "STORESYNC_SYNC_COMPRESSION: {other:?} must be `none` or `gzip`"
                ));
                false
            }
        };

        let master_client_identity = match (
            args.master_client_cert.or(file.master_client_cert),
            args.master_client_key.or(file.master_client_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                problem("STORESYNC_MASTER_CLIENT_CERT and STORESYNC_MASTER_CLIENT_KEY go together: set both or neither".into());
                None
            }
        };
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_client_ca.or(file.tls_client_ca),
        ) {
            (Some(cert), Some(key), client_ca) => Some((cert, key, client_ca)),
            (None, None, None) => None,
            _ => {
                problem("STORESYNC_TLS_CERT and STORESYNC_TLS_KEY go together (STORESYNC_TLS_CLIENT_CA needs both)".into());
                None
            }
        };
        let master_ca = args.master_ca.or(file.master_ca);

        match (master_url, sync_id, listen) {
            (Some(master_url), Some(sync_id), Some(listen)) if problems.is_empty() => Ok(Self {
                master_url,
                master_urls,
                sync_id,
                sync_user,
                sync_password,
                sync_mode,
                sync_interval_minutes,
                database_url,
                listen,
                authorisation_code: args
                    .authorisation_code
                    .or(file.authorisation_code)
                    .filter(|c| !c.is_empty()),
                operator_user,
                operator_password: args
                    .operator_password
                    .or(file.operator_password)
                    .filter(|p| !p.is_empty()),
                log_format,
                heartbeat,
                backoff_initial,
                backoff_max,
                drain_timeout,
                sync_interval_override,
                upstream_batch_records,
                sync_compression,
                master_ca,
                master_client_identity,
                tls,
            }),
            _ => Err(ConfigError { problems }),
        }
    }

    /// The master's addresses as configured, comma-separated, without trailing slashes.
    pub fn master_urls_text(&self) -> String {
        self.master_urls
            .iter()
            .map(|u| u.as_str().trim_end_matches('/'))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The SQLite file of the database URL, when it is one (its directory is
    /// created at start).
    pub fn sqlite_path(&self) -> Option<&Path> {
        let rest = self.database_url.strip_prefix("sqlite://")?;
        let path = rest.split('?').next().unwrap_or(rest);
        (!path.is_empty() && !path.starts_with(":memory:")).then(|| Path::new(path))
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let fail = |why: String| ConfigError {
        problems: vec![format!("config file {}: {why}", path.display())],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    toml::from_str(&text).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            master_url: Some("http://127.0.0.1:50051".into()),
            sync_id: Some(2),
            sync_user: Some("sync".into()),
            sync_password: Some("secret".into()),
            ..Args::default()
        }
    }

    #[test]
    fn defaults_fill_what_is_not_said() {
        let config = Config::layer(args(), FileConfig::default()).expect("valid");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.sync_mode, SyncMode::Streaming);
        assert_eq!(config.sync_interval_minutes, 5);
        assert!(config
            .database_url
            .ends_with("storesync-satellite.db?mode=rwc"));
        assert_eq!(
            config.sqlite_path(),
            Some(Path::new("./storesync-satellite.db"))
        );
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file: FileConfig =
            toml::from_str("sync_id = 7\nsync_mode = \"interval\"\nlisten = \"0.0.0.0:1\"")
                .expect("toml");
        let config = Config::layer(args(), file).expect("valid");
        assert_eq!(config.sync_id.get(), 2);
        assert_eq!(config.sync_mode, SyncMode::Interval);
        assert_eq!(config.listen.port(), 1);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = Args {
            master_url: Some("ftp://x".into()),
            sync_id: Some(1),
            sync_mode: Some("often".into()),
            ..Args::default()
        };
        let error = Config::layer(bad, FileConfig::default())
            .expect_err("invalid")
            .to_string();
        for needle in [
            "STORESYNC_MASTER_URL",
            "master's Sync ID",
            "STORESYNC_SYNC_USER",
            "STORESYNC_SYNC_PASSWORD",
            "STORESYNC_SYNC_MODE",
        ] {
            assert!(error.contains(needle), "{error}");
        }
        assert!(!format!("{:?}", Config::layer(args(), FileConfig::default())).contains("secret"));
    }
}
