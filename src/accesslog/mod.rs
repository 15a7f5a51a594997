//! The access log: one line per request, written off the request path.
//!
//! The request path builds an [`Entry`] out of cheap clones (the URI and header values are
//! reference-counted bytes, the rest are numbers) and hands it to a bounded queue with
//! `try_send`: it never waits. One writer thread (started by a background service once Pingora
//! runs, [`AccessLog::start_writer`]) wakes every 20 ms, formats what is queued (`format.rs`)
//! into a buffer and writes it out in one go. When the queue is full the line is dropped and
//! counted (`canary_lb_access_log_dropped_total`). A file is reopened on [`AccessLog::reopen`]
//! (SIGUSR1, logrotate's convention: rename the file, then signal).

mod format;

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use log::{error, info};
use prometheus::IntCounter;

use crate::config::schema::{AccessLogFormat, AccessLogSettings};

pub use format::{json_line, text_line};

/// What one request did, as the log shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    /// The client's address by the trusted-proxy rule (`proxy::headers::client_address`).
    pub client: Option<IpAddr>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// The status sent to the client; None when none was sent.
    pub status: Option<u16>,
    /// Request body bytes read from the client.
    pub bytes_in: usize,
    /// Response body bytes sent to the client.
    pub bytes_out: usize,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    /// From sending the request upstream to the response head (the last attempt's).
    pub upstream_time: Option<Duration>,
    pub pool: Option<&'static str>,
    pub reason: Option<&'static str>,
    /// XXH3 of the user key (never the key itself): see [`user_hash_text`].
    pub user_hash: Option<u64>,
    pub request_id: Option<HeaderValue>,
    pub tls: Option<Cow<'static, str>>,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    /// A shadow step's copy of a user's request to the canary (its answer went to no one).
    pub shadow: bool,
}

/// The user-key hash as logged: the top 48 bits of XXH3-64 in hex, enough to follow one user
/// through the log, not the cookie.
pub fn user_hash_text(hash: u64) -> String {
    format!("{:012x}", hash >> 16)
}

/// The user-key hash of `key`, for [`Entry::user_hash`].
pub fn user_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Where lines go.
enum Target {
    Stdout,
    File(PathBuf),
}

/// A file opened for appending (created when missing).
fn open_append(path: &Path) -> io::Result<File> {
    File::options().create(true).append(true).open(path)
}

/// Why the access log could not be opened at start.
#[derive(Debug, thiserror::Error)]
#[error("access_log.path {}: {source}", path.display())]
pub struct OpenError {
    path: PathBuf,
    source: io::Error,
}

/// The sending side, shared by the request path; see the module doc.
pub struct AccessLog {
    tx: SyncSender<Entry>,
    /// The writer's side and its first file, taken by [`AccessLog::start_writer`].
    writer: Mutex<Option<(Receiver<Entry>, Option<File>)>>,
    dropped: IntCounter,
    reopen: Arc<AtomicBool>,
    /// Set by [`AccessLog::finish`]: the writer drains the queue, flushes and stops.
    stop: Arc<AtomicBool>,
    /// The writer thread, joined by [`AccessLog::finish`].
    thread: Mutex<Option<JoinHandle<()>>>,
    format: AccessLogFormat,
    query: bool,
    /// `access_log.shadow`: the shadow step's copies are logged too.
    shadow: bool,
    target: Arc<Target>,
}

/// How long the writer sleeps between two drains of the queue. It sleeps rather than waits on
/// the queue, so a request never wakes it (a wake-up per line costs a context switch on the
/// request's core), and lines are written in batches (one `write` per drain, or per full
/// buffer). The queue holds `access_log.buffer` lines: 16,384 by default, many ticks' worth.
const TICK: Duration = Duration::from_millis(20);

/// Flush the buffer once it holds this much, even while lines keep coming.
const BUFFER_BYTES: usize = 64 * 1024;

impl AccessLog {
    /// Open the log (a file is opened here, so a bad path stops the start with its name);
    /// nothing is written until [`AccessLog::start_writer`].
    pub fn new(settings: &AccessLogSettings, dropped: IntCounter) -> Result<AccessLog, OpenError> {
        let (target, file) = match &settings.path {
            None => (Target::Stdout, None),
            Some(path) => {
                let file = open_append(path).map_err(|source| OpenError {
                    path: path.clone(),
                    source,
                })?;
                (Target::File(path.clone()), Some(file))
            }
        };
        let (tx, rx) = sync_channel(settings.buffer.max(1));
        Ok(AccessLog {
            tx,
            writer: Mutex::new(Some((rx, file))),
            dropped,
            reopen: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
            format: settings.format,
            query: settings.query,
            shadow: settings.shadow,
            target: Arc::new(target),
        })
    }

    /// Queue `entry` for the writer; a full queue drops it and counts it. Never blocks.
    pub fn log(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Whether the shadow step's copies are logged (`access_log.shadow`).
    pub fn logs_shadow(&self) -> bool {
        self.shadow
    }

    /// Reopen the file before the next line (SIGUSR1); nothing for stdout.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Start the writer thread (once; later calls do nothing). Call it only once Pingora runs
    /// (from a service), never before: daemon mode forks, and threads do not survive a fork.
    pub fn start_writer(&self) -> io::Result<()> {
        let Some((rx, file)) = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        else {
            return Ok(());
        };
        let writer = Writer {
            failing: false,
            rx,
            reopen: self.reopen.clone(),
            stop: self.stop.clone(),
            target: self.target.clone(),
            format: self.format,
            query: self.query,
        };
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(file))?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(())
    }

    /// Write out every queued line, flush, and stop the writer (at shutdown, once nothing is
    /// in flight). Waits for the writer's next tick; lines logged afterwards are dropped and
    /// counted. Later calls, or a call before the writer started, do nothing.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                error!("access log: the writer thread panicked; its last lines may be lost");
            }
        }
    }
}

struct Writer {
    /// Whether the last write failed: an error is logged once per run of failures, not per line.
    failing: bool,
    rx: Receiver<Entry>,
    reopen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    target: Arc<Target>,
    format: AccessLogFormat,
    query: bool,
}

impl Writer {
    fn run(mut self, file: Option<File>) {
        let mut out: BufWriter<Box<dyn Write + Send>> = BufWriter::with_capacity(
            BUFFER_BYTES,
            match file {
                Some(f) => Box::new(f),
                None => Box::new(io::stdout()),
            },
        );
        let mut line = Vec::with_capacity(1024);
        loop {
            // Read before the drain: a stop seen here comes after every line queued before it.
            let stopping = self.stop.load(Ordering::SeqCst);
            let mut wrote = false;
            loop {
                match self.rx.try_recv() {
                    Ok(entry) => {
                        self.write(&mut out, &mut line, &entry);
                        wrote = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        let _ = out.flush();
                        return;
                    }
                }
            }
            if wrote {
                let flushed = out.flush();
                self.note(flushed);
            }
            if stopping {
                return;
            }
            if self.reopen.swap(false, Ordering::Relaxed) {
                if let Target::File(path) = &*self.target {
                    let _ = out.flush();
                    match open_append(path) {
                        Ok(f) => {
                            out = BufWriter::with_capacity(BUFFER_BYTES, Box::new(f));
                            info!("access log: reopened {}", path.display());
                        }
                        // Lines keep going to the file as it was.
                        Err(e) => error!("access log: cannot reopen {}: {e}", path.display()),
                    }
                }
            }
            std::thread::sleep(TICK);
        }
    }

    /// Log the first failure of a run of failures, and the recovery.
    fn note(&mut self, result: io::Result<()>) {
        match (result, self.failing) {
            (Err(e), false) => {
                error!("access log: write failed, lines are lost until it works again: {e}");
                self.failing = true;
            }
            (Ok(()), true) => {
                info!("access log: writing again");
                self.failing = false;
            }
            _ => {}
        }
    }

    fn write(&mut self, out: &mut impl Write, line: &mut Vec<u8>, entry: &Entry) {
        line.clear();
        match self.format {
            AccessLogFormat::Json => json_line(line, entry, self.query),
            AccessLogFormat::Text => text_line(line, entry, self.query),
        }
        line.push(b'\n');
        let written = out.write_all(line);
        if written.is_err() {
            self.note(written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &'static str) -> Entry {
        Entry {
            time: SystemTime::now(),
            client: None,
            method: Method::GET,
            uri: Uri::from_static("/"),
            version: Version::HTTP_11,
            status: Some(200),
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            upstream: None,
            upstream_time: None,
            pool: None,
            reason: None,
            user_hash: None,
            request_id: Some(HeaderValue::from_static(id)),
            tls: None,
            referer: None,
            user_agent: None,
            shadow: false,
        }
    }

    fn settings(path: &Path, buffer: usize) -> AccessLogSettings {
        AccessLogSettings {
            path: Some(path.to_path_buf()),
            buffer,
            ..AccessLogSettings::default()
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dropped = IntCounter::new("dropped", "test").expect("counter");
        let log =
            AccessLog::new(&settings(&dir.path().join("a.log"), 2), dropped.clone()).expect("open");
        // No writer yet: two lines fit, the rest are dropped at once.
        for _ in 0..5 {
            log.log(entry("x"));
        }
        assert_eq!(dropped.get(), 3);
    }

    #[test]
    fn the_writer_writes_queued_lines_and_reopens_on_request() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.log");
        let dropped = IntCounter::new("dropped", "test").expect("counter");
        let log = AccessLog::new(&settings(&path, 64), dropped).expect("open");
        log.log(entry("one"));
        log.start_writer().expect("writer");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !read(&path).contains("\"one\"") {
            assert!(std::time::Instant::now() < deadline, "line not written");
            std::thread::sleep(Duration::from_millis(10));
        }
        let rotated = dir.path().join("a.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        log.reopen();
        // The writer looks at the flag every TICK; lines after it go to a new file.
        while !read(&path).contains("\"two\"") {
            assert!(std::time::Instant::now() < deadline, "not reopened");
            log.log(entry("two"));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(read(&rotated).contains("\"one\""));
        assert!(AccessLog::new(
            &settings(Path::new("/nonexistent/dir/a.log"), 1),
            IntCounter::new("d", "t").expect("counter")
        )
        .err()
        .is_some_and(|e| e.to_string().contains("/nonexistent/dir/a.log")));
    }

    #[test]
    fn finish_writes_every_queued_line_before_it_returns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.log");
        let dropped = IntCounter::new("dropped", "test").expect("counter");
        let log = AccessLog::new(&settings(&path, 4096), dropped.clone()).expect("open");
        log.start_writer().expect("writer");
        for _ in 0..1000 {
            log.log(entry("queued"));
        }
        log.finish();
        let text = std::fs::read_to_string(&path).expect("log file");
        assert_eq!(text.matches("\"queued\"").count(), 1000);
        assert_eq!(dropped.get(), 0);
        // Stopped: a later line is counted as dropped, and a second finish returns.
        log.log(entry("late"));
        log.finish();
        assert!(!std::fs::read_to_string(&path)
            .expect("log")
            .contains("late"));
    }
}
