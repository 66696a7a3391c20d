//! The master's configuration: one typed [`Config`], layered
//! defaults → optional TOML file → `STORESYNC_*` environment → command-line flags,
//! and checked once at start with messages that say what to change.
//!
//! Each setting is declared once, in the [`settings!`](storesync_shared::settings)
//! table below: its name (file key, and flag with `-`), its variable, its
//! default and its check. [`Config::from_layers`] adds the rules that involve
//! several settings and reports every problem together.

use std::net::SocketAddr;
use std::path::PathBuf;

use storesync_shared::kit::config::{
    address, number, one_of, path, rule, ConfigError, FileLayer, Problems, ShowDefault,
    HEARTBEAT_SECONDS, HEARTBEAT_SECONDS_RANGE, SHUTDOWN_GRACE_SECONDS_RANGE,
    SYNC_INTERVAL_MINUTES_RANGE,
};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";
/// File name of the embedded SQLite database when no database URL is given.
pub const DEFAULT_SQLITE_FILE: &str = "storesync-master.db";
/// Operator created on first start when none is named.
pub const DEFAULT_OPERATOR_USER: &str = "admin";

/// A secret from the configuration: never printed, not even in debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The PEM files of the server's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl ShowDefault for LogFormat {
    fn show_default(&self) -> Option<String> {
        Some(match self {
            Self::Text => "text".into(),
            Self::Json => "json".into(),
        })
    }
}

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

storesync_shared::settings! {
    /// Flags, each also readable from its `STORESYNC_*` variable. Every one is
    /// optional text here, so that the file and defaults fill the gaps and
    /// every bad value is reported by [`Config::load`], all together.
    pub struct Args { global: true }
    /// Every setting, parsed and checked on its own.
    pub struct Settings {
        /// gRPC listen address, ip:port.
        listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 50051)),
            env "STORESYNC_LISTEN",
            check address("0.0.0.0:50051");
        /// postgres://… or sqlite://… [default: embedded SQLite file storesync-master.db].
        database_url: Option<String> = None,
            env "STORESYNC_DATABASE_URL",
            secret true,
            check database_url;
        /// Directory of the embedded SQLite file [default: working directory].
        data_dir: Option<PathBuf> = None,
            env "STORESYNC_DATA_DIR",
            check path;
        /// Largest PostgreSQL pool size.
        db_max_connections: u32 = 10,
            env "STORESYNC_DB_MAX_CONNECTIONS",
            check number((1, 1000));
        /// Authorisation code that unlocks the sync preferences.
        authorisation_code: Option<String> = None,
            env "STORESYNC_AUTHORISATION_CODE",
            secret true,
            check authorisation_code;
        /// Operator user created on first start.
        operator_user: String = DEFAULT_OPERATOR_USER.to_owned(),
            env "STORESYNC_OPERATOR_USER",
            check |text| {
                check_sync_user("operator_user", text)
                    .map(|()| text.to_owned())
                    .map_err(|_| format!("{text:?}: use 1 to 64 characters without ':' or control characters"))
            };
        /// Its password [default: generated and printed once].
        operator_password: Option<String> = None,
            env "STORESYNC_OPERATOR_PASSWORD",
            secret true,
            check |text| match text.chars().count() {
                1..=256 => Ok(Some(text.to_owned())),
                _ => Err("use 1 to 256 characters, or leave it unset to have one generated".into()),
            };
        /// Code of the master's own store, first start only.
        master_store_code: String = "MASTER".to_owned(),
            env "STORESYNC_MASTER_STORE_CODE",
            check |text| rule(storesync_shared::domain::validate::code("master_store_code", text)).map(|()| text.to_owned());
        /// Name of the master's own store, first start only.
        master_store_name: String = "Master store".to_owned(),
            env "STORESYNC_MASTER_STORE_NAME",
            check |text| rule(storesync_shared::domain::validate::text("master_store_name", text, 256)).map(|()| text.to_owned());
        /// Shared sync user name, first start only.
        sync_user: Option<String> = None,
            env "STORESYNC_SYNC_USER",
            check |text| rule(check_sync_user("sync_user", text)).map(|()| Some(text.to_owned()));
        /// Shared sync password, first start only.
        sync_password: Option<String> = None,
            env "STORESYNC_SYNC_PASSWORD",
            secret true,
            check |text| rule(check_sync_password("sync_password", text)).map(|()| Some(text.to_owned()));
        /// Sync time interval in minutes, first start only.
        sync_interval_minutes: u32 = storesync_shared::kit::config::SYNC_INTERVAL_MINUTES,
            env "STORESYNC_SYNC_INTERVAL_MINUTES",
            check number(SYNC_INTERVAL_MINUTES_RANGE);
        /// Seconds to drain calls after SIGTERM.
        shutdown_grace_seconds: u64 = 20,
            env "STORESYNC_SHUTDOWN_GRACE_SECONDS",
            check number(SHUTDOWN_GRACE_SECONDS_RANGE);
        /// Seconds between heartbeats on idle sync streams, 1 to 3600.
        heartbeat_seconds: u64 = HEARTBEAT_SECONDS,
            env "STORESYNC_HEARTBEAT_SECONDS",
            check number(HEARTBEAT_SECONDS_RANGE);
        /// Seconds between prunes of the change log (entries every site has acknowledged).
        changelog_prune_seconds: u64 = 600,
            env "STORESYNC_CHANGELOG_PRUNE_SECONDS",
            check number((1, 86_400));
        /// Minutes between scheduled integrity checks of each connected site (0: off).
        verify_interval_minutes: u64 = 60,
            env "STORESYNC_VERIFY_INTERVAL_MINUTES",
            check number((0, 10_080));
        /// Days the integrity check history (checks and finished requests)
        /// is kept; each site's latest check always stays.
        integrity_history_days: u64 = 90,
            env "STORESYNC_INTEGRITY_HISTORY_DAYS",
            check number((1, 36_500));
        /// Scheduled integrity checks only report (true) or also repair (false).
        verify_report_only: bool = false,
            env "STORESYNC_VERIFY_REPORT_ONLY",
            check |text| match text {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(format!("{text:?}: use true or false")),
            };
        /// Records per downstream batch (change log and snapshots).
        downstream_batch_records: usize = 10_000,
            env "STORESYNC_DOWNSTREAM_BATCH_RECORDS",
            check number((1, 100_000));
        /// Snapshot batches all initialising sites hold in memory at once
        /// (about 3 MiB each): bounds the master's memory while many sites
        /// initialise together.
        snapshot_batches_in_flight: usize = 16,
            env "STORESYNC_SNAPSHOT_BATCHES_IN_FLIGHT",
            check number((1, 1_000));
        /// PEM certificate chain: serve TLS only (with --tls-key).
        tls_cert: Option<PathBuf> = None,
            env "STORESYNC_TLS_CERT",
            check path;
        /// PEM private key of --tls-cert.
        tls_key: Option<PathBuf> = None,
            env "STORESYNC_TLS_KEY",
            check path;
        /// PEM CA: require client certificates it signed (mutual TLS).
        tls_client_ca: Option<PathBuf> = None,
            env "STORESYNC_TLS_CLIENT_CA",
            check path;
        /// text or json.
        log_format: LogFormat = LogFormat::Text,
            env "STORESYNC_LOG_FORMAT",
            check one_of(LOG_FORMATS);
    }
}

/// An empty URL means the embedded SQLite file; never echoes the URL (it may
/// hold a password).
fn database_url(text: &str) -> Result<Option<String>, String> {
    let url = text.trim();
    if url.is_empty() {
        return Ok(None);
    }
    if storesync_shared::domain::db::is_postgres(url) || url.starts_with("sqlite:") {
        return Ok(Some(url.to_owned()));
    }
    Err(
        "set postgres://user@host:5432/db or sqlite://path?mode=rwc, \
         or leave it unset for the embedded SQLite file"
            .into(),
    )
}

fn authorisation_code(code: &str) -> Result<Option<String>, String> {
    let len = code.chars().count();
    if !(8..=256).contains(&len) || code.trim() != code {
        return Err("use 8 to 256 characters without leading or trailing spaces".into());
    }
    Ok(Some(code.to_owned()))
}

/// Everything the master needs to start, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where gRPC is served (`STORESYNC_LISTEN`).
    pub listen: SocketAddr,
    /// `postgres://…` or `sqlite://…` (`STORESYNC_DATABASE_URL`); defaults to
    /// the embedded SQLite file in the data directory.
    pub database_url: String,
    /// Largest number of PostgreSQL connections (SQLite always uses one).
    pub db_max_connections: u32,
    /// The authorisation code that unlocks the sync preferences. When set and
    /// different from the stored one, it replaces it (audited); when missing on
    /// first start, one is generated and printed once.
    pub authorisation_code: Option<Secret>,
    /// Operator created on first start.
    pub operator_user: String,
    /// Its password; generated and printed once when missing.
    pub operator_password: Option<Secret>,
    /// Code and name of the master's own store (Sync ID 1), used on first start only.
    pub master_store_code: String,
    pub master_store_name: String,
    /// Shared sync credentials seeded on first start only (both or neither).
    pub sync_user: Option<String>,
    pub sync_password: Option<Secret>,
    /// Sync time interval seeded on first start only, 1 to 1440 minutes.
    pub sync_interval_minutes: u32,
    /// How long in-flight calls and streams may take to finish after SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// Heartbeat on idle sync streams, in seconds; a satellite silent for three
    /// of these is taken as gone.
    pub heartbeat_seconds: u64,
    /// How often the change log is pruned, in seconds.
    pub changelog_prune_seconds: u64,
    /// Records per downstream batch.
    pub downstream_batch_records: usize,
    /// Snapshot batches all initialising sites hold in memory at once.
    pub snapshot_batches_in_flight: usize,
    /// Minutes between scheduled integrity checks of a site (0: off).
    pub verify_interval_minutes: u64,
    /// Scheduled integrity checks only report.
    pub verify_report_only: bool,
    /// Days the integrity check history is kept.
    pub integrity_history_days: u64,
    /// TLS certificate and key (PEM) of the gRPC server; both or neither.
    pub tls: Option<TlsFiles>,
    /// Log line format.
    pub log_format: LogFormat,
}

/// The rules for a shared or per-site sync user name (it travels in Basic
/// credentials, so it cannot hold `:`).
pub fn check_sync_user(field: &str, value: &str) -> storesync_shared::Result<()> {
    storesync_shared::domain::validate::text(field, value, 64)?;
    if value.contains(':') {
        return Err(storesync_shared::Error::invalid(
            field,
            "must not contain ':'",
        ));
    }
    Ok(())
}

/// Shortest and longest sync password accepted.
pub const SYNC_PASSWORD_LEN: (usize, usize) = (8, 256);

/// The rules for a sync password.
pub fn check_sync_password(field: &str, value: &str) -> storesync_shared::Result<()> {
    let len = value.chars().count();
    if len < SYNC_PASSWORD_LEN.0 || len > SYNC_PASSWORD_LEN.1 {
        return Err(storesync_shared::Error::invalid(
            field,
            format!(
                "is {len} characters long; use {} to {}",
                SYNC_PASSWORD_LEN.0, SYNC_PASSWORD_LEN.1
            ),
        ));
    }
    Ok(())
}

/// Sync time interval bounds, in minutes (one minute to one day).
pub const SYNC_INTERVAL_MINUTES: (u32, u32) = SYNC_INTERVAL_MINUTES_RANGE;

impl Config {
    /// Reads the file named by `args.config` (if any) and lays the layers over
    /// the defaults. `STORESYNC_*` variables are already in `args` (clap).
    pub fn load(args: Args) -> Result<Self, ConfigError> {
        let file = FileLayer::read(args.config.as_deref())?;
        Self::from_layers(args, file)
    }

    /// `args` (environment and flags) over `file` over the defaults, checked;
    /// every problem is reported, not only the first.
    pub fn from_layers(args: Args, file: FileLayer) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        let s = Settings::layered(&args, &file, &mut problems);

        let database_url = match s.database_url {
            Some(url) => url,
            None => {
                let dir = s.data_dir.unwrap_or_else(|| PathBuf::from("."));
                if !dir.is_dir() {
                    problems.invalid(
                        &Settings::data_dir,
                        format_args!(
                            "{} is not an existing directory; create it or point to another",
                            dir.display()
                        ),
                    );
                }
                storesync_shared::domain::db::sqlite_url(&dir.join(DEFAULT_SQLITE_FILE))
            }
        };

        if s.sync_user.is_some() != s.sync_password.is_some() {
            problems.together(
                &[&Settings::sync_user, &Settings::sync_password],
                " (or set them later with UpdatePreferences)",
            );
        }

        let tls = match (s.tls_cert, s.tls_key, s.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
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

        problems.finish(|| {
            Some(Self {
                listen: s.listen,
                database_url,
                db_max_connections: s.db_max_connections,
                authorisation_code: s.authorisation_code.map(Secret),
                operator_user: s.operator_user,
                operator_password: s.operator_password.map(Secret),
                master_store_code: s.master_store_code,
                master_store_name: s.master_store_name,
                sync_user: s.sync_user,
                sync_password: s.sync_password.map(Secret),
                sync_interval_minutes: s.sync_interval_minutes,
                shutdown_grace_seconds: s.shutdown_grace_seconds,
                heartbeat_seconds: s.heartbeat_seconds,
                changelog_prune_seconds: s.changelog_prune_seconds,
                downstream_batch_records: s.downstream_batch_records,
                snapshot_batches_in_flight: s.snapshot_batches_in_flight,
                verify_interval_minutes: s.verify_interval_minutes,
                verify_report_only: s.verify_report_only,
                integrity_history_days: s.integrity_history_days,
                tls,
                log_format: s.log_format,
            })
        })
    }

    /// A configuration for tests and embedding: defaults, `listen` on
    /// `127.0.0.1:0` and the given database.
    pub fn for_database(database_url: &str) -> Result<Self, ConfigError> {
        Self::from_layers(
            Args {
                listen: Some("127.0.0.1:0".into()),
                database_url: Some(database_url.into()),
                ..Args::default()
            },
            FileLayer::default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            database_url: Some("sqlite://x.db?mode=rwc".into()),
            ..Args::default()
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = Config::from_layers(Args::default(), FileLayer::default()).expect("valid");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert!(config
            .database_url
            .ends_with("storesync-master.db?mode=rwc"));
        assert_eq!(config.sync_interval_minutes, 10);
        assert_eq!(config.operator_user, "admin");
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.heartbeat_seconds, 15);
        assert_eq!(config.shutdown_grace_seconds, 20);
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file = FileLayer::parse("listen = \"127.0.0.1:7000\"\nsync_interval_minutes = 5\n")
            .expect("toml");
        let mut layered = args();
        layered.listen = Some("127.0.0.1:8000".into());
        let config = Config::from_layers(layered, file).expect("valid");
        assert_eq!(config.listen.port(), 8000);
        assert_eq!(config.sync_interval_minutes, 5);
    }

    #[test]
    fn errors_name_the_setting_and_say_what_to_do() {
        let mut bad = args();
        bad.listen = Some("nowhere".into());
        let err = Config::from_layers(bad, FileLayer::default()).expect_err("rejects");
        let text = err.to_string();
        assert!(
            text.contains("STORESYNC_LISTEN") && text.contains("ip:port"),
            "{text}"
        );

        let mut bad = args();
        bad.sync_interval_minutes = Some("0".into());
        let text = Config::from_layers(bad, FileLayer::default())
            .expect_err("rejects")
            .to_string();
        assert!(text.contains("STORESYNC_SYNC_INTERVAL_MINUTES") && text.contains("1 to 1440"));

        let mut bad = args();
        bad.sync_user = Some("sync".into());
        let text = Config::from_layers(bad, FileLayer::default())
            .expect_err("rejects")
            .to_string();
        assert!(text.contains("both"), "{text}");

        let mut bad = args();
        bad.sync_user = Some("sync".into());
        bad.sync_password = Some("short".into());
        let text = Config::from_layers(bad, FileLayer::default())
            .expect_err("rejects")
            .to_string();
        assert!(
            !text.contains("short\""),
            "the password must not be echoed: {text}"
        );

        let mut bad = args();
        bad.log_format = Some("xml".into());
        assert!(Config::from_layers(bad, FileLayer::default()).is_err());
        let typo = FileLayer::parse("lisen = \"x\"").expect("toml");
        let text = Config::from_layers(args(), typo)
            .expect_err("an unknown key is refused")
            .to_string();
        assert!(text.contains("unknown key `lisen`"), "{text}");
    }

    #[test]
    fn every_bad_setting_is_reported_at_once_each_by_its_names() {
        let mut bad = args();
        bad.listen = Some("nowhere".into());
        bad.heartbeat_seconds = Some("0".into());
        bad.tls_key = Some("key.pem".into());
        let file = FileLayer::parse("db_max_connections = 0\nshutdown_grace_seconds = \"soon\"")
            .expect("toml");
        let error = Config::from_layers(bad, file).expect_err("rejects");
        assert_eq!(error.problems.len(), 5, "{error}");
        let text = error.to_string();
        for needle in [
            "STORESYNC_LISTEN: \"nowhere\" is not an address",
            "(--listen, or `listen` in the config file)",
            "STORESYNC_HEARTBEAT_SECONDS: 0 is out of range; set one from 1 to 3600",
            "STORESYNC_DB_MAX_CONNECTIONS: 0 is out of range; set one from 1 to 1000",
            "STORESYNC_SHUTDOWN_GRACE_SECONDS: \"soon\" is not a whole number",
            "STORESYNC_TLS_CERT (--tls-cert) and STORESYNC_TLS_KEY (--tls-key) go together",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
    }

    #[test]
    fn help_shows_the_declared_defaults() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let help = Cli::command().render_help().to_string();
        for needle in [
            "[default: 0.0.0.0:50051]",
            "[default: 15]",
            "[default: 20]",
            "[default: text]",
        ] {
            assert!(help.contains(needle), "{needle:?} not in {help}");
        }
    }
}
