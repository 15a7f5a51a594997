//! The control plane on a Redis Cluster (issue 26): a real local cluster of six
//! `redis-server --cluster-enabled yes` (three masters, one replica each, `common::RedisCluster`),
//! real proxies following it through its seed nodes, real app servers, `canary-lb ctl --cluster`.
//!
//! Registration, routing percent, flags, an ACL user and a rollout with two proxy replicas work
//! as on one Redis; then the master holding the namespace's slot is killed under load: every
//! request is answered, the replica is promoted, a registration made after the failover is
//! followed, and the rollout judges no window twice. And a TLS-only cluster (`rediss://`
//! seeds) is reached with its certificate checked.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::load::{Load, LoadSpec};
use common::redis_cluster::RedisCluster;
use common::rollout_admin::{phase_of, rollout_of};
use common::*;
use common::{canary_percent as percent, output_ok as ok, output_text as text};
use serde_json::Value;

/// Generous deadline for anything a proxy must notice on a loaded machine.
const NOTICE: Duration = Duration::from_secs(20);

/// A proxy following `namespace` on `cluster` through all its seeds, with a 1 s rollout window.
fn yaml(cluster: &RedisCluster, namespace: &str) -> String {
    yaml_with_seeds(&cluster.yaml_seeds(), namespace)
}

/// [`yaml`] with `seeds` (a YAML list) as `discovery.url`.
fn yaml_with_seeds(seeds: &str, namespace: &str) -> String {
    redis_proxy_config_at(
        &format!("cluster: true, url: {seeds}"),
        namespace,
        "upstream: { connect_timeout: 1s, read_timeout: 10s, write_timeout: 10s, max_tries: 2 }\n\
         routing: { canary_percent: 0, salt: \"cluster-salt\" }\n\
         rollout: { interval: 1s, min_requests: 5, max_inconclusive: 100, \
                    hard_fail_errors: 1000 }\n",
    )
}

/// `canary-lb ctl --redis SEEDS --cluster --namespace NS [--config FILE] ARGS...`
fn cctl(cluster: &RedisCluster, ns: &str, config: Option<&Path>, args: &[&str]) -> Output {
    let seeds = cluster.seeds();
    let mut all = vec!["ctl", "--redis", &seeds, "--cluster", "--namespace", ns];
    let config = config.map(|c| c.display().to_string());
    if let Some(c) = &config {
        all.extend(["--config", c]);
    }
    all.extend_from_slice(args);
    run_cli(&all, Duration::from_secs(30))
}

fn in_rotation(proxy: &Proxy, pool: &str) -> u64 {
    proxy.status_json()["pools"][pool]["in_rotation"]
        .as_u64()
        .unwrap_or(0)
}

fn flag_percent(proxy: &Proxy, name: &str) -> Option<f64> {
    proxy.status_json()["flags"]["items"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["percent"].as_f64())
}

/// Two proxies following `ns` on a fresh cluster, production and canary apps registered.
struct Fleet {
    cluster: RedisCluster,
    ns: &'static str,
    _apps: Vec<App>,
    proxies: Vec<Proxy>,
}

impl Fleet {
    fn start(ns: &'static str) -> Fleet {
        let cluster = RedisCluster::start();
        let prod = App::start("prod", "production");
        let canary = App::start("canary", "canary");
        let out = ok(cctl(
            &cluster,
            ns,
            None,
            &["register", "--pool", "production", &prod.addr()],
        ));
        assert!(out.contains("registered"), "{out}");
        ok(cctl(
            &cluster,
            ns,
            None,
            &["register", "--pool", "canary", &canary.addr()],
        ));
        let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::start(&yaml(&cluster, ns))).collect();
        for p in &proxies {
            wait_until("the replica serves both pools", NOTICE, || {
                in_rotation(p, "production") == 1 && in_rotation(p, "canary") == 1
            });
        }
        Fleet {
            cluster,
            ns,
            _apps: vec![prod, canary],
            proxies,
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        cctl(&self.cluster, self.ns, None, args)
    }

    fn rollout(&self, args: &[&str]) -> Output {
        let config = self.proxies[0].config_path().to_path_buf();
        let mut all = vec!["rollout"];
        all.extend_from_slice(args);
        cctl(&self.cluster, self.ns, Some(&config), &all)
    }

    /// Verdict entries (judged windows) of rollout `id`, from `ctl rollout history --json`.
    fn judged_windows(&self, id: &str) -> Vec<u64> {
        ok(self.rollout(&["history", "-n", "1000", "--json"]))
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["rollout_id"] == id)
            .filter_map(|e| e["window"].as_u64())
            .collect()
    }

    fn bases(&self) -> Vec<String> {
        self.proxies.iter().map(|p| p.url("")).collect()
    }
}

fn assert_one_verdict_per_window(windows: &[u64]) {
    let mut sorted = windows.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        windows.len(),
        "a window judged twice: {windows:?}"
    );
}

/// Through the library's cluster connection: how many replicas the master of `key` has, and
/// how many acknowledged a write to `key` (`WAIT 1`).
fn replicas_and_wait(cluster: &RedisCluster, key: &str) -> (usize, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut endpoint =
            canary_lb::store::Endpoint::open(&cluster.urls(), true, None).expect("endpoint");
        let mut conn = endpoint
            .connect(Duration::from_secs(5))
            .await
            .expect("connect to the cluster");
        let replicas = conn.replicas_of(key).await.expect("ROLE");
        let _: i64 = redis::cmd("HSET")
            .arg(key)
            .arg("probe")
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("HSET");
        let _: i64 = redis::cmd("HDEL")
            .arg(key)
            .arg("probe")
            .query_async(&mut conn)
            .await
            .expect("HDEL");
        let acked = conn
            .wait_for_replicas(key, 1, Duration::from_secs(2))
            .await
            .expect("WAIT");
        (replicas, acked)
    })
}

fn rollout_id(p: &Proxy) -> String {
    rollout_of(p)["state"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn registration_routing_flags_and_a_rollout_work_on_a_cluster() {
    let _serial = serial();
    let fleet = Fleet::start("cl-basics");
    for p in &fleet.proxies {
        assert_eq!(
            get(&p.url("/"), &[]).pool(),
            Some("production"),
            "0 % canary"
        );
    }

    // Routing percent.
    ok(fleet.ctl(&["canary", "set", "100"]));
    for p in &fleet.proxies {
        wait_until("the proxy routes 100 % to canary", NOTICE, || {
            percent(p) == 100.0
        });
        assert_eq!(get(&p.url("/"), &[]).pool(), Some("canary"));
    }
    assert_eq!(ok(fleet.ctl(&["canary", "get"])).trim(), "100");
    ok(fleet.ctl(&["canary", "set", "0"]));
    for p in &fleet.proxies {
        wait_until("the proxy routes 0 % to canary", NOTICE, || {
            percent(p) == 0.0
        });
    }

    // Flags.
    ok(fleet.ctl(&["flag", "set", "new-checkout", "--percent", "40"]));
    for p in &fleet.proxies {
        wait_until("the proxy has the flag", NOTICE, || {
            flag_percent(p, "new-checkout") == Some(40.0)
        });
        assert_eq!(p.status_json()["flags"]["source"], "redis");
    }
    let status = ok(fleet.ctl(&["status"]));
    assert!(status.contains("127.0.0.1"), "{status}");

    // The master of the namespace's slot has its replica, so the rollout's lease and judged
    // writes wait for it (store/rollout/link.rs): ROLE and WAIT reach that master.
    let key = common::store::store(fleet.ns).rollout_key();
    let (replicas, acked) = replicas_and_wait(&fleet.cluster, &key);
    assert_eq!(replicas, 1, "ROLE on the master of {key}");
    assert_eq!(acked, 1, "WAIT 1 on the master of {key}");

    // An ACL user with only the rights README's "Redis Cluster and managed Redis" lists: the
    // user and password of the seed URLs reach every node, for ctl and for a proxy.
    let ns = fleet.ns;
    let (keys, legacy_keys) = (format!("~{{{ns}}}:*"), format!("~{ns}:*"));
    let (channel, legacy_channel) = (format!("&{{{ns}}}:events"), format!("&{ns}:events"));
    fleet.cluster.acl_setuser(
        "canary",
        &[
            "reset",
            "on",
            ">s3cret",
            &keys,
            &legacy_keys,
            &channel,
            &legacy_channel,
            "+@read",
            "+@write",
            "+@scripting",
            "+@transaction",
            "+@pubsub",
            "+@connection",
            "+wait",
            "+role",
            "+cluster|slots",
            "+cluster|shards",
            "+cluster|nodes",
            "+cluster|myid",
        ],
    );
    let acl_urls = fleet.cluster.urls_as("canary", "s3cret");
    let seeds_yaml: Vec<String> = acl_urls.iter().map(|u| format!("\"{u}\"")).collect();
    let acl_proxy = Proxy::start(&yaml_with_seeds(
        &format!("[{}]", seeds_yaml.join(", ")),
        ns,
    ));
    let acl_ctl = |args: &[&str]| {
        let seeds = acl_urls.join(",");
        let mut all = vec!["ctl", "--redis", &seeds, "--cluster", "--namespace", ns];
        all.extend_from_slice(args);
        run_cli(&all, Duration::from_secs(30))
    };
    let extra = App::start("prod-acl", "production");
    ok(acl_ctl(&[
        "register",
        "--pool",
        "production",
        &extra.addr(),
    ]));
    ok(acl_ctl(&["flag", "set", "acl-flag", "--percent", "10"]));
    wait_until("the ACL proxy follows the store", NOTICE, || {
        in_rotation(&acl_proxy, "production") == 2
            && flag_percent(&acl_proxy, "acl-flag") == Some(10.0)
    });
    let status = ok(acl_ctl(&["status"]));
    assert!(
        status.contains("canary:***") && !status.contains("s3cret"),
        "{status}"
    );
    ok(acl_ctl(&[
        "deregister",
        "--pool",
        "production",
        &extra.addr(),
    ]));
    drop(acl_proxy);

    // A short rollout judged by the two replicas' shared leader.
    let _load = Load::start(LoadSpec::new(fleet.bases()));
    ok(fleet.rollout(&["start", "--steps", "50,100", "--interval", "1s"]));
    for p in &fleet.proxies {
        wait_until("the rollout succeeds", Duration::from_secs(30), || {
            phase_of(p) == "succeeded"
        });
        assert_eq!(percent(p), 100.0);
    }
    let id = rollout_id(&fleet.proxies[0]);
    let windows = fleet.judged_windows(&id);
    assert!(windows.len() >= 2, "both steps judged: {windows:?}");
    assert_one_verdict_per_window(&windows);
}

#[test]
fn killing_the_master_of_the_namespace_loses_no_request_and_judges_no_window_twice() {
    let _serial = serial();
    let mut fleet = Fleet::start("cl-failover");
    let mut load = Load::start(LoadSpec::new(fleet.bases()));
    ok(fleet.rollout(&[
        "start",
        "--steps",
        "5,10,15,20,25,30,40,50,60,70,80,90,100",
        "--interval",
        "1s",
    ]));
    wait_until("two windows judged", NOTICE, || {
        rollout_of(&fleet.proxies[0])["state"]["next_window"]
            .as_u64()
            .is_some_and(|w| w >= 2)
    });

    // Every key of the namespace lives in one slot: the rollout's is as good as any.
    let key = common::store::store(fleet.ns).rollout_key();
    let old = fleet.cluster.kill_master_of(&key);
    let killed = Instant::now();
    let new = fleet
        .cluster
        .wait_promoted(&key, old, Duration::from_secs(15));
    let promoted = killed.elapsed();
    eprintln!("master {old} killed -> replica {new} promoted after {promoted:?}");

    // A registration made after the failover reaches every proxy.
    let late = App::start("prod-late", "production");
    eventually(NOTICE, "ctl register after the failover", || {
        cctl(
            &fleet.cluster,
            fleet.ns,
            None,
            &["register", "--pool", "production", &late.addr()],
        )
        .status
        .success()
        .then_some(())
    });
    for p in &fleet.proxies {
        wait_until("the proxy follows the new master", NOTICE, || {
            in_rotation(p, "production") == 2
        });
    }
    let followed = killed.elapsed();
    eprintln!(
        "master killed -> both proxies serve a registration made after the failover after \
         {followed:?} ({:?} after the promotion)",
        followed - promoted
    );

    for p in &fleet.proxies {
        wait_until(
            "the rollout succeeds after the failover",
            Duration::from_secs(40),
            || phase_of(p) == "succeeded",
        );
    }
    load.stop();
    let seen = load.seen();
    let failed: Vec<_> = seen
        .iter()
        .filter(|s| s.status == 0 || s.status >= 500)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the failover: {:?}",
        failed.len(),
        seen.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(seen.len() > 100, "the load ran: {} requests", seen.len());
    let id = rollout_id(&fleet.proxies[0]);
    let windows = fleet.judged_windows(&id);
    assert_one_verdict_per_window(&windows);
    assert!(windows.len() >= 12, "every step judged: {windows:?}");
    drop(late);
}

#[test]
fn ctl_reaches_a_tls_cluster_and_checks_its_certificate() {
    let _serial = serial();
    let ca = common::tls::TestCa::new();
    let pair = ca.issue("redis", &["127.0.0.1"]);
    let cluster = RedisCluster::start_tls(&pair, ca.ca_pem());
    let seeds = cluster.seeds();
    assert!(seeds.starts_with("rediss://"), "{seeds}");
    let ca_pem = ca.ca_pem().display().to_string();
    // The system's trust store, as a deployment would set it (rustls-native-certs reads
    // SSL_CERT_FILE): here it holds only the test CA.
    let trusted = [("SSL_CERT_FILE", ca_pem.as_str())];
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut all = vec![
            "ctl",
            "--redis",
            &seeds,
            "--cluster",
            "--namespace",
            "cl-tls",
        ];
        all.extend_from_slice(args);
        run_cli_env(&all, env, Duration::from_secs(30))
    };
    ok(run(
        &trusted,
        &["register", "--pool", "production", "127.0.0.1:9"],
    ));
    let status = ok(run(&trusted, &["status"]));
    assert!(status.contains("127.0.0.1:9"), "{status}");
    // A CA the client does not trust: refused, not silently accepted.
    let other = common::tls::TestCa::new();
    let untrusted_pem = other.ca_pem().display().to_string();
    let refused = run(&[("SSL_CERT_FILE", untrusted_pem.as_str())], &["status"]);
    let said = text(&refused);
    assert!(
        !refused.status.success()
            && said.contains("cannot reach Redis")
            && said.contains("invalid peer certificate"),
        "{said}"
    );
}
