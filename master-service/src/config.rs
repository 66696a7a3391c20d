//! The master's configuration: one typed [`Config`], layered
//! defaults → optional TOML file → `STORESYNC_*` environment → command-line flags,
//! and checked once at start with messages that say what to change.
//!
//! clap merges the environment and the flags ([`Args`], every field optional);
//! [`Config::load`] lays them over the file ([`FileConfig`]) and the defaults.
//! Values are taken as text and parsed here, so every error names the setting
//! in all its spellings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";
/// File name of the embedded SQLite database when no database URL is given.
pub const DEFAULT_SQLITE_FILE: &str = "storesync-master.db";

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
    /// TLS certificate and key (PEM) of the gRPC server; both or neither.
    pub tls: Option<TlsFiles>,
    /// Log line format.
    pub log_format: LogFormat,
}

/// Flags, each also readable from its `STORESYNC_*` variable. Every one is
/// optional here so that the file and defaults can fill the gaps.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Args {
    /// TOML file with any of the settings below (keys are the flag names with `_`).
    #[arg(long, env = "STORESYNC_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// gRPC listen address, ip:port [default: 0.0.0.0:50051].
    #[arg(long, env = "STORESYNC_LISTEN", global = true)]
    pub listen: Option<String>,
    /// postgres://… or sqlite://… [default: embedded SQLite file storesync-master.db].
    #[arg(long, env = "STORESYNC_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Directory of the embedded SQLite file [default: working directory].
    #[arg(long, env = "STORESYNC_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Largest PostgreSQL pool size [default: 10].
    #[arg(long, env = "STORESYNC_DB_MAX_CONNECTIONS", global = true)]
    pub db_max_connections: Option<String>,
    /// Authorisation code that unlocks the sync preferences.
    #[arg(
        long,
        env = "STORESYNC_AUTHORISATION_CODE",
        global = true,
        hide_env_values = true
    )]
    pub authorisation_code: Option<String>,
    /// Operator user created on first start [default: admin].
    #[arg(long, env = "STORESYNC_OPERATOR_USER", global = true)]
    pub operator_user: Option<String>,
    /// Its password [default: generated and printed once].
    #[arg(
        long,
        env = "STORESYNC_OPERATOR_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub operator_password: Option<String>,
    /// Code of the master's own store, first start only [default: MASTER].
    #[arg(long, env = "STORESYNC_MASTER_STORE_CODE", global = true)]
    pub master_store_code: Option<String>,
    /// Name of the master's own store, first start only [default: Master store].
    #[arg(long, env = "STORESYNC_MASTER_STORE_NAME", global = true)]
    pub master_store_name: Option<String>,
    /// Shared sync user name, first start only.
    #[arg(long, env = "STORESYNC_SYNC_USER", global = true)]
    pub sync_user: Option<String>,
    /// Shared sync password, first start only.
    #[arg(
        long,
        env = "STORESYNC_SYNC_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub sync_password: Option<String>,
    /// Sync time interval in minutes, first start only [default: 10].
    #[arg(long, env = "STORESYNC_SYNC_INTERVAL_MINUTES", global = true)]
    pub sync_interval_minutes: Option<String>,
    /// Seconds to drain calls after SIGTERM [default: 20].
    #[arg(long, env = "STORESYNC_SHUTDOWN_GRACE_SECONDS", global = true)]
    pub shutdown_grace_seconds: Option<String>,
    /// Seconds between heartbeats on idle sync streams, 1 to 3600 [default: 15].
    #[arg(long, env = "STORESYNC_HEARTBEAT_SECONDS", global = true)]
    pub heartbeat_seconds: Option<String>,
    /// PEM certificate chain: serve TLS only (with --tls-key).
    #[arg(long, env = "STORESYNC_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "STORESYNC_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA: require client certificates it signed (mutual TLS).
    #[arg(long, env = "STORESYNC_TLS_CLIENT_CA", global = true)]
    pub tls_client_ca: Option<PathBuf>,
    /// text or json [default: text].
    #[arg(long, env = "STORESYNC_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

/// The TOML file: the same settings as [`Args`], snake_case keys. Unknown keys
/// are an error, so that a typo does not silently keep a default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub db_max_connections: Option<u32>,
    pub authorisation_code: Option<String>,
    pub operator_user: Option<String>,
    pub operator_password: Option<String>,
    pub master_store_code: Option<String>,
    pub master_store_name: Option<String>,
    pub sync_user: Option<String>,
    pub sync_password: Option<String>,
    pub sync_interval_minutes: Option<u32>,
    pub shutdown_grace_seconds: Option<u64>,
    pub heartbeat_seconds: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub log_format: Option<String>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read the config file {} (--config / STORESYNC_CONFIG): {e}",
                path.display()
            ))
        })?;
        toml::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "the config file {} is not valid: {e}",
                path.display()
            ))
        })
    }
}

/// How a setting is spelled in each layer, for error messages.
fn spelled(key: &str) -> String {
    format!(
        "STORESYNC_{} (--{} or `{key}` in the config file)",
        key.to_ascii_uppercase(),
        key.replace('_', "-")
    )
}

fn invalid(key: &str, value: &str, why: &str) -> Error {
    Error::Config(format!("{} = {value:?}: {why}", spelled(key)))
}

fn parse_number<T>(key: &str, value: &str, range: (T, T)) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let parsed: T = value.trim().parse().map_err(|_| {
        invalid(
            key,
            value,
            &format!(
                "not a whole number; set one from {} to {}",
                range.0, range.1
            ),
        )
    })?;
    if parsed < range.0 || parsed > range.1 {
        return Err(invalid(
            key,
            value,
            &format!("out of range; set one from {} to {}", range.0, range.1),
        ));
    }
    Ok(parsed)
}

/// The rules for a shared or per-site sync user name (it travels in Basic
/// credentials, so it cannot hold `:`).
pub fn check_sync_user(field: &str, value: &str) -> storesync_shared::Result<()> {
    storesync_shared::validate::text(field, value, 64)?;
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
pub const SYNC_INTERVAL_MINUTES: (u32, u32) = (1, 1440);

impl Config {
    /// Reads the file named by `args.config` (if any) and lays the layers over
    /// the defaults. `STORESYNC_*` variables are already in `args` (clap).
    pub fn load(args: Args) -> Result<Self> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        Self::from_layers(args, file)
    }

    /// `args` (environment and flags) over `file` over the defaults, checked.
    pub fn from_layers(args: Args, file: FileConfig) -> Result<Self> {
        let listen_text = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.trim().parse().map_err(|_| {
            invalid(
                "listen",
                &listen_text,
                "not an address; set ip:port, e.g. 0.0.0.0:50051 (port 0 picks a free port)",
            )
        })?;

        let data_dir = args.data_dir.or(file.data_dir);
        let database_url = match args.database_url.or(file.database_url) {
            Some(url) if !url.trim().is_empty() => {
                let url = url.trim().to_owned();
                if !(storesync_shared::db::is_postgres(&url) || url.starts_with("sqlite:")) {
                    return Err(invalid(
                        "database_url",
                        "(hidden: it may hold a password)",
                        "set postgres://user@host:5432/db or sqlite://path?mode=rwc, \
                         or leave it unset for the embedded SQLite file",
                    ));
                }
                url
            }
            _ => {
                let dir = data_dir.unwrap_or_else(|| PathBuf::from("."));
                if !dir.is_dir() {
                    return Err(invalid(
                        "data_dir",
                        &dir.display().to_string(),
                        "is not an existing directory; create it or point to another",
                    ));
                }
                storesync_shared::db::sqlite_url(&dir.join(DEFAULT_SQLITE_FILE))
            }
        };

        let db_max_connections = match args.db_max_connections {
            Some(text) => parse_number("db_max_connections", &text, (1, 1000))?,
            None => file.db_max_connections.unwrap_or(10),
        };
        if !(1..=1000).contains(&db_max_connections) {
            return Err(invalid(
                "db_max_connections",
                &db_max_connections.to_string(),
                "out of range; set one from 1 to 1000",
            ));
        }

        let authorisation_code = args.authorisation_code.or(file.authorisation_code);
        if let Some(code) = &authorisation_code {
            let len = code.chars().count();
            if !(8..=256).contains(&len) || code.trim() != code {
                return Err(invalid(
                    "authorisation_code",
                    "(hidden)",
                    "use 8 to 256 characters without leading or trailing spaces",
                ));
            }
        }

        let operator_user = args
            .operator_user
            .or(file.operator_user)
            .unwrap_or_else(|| "admin".to_owned());
        if check_sync_user("operator_user", &operator_user).is_err() {
            return Err(invalid(
                "operator_user",
                &operator_user,
                "use 1 to 64 characters without ':' or control characters",
            ));
        }
        let operator_password = args.operator_password.or(file.operator_password);
        if let Some(password) = &operator_password {
            if password.is_empty() || password.chars().count() > 256 {
                return Err(invalid(
                    "operator_password",
                    "(hidden)",
                    "use 1 to 256 characters, or leave it unset to have one generated",
                ));
            }
        }

        let master_store_code = args
            .master_store_code
            .or(file.master_store_code)
            .unwrap_or_else(|| "MASTER".to_owned());
        if let Err(e) = storesync_shared::validate::code("master_store_code", &master_store_code) {
            return Err(invalid(
                "master_store_code",
                &master_store_code,
                &e.to_string(),
            ));
        }
        let master_store_name = args
            .master_store_name
            .or(file.master_store_name)
            .unwrap_or_else(|| "Master store".to_owned());
        if let Err(e) =
            storesync_shared::validate::text("master_store_name", &master_store_name, 256)
        {
            return Err(invalid(
                "master_store_name",
                &master_store_name,
                &e.to_string(),
            ));
        }

        let sync_user = args.sync_user.or(file.sync_user);
        let sync_password = args.sync_password.or(file.sync_password);
        match (&sync_user, &sync_password) {
            (Some(user), Some(password)) => {
                if let Err(e) = check_sync_user("sync_user", user) {
                    return Err(invalid("sync_user", user, &e.to_string()));
                }
                if let Err(e) = check_sync_password("sync_password", password) {
                    // The message says how long it is, never what it is.
                    return Err(invalid("sync_password", "(hidden)", &e.to_string()));
                }
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(format!(
                    "set both {} and {}, or neither (then set them with UpdatePreferences)",
                    spelled("sync_user"),
                    spelled("sync_password")
                )))
            }
        }

        let sync_interval_minutes = match args.sync_interval_minutes {
            Some(text) => parse_number("sync_interval_minutes", &text, SYNC_INTERVAL_MINUTES)?,
            None => file.sync_interval_minutes.unwrap_or(10),
        };
        if !(SYNC_INTERVAL_MINUTES.0..=SYNC_INTERVAL_MINUTES.1).contains(&sync_interval_minutes) {
            return Err(invalid(
                "sync_interval_minutes",
                &sync_interval_minutes.to_string(),
                "out of range; set 1 to 1440 minutes",
            ));
        }

        let shutdown_grace_seconds = match args.shutdown_grace_seconds {
            Some(text) => parse_number("shutdown_grace_seconds", &text, (0, 3600))?,
            None => file.shutdown_grace_seconds.unwrap_or(20),
        };
        if shutdown_grace_seconds > 3600 {
            return Err(invalid(
                "shutdown_grace_seconds",
                &shutdown_grace_seconds.to_string(),
                "out of range; set 0 to 3600 seconds",
            ));
        }

        let heartbeat_seconds = match args.heartbeat_seconds {
            Some(text) => parse_number("heartbeat_seconds", &text, (1, 3600))?,
            None => file.heartbeat_seconds.unwrap_or(15),
        };
        if !(1..=3600).contains(&heartbeat_seconds) {
            return Err(invalid(
                "heartbeat_seconds",
                &heartbeat_seconds.to_string(),
                "out of range; set 1 to 3600 seconds",
            ));
        }

        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_client_ca.or(file.tls_client_ca),
        ) {
            (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            (None, None, Some(_)) => {
                return Err(invalid(
                    "tls_client_ca",
                    "(set)",
                    "needs tls_cert and tls_key: mutual TLS is TLS with client certificates",
                ))
            }
            _ => {
                return Err(invalid(
                    "tls_cert",
                    "(one of two)",
                    "set both tls_cert and tls_key, or neither",
                ))
            }
        };

        let log_format_text = args
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".to_owned());
        let log_format = match log_format_text.trim().to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(invalid("log_format", &log_format_text, "set text or json")),
        };

        Ok(Self {
            listen,
            database_url,
            db_max_connections,
            authorisation_code: authorisation_code.map(Secret),
            operator_user,
            operator_password: operator_password.map(Secret),
            master_store_code,
            master_store_name,
            sync_user,
            sync_password: sync_password.map(Secret),
            sync_interval_minutes,
            shutdown_grace_seconds,
            heartbeat_seconds,
            tls,
            log_format,
        })
    }

    /// A configuration for tests and embedding: defaults, `listen` on
    /// `127.0.0.1:0` and the given database.
    pub fn for_database(database_url: &str) -> Result<Self> {
        Self::from_layers(
            Args {
                listen: Some("127.0.0.1:0".into()),
                database_url: Some(database_url.into()),
                ..Args::default()
            },
            FileConfig::default(),
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
        let config = Config::from_layers(Args::default(), FileConfig::default()).expect("valid");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert!(config
            .database_url
            .ends_with("storesync-master.db?mode=rwc"));
        assert_eq!(config.sync_interval_minutes, 10);
        assert_eq!(config.operator_user, "admin");
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:7000\"\nsync_interval_minutes = 5\n")
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
        let err = Config::from_layers(bad, FileConfig::default()).expect_err("rejects");
        let text = err.to_string();
        assert!(
            text.contains("STORESYNC_LISTEN") && text.contains("ip:port"),
            "{text}"
        );

        let mut bad = args();
        bad.sync_interval_minutes = Some("0".into());
        let text = Config::from_layers(bad, FileConfig::default())
            .expect_err("rejects")
            .to_string();
        assert!(text.contains("STORESYNC_SYNC_INTERVAL_MINUTES") && text.contains("1 to 1440"));

        let mut bad = args();
        bad.sync_user = Some("sync".into());
        let text = Config::from_layers(bad, FileConfig::default())
            .expect_err("rejects")
            .to_string();
        assert!(text.contains("both"), "{text}");

        let mut bad = args();
        bad.sync_user = Some("sync".into());
        bad.sync_password = Some("short".into());
        let text = Config::from_layers(bad, FileConfig::default())
            .expect_err("rejects")
            .to_string();
        assert!(
            !text.contains("short\""),
            "the password must not be echoed: {text}"
        );

        let mut bad = args();
        bad.log_format = Some("xml".into());
        assert!(Config::from_layers(bad, FileConfig::default()).is_err());
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
    }
}
