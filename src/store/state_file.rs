//! The file provider's rollout state file (`rollout.state_file`): what one box keeps across a
//! restart so that a rollout is resumed, not silently reset (`rollout/local.rs` decides what
//! to do with it). The same versioned JSON as the values in Redis (`codec.rs`):
//! `{"schema":1,"state":{...the rollout state...},"history":[...]}`.
//!
//! Written atomically: a temporary file beside it (same directory, so the rename cannot cross
//! file systems), fsynced, renamed over the old one, and the directory fsynced, so a crash at
//! any point leaves either the old file or the new one, never half of one. Mode 0600: the state
//! holds the routing salt, and whoever has the salt can tell which users are in canary.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::codec::{self, StoredKind};
use crate::rollout::local::{Persist, Saved};

/// The suffix of the default state file, after the config file's path.
pub const DEFAULT_SUFFIX: &str = ".rollout-state.json";
/// A state file larger than this is not read (it holds one state and 50 history entries).
const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The rollout state file at one path.
#[derive(Debug, Clone)]
pub struct RolloutStateFile {
    path: PathBuf,
}

impl RolloutStateFile {
    pub fn new(path: impl Into<PathBuf>) -> RolloutStateFile {
        RolloutStateFile { path: path.into() }
    }

    /// The default beside `config`: `<config>.rollout-state.json`.
    pub fn beside(config: &Path) -> RolloutStateFile {
        let mut name = config.as_os_str().to_owned();
        name.push(DEFAULT_SUFFIX);
        RolloutStateFile::new(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn temp_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".tmp");
        PathBuf::from(name)
    }

    /// Whether the file can be written where it is: creates and removes the temporary file.
    /// The error names the path and the reason (read-only, no such directory, ...).
    pub fn check_writable(&self) -> Result<(), String> {
        let tmp = self.temp_path();
        let probe = open_new(&tmp).and_then(|mut f| f.write_all(b"{}"));
        let _ = fs::remove_file(&tmp);
        probe.map_err(|e| format!("cannot write {}: {e}", tmp.display()))
    }

    fn write_atomically(&self, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.temp_path();
        let written = open_new(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &self.path)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename itself is durable once the directory is synced.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all())
    }
}

fn open_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

impl Persist for RolloutStateFile {
    fn load(&self) -> Result<Option<Saved>, String> {
        let bytes = match fs::metadata(&self.path) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
            Ok(m) if m.len() > MAX_BYTES => {
                return Err(format!(
                    "{}: {} bytes, more than a state file holds",
                    self.path.display(),
                    m.len()
                ))
            }
            Ok(_) => fs::read(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?,
        };
        codec::decode::<Saved>(StoredKind::StateFile, &bytes)
            .map(|d| Some(d.value))
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn save(&self, saved: &Saved) -> Result<(), String> {
        let json = codec::encode(StoredKind::StateFile, saved)?;
        self.write_atomically(json.as_bytes())
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::RolloutConfig;
    use crate::rollout::RolloutState;
    use std::os::unix::fs::PermissionsExt;

    fn saved() -> Saved {
        let state = RolloutState::start(
            "r-1".into(),
            RolloutConfig::default(),
            "salt".into(),
            1_000,
            None,
        )
        .expect("start");
        Saved {
            state,
            history: Vec::new(),
        }
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().expect("dir");
        let file = RolloutStateFile::beside(&dir.path().join("canary-lb.yaml"));
        assert_eq!(
            file.path(),
            dir.path().join("canary-lb.yaml.rollout-state.json")
        );
        assert_eq!(file.load(), Ok(None));
        file.check_writable().expect("writable");
        file.save(&saved()).expect("save");
        assert_eq!(file.load(), Ok(Some(saved())));
        let text = fs::read_to_string(file.path()).expect("read");
        assert!(text.starts_with(r#"{"schema":1,"state":{"#), "{text}");
        let mode = fs::metadata(file.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!file.temp_path().exists());

        fs::write(file.path(), r#"{"schema":2,"state":{}}"#).expect("write");
        let err = file.load().expect_err("newer");
        assert!(
            err.contains("schema 2, newer than this release reads"),
            "{err}"
        );
        fs::write(file.path(), "garbage").expect("write");
        assert!(file.load().is_err());
    }

    #[test]
    fn an_unwritable_place_is_named() {
        let file = RolloutStateFile::new("/nonexistent-dir/state.json");
        let err = file.check_writable().expect_err("no such dir");
        assert!(err.contains("/nonexistent-dir/state.json.tmp"), "{err}");
        assert!(file.save(&saved()).is_err());
    }
}
