//! Configuration both binaries share: the defaults that must agree between the
//! master and the satellites, and the mechanics of declaring settings once.
//!
//! A binary lists its settings with [`settings!`](crate::settings): each one
//! once, with its name (which is also its file key and, with `-`, its flag), its
//! `STORESYNC_*` variable, old names kept as aliases, its default and its check.
//! From that one table the macro makes the clap flags (each also read from its
//! variable, with the default in `--help`) and a typed struct layered
//! defaults → TOML file → environment → flags. Every bad setting goes into one
//! [`Problems`] list, so a start with three mistakes reports all three, each
//! naming the setting in all its spellings and saying what to change.
//!
//! Why not figment (restate's choice): serde stops at the first bad value, the
//! messages would name serde paths rather than `STORESYNC_*` variables, and clap
//! still has to declare every flag; this table is about as long as its setup.
//!
//! # Invariant
//! A setting's spellings, default and check are written in one place, its line
//! in the binary's table; everything else (flags, help text, file keys,
//! messages) is derived from that line.
//!
//! # Ownership
//! This module owns the defaults shared by the master and the satellites and
//! the layering mechanics; each binary's `config.rs` owns its table, its
//! cross-setting rules (both-or-neither, derived paths) and its typed `Config`.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Seconds between heartbeats on an idle sync stream, on both ends (the
/// master's Welcome tells the satellite its value); a peer silent for three of
/// them is taken as gone.
pub const HEARTBEAT_SECONDS: u64 = 15;
/// Accepted heartbeat periods, in seconds.
pub const HEARTBEAT_SECONDS_RANGE: (u64, u64) = (1, 3600);
/// The sync time interval, in minutes: the preference the master seeds on
/// first start (operators change it with `UpdatePreferences`), and what a
/// satellite uses until the master's Welcome tells it the preference.
pub const SYNC_INTERVAL_MINUTES: u32 = 10;
/// Accepted sync time intervals, in minutes (one minute to one day); the same
/// bounds hold for the preference set through `UpdatePreferences`.
pub const SYNC_INTERVAL_MINUTES_RANGE: (u32, u32) = (1, 1440);
/// Accepted shutdown grace periods, in seconds.
pub const SHUTDOWN_GRACE_SECONDS_RANGE: (u64, u64) = (0, 3600);

/// One setting as a user can spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// The key in the configuration file, e.g. `shutdown_grace_seconds`; the
    /// flag is the same with `-` (`--shutdown-grace-seconds`).
    pub name: &'static str,
    /// Its environment variable, e.g. `STORESYNC_SHUTDOWN_GRACE_SECONDS`.
    pub env: &'static str,
    /// Old names still accepted, as flags (`drain-seconds`) and, with `_`, as
    /// file keys (`drain_seconds`).
    pub aliases: &'static [&'static str],
    /// A secret is never repeated in a message.
    pub secret: bool,
}

impl Key {
    /// `--shutdown-grace-seconds`.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }

    /// The other spellings, for messages: `(--x, or `x` in the config file)`.
    pub fn spellings(&self) -> String {
        let mut text = format!("({}, or `{}` in the config file", self.flag(), self.name);
        if !self.aliases.is_empty() {
            let old: Vec<String> = self
                .aliases
                .iter()
                .map(|a| format!("--{a} / `{}`", a.replace('-', "_")))
                .collect();
            text.push_str("; old name ");
            text.push_str(&old.join(", "));
        }
        text.push(')');
        text
    }

    fn file_keys(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.name.to_owned())
            .chain(self.aliases.iter().map(|a| a.replace('-', "_")))
    }
}

/// Everything wrong with a configuration, one problem a line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// Each names the setting and says what to change.
    pub problems: Vec<String>,
}

/// The problems found so far; a start reports them all at once.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<String>,
    /// Settings whose value was refused: not also reported as missing.
    refused: Vec<&'static str>,
}

impl Problems {
    /// A problem that is about no single setting, or about several.
    pub fn push(&mut self, problem: impl Into<String>) {
        self.list.push(problem.into());
    }

    /// `key` has a bad value: `why` says what is wrong and what to set.
    pub fn invalid(&mut self, key: &Key, why: impl Display) {
        self.push(format!("{}: {why} {}", key.env, key.spellings()));
    }

    /// `value` of `key`, which is required: when it is missing (and was not
    /// refused already), says so; `what` says what it is.
    pub fn required<T>(&mut self, key: &Key, value: Option<T>, what: impl Display) -> Option<T> {
        if value.is_none() && !self.refused.contains(&key.name) {
            self.push(format!(
                "{} is required: {what} {}",
                key.env,
                key.spellings()
            ));
        }
        value
    }

    /// `keys` were set only in part; they go together. `note` may add what
    /// to do instead (starting with `; ` or ` (`), or be empty.
    pub fn together(&mut self, keys: &[&Key], note: &str) {
        let names: Vec<String> = keys
            .iter()
            .map(|k| format!("{} ({})", k.env, k.flag()))
            .collect();
        let which = if keys.len() == 2 {
            "both or neither"
        } else {
            "all or none"
        };
        self.push(format!(
            "{} go together: set {which}{note}",
            names.join(" and ")
        ));
    }

    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `value` when nothing was found wrong, else every problem.
    pub fn finish<T>(self, value: impl FnOnce() -> Option<T>) -> Result<T, ConfigError> {
        match value() {
            Some(value) if self.list.is_empty() => Ok(value),
            // A `None` without a problem would be a bug in a binary's rules;
            // still refuse to start rather than run half-configured.
            _ if self.list.is_empty() => Err(ConfigError {
                problems: vec!["the configuration is incomplete".into()],
            }),
            _ => Err(ConfigError {
                problems: self.list,
            }),
        }
    }

    /// The value of `key`: `cli` (its flag, else its variable, as clap merged
    /// them), else the file (its key, else an old key), else `default()`;
    /// checked by `check`. A bad value is recorded and the default used, so
    /// that the other settings are still checked.
    pub fn take<T>(
        &mut self,
        key: &Key,
        cli: Option<&str>,
        file: &FileLayer,
        default: impl FnOnce() -> T,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let raw = match cli {
            Some(text) => Some(text.to_owned()),
            None => file.value(key, self),
        };
        let Some(raw) = raw else {
            return default();
        };
        match check(&raw) {
            Ok(value) => value,
            Err(why) => {
                let why = if key.secret && !raw.is_empty() {
                    why.replace(&raw, "(hidden)")
                } else {
                    why
                };
                self.invalid(key, why);
                self.refused.push(key.name);
                default()
            }
        }
    }

    /// Records every key of `file` that no setting knows (a typo would
    /// otherwise silently keep the default).
    pub fn unknown_file_keys(&mut self, file: &FileLayer, keys: &[Key]) {
        for name in file.values.keys() {
            if !keys.iter().any(|k| k.file_keys().any(|f| f == *name)) {
                self.push(format!(
                    "{}: unknown key `{name}`; check its spelling (`--help` lists the settings, file keys are the flags with `_`)",
                    file.origin()
                ));
            }
        }
    }
}

/// The TOML file layer: its scalar values, read as text like the environment's.
#[derive(Clone, Debug, Default)]
pub struct FileLayer {
    path: Option<PathBuf>,
    values: toml::Table,
}

impl FileLayer {
    /// Reads the file named by `--config` / `STORESYNC_CONFIG`, if any. A file
    /// that cannot be read or parsed is reported alone: what it holds is unknown.
    pub fn read(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let fail = |why: String| ConfigError {
            problems: vec![format!(
                "config file {} (--config / STORESYNC_CONFIG): {why}",
                path.display()
            )],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut layer = Self::parse(&text).map_err(fail)?;
        layer.path = Some(path.to_owned());
        Ok(layer)
    }

    /// A file layer from TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let values = text.parse::<toml::Table>().map_err(|e| e.to_string())?;
        Ok(Self { path: None, values })
    }

    fn origin(&self) -> String {
        match &self.path {
            Some(path) => format!("config file {}", path.display()),
            None => "config file".into(),
        }
    }

    /// The value of `key` (or of an old name of it) as text.
    fn value(&self, key: &Key, problems: &mut Problems) -> Option<String> {
        let (name, value) = key
            .file_keys()
            .find_map(|name| self.values.get(&name).map(|v| (name, v)))?;
        match value {
            toml::Value::String(text) => Some(text.clone()),
            toml::Value::Integer(n) => Some(n.to_string()),
            toml::Value::Float(n) => Some(n.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => {
                problems.push(format!(
                    "{}: `{name}` must be a single value (text or number), not a list or table",
                    self.origin()
                ));
                None
            }
        }
    }
}

/// How a default is shown in `--help`; `None` shows nothing (the help text
/// then says what happens when the setting is missing).
pub trait ShowDefault {
    /// The default as a user would write it.
    fn show_default(&self) -> Option<String>;
}

macro_rules! show_by_display {
    ($($ty:ty),*) => {$(
        impl ShowDefault for $ty {
            fn show_default(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
show_by_display!(u32, u64, usize, bool, String, SocketAddr);

impl ShowDefault for PathBuf {
    fn show_default(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl<T: ShowDefault> ShowDefault for Option<T> {
    fn show_default(&self) -> Option<String> {
        self.as_ref().and_then(ShowDefault::show_default)
    }
}

/// The `--help` line of a setting: its doc comment and its default.
pub fn help(doc: &[&str], default: Option<String>) -> String {
    let text = doc
        .iter()
        .map(|line| line.trim())
        .collect::<Vec<_>>()
        .join(" ");
    // As clap does with a one-line doc comment: no closing period.
    let text = match text.strip_suffix('.') {
        Some(stripped) => stripped.to_owned(),
        None => text,
    };
    match default {
        Some(default) if !default.is_empty() => format!("{text} [default: {default}]"),
        _ => text,
    }
}

/// A whole number from `range.0` to `range.1`.
pub fn number<N>(range: (N, N)) -> impl Fn(&str) -> Result<N, String>
where
    N: FromStr + PartialOrd + Display + Copy,
{
    move |text| {
        let wanted = format!("set one from {} to {}", range.0, range.1);
        let value: N = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a whole number; {wanted}"))?;
        if value < range.0 || value > range.1 {
            return Err(format!("{value} is out of range; {wanted}"));
        }
        Ok(value)
    }
}

/// One of a few words, e.g. `text` or `json`.
pub fn one_of<T: Copy>(
    choices: &'static [(&'static str, T)],
) -> impl Fn(&str) -> Result<T, String> {
    move |text| {
        choices
            .iter()
            .find(|(word, _)| *word == text.trim())
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let words: Vec<String> = choices.iter().map(|(w, _)| format!("`{w}`")).collect();
                format!("{text:?} must be {}", words.join(" or "))
            })
    }
}

/// An `ip:port` address.
pub fn address(example: &'static str) -> impl Fn(&str) -> Result<SocketAddr, String> {
    move |text| {
        text.trim().parse().map_err(|_| {
            format!("{text:?} is not an address; set ip:port, e.g. {example} (port 0 picks a free port)")
        })
    }
}

/// The reason of a failed [`crate::domain::validate`] rule, without the field name it
/// was checked under (the message names the setting instead).
pub fn rule(result: crate::Result<()>) -> Result<(), String> {
    result.map_err(|error| match error {
        crate::Error::InvalidArgument(text) => match text.split_once(": ") {
            Some((_, why)) => why.to_owned(),
            None => text,
        },
        other => other.to_string(),
    })
}

/// A file or directory path.
pub fn path(text: &str) -> Result<Option<PathBuf>, String> {
    Ok(Some(PathBuf::from(text)))
}

/// Declares a binary's settings once; see the [module docs](crate::kit::config).
///
/// ```text
/// storesync_shared::settings! {
///     /// Flags, each also read from its `STORESYNC_*` variable.
///     pub struct Args { global: true }
///     /// Every setting, parsed and checked alone.
///     pub struct Settings {
///         /// Seconds to drain calls after SIGTERM.
///         shutdown_grace_seconds: u64 = 20,
///             env "STORESYNC_SHUTDOWN_GRACE_SECONDS",
///             aliases ["drain-seconds"],
///             check number((0, 3600));
///     }
/// }
/// ```
///
/// Each setting becomes an `Option<String>` flag of `Args` (clap, `long`,
/// `env`, its aliases; `secret true` hides the variable's value in `--help`;
/// further `#[arg(...)]` attributes pass through), a typed field of
/// `Settings`, and an associated constant `Settings::<name>` holding its
/// [`Key`](crate::kit::config::Key) for messages about several settings.
/// `Settings::layered` lays the flags over the file over the defaults.
#[macro_export]
macro_rules! settings {
    (
        $(#[$args_meta:meta])*
        $args_vis:vis struct $Args:ident { global: $global:literal }
        $(#[$settings_meta:meta])*
        $settings_vis:vis struct $Settings:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[arg($($arg:tt)*)])*
                $name:ident : $ty:ty = $default:expr,
                    env $env:literal,
                    $(aliases [$($alias:literal),* $(,)?],)?
                    $(secret $secret:literal,)?
                    check $check:expr;
            )*
        }
    ) => {
        $(#[$args_meta])*
        #[derive(Clone, Debug, Default, ::clap::Args)]
        $args_vis struct $Args {
            /// TOML file with any of these settings (keys are the flag names with `_`).
            #[arg(long, env = "STORESYNC_CONFIG", global = $global)]
            pub config: Option<::std::path::PathBuf>,
            $(
                #[arg(
                    long,
                    env = $env,
                    global = $global,
                    hide_env_values = false $(|| $secret)?,
                    help = $crate::kit::config::help(
                        &[$($doc),*],
                        $crate::kit::config::ShowDefault::show_default(&{ let default: $ty = $default; default }),
                    )
                    $($(, alias = $alias)*)?
                )]
                $(#[arg($($arg)*)])*
                pub $name: Option<String>,
            )*
        }

        $(#[$settings_meta])*
        #[derive(Clone)]
        $settings_vis struct $Settings {
            $(
                $(#[doc = $doc])*
                pub $name: $ty,
            )*
        }

        #[allow(non_upper_case_globals)]
        impl $Settings {
            $(
                #[doc = concat!("How `", stringify!($name), "` is spelled in each layer.")]
                pub const $name: $crate::kit::config::Key = $crate::kit::config::Key {
                    name: stringify!($name),
                    env: $env,
                    aliases: &[$($($alias),*)?],
                    secret: false $(|| $secret)?,
                };
            )*

            /// Every setting, in declaration order.
            pub const KEYS: &'static [$crate::kit::config::Key] = &[$(Self::$name),*];

            /// `args` (flags over environment) over `file` over the defaults,
            /// each checked; problems go to `problems`.
            pub fn layered(
                args: &$Args,
                file: &$crate::kit::config::FileLayer,
                problems: &mut $crate::kit::config::Problems,
            ) -> Self {
                problems.unknown_file_keys(file, Self::KEYS);
                Self {
                    $(
                        $name: problems.take(
                            &Self::$name,
                            args.$name.as_deref(),
                            file,
                            || $default,
                            $check,
                        ),
                    )*
                }
            }
        }

        impl ::std::fmt::Debug for $Settings {
            // Secrets never reach a log line.
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let mut out = f.debug_struct(stringify!($Settings));
                $(
                    if Self::$name.secret {
                        out.field(stringify!($name), &"***");
                    } else {
                        out.field(stringify!($name), &self.$name);
                    }
                )*
                out.finish()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Key = Key {
        name: "shutdown_grace_seconds",
        env: "STORESYNC_SHUTDOWN_GRACE_SECONDS",
        aliases: &["drain-seconds"],
        secret: false,
    };

    #[test]
    fn the_flag_over_the_file_over_an_old_file_key_over_the_default() {
        let check = number(SHUTDOWN_GRACE_SECONDS_RANGE);
        let mut problems = Problems::default();
        let old = FileLayer::parse("drain_seconds = 7").expect("toml");
        assert_eq!(problems.take(&GRACE, None, &old, || 20, &check), 7);
        let both = FileLayer::parse("drain_seconds = 7\nshutdown_grace_seconds = 8").expect("toml");
        assert_eq!(problems.take(&GRACE, None, &both, || 20, &check), 8);
        assert_eq!(problems.take(&GRACE, Some("9"), &both, || 20, &check), 9);
        assert_eq!(
            problems.take(&GRACE, None, &FileLayer::default(), || 20, &check),
            20
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn every_bad_value_is_kept_with_the_names_that_set_it() {
        let mut problems = Problems::default();
        let file = FileLayer::parse("drain_seconds = 4000\nlisen = 1").expect("toml");
        problems.unknown_file_keys(&file, &[GRACE]);
        let grace = problems.take(
            &GRACE,
            None,
            &file,
            || 20,
            number(SHUTDOWN_GRACE_SECONDS_RANGE),
        );
        assert_eq!(
            grace, 20,
            "a bad value falls back so the rest is still checked"
        );
        let secret = Key {
            secret: true,
            ..GRACE
        };
        problems.take(&secret, Some("hunter2"), &file, || 0, number((0u64, 1)));
        let error = problems.finish(|| Some(())).expect_err("three problems");
        assert_eq!(error.problems.len(), 3, "{error}");
        let text = error.to_string();
        for needle in [
            "unknown key `lisen`",
            "STORESYNC_SHUTDOWN_GRACE_SECONDS: 4000 is out of range; set one from 0 to 3600",
            "(--shutdown-grace-seconds, or `shutdown_grace_seconds` in the config file; old name --drain-seconds / `drain_seconds`)",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
        assert!(
            !text.contains("hunter2"),
            "a secret is never repeated: {text}"
        );
    }

    #[test]
    fn help_shows_the_default_from_the_declaration() {
        assert_eq!(
            help(&[" Seconds to drain."], Some(20u64).show_default()),
            "Seconds to drain [default: 20]"
        );
        assert_eq!(
            help(&[" Optional."], None::<String>.show_default()),
            "Optional"
        );
    }
}
