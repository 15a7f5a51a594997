//! The integration-test harness: real `canary-lb` and `redis-server` processes on loopback.
//!
//! Every process is owned by a guard that SIGKILLs it on drop, so a panicking test leaves
//! nothing behind; a guard dropped during a panic also prints the process's log, which is
//! usually the fastest way to see why. Tests never sleep to assert: they poll a condition
//! with [`wait_until`] against a deadline that is generous enough for a loaded 2-core machine.
//! Ports come from the OS (bind port 0, read it, drop the socket).
//!
//! `mod.rs`: waits, ports, process guards (`App`, `Proxy`, `Background`) and the HTTP client;
//! `redis_server.rs`: `RedisServer`, `RedisSentinel`, `ctl` and plain Redis commands;
//! `store.rs`: the store's key names, from the library; `raw.rs`: exact bytes on both sides
//! of the proxy (`RawBackend`, also scripted to misbehave, and `RawClient`); `shutdown.rs`:
//! stopping a proxy with a signal and waiting for its exit; `tls.rs`: a test CA and
//! certificates made at test time, `curl` over TLS/HTTP/2 and a Rust TLS client; `ws.rs`: a
//! WebSocket echo server and client; `h2client.rs`: an HTTP/2 client that can keep its window
//! shut, and a 1 MiB backend counting the upstream connections held.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod h2client;
pub mod load;
pub mod metrics;
pub mod raw;
pub mod redis_cluster;
mod redis_server;
pub mod rollout_admin;
pub mod rollout_rig;
pub mod shutdown;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod ws;

pub use redis_server::*;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a process may take to start answering on a loaded machine.
pub const STARTUP: Duration = Duration::from_secs(20);

/// The `canary-lb` binary built for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_canary-lb")
}

/// A free loopback port. Ports handed out once are never handed out again by this process,
/// so two tests running in parallel cannot both get the same one.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if given.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// One test at a time within a test binary, for tests that measure timing or shares: on a
/// loaded 2-core machine two of them at once would each slow the other down.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Poll `f` every 50 ms until it returns true; panic naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll `check` every 25 ms until it returns `Some`; panic naming `what` after `within`.
pub fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether something accepts TCP connections on `addr`.
pub fn port_open(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("socket address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process that is SIGKILLed when dropped, with its stdout+stderr in a log file.
struct Guarded {
    child: Option<Child>,
    log: PathBuf,
    label: String,
}

impl Guarded {
    fn spawn(label: &str, mut cmd: Command, log: &Path) -> Guarded {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {label} ({cmd:?}): {e}"));
        Guarded {
            child: Some(child),
            log: log.to_path_buf(),
            label: label.to_string(),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The exit status if the process has exited (reaping it), None while it runs.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.label));
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{sig} {pid} ({}) failed",
            self.label
        );
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: String = tail_lines(&logs, 80);
            eprintln!(
                "----- log of {} ({}) -----\n{tail}-----",
                self.label,
                self.log.display()
            );
        }
    }
}

/// Any other process a test runs in the background (`ctl register --heartbeat`, `demo`, an app
/// that registers itself, the container's command line): SIGKILLed when dropped, its output in
/// a log file printed if the test panics.
pub struct Background {
    // Declared first so it is dropped (and its log printed) before the temp dir goes.
    process: Guarded,
    dir: tempfile::TempDir,
}

impl Background {
    /// Spawn `cmd` as is (stdin, stdout and stderr are the guard's).
    pub fn spawn(label: &str, cmd: Command) -> Background {
        let dir = temp_dir("canary-lb-bg-");
        let process = Guarded::spawn(label, cmd, &dir.path().join("output.log"));
        Background { process, dir }
    }

    /// `canary-lb ARGS` with `RUST_LOG=info` and the developer's `CANARY_LB_*` cleared, as
    /// [`run_cli`] runs it, but in the background.
    pub fn cli(args: &[&str]) -> Background {
        let mut cmd = Command::new(bin());
        cmd.args(args).env("RUST_LOG", "info");
        for var in ENV_TO_CLEAR {
            cmd.env_remove(var);
        }
        Background::spawn(&format!("canary-lb {}", args.join(" ")), cmd)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Send `sig` (`TERM`, `INT`, ...) with `kill`.
    pub fn signal(&self, sig: &str) {
        self.process.signal(sig);
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn sigint(&self) {
        self.signal("INT");
    }

    /// The exit status if it has exited, None while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// The exit status once it exits, or None if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("{l}\n")).collect()
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
}

/// Run `canary-lb ARGS` to completion (killed after `timeout`) and return its output.
pub fn run_cli(args: &[&str], timeout: Duration) -> Output {
    run_cli_env(args, &[], timeout)
}

/// [`run_cli`] with the variables `env` set (after the developer's `CANARY_LB_*` are cleared).
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("RUST_LOG", "info");
    for var in ENV_TO_CLEAR {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn canary-lb");
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for canary-lb") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("canary-lb {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

thread_local! {
    /// One runtime per test thread: a store's connection lives on the runtime that opened it.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
}

/// Run `fut` to completion on this test thread's runtime (the library's async store API).
pub fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    RUNTIME.with(|rt| rt.block_on(fut))
}

/// A command's exit code, stdout and stderr, for an assertion's message.
pub fn output_text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The stdout of a command that must have exited 0.
pub fn output_ok(out: Output) -> String {
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `canary_percent` a proxy routes by (its `/status`), -1 when it says none.
pub fn canary_percent(proxy: &Proxy) -> f64 {
    proxy.status_json()["routing"]["canary_percent"]
        .as_f64()
        .unwrap_or(-1.0)
}

/// A demo app server: `canary-lb app --listen 127.0.0.1:PORT --name NAME --pool POOL`.
pub struct App {
    // Declared first so it is dropped (and its log printed) before the temp dir goes.
    process: Option<Guarded>,
    name: String,
    pool: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl App {
    /// Start an app on a free port and wait until its /healthz answers 200.
    pub fn start(name: &str, pool: &str) -> App {
        let mut app = App {
            name: name.to_string(),
            pool: pool.to_string(),
            port: free_port(),
            dir: temp_dir("canary-lb-app-"),
            process: None,
        };
        app.spawn_and_wait();
        app
    }

    fn spawn_and_wait(&mut self) {
        let deadline = Instant::now() + STARTUP;
        let url = format!("http://{}/healthz", self.addr());
        loop {
            let mut cmd = Command::new(bin());
            cmd.args([
                "app",
                "--listen",
                &self.addr(),
                "--name",
                &self.name,
                "--pool",
                &self.pool,
            ])
            .env("RUST_LOG", "info");
            let log = self.dir.path().join("app.log");
            self.process = Some(Guarded::spawn(&format!("app {}", self.name), cmd, &log));
            // A restarted app can lose the race for its old port; then it exits and is respawned.
            loop {
                let process = self.process.as_mut().unwrap();
                if process.exited().is_some() {
                    break;
                }
                if matches!(try_get(&url, &[]), Ok(r) if r.status == 200) {
                    return;
                }
                if Instant::now() >= deadline {
                    panic!("app {} did not answer {url} within {STARTUP:?}", self.name);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if Instant::now() >= deadline {
                panic!("app {} kept exiting during startup", self.name);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// `http://127.0.0.1:PORT{path}`, to talk to the app directly.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// SIGKILL the app and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Start the app again on the same port (killing it first if it still runs).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait();
    }

    pub fn logs(&self) -> String {
        self.process.as_ref().map(|p| p.logs()).unwrap_or_default()
    }
}

/// The first two lines every proxy config in the tests starts with.
pub fn proxy_config(listen: u16, metrics: u16, body: &str) -> String {
    format!("listen: [\"127.0.0.1:{listen}\"]\nmetrics_listen: \"127.0.0.1:{metrics}\"\n{body}")
}

/// The `pools:` section of a test config: both pools with the given server addresses (a pool
/// with none is written `servers: []`).
pub fn pools(production: &[&str], canary: &[&str]) -> String {
    format!(
        "pools:\n  production: {{ servers: [{}] }}\n  canary: {{ servers: [{}] }}\n",
        quoted(production),
        quoted(canary)
    )
}

/// The `pools:` section with only a `production` pool.
pub fn production_pool(production: &[&str]) -> String {
    format!(
        "pools:\n  production: {{ servers: [{}] }}\n",
        quoted(production)
    )
}

fn quoted(addrs: &[&str]) -> String {
    let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    quoted.join(", ")
}

/// A proxy on free ports following `namespace` on the Redis at `redis_port` (resync every
/// second), two threads, a 1 s grace period, HTTP health checks of `/healthz` every 300 ms
/// that decide on one answer, and `extra` (more top-level YAML lines) after that.
pub fn redis_proxy_config(redis_port: u16, namespace: &str, extra: &str) -> String {
    redis_proxy_config_at(
        &format!("url: \"redis://127.0.0.1:{redis_port}/0\""),
        namespace,
        extra,
    )
}

/// [`redis_proxy_config`] with `at` as the discovery's location keys (`url: ...`, or
/// `cluster: true, url: [seeds]`).
pub fn redis_proxy_config_at(at: &str, namespace: &str, extra: &str) -> String {
    proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 2\n\
             grace_period: 1s\n\
             health_check: {{ kind: http, path: /healthz, interval: 300ms, timeout: 2s, \
                              healthy_threshold: 1, unhealthy_threshold: 1 }}\n\
             discovery: {{ provider: redis, {at}, \
                           namespace: \"{namespace}\", resync_interval: 1s }}\n\
             {extra}"
        ),
    )
}

/// `canary-lb serve --config FILE` with `RUST_LOG=info`, its output in a log file.
pub struct Proxy {
    // Declared first so it is dropped (and its log printed) before the temp dir goes.
    process: Guarded,
    listen: u16,
    metrics: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Proxy {
    /// Write `yaml` to a temp file, start the proxy and wait until `/status` answers 200 and
    /// the proxy port accepts connections. `yaml` must carry the lines [`proxy_config`] writes.
    pub fn start(yaml: &str) -> Proxy {
        Proxy::start_with_nofile(yaml, None)
    }

    /// A proxy on free ports with `production` (addresses) as its only configured pool, and
    /// `extra` config lines (threads, health checks, routing, ...) after it.
    pub fn in_front_of(production: &[String], extra: &str) -> Proxy {
        let servers: Vec<String> = production.iter().map(|a| format!("\"{a}\"")).collect();
        Proxy::start(&proxy_config(
            free_port(),
            free_port(),
            &format!(
                "pools:\n  production: {{ servers: [{}] }}\n{extra}",
                servers.join(", ")
            ),
        ))
    }

    /// [`Proxy::start`] with the process's file-descriptor limit set to `nofile`.
    pub fn start_with_nofile(yaml: &str, nofile: Option<u32>) -> Proxy {
        let listen = port_after(yaml, "listen:");
        let metrics = port_after(yaml, "metrics_listen:");
        let dir = temp_dir("canary-lb-proxy-");
        let config = dir.path().join("canary-lb.yaml");
        fs::write(&config, yaml).expect("write config");
        let mut cmd = match nofile {
            None => Command::new(bin()),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin());
                sh
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info");
        for var in ENV_TO_CLEAR {
            cmd.env_remove(var);
        }
        let process = Guarded::spawn("canary-lb serve", cmd, &dir.path().join("proxy.log"));
        let mut proxy = Proxy {
            process,
            listen,
            metrics,
            dir,
            config,
        };
        let status_url = proxy.status_url();
        let listen_addr = format!("127.0.0.1:{listen}");
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = proxy.process.exited() {
                panic!(
                    "canary-lb serve exited during startup with {status}:\n{}",
                    proxy.logs()
                );
            }
            // 401: `/status` wants the admin token (`metrics_auth_token_file`); it answers.
            let status_ok =
                matches!(try_get(&status_url, &[]), Ok(r) if r.status == 200 || r.status == 401);
            if status_ok && port_open(&listen_addr) {
                return proxy;
            }
            if Instant::now() >= deadline {
                panic!(
                    "canary-lb serve did not answer {status_url} within {STARTUP:?}:\n{}",
                    proxy.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:LISTEN{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen)
    }

    pub fn listen_port(&self) -> u16 {
        self.listen
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics
    }

    /// `http://127.0.0.1:METRICS/metrics`
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics)
    }

    /// `http://127.0.0.1:METRICS/status`
    pub fn status_url(&self) -> String {
        format!("http://127.0.0.1:{}/status", self.metrics)
    }

    /// GET /status parsed as JSON (panics unless it is a 200 with valid JSON).
    pub fn status_json(&self) -> serde_json::Value {
        let r = get(&self.status_url(), &[]);
        assert_eq!(r.status, 200, "GET /status: {}", r.body);
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", r.body))
    }

    /// GET /metrics, parsed.
    pub fn scrape(&self) -> metrics::Scrape {
        metrics::Scrape::parse(&self.metrics_text())
    }

    /// GET /metrics (panics unless it is a 200).
    pub fn metrics_text(&self) -> String {
        let r = get(&self.metrics_url(), &[]);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
        r.body
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn sigterm(&self) {
        self.process.signal("TERM");
    }

    pub fn sighup(&self) {
        self.process.signal("HUP");
    }

    /// SIGUSR1: reopen the access log file.
    pub fn sigusr1(&self) {
        self.process.signal("USR1");
    }

    pub fn sigint(&self) {
        self.process.signal("INT");
    }

    /// The exit status once the process exits, or None if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Replace the config file atomically (write + rename), so a reload never sees half of it.
    /// The proxy only notices after [`Proxy::sighup`].
    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.dir.path().join("canary-lb.yaml.new");
        fs::write(&tmp, yaml).expect("write config");
        fs::rename(&tmp, &self.config).expect("replace config");
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// Variables that would override the test's config file if the developer has them set.
const ENV_TO_CLEAR: &[&str] = &[
    "CANARY_LB_CONFIG",
    "CANARY_LB_LISTEN",
    "CANARY_LB_THREADS",
    "CANARY_LB_METRICS_LISTEN",
    "CANARY_LB_CANARY_PERCENT",
    "CANARY_LB_SALT",
    "CANARY_LB_REDIS_URL",
    "CANARY_LB_REDIS_CLUSTER",
    "CANARY_LB_NAMESPACE",
];

/// The port of the first `127.0.0.1:PORT` after `key` at the start of a line.
fn port_after(yaml: &str, key: &str) -> u16 {
    let line = yaml
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("the test config has no `{key}` line:\n{yaml}"));
    let rest = &line[line.find("127.0.0.1:").unwrap_or_else(|| {
        panic!("`{key}` must be a 127.0.0.1 address in the test config: {line}")
    }) + "127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no port in `{line}`"))
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/// A response as the tests look at it. Header names are lowercased.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (any case), in order.
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `X-Served-By`: which demo app answered.
    pub fn served_by(&self) -> Option<&str> {
        self.header("x-served-by")
    }

    /// `X-Canary-Pool`: which pool the proxy says it used.
    pub fn pool(&self) -> Option<&str> {
        self.header("x-canary-pool")
    }
}

fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

thread_local! {
    // One pooled agent per thread: bulk tests reuse connections instead of piling up
    // TIME_WAIT sockets, and threads never contend on one pool.
    static AGENT: ureq::Agent = new_agent();
}

/// Every header line as `(lower-case name, value)`, in order (a value that is not UTF-8 is
/// kept lossily): what the harness's responses and echo servers record.
pub fn header_lines(headers: &ureq::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn into_resp(mut r: ureq::http::Response<ureq::Body>) -> Result<Resp, String> {
    let status = r.status().as_u16();
    let headers = header_lines(r.headers());
    let body = r
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// GET `url` with extra headers; Err describes a transport failure (refused, reset, timeout).
pub fn try_get(url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    AGENT.with(|agent| {
        let mut req = agent.get(url);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.call()
            .map_err(|e| format!("GET {url}: {e}"))
            .and_then(into_resp)
    })
}

/// GET `url` with extra headers; panics on a transport failure (any status is a response).
pub fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    try_get(url, headers).unwrap_or_else(|e| panic!("{e}"))
}

/// POST `body` to `url` with extra headers; Err describes a transport failure.
pub fn try_post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Resp, String> {
    AGENT.with(|agent| {
        let mut req = agent.post(url);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.send(body)
            .map_err(|e| format!("POST {url}: {e}"))
            .and_then(into_resp)
    })
}

/// POST `body` to `url`; panics on a transport failure.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_post(url, headers, body).unwrap_or_else(|e| panic!("{e}"))
}

/// GET with a fresh connection that is not pooled (e.g. across a proxy restart).
pub fn get_fresh(url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let agent = new_agent();
    let mut req = agent.get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.call()
        .map_err(|e| format!("GET {url}: {e}"))
        .and_then(into_resp)
}
