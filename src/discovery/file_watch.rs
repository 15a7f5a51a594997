//! The `file_watch` provider: a servers file beside the config, followed as it changes, for a
//! single box without Redis (`discovery: { provider: file_watch, path: servers.yaml }`).
//!
//! The file holds each pool's servers in the config's own entry shape (the same parser as
//! `pools.X.servers`), both keys optional, no other key allowed (a typo must not empty a pool):
//!
//! ```yaml
//! production:
//!   - 127.0.0.1:8001
//!   - { addr: 127.0.0.1:8002, weight: 2 }
//! canary: [ "127.0.0.1:9001" ]
//! ```
//!
//! It is polled (every `FileWatchSettings::POLL_INTERVAL`, 250 ms), not watched with inotify:
//! an editor's or `kubectl`'s atomic replace (a rename, a ConfigMap's symlink swap) and a bind
//! mount are all seen the same way, with no thread or crate of its own, and reading a small
//! file four times a second costs nothing. A change is applied once two reads in a row agree,
//! so a file caught half-written is never served; so a change serves within about half a
//! second.
//!
//! A file that is missing, unreadable, not YAML, empty, or with a bad entry is logged once
//! (with the line for a bad entry), counted in `canary_lb_discovery_errors_total`
//! (`unreachable` for a file that cannot be read, `invalid` for its content), and discovery is
//! reported down; the pools keep the servers last read (at start, the config file's lists).
//! The next good version applies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;
use serde::Deserialize;

use super::DiscoveryErrorKind;
use super::{file, Event, Failure, Provider, Sink, Snapshot};
use crate::config::locate::locate_nearest;
use crate::config::{FileWatchSettings, ServerSpec};
use crate::model::{PerPool, PoolKind};
use crate::pool::WantedServer;

/// A servers file larger than this is refused rather than read four times a second.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The `file_watch` provider: follows [`FileWatchSettings::path`].
pub struct FileWatch {
    path: PathBuf,
    poll: Duration,
}

impl FileWatch {
    pub fn new(settings: &FileWatchSettings) -> FileWatch {
        FileWatch {
            path: settings.path.clone(),
            poll: settings.poll_interval,
        }
    }
}

/// The file's format.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServersFile {
    #[serde(default)]
    production: Vec<ServerSpec>,
    #[serde(default)]
    canary: Vec<ServerSpec>,
}

/// Why one version of the file was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    /// The file could not be read (missing, no permission, too large).
    Read(String),
    /// Its content is refused; the message names the key and the line.
    Invalid(String),
}

#[async_trait]
impl Provider for FileWatch {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn check(&self) -> Result<(), String> {
        match read(&self.path).and_then(|bytes| parse(&bytes)) {
            Ok(_) => Ok(()),
            Err(Problem::Read(e) | Problem::Invalid(e)) => Err(format!(
                "`{}`: {e}: the proxy would start on the config file's servers and wait for a \
                 good file",
                self.path.display()
            )),
        }
    }

    async fn run(self: Box<Self>, sink: Arc<dyn Sink>, mut shutdown: ShutdownWatch) {
        let mut poll = tokio::time::interval(self.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The last version applied or refused, and the one read at the previous poll.
        let mut settled: Option<Result<Vec<u8>, Problem>> = None;
        let mut previous: Option<Result<Vec<u8>, Problem>> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = poll.tick() => {}
            }
            let path = self.path.clone();
            let read = match tokio::task::spawn_blocking(move || read(&path)).await {
                Ok(read) => read,
                Err(e) => Err(Problem::Read(format!("the read task failed: {e}"))),
            };
            // Apply a version once two reads agree and it is not the one already settled.
            let stable = previous.as_ref() == Some(&read);
            previous = Some(read.clone());
            if !stable || settled.as_ref() == Some(&read) {
                continue;
            }
            settled = Some(read.clone());
            let outcome = read.and_then(|bytes| parse(&bytes));
            self.hand_over(&*sink, outcome);
        }
    }
}

impl FileWatch {
    fn hand_over(&self, sink: &dyn Sink, outcome: Result<PerPool<Vec<WantedServer>>, Problem>) {
        let shown = self.path.display();
        match outcome {
            Ok(servers) => {
                info!(
                    "file_watch discovery: {shown}: {} production and {} canary server(s)",
                    servers[PoolKind::Production].len(),
                    servers[PoolKind::Canary].len()
                );
                sink.count(Event::Resync);
                sink.apply(Ok(Snapshot {
                    servers: Some(servers),
                    ..Snapshot::default()
                }));
            }
            Err(problem) => {
                let (kind, text) = match problem {
                    Problem::Read(text) => (DiscoveryErrorKind::Unreachable, text),
                    Problem::Invalid(text) => (DiscoveryErrorKind::Invalid, text),
                };
                let error = format!("file_watch {shown}: {text}");
                warn!("{error}; serving the last known servers until the file is fixed");
                sink.apply(Err(Failure {
                    error,
                    kind,
                    reconciling: None,
                }));
            }
        }
    }
}

/// The file's bytes, or why they cannot be read.
fn read(path: &Path) -> Result<Vec<u8>, Problem> {
    let meta = std::fs::metadata(path).map_err(|e| Problem::Read(format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Problem::Read(format!(
            "{} bytes: larger than {MAX_FILE_BYTES}",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| Problem::Read(format!("cannot read: {e}")))
}

/// Each pool's servers in `bytes`; the error names the key and the line.
fn parse(bytes: &[u8]) -> Result<PerPool<Vec<WantedServer>>, Problem> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| Problem::Invalid(format!("not UTF-8 text: {e}")))?;
    // Emptied by a writer that truncates first, or by mistake: never taken as "no servers".
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(Problem::Invalid(
            "the file is empty (to empty the pools, write `production: []`)".into(),
        ));
    }
    let file: ServersFile =
        serde_yaml_ng::from_str(text).map_err(|e| Problem::Invalid(e.to_string()))?;
    for (pool, specs) in [("production", &file.production), ("canary", &file.canary)] {
        for (i, s) in specs.iter().enumerate() {
            if let Some(j) = specs[..i].iter().position(|o| o.addr == s.addr) {
                let key = format!("{pool}[{i}]");
                let at = locate_nearest(text, &key)
                    .map(|p| format!(" at {p}"))
                    .unwrap_or_default();
                return Err(Problem::Invalid(format!(
                    "{key}: `{}` is listed twice (also at [{j}]){at}",
                    s.addr
                )));
            }
        }
    }
    Ok(PerPool {
        production: file::from_specs(&file.production),
        canary: file::from_specs(&file.canary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::RoutingOverrides;
    use crate::pool::ServerView;
    use std::sync::Mutex;

    /// A sink that keeps what it was handed: `Ok(production addresses)` or `Err(kind)`.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Result<Vec<String>, DiscoveryErrorKind>>>);

    impl Sink for Recorded {
        fn apply(&self, update: Result<Snapshot, Failure>) {
            let entry = update
                .map(|s| {
                    let servers = s.servers.expect("file_watch hands over servers");
                    servers[PoolKind::Production]
                        .iter()
                        .map(|w| w.addr.to_string())
                        .collect()
                })
                .map_err(|f| f.kind);
            self.0.lock().expect("lock").push(entry);
        }
        fn count(&self, _: Event<'_>) {}
        fn view(&self, _: PoolKind) -> Vec<ServerView> {
            Vec::new()
        }
        fn routing_in_force(&self) -> RoutingOverrides {
            RoutingOverrides::default()
        }
    }

    impl Recorded {
        async fn wait_for(&self, n: usize) -> Vec<Result<Vec<String>, DiscoveryErrorKind>> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let got = self.0.lock().expect("lock").clone();
                if got.len() >= n {
                    return got;
                }
                assert!(tokio::time::Instant::now() < deadline, "only {got:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    #[tokio::test]
    async fn each_settled_version_is_handed_over_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("servers.yaml");
        let sink = Arc::new(Recorded::default());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let provider = Box::new(FileWatch {
            path: path.clone(),
            poll: Duration::from_millis(10),
        });
        let task = tokio::spawn(provider.run(sink.clone(), shutdown));
        assert_eq!(
            sink.wait_for(1).await,
            [Err(DiscoveryErrorKind::Unreachable)]
        );
        std::fs::write(&path, "production: [\"127.0.0.1:1\"]\n").expect("write");
        let one = Ok(vec!["127.0.0.1:1".to_string()]);
        assert_eq!(sink.wait_for(2).await[1], one);
        std::fs::write(&path, "production: [\n").expect("write");
        assert_eq!(sink.wait_for(3).await[2], Err(DiscoveryErrorKind::Invalid));
        std::fs::write(&path, "production: [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n").expect("write");
        let two = Ok(vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()]);
        assert_eq!(sink.wait_for(4).await[3], two);
        // Unchanged: nothing more is handed over.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sink.0.lock().expect("lock").len(), 4);
        stop.send(true).expect("send");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the provider stops on shutdown")
            .expect("no panic");
    }

    fn problem(text: &str) -> String {
        match parse(text.as_bytes()) {
            Err(Problem::Invalid(e)) => e,
            other => panic!("{text:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn reads_the_config_entry_shape_per_pool() {
        let servers = parse(
            b"production:\n  - 127.0.0.1:8001\n  - { addr: 127.0.0.1:8002, weight: 2 }\n\
              canary: [\"127.0.0.1:9001\"]\n",
        )
        .expect("valid");
        let addrs = |kind: PoolKind| {
            servers[kind]
                .iter()
                .map(|s| (s.addr.to_string(), s.weight.get()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            addrs(PoolKind::Production),
            [
                ("127.0.0.1:8001".to_string(), 1),
                ("127.0.0.1:8002".into(), 2)
            ]
        );
        assert_eq!(addrs(PoolKind::Canary), [("127.0.0.1:9001".to_string(), 1)]);
        let only_prod = parse(b"production: []\n").expect("an emptied pool is a valid file");
        assert!(only_prod[PoolKind::Canary].is_empty());
    }

    #[test]
    fn bad_files_are_refused_naming_key_and_line() {
        let e =
            problem("production:\n  - 127.0.0.1:8001\n  - { addr: 127.0.0.1:8002, weight: 0 }\n");
        assert!(e.contains("production[1]") && e.contains("line 3"), "{e}");
        let e = problem("production: [\"127.0.0.1:1\"]\nprodution: []\n");
        assert!(e.contains("prodution") && e.contains("line 2"), "{e}");
        let e = problem("canary:\n  - 127.0.0.1:1\n  - 127.0.0.1:1\n");
        assert!(
            e.contains("canary[1]") && e.contains("listed twice") && e.contains("line 3"),
            "{e}"
        );
        let e = problem("production: [\n");
        assert!(e.contains("line"), "{e}");
        assert!(problem("# nothing yet\n\n").contains("empty"));
    }
}
