//! The configuration: loading it (this file: the only place that reads the config file, the
//! token file and the environment), its format ([`schema`], with the scalar deserializers that
//! validate each value in `de.rs`), its `CANARY_LB_*` overrides (`env.rs`), and which of its
//! keys apply on SIGHUP and which need a restart ([`reload`]). Errors found after serde (the
//! whole config's rules, certificate files) get their key's line from [`locate`]; `check`'s
//! warnings are in `warnings.rs`. The `rollout:` section becomes the rollout's own settings
//! type (`rollout::settings`), which checks it and parses a start's keys as text.

mod de;
pub mod discovery;
mod env;
pub mod locate;
pub mod reload;
pub mod schema;
mod warnings;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

pub use discovery::{
    Coordination, FileWatchSettings, ProviderRole, ProviderSettings, RedisSettings,
};
pub use locate::Position;
pub use schema::*;
pub use warnings::Warning;

/// `metrics_auth_token_file`: the file holding the admin port's bearer token. The file is read
/// while the config is parsed (at start and at every SIGHUP reload), so a missing, empty or
/// malformed token is a config error naming the key and the line. The token itself never
/// appears in errors, logs, `Debug` or serialized output; only the path does.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthTokenFile {
    path: PathBuf,
    token: String,
}

impl AuthTokenFile {
    /// Shorter tokens are refused: the admin port is reachable by anyone who can reach the
    /// container, and a short token can be guessed.
    pub const MIN_LEN: usize = 16;
    /// The file holds one token, not a document.
    const MAX_FILE_BYTES: u64 = 4096;

    /// Read the token: the file's text, trimmed; printable ASCII without spaces (it travels in
    /// a header), at least [`Self::MIN_LEN`] bytes.
    pub fn read(path: &Path) -> Result<AuthTokenFile, TokenFileError> {
        use std::io::Read;
        let owned = || path.to_path_buf();
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(Self::MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|error| TokenFileError::Read {
                path: owned(),
                error,
            })?;
        if text.len() as u64 > Self::MAX_FILE_BYTES {
            return Err(TokenFileError::TooLarge {
                path: owned(),
                max: Self::MAX_FILE_BYTES,
            });
        }
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenFileError::Empty { path: owned() });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenFileError::NotPrintable { path: owned() });
        }
        if token.len() < Self::MIN_LEN {
            return Err(TokenFileError::TooShort {
                path: owned(),
                len: token.len(),
                min: Self::MIN_LEN,
            });
        }
        Ok(AuthTokenFile {
            path: path.to_path_buf(),
            token: token.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token; compare it in constant time (`admin::authorized`), never log it.
    pub fn token(&self) -> &[u8] {
        self.token.as_bytes()
    }
}

/// Why `metrics_auth_token_file` was refused. It reaches the user through serde's
/// `de::Error::custom` (`de::checked`), which adds the key and the line; the token never
/// appears in it.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    // The cause is in the message and not a `#[source]`: a chain printer would repeat it.
    #[error("cannot read `{}`: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("`{}` is larger than {max} bytes; it must hold only the token", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("`{}` is empty; it must hold the token", path.display())]
    Empty { path: PathBuf },
    #[error("the token in `{}` must be printable ASCII without spaces", path.display())]
    NotPrintable { path: PathBuf },
    #[error(
        "the token in `{}` has {len} bytes; use at least {min} (e.g. `openssl rand -hex 32`)",
        path.display()
    )]
    TooShort {
        path: PathBuf,
        len: usize,
        min: usize,
    },
}

impl fmt::Debug for AuthTokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthTokenFile")
            .field("path", &self.path)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Serialize for AuthTokenFile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.path.to_string_lossy())
    }
}

impl<'de> Deserialize<'de> for AuthTokenFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::checked(d, |v| {
            AuthTokenFile::read(Path::new(v.str()?)).map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod auth_token_file_tests {
    use super::*;

    fn parse_with(token_file: &Path) -> Result<Config, InvalidConfig> {
        Config::parse(&format!(
            "threads: 1\nmetrics_auth_token_file: \"{}\"\n",
            token_file.display()
        ))
    }

    #[test]
    fn token_is_read_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-token-0123456789\n").expect("write");
        let c = parse_with(&file).expect("valid token file");
        let t = c.metrics_auth_token_file.expect("token file set");
        assert_eq!(t.token(), b"s3cret-token-0123456789");
        assert!(!format!("{t:?}").contains("s3cret"), "{t:?}");
        let yaml = serde_yaml_ng::to_string(&t).expect("serialize");
        assert!(!yaml.contains("s3cret") && yaml.contains("token"), "{yaml}");
    }

    #[test]
    fn missing_empty_or_weak_token_is_a_config_error_naming_key_and_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases = [
            ("missing", None, "cannot read"),
            ("empty", Some(""), "is empty"),
            ("blank", Some(" \n\t\n"), "is empty"),
            ("short", Some("short-token\n"), "at least 16"),
            (
                "spaces",
                Some("two words in a token here"),
                "printable ASCII",
            ),
            ("huge", Some(&*"x".repeat(5000)), "larger than 4096"),
        ];
        for (name, content, want) in cases {
            let file = dir.path().join(name);
            if let Some(text) = content {
                std::fs::write(&file, text).expect("write");
            }
            let e = parse_with(&file).expect_err(name).to_string();
            for needle in ["metrics_auth_token_file", "line 2", want] {
                assert!(
                    e.contains(needle),
                    "{name}: error `{e}` should contain `{needle}`"
                );
            }
            if let Some(text) = content.filter(|t| !t.trim().is_empty()) {
                assert!(
                    !e.contains(text.trim()),
                    "{name}: the error shows the token: {e}"
                );
            }
        }
    }
}

/// Why the config could not be loaded. Each message carries its cause in its text and has no
/// `#[source]`, so `{e:#}` (which `main` prints) does not repeat the cause.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("config file {path}: {error}")]
    Invalid { path: String, error: InvalidConfig },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
}

impl Config {
    /// Read, parse and validate a config file, then apply the environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_text(path).map(|loaded| loaded.config)
    }

    /// [`Config::load`], keeping the text, so that what is found later (a certificate file,
    /// a warning) can name its key's line ([`Loaded::error`]).
    pub fn load_with_text(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let mut config = Config::parse(&text).map_err(|error| ConfigError::Invalid {
            path: path.display().to_string(),
            error,
        })?;
        config.apply_env(|k| std::env::var(k).ok())?;
        // `discovery.path` is relative to the config file, not to the working directory.
        if let (Some(file), Some(dir)) = (&mut config.discovery.path, path.parent()) {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        }
        Ok(Loaded {
            config,
            path: path.to_path_buf(),
            text,
        })
    }
}

/// A config with the file and text it was read from.
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    text: String,
}

impl Loaded {
    /// A problem of the value at `key`, found after loading: names the file, the key and its
    /// line.
    pub fn error(&self, key: impl Into<String>, problem: impl ToString) -> ConfigError {
        let key = key.into();
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            error: InvalidConfig::Key {
                at: locate::locate_nearest(&self.text, &key),
                key,
                problem: problem.to_string(),
            },
        }
    }

    /// The config's warnings ([`Config::warnings`]).
    pub fn warnings(&self) -> Vec<Warning> {
        self.config.warnings(&self.text)
    }

    /// A warning about `key`, placed at its line.
    pub fn warning(&self, key: impl Into<String>, message: impl Into<String>) -> Warning {
        Warning::at_key(&self.text, key, message)
    }
}

impl Config {
    /// `pid_file`: its directory must exist and the path must not be a directory (checked by
    /// `check` and at start; the file itself is written once the listeners are bound).
    pub fn check_pid_file(&self) -> Result<(), String> {
        let Some(path) = &self.pid_file else {
            return Ok(());
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(format!(
                "pid_file: {}: the directory {} does not exist",
                path.display(),
                dir.display()
            ));
        }
        if path.is_dir() {
            return Err(format!("pid_file: {} is a directory", path.display()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod load_error_tests {
    use super::*;

    /// `main` prints `{e:#}`, the error and its sources: each cause must appear once.
    #[test]
    fn load_errors_show_their_cause_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.yaml");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "threads: 1\nlisten: []\n").expect("write");
        for (path, cause) in [
            (&missing, "No such file or directory"),
            (&bad, "listen: at least one address is required"),
        ] {
            let e = Config::load(path).expect_err("load fails");
            let shown = format!("{:#}", anyhow::Error::from(e));
            assert_eq!(shown.matches(cause).count(), 1, "{shown}");
            assert!(shown.contains(&path.display().to_string()), "{shown}");
        }
    }
}
