//! Redis Sentinel: the proxy asks the Sentinels where the master is, and follows it there.

mod common;

use common::*;

#[test]
fn proxy_finds_the_master_through_sentinel() {
    let redis = RedisServer::start();
    let sentinel = RedisSentinel::start(redis.port());
    let app = App::start("sentinel-c1", "canary");
    let ns = "sentinel-test";
    let out = ctl(
        &redis.url(),
        ns,
        &["register", "--pool", "canary", &app.addr()],
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
            sentinel.port()
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
