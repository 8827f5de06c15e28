//! Configuration errors: which key, where its value came from, what is wrong.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// Where a configuration value came from, so an error can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A key of the configuration file; `line` is 1-based.
    File { path: PathBuf, line: Option<usize> },
    /// An environment variable (`BOTFLEET__…`, `MicrosoftApp…`, `PORT`).
    Env { var: String },
    /// A secret read from `file`, named by the key `key` (e.g.
    /// `bots[0].app_password_file`) that came from `via`.
    SecretFile {
        file: PathBuf,
        key: String,
        via: Box<Origin>,
    },
    /// A secret read from the environment variable `var`, named by `key`.
    SecretEnv {
        var: String,
        key: String,
        via: Box<Origin>,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File {
                path,
                line: Some(line),
            } => write!(f, "{} line {line}", path.display()),
            Self::File { path, line: None } => write!(f, "{}", path.display()),
            Self::Env { var } => write!(f, "environment variable {var}"),
            Self::SecretFile { file, key, via } => {
                write!(f, "file {} named by `{key}` in {via}", file.display())
            }
            Self::SecretEnv { var, key, via } => {
                write!(f, "environment variable {var} named by `{key}` in {via}")
            }
        }
    }
}

/// One thing wrong with the configuration.
///
/// `key` is the full key path (`bots[0].handler.url`, `server.listen`); for a
/// bot validated on its own ([`super::BotSettings::validate`]) it is relative
/// to the bot (`handler.url`). `origin` is where the value came from, when known
/// (`None` for a value nobody set: a default or a missing key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
    pub origin: Option<Origin>,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
            origin: None,
        }
    }

    /// The same error with `prefix` put before its key (`bots[2].` + `handler.url`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.key = format!("{prefix}{}", self.key);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str("configuration")?;
        } else {
            write!(f, "`{}`", self.key)?;
        }
        if let Some(origin) = &self.origin {
            write!(f, " ({origin})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Why a configuration cannot be used. `serve` and `check-config` exit 2 on it.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// The file named by `--config` / `BOTFLEET_CONFIG` cannot be read.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not TOML; `message` carries the parser's line and column.
    #[error("{} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// Every problem found, each with its key and origin.
    #[error("{}", list(.0))]
    Invalid(Vec<ConfigError>),
}

fn list(errors: &[ConfigError]) -> String {
    match errors {
        [one] => format!("invalid configuration: {one}"),
        many => {
            let mut s = format!("invalid configuration ({} problems):", many.len());
            for e in many {
                s.push_str("\n  - ");
                s.push_str(&e.to_string());
            }
            s
        }
    }
}

impl From<Vec<ConfigError>> for SettingsError {
    fn from(errors: Vec<ConfigError>) -> Self {
        Self::Invalid(errors)
    }
}

impl From<ConfigError> for SettingsError {
    fn from(error: ConfigError) -> Self {
        Self::Invalid(vec![error])
    }
}
