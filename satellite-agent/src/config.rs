//! The satellite's configuration: one typed struct, layered
//! defaults → TOML file (`--config` / `STORESYNC_CONFIG`) → `STORESYNC_*`
//! environment → command-line flags, and checked once at start with messages
//! that say what to change.
//!
//! Each setting is declared once, in the [`settings!`](storesync_shared::settings)
//! table below: its name (file key, and flag with `-`), its variable, old names
//! kept as aliases, its default and its check. [`Config::load`] adds the rules
//! that involve several settings and reports every problem together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use storesync_shared::kit::config::ConfigError;
use storesync_shared::kit::config::{
    address, number, one_of, path, rule, FileLayer, Problems, ShowDefault, HEARTBEAT_SECONDS,
    HEARTBEAT_SECONDS_RANGE, SHUTDOWN_GRACE_SECONDS_RANGE, SYNC_INTERVAL_MINUTES,
    SYNC_INTERVAL_MINUTES_RANGE,
};

/// Where the satellite listens when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";
/// SQLite file name inside the data directory.
pub const DEFAULT_DATABASE_FILE: &str = "storesync-satellite.db";
/// Operator created on first start when none is named.
pub const DEFAULT_OPERATOR_USER: &str = "admin";
/// First reconnection delay, in milliseconds.
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 500;
/// The cap the reconnection delay doubles up to, in milliseconds.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// Largest upstream batch, in records.
pub const DEFAULT_UPSTREAM_BATCH_RECORDS: usize = 2000;

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

impl ShowDefault for SyncId {
    fn show_default(&self) -> Option<String> {
        Some(self.to_string())
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

const SYNC_MODES: &[(&str, SyncMode)] = &[
    ("streaming", SyncMode::Streaming),
    ("interval", SyncMode::Interval),
];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const COMPRESSIONS: &[(&str, SyncCompression)] = &[
    ("none", SyncCompression::None),
    ("gzip", SyncCompression::Gzip),
    ("deflate", SyncCompression::Deflate),
];

/// Shows a default by its word in a choice list.
fn word<T: PartialEq>(choices: &[(&str, T)], value: &T) -> Option<String> {
    choices
        .iter()
        .find(|(_, v)| v == value)
        .map(|(w, _)| (*w).to_owned())
}

impl ShowDefault for SyncMode {
    fn show_default(&self) -> Option<String> {
        word(SYNC_MODES, self)
    }
}

impl ShowDefault for LogFormat {
    fn show_default(&self) -> Option<String> {
        word(LOG_FORMATS, self)
    }
}

/// The master's addresses, in the order they are tried.
#[derive(Clone, Debug)]
pub struct MasterUrls(pub Vec<url::Url>);

impl ShowDefault for MasterUrls {
    fn show_default(&self) -> Option<String> {
        None
    }
}

/// How the sync stream is compressed (fewer bytes for more CPU at both ends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncCompression {
    /// Plain messages.
    #[default]
    None,
    /// gRPC's gzip, each message alone, both ways.
    Gzip,
    /// One deflate stream per direction for the whole session
    /// (`Hello.stream_compression`): small messages compress as well as
    /// large ones. A master too old to accept it gets plain messages.
    Deflate,
}

impl ShowDefault for SyncCompression {
    fn show_default(&self) -> Option<String> {
        word(COMPRESSIONS, self)
    }
}

storesync_shared::settings! {
    /// Command-line flags; each also reads its `STORESYNC_*` variable (flags win).
    /// Every one is optional text here, so that the file and defaults fill the
    /// gaps and every bad value is reported by [`Config::load`], all together.
    pub struct Args { global: false }
    /// Every setting, parsed and checked on its own.
    pub struct Settings {
        /// The master's URL, e.g. http://master.example:50051 (several, comma-separated, are tried in turn).
        master_url: Option<MasterUrls> = None,
            env "STORESYNC_MASTER_URL",
            check |text| master_urls(text).map(Some);
        /// This site's Sync ID, 2 to 64 (1 is the master).
        sync_id: Option<SyncId> = None,
            env "STORESYNC_SYNC_ID",
            check |text| {
                let value: u32 = text.trim().parse().map_err(|_| {
                    format!("{text:?} is not a whole number; a satellite's Sync ID is 2 to 64")
                })?;
                SyncId::satellite(value).map(Some)
            };
        /// The sync user name the master expects.
        sync_user: Option<String> = None,
            env "STORESYNC_SYNC_USER",
            check |text| Ok((!text.trim().is_empty()).then(|| text.to_owned()));
        /// The sync password the master expects.
        sync_password: Option<String> = None,
            env "STORESYNC_SYNC_PASSWORD",
            secret true,
            check non_empty;
        /// `streaming` or `interval`.
        sync_mode: SyncMode = SyncMode::Streaming,
            env "STORESYNC_SYNC_MODE",
            check one_of(SYNC_MODES);
        /// Minutes between sessions in interval mode (the master's preference wins).
        sync_interval_minutes: u32 = SYNC_INTERVAL_MINUTES,
            env "STORESYNC_SYNC_INTERVAL_MINUTES",
            check number(SYNC_INTERVAL_MINUTES_RANGE);
        /// sqlite://… or postgres://… [default: a SQLite file storesync-satellite.db in the data directory].
        database_url: Option<String> = None,
            env "STORESYNC_DATABASE_URL",
            secret true,
            check |text| {
                if text.starts_with("sqlite:") || storesync_shared::domain::db::is_postgres(text) {
                    Ok(Some(text.to_owned()))
                } else {
                    Err("the URL must start with sqlite:// or postgres://".into())
                }
            };
        /// Directory of the default SQLite file [default: the working directory].
        data_dir: Option<PathBuf> = None,
            env "STORESYNC_DATA_DIR",
            check path;
        /// Address to serve gRPC on.
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 50052)),
            env "STORESYNC_LISTEN",
            check address(DEFAULT_LISTEN);
        /// Code that unlocks changes of the sync settings.
        authorisation_code: Option<String> = None,
            env "STORESYNC_AUTHORISATION_CODE",
            secret true,
            check non_empty;
        /// Operator created on first start.
        operator_user: String = DEFAULT_OPERATOR_USER.to_owned(),
            env "STORESYNC_OPERATOR_USER",
            check |text| rule(storesync_shared::domain::validate::code("operator_user", text)).map(|()| text.to_owned());
        /// Its password [default: generated and printed once].
        operator_password: Option<String> = None,
            env "STORESYNC_OPERATOR_PASSWORD",
            secret true,
            check non_empty;
        /// `text` or `json`.
        log_format: LogFormat = LogFormat::Text,
            env "STORESYNC_LOG_FORMAT",
            check one_of(LOG_FORMATS);
        /// Seconds between heartbeats on an idle stream (the master's Welcome may override).
        #[arg(hide = true)]
        heartbeat_seconds: u64 = HEARTBEAT_SECONDS,
            env "STORESYNC_HEARTBEAT_SECONDS",
            check number(HEARTBEAT_SECONDS_RANGE);
        /// First reconnection delay, in milliseconds.
        #[arg(hide = true)]
        backoff_initial_ms: u64 = DEFAULT_BACKOFF_INITIAL_MS,
            env "STORESYNC_BACKOFF_INITIAL_MS",
            check number((10, 3_600_000));
        /// The cap the reconnection delay doubles up to (with jitter), in milliseconds.
        #[arg(hide = true)]
        backoff_max_ms: u64 = DEFAULT_BACKOFF_MAX_MS,
            env "STORESYNC_BACKOFF_MAX_MS",
            check number((10, 3_600_000));
        /// Seconds that calls in flight and the sync task get to finish after SIGTERM.
        shutdown_grace_seconds: u64 = 10,
            env "STORESYNC_SHUTDOWN_GRACE_SECONDS",
            aliases ["drain-seconds"],
            check number(SHUTDOWN_GRACE_SECONDS_RANGE);
        /// Seconds between interval-mode sessions, overriding the minutes (tests, demos).
        #[arg(hide = true)]
        sync_interval_seconds: Option<u64> = None,
            env "STORESYNC_SYNC_INTERVAL_SECONDS",
            check |text| number((1, 86_400))(text).map(Some);
        /// Largest upstream batch in records (the master's limit still applies).
        #[arg(hide = true)]
        upstream_batch_records: usize = DEFAULT_UPSTREAM_BATCH_RECORDS,
            env "STORESYNC_UPSTREAM_BATCH_RECORDS",
            check number((1, 5000));
        /// `none`, `gzip` (each message alone) or `deflate` (one stream per
        /// session, across messages; best on slow links): compress the sync
        /// stream both ways.
        sync_compression: SyncCompression = SyncCompression::None,
            env "STORESYNC_SYNC_COMPRESSION",
            check one_of(COMPRESSIONS);
        /// PEM CA of the master's certificate (https URLs) [default: system roots].
        master_ca: Option<PathBuf> = None,
            env "STORESYNC_MASTER_CA",
            check path;
        /// PEM client certificate for a master that requires one (with --master-client-key).
        master_client_cert: Option<PathBuf> = None,
            env "STORESYNC_MASTER_CLIENT_CERT",
            check path;
        /// PEM private key of --master-client-cert.
        master_client_key: Option<PathBuf> = None,
            env "STORESYNC_MASTER_CLIENT_KEY",
            check path;
        /// PEM certificate and key: the local gRPC server serves TLS only.
        tls_cert: Option<PathBuf> = None,
            env "STORESYNC_TLS_CERT",
            check path;
        /// PEM private key of --tls-cert.
        tls_key: Option<PathBuf> = None,
            env "STORESYNC_TLS_KEY",
            check path;
        /// PEM CA: the local server requires client certificates it signed.
        tls_client_ca: Option<PathBuf> = None,
            env "STORESYNC_TLS_CLIENT_CA",
            check path;
    }
}

/// An empty secret counts as not set.
fn non_empty(text: &str) -> Result<Option<String>, String> {
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// One URL, or several separated by commas (master replicas, or a Service
/// address first and replicas after): tried in turn on failure.
fn master_urls(list: &str) -> Result<MasterUrls, String> {
    let mut urls = Vec::new();
    let mut wrong = Vec::new();
    for text in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                urls.push(url)
            }
            Ok(_) => wrong.push(format!(
                "{text:?} must be an http:// or https:// URL with a host"
            )),
            Err(e) => wrong.push(format!("{text:?} is not a URL ({e})")),
        }
    }
    if !wrong.is_empty() {
        return Err(wrong.join("; "));
    }
    if urls.is_empty() {
        return Err(format!(
            "{list:?} holds no URL; give the master's address, e.g. http://master.example:50051"
        ));
    }
    Ok(MasterUrls(urls))
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
    /// How long shutdown waits for calls in flight and the sync task
    /// (`STORESYNC_SHUTDOWN_GRACE_SECONDS`, the master's name for the same idea).
    pub shutdown_grace: Duration,
    /// When set, the wait between interval-mode sessions, overriding the
    /// configured and the master's interval (minutes are too coarse for tests
    /// and demos).
    pub sync_interval_override: Option<Duration>,
    /// Largest upstream batch in records (the master's limit still applies).
    pub upstream_batch_records: usize,
    /// How sync messages are compressed both ways (for slow links: fewer
    /// bytes for more CPU at both ends).
    pub sync_compression: SyncCompression,
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

impl Config {
    /// Layers the file named by `args.config` under `args` (which already hold
    /// the environment under the flags) over the defaults, and checks the result.
    pub fn load(args: Args) -> Result<Self, ConfigError> {
        let file = FileLayer::read(args.config.as_deref())?;
        Self::layer(args, file)
    }

    fn layer(args: Args, file: FileLayer) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        let s = Settings::layered(&args, &file, &mut problems);

        let master_urls = problems.required(
            &Settings::master_url,
            s.master_url,
            "the master's address, e.g. http://master.example:50051",
        );
        let sync_id = problems.required(
            &Settings::sync_id,
            s.sync_id,
            "this site's Sync ID, 2 to 64",
        );
        let sync_user = problems.required(
            &Settings::sync_user,
            s.sync_user,
            "the sync user name the master expects",
        );
        let sync_password = problems.required(
            &Settings::sync_password,
            s.sync_password,
            "the sync password the master expects",
        );
        let database_url = s.database_url.unwrap_or_else(|| {
            let dir = s.data_dir.unwrap_or_else(|| PathBuf::from("."));
            storesync_shared::domain::db::sqlite_url(&dir.join(DEFAULT_DATABASE_FILE))
        });
        let master_client_identity = match (s.master_client_cert, s.master_client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                problems.together(
                    &[&Settings::master_client_cert, &Settings::master_client_key],
                    "",
                );
                None
            }
        };
        let tls = match (s.tls_cert, s.tls_key, s.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some((cert, key, client_ca)),
            (None, None, None) => None,
            (None, None, Some(_)) => {
                problems.invalid(
                    &Settings::tls_client_ca,
                    "needs STORESYNC_TLS_CERT and STORESYNC_TLS_KEY too: mutual TLS is TLS with client certificates",
                );
                None
            }
            _ => {
                problems.together(&[&Settings::tls_cert, &Settings::tls_key], "");
                None
            }
        };
        let backoff_initial = Duration::from_millis(s.backoff_initial_ms);
        // A cap below the first delay means no doubling at all, not an error.
        let backoff_max = Duration::from_millis(s.backoff_max_ms).max(backoff_initial);

        problems.finish(|| {
            Some(Self {
                master_url: master_urls.as_ref()?.0.first()?.clone(),
                master_urls: master_urls?.0,
                sync_id: sync_id?,
                sync_user: sync_user?,
                sync_password: sync_password?,
                sync_mode: s.sync_mode,
                sync_interval_minutes: s.sync_interval_minutes,
                database_url,
                listen: s.listen,
                authorisation_code: s.authorisation_code,
                operator_user: s.operator_user,
                operator_password: s.operator_password,
                log_format: s.log_format,
                heartbeat: Duration::from_secs(s.heartbeat_seconds),
                backoff_initial,
                backoff_max,
                shutdown_grace: Duration::from_secs(s.shutdown_grace_seconds),
                sync_interval_override: s.sync_interval_seconds.map(Duration::from_secs),
                upstream_batch_records: s.upstream_batch_records,
                sync_compression: s.sync_compression,
                master_ca: s.master_ca,
                master_client_identity,
                tls,
            })
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            master_url: Some("http://127.0.0.1:50051".into()),
            sync_id: Some("2".into()),
            sync_user: Some("sync".into()),
            sync_password: Some("secret".into()),
            ..Args::default()
        }
    }

    #[test]
    fn defaults_fill_what_is_not_said() {
        let config = Config::layer(args(), FileLayer::default()).expect("valid");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.sync_mode, SyncMode::Streaming);
        assert_eq!(config.sync_interval_minutes, 10);
        assert!(config
            .database_url
            .ends_with("storesync-satellite.db?mode=rwc"));
        assert_eq!(
            config.sqlite_path(),
            Some(Path::new("./storesync-satellite.db"))
        );
        assert_eq!(config.heartbeat, Duration::from_secs(15));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.backoff_initial, Duration::from_millis(500));
        assert_eq!(config.backoff_max, Duration::from_secs(30));
        assert_eq!(config.upstream_batch_records, 2000);
        assert_eq!(config.sync_compression, SyncCompression::None);
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file =
            FileLayer::parse("sync_id = 7\nsync_mode = \"interval\"\nlisten = \"0.0.0.0:1\"")
                .expect("toml");
        let config = Config::layer(args(), file).expect("valid");
        assert_eq!(config.sync_id.get(), 2);
        assert_eq!(config.sync_mode, SyncMode::Interval);
        assert_eq!(config.listen.port(), 1);
    }

    #[test]
    fn the_old_drain_name_still_sets_the_shutdown_grace() {
        let file = FileLayer::parse("drain_seconds = 3").expect("toml");
        let config = Config::layer(args(), file).expect("valid");
        assert_eq!(config.shutdown_grace, Duration::from_secs(3));

        let file = FileLayer::parse("drain_seconds = 3\nshutdown_grace_seconds = 4").expect("toml");
        let config = Config::layer(args(), file).expect("valid");
        assert_eq!(
            config.shutdown_grace,
            Duration::from_secs(4),
            "the new name wins"
        );

        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let mut flagged = Cli::try_parse_from(["satellite-agent", "--drain-seconds", "6"])
            .expect("the old flag parses")
            .args;
        flagged.master_url = args().master_url;
        flagged.sync_id = args().sync_id;
        flagged.sync_user = args().sync_user;
        flagged.sync_password = args().sync_password;
        let config = Config::layer(flagged, FileLayer::default()).expect("valid");
        assert_eq!(config.shutdown_grace, Duration::from_secs(6));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = Args {
            master_url: Some("ftp://x".into()),
            sync_id: Some("1".into()),
            sync_mode: Some("often".into()),
            ..Args::default()
        };
        let error = Config::layer(bad, FileLayer::default())
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
        assert!(!format!("{:?}", Config::layer(args(), FileLayer::default())).contains("secret"));
    }

    #[test]
    fn file_and_flag_problems_are_reported_together_by_their_names() {
        let file = FileLayer::parse(
            "heartbeat_seconds = 0\nupstream_batch_records = 9000\nsync_modus = \"interval\"",
        )
        .expect("toml");
        let mut bad = args();
        bad.listen = Some("here".into());
        bad.master_client_cert = Some("client.pem".into());
        let error = Config::layer(bad, file).expect_err("invalid");
        assert_eq!(error.problems.len(), 5, "{error}");
        let text = error.to_string();
        for needle in [
            "STORESYNC_HEARTBEAT_SECONDS: 0 is out of range; set one from 1 to 3600 (--heartbeat-seconds, or `heartbeat_seconds` in the config file)",
            "STORESYNC_UPSTREAM_BATCH_RECORDS: 9000 is out of range; set one from 1 to 5000",
            "unknown key `sync_modus`",
            "STORESYNC_LISTEN: \"here\" is not an address",
            "STORESYNC_MASTER_CLIENT_CERT (--master-client-cert) and STORESYNC_MASTER_CLIENT_KEY (--master-client-key) go together",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
    }
}
