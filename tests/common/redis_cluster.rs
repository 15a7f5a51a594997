//! A throwaway Redis Cluster: six `redis-server --cluster-enabled yes` on loopback (three
//! masters, one replica each), created with `redis-cli --cluster create`, every process
//! SIGKILLed on drop (a panicking test included); and the helpers a failover test needs: which
//! master holds a key's slot, killing it, waiting for its replica to take over.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, temp_dir, Guarded, STARTUP};

/// How long a cluster may take to agree on its slots after `--cluster create`.
const FORM: Duration = Duration::from_secs(30);
/// `cluster-node-timeout`: a master unreachable this long is failed over.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// One node of the cluster.
struct Node {
    // Declared first so it is dropped (and its log printed) before the temp dir goes.
    process: Option<Guarded>,
    port: u16,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    /// `rediss://`: every node speaks TLS only (clients, replication, cluster bus); the CA
    /// (PEM) the harness's own queries trust.
    tls: Option<Vec<u8>>,
    dir: tempfile::TempDir,
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Six nodes, three masters with one replica each, `cluster_state:ok` on every node.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(None)
    }

    /// [`RedisCluster::start`] over TLS only, with `pair` (a certificate for 127.0.0.1) and
    /// its CA `ca` (PEM): seeds are `rediss://`, `redis-cli --tls` creates it.
    pub fn start_tls(pair: &super::tls::Pair, ca: &std::path::Path) -> RedisCluster {
        RedisCluster::start_with(Some((pair, ca)))
    }

    fn start_with(tls: Option<(&super::tls::Pair, &std::path::Path)>) -> RedisCluster {
        let dir = temp_dir("canary-lb-cluster-");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            tls: tls.map(|(_, ca)| std::fs::read(ca).expect("read the test CA")),
            dir,
        };
        for _ in 0..6 {
            let port = free_cluster_port();
            let mut cmd = Command::new("redis-server");
            match tls {
                None => cmd.args(["--port", &port.to_string()]),
                Some((pair, ca)) => cmd
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&pair.cert)
                    .arg("--tls-key-file")
                    .arg(&pair.key)
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .args(["--tls-auth-clients", "no"]),
            };
            cmd.args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(cluster.dir.path().join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                // Replicas get their first copy at once, not after the default 5 s.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(cluster.dir.path());
            let log = cluster.dir.path().join(format!("redis-{port}.log"));
            cluster.nodes.push(Node {
                process: Some(Guarded::spawn(&format!("redis-server {port}"), cmd, &log)),
                port,
            });
        }
        let deadline = Instant::now() + STARTUP;
        for node in &cluster.nodes {
            while cluster.query(node.port, &["PING"]).is_none() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server {} did not answer PING within {STARTUP:?}",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let mut create = Command::new("redis-cli");
        if let Some((_, ca)) = tls {
            create.arg("--tls").arg("--cacert").arg(ca);
        }
        create.args(["--cluster", "create"]);
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = output_within(create, FORM);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(FORM);
        cluster
    }

    /// Until every live node says `cluster_state:ok` and knows every node, and every replica
    /// has its first copy of its master (a replica that never synced cannot take over).
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let all_ok = self.live_ports().iter().all(|&p| {
                let cluster_ok = self.query(p, &["CLUSTER", "INFO"]).is_some_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                });
                let synced = self.query(p, &["INFO", "replication"]).is_some_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                });
                cluster_ok && synced
            });
            if all_ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `redis://127.0.0.1:P` (`rediss://` over TLS) of every node (as seed URLs).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("{}://127.0.0.1:{}", self.scheme(), n.port))
            .collect()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// The seeds as `ctl --redis` takes them: comma-separated.
    pub fn seeds(&self) -> String {
        self.urls().join(",")
    }

    /// The seeds as a YAML flow list, for `discovery.url`.
    pub fn yaml_seeds(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// `ACL SETUSER name rules...` on every live node (a cluster does not share its ACLs).
    pub fn acl_setuser(&self, name: &str, rules: &[&str]) {
        for port in self.live_ports() {
            let mut args = vec!["ACL", "SETUSER", name];
            args.extend_from_slice(rules);
            let reply = self.query(port, &args);
            assert_eq!(reply.as_deref(), Some("OK"), "ACL SETUSER {name} on {port}");
        }
    }

    /// The seed URLs with `user:password@`.
    pub fn urls_as(&self, user: &str, password: &str) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("{}://{user}:{password}@127.0.0.1:{}", self.scheme(), n.port))
            .collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        self.query(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("CLUSTER KEYSLOT {key} on {port}"))
    }

    /// The port of the master serving `slot` as live node `asked` sees it (`CLUSTER NODES`),
    /// if it knows one not marked failed.
    fn master_of_slot_seen_by(&self, asked: u16, slot: u16) -> Option<u16> {
        let nodes = self.query(asked, &["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 {
                continue;
            }
            let flags = fields[2];
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let hostport = fields[1].split('@').next()?;
                return hostport.rsplit_once(':')?.1.parse().ok();
            }
        }
        None
    }

    /// The port of the master holding `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key);
        let asked = self.live_ports()[0];
        self.master_of_slot_seen_by(asked, slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot} ({key})"))
    }

    /// SIGKILL the node on `port` (nothing is persisted: its data is gone).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on {port}"));
        if let Some(mut p) = node.process.take() {
            p.kill();
        }
    }

    /// Kill the master holding `key`'s slot; returns its port.
    pub fn kill_master_of(&mut self, key: &str) -> u16 {
        let port = self.master_of(key);
        self.kill(port);
        port
    }

    /// Until every live node names one master for `key`'s slot other than `old`; returns its
    /// port.
    pub fn wait_promoted(&self, key: &str, old: u16, within: Duration) -> u16 {
        let slot = self.slot_of(key);
        let deadline = Instant::now() + within;
        loop {
            let seen: Vec<Option<u16>> = self
                .live_ports()
                .iter()
                .map(|&p| self.master_of_slot_seen_by(p, slot))
                .collect();
            if let Some(Some(new)) = seen.first() {
                if *new != old && seen.iter().all(|s| *s == Some(*new)) {
                    return *new;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over slot {slot} from {old} within {within:?}: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl RedisCluster {
    /// One command to the node on `port` (its reply as text), or `None` when it does not
    /// answer. Over TLS the harness trusts the test CA it was given.
    fn query(&self, port: u16, args: &[&str]) -> Option<String> {
        let client = match &self.tls {
            None => redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?,
            Some(ca) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{port}"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )
            .ok()?,
        };
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let value: redis::Value = cmd.query(&mut conn).ok()?;
        Some(match value {
            redis::Value::SimpleString(s) => s,
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            redis::Value::Int(i) => i.to_string(),
            redis::Value::Okay => "OK".to_string(),
            other => format!("{other:?}"),
        })
    }
}

/// Run `cmd` to completion, killed after `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redis-cli (package redis-tools)");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for redis-cli"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("redis-cli did not exit within {timeout:?}");
        }
    }
}
