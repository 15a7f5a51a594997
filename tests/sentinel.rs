//! Redis Sentinel: the proxy asks the Sentinels where the master is, and follows it there.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// `redis-server sentinel.conf --sentinel`, killed when the test ends however it ends.
struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n",
                dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis sentinel");
        let sentinel = Sentinel {
            child,
            port,
            _dir: dir,
        };
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
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn proxy_finds_the_master_through_sentinel() {
    let redis = RedisServer::start();
    let sentinel = Sentinel::start(redis.port());
    let app = App::start("sentinel-c1", "canary");
    let ns = "sentinel-test";
    let out = run_cli(
        &[
            "ctl",
            "--redis",
            &redis.url(),
            "--namespace",
            ns,
            "register",
            "--pool",
            "canary",
            &app.addr(),
        ],
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{out:?}");

    // discovery.url points nowhere: only the Sentinel can tell the proxy where the master is.
    let (listen, metrics) = (free_port(), free_port());
    let proxy = Proxy::start(&proxy_config(
        listen,
        metrics,
        &format!(
            "discovery:\n  provider: redis\n  url: \"redis://127.0.0.1:1/0\"\n  \
             namespace: {ns}\n  resync_interval: 1s\n  \
             sentinel: {{ master_name: mymaster, nodes: [\"redis://127.0.0.1:{}\"] }}\n",
            sentinel.port
        ),
    ));
    wait_until(
        "canary app served through the Sentinel's master",
        STARTUP,
        || {
            try_get(&proxy.url("/"), &[("X-Canary", "1")])
                .is_ok_and(|r| r.status == 200 && r.served_by() == Some("sentinel-c1"))
        },
    );
    assert_eq!(proxy.status_json()["discovery"]["up"], true);
}
