//! The Redis side of the harness: a throwaway `redis-server` (and Sentinel), `canary-lb ctl`
//! against it, and plain Redis commands as `redis-cli` would send them. Key names come from
//! [`super::store`].

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{free_port, run_cli, store, temp_dir, wait_until, Background, Guarded, STARTUP};

/// `redis-server --port P --bind 127.0.0.1 --save "" --appendonly no` in a temp dir.
pub struct RedisServer {
    // Declared first so it is dropped (and its log printed) before the temp dir goes.
    process: Option<Guarded>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut redis = RedisServer {
            port: free_port(),
            dir: temp_dir("canary-lb-redis-"),
            process: None,
        };
        redis.spawn_and_wait();
        redis
    }

    fn spawn_and_wait(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path());
            let log = self.dir.path().join("redis.log");
            self.process = Some(Guarded::spawn("redis-server", cmd, &log));
            loop {
                if self.process.as_mut().unwrap().exited().is_some() {
                    break;
                }
                if self.ping() {
                    return;
                }
                if Instant::now() >= deadline {
                    panic!("redis-server did not answer PING within {STARTUP:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if Instant::now() >= deadline {
                panic!("redis-server kept exiting during startup");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the server answers PING with PONG.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(500),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:P/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL the server (its data is lost: nothing is persisted).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Start an empty server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait();
    }
}

impl RedisServer {
    /// Start an empty server on a port chosen beforehand (e.g. one already written into a
    /// proxy config while Redis was still down).
    pub fn start_on(port: u16) -> RedisServer {
        let mut redis = RedisServer {
            port,
            dir: temp_dir("canary-lb-redis-"),
            process: None,
        };
        redis.spawn_and_wait();
        redis
    }
}

/// The namespace `ctl` and the proxies use when none is given.
pub const DEFAULT_NAMESPACE: &str = "canary-lb";

impl RedisServer {
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis url")
    }

    /// A new plain connection (5 s connect timeout).
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis")
    }

    /// How many keys the server holds.
    pub fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE")
            .query(&mut self.conn())
            .expect("DBSIZE")
    }

    /// `ZSCORE key member`.
    pub fn zscore(&self, key: &str, member: &str) -> Option<f64> {
        redis::cmd("ZSCORE")
            .arg(key)
            .arg(member)
            .query(&mut self.conn())
            .expect("ZSCORE")
    }

    /// Subscribe to the events channel of `namespace`, run `action`, and return its result once
    /// `want` was published there (panics after 5 s, listing what was published instead).
    pub fn expect_event<T>(&self, namespace: &str, want: &str, action: impl FnOnce() -> T) -> T {
        let channel = store::events_channel(namespace);
        let mut con = self.conn();
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(&channel).expect("SUBSCRIBE");
        let result = action();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no `{want}` on {channel} within 5s; saw {seen:?}"
            );
            pubsub.set_read_timeout(Some(left)).expect("read timeout");
            let msg = pubsub
                .get_message()
                .unwrap_or_else(|e| panic!("no `{want}` on {channel}: {e}; saw {seen:?}"));
            let payload: String = msg.get_payload().expect("text payload");
            if msg.get_channel_name() == channel && payload == want {
                return result;
            }
            seen.push(payload);
        }
    }

    /// `canary-lb ctl --redis URL ARGS...` (the default namespace unless ARGS name one).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let url = self.url();
        let mut all = vec!["ctl", "--redis", &url];
        all.extend_from_slice(args);
        run_cli(&all, Duration::from_secs(20))
    }

    /// [`RedisServer::ctl`] that must exit 0; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "ctl {args:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`RedisServer::ctl`] in the background (for `register --heartbeat`).
    pub fn spawn_ctl(&self, args: &[&str]) -> Background {
        let url = self.url();
        let mut all = vec!["ctl", "--redis", &url];
        all.extend_from_slice(args);
        Background::cli(&all)
    }
}

/// `redis-server sentinel.conf --sentinel` watching the master on `master_port` as `mymaster`.
pub struct RedisSentinel {
    // Declared first so it is dropped (and its log printed) before the temp dir goes.
    process: Guarded,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Start a Sentinel and wait until it knows the master.
    pub fn start(master_port: u16) -> RedisSentinel {
        let dir = temp_dir("canary-lb-sentinel-");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n",
                dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let mut cmd = Command::new("redis-server");
        cmd.arg(&conf).arg("--sentinel");
        let process = Guarded::spawn("redis sentinel", cmd, &dir.path().join("sentinel.log"));
        let sentinel = RedisSentinel { process, port, dir };
        wait_until("sentinel knows the master", STARTUP, || {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                return false;
            };
            let Ok(mut conn) = client.get_connection() else {
                return false;
            };
            let addr: redis::RedisResult<Vec<String>> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("mymaster")
                .query(&mut conn);
            addr.is_ok_and(|a| a.get(1) == Some(&master_port.to_string()))
        });
        sentinel
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Run `canary-lb ctl --redis URL --namespace NS ARGS...` to completion.
pub fn ctl(redis_url: &str, namespace: &str, args: &[&str]) -> Output {
    let mut all = vec!["ctl", "--redis", redis_url, "--namespace", namespace];
    all.extend_from_slice(args);
    run_cli(&all, Duration::from_secs(20))
}

/// [`ctl`] that must exit 0; returns its stdout.
pub fn ctl_ok(redis_url: &str, namespace: &str, args: &[&str]) -> String {
    let out = ctl(redis_url, namespace, args);
    assert!(
        out.status.success(),
        "ctl {args:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One plain Redis command, as `redis-cli` would send it (panics when Redis refuses it).
pub fn redis_cmd(redis_url: &str, args: &[&str]) -> redis::Value {
    let mut conn = redis::Client::open(redis_url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect to {redis_url}: {e}"));
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
        .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
}

/// Outages, for the tests that take Redis away from running proxies.
impl RedisServer {
    /// SIGSTOP the server: it keeps its connections and data but answers nothing (a hung
    /// Redis), until [`RedisServer::unpause`].
    pub fn pause(&self) {
        self.process
            .as_ref()
            .expect("redis-server is running")
            .signal("STOP");
    }

    /// SIGCONT a [`RedisServer::pause`]d server.
    pub fn unpause(&self) {
        self.process
            .as_ref()
            .expect("redis-server is running")
            .signal("CONT");
    }

    /// `SAVE`, then SIGKILL: connections are refused until [`RedisServer::restart`] (or
    /// [`RedisServer::start_again`]), which loads the saved data.
    pub fn stop_keeping_data(&mut self) {
        let _: () = redis::cmd("SAVE")
            .query(&mut self.conn())
            .expect("SAVE before stopping");
        self.kill();
    }

    /// Start the server again on its port, with whatever it saved ([`RedisServer::stop_keeping_data`]).
    pub fn start_again(&mut self) {
        self.restart();
    }
}
