//! Metrics that exist from the first scrape (issue 9, part 3).
//!
//! A series that appears only with its first event starts at 1, so `increase()` and `rate()`
//! in the shipped alert rules and dashboard never see that event. Every label set known at
//! start must therefore be exported at 0 by a proxy that has served nothing yet, and every
//! metric the dashboard and the alert rules query must be there. The names are parsed out of
//! `conf/grafana/canary-lb.json` and `conf/prometheus/alerts.yml`, so these tests follow the
//! files.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use canary_lb::discovery::DiscoveryErrorKind;
use canary_lb::metrics::ConfigSource;
use canary_lb::model::{PoolKind, Reason};
use canary_lb::pool::{CodeClass, ServerStateLabel};
use canary_lb::proxy::{MethodLabel, RefusalCode, PRESET_REQUEST_CODES};
use common::metrics::{family, names_in, Scrape};
use common::{
    ctl_ok, free_port, production_pool, proxy_config, wait_until, App, Proxy, RedisServer,
};

const DASHBOARD: &str = "conf/grafana/canary-lb.json";
const ALERTS: &str = "conf/prometheus/alerts.yml";
const NOTICE: Duration = Duration::from_secs(20);

const HEALTH: &str = "health_check: { kind: http, path: /healthz, interval: 300ms, timeout: 2s, \
                      healthy_threshold: 1, unhealthy_threshold: 1 }\n";

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// The metric families the dashboard and the alert rules query.
fn families_used() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for file in [DASHBOARD, ALERTS] {
        let found: BTreeSet<String> = names_in(&repo_file(file))
            .iter()
            .map(|n| family(n).to_string())
            .collect();
        assert!(!found.is_empty(), "{file} names no canary_lb metric");
        used.extend(found);
    }
    for name in [
        "canary_lb_discovery_errors_total",
        "canary_lb_config_changes_total",
        "canary_lb_requests_total",
        "canary_lb_request_duration_seconds",
        "canary_lb_pool_servers",
    ] {
        assert!(
            used.contains(name),
            "{name} not found in {DASHBOARD} or {ALERTS}: {used:?}"
        );
    }
    used
}

/// The value of the one series of `name` carrying every label of `labels`.
fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let parsed = Scrape::parse(scrape);
    let found: Vec<f64> = parsed
        .samples
        .iter()
        .filter(|s| s.name == name && s.has_labels(&want))
        .map(|s| s.value)
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?} matches {} series",
        found.len()
    );
    found.first().copied()
}

/// Assert that the series `name{labels}` is exported with value 0.
fn assert_zero(scrape: &str, name: &str, labels: &[(&str, &str)]) {
    assert_eq!(
        value(scrape, name, labels),
        Some(0.0),
        "{name}{labels:?} is not exported at 0 by a fresh proxy:\n{scrape}"
    );
}

/// Every family the dashboard and the alerts use has a sample in `scrape`, and every label set
/// known at start is there at 0.
fn assert_first_scrape_complete(scrape: &str, servers: &[(PoolKind, String)]) {
    let exported = Scrape::parse(scrape).names();
    for family in families_used() {
        let histogram = format!("{family}_count");
        assert!(
            exported.contains(family.as_str()) || exported.contains(histogram.as_str()),
            "`{family}` (used by {DASHBOARD} or {ALERTS}) is missing from a fresh proxy's \
             /metrics:\n{scrape}"
        );
    }
    for kind in DiscoveryErrorKind::ALL {
        assert_zero(
            scrape,
            "canary_lb_discovery_errors_total",
            &[("kind", kind.as_str())],
        );
    }
    // The kinds the alert rules name, spelled as they spell them.
    assert_zero(
        scrape,
        "canary_lb_discovery_errors_total",
        &[("kind", "store_lost")],
    );
    assert_zero(
        scrape,
        "canary_lb_discovery_errors_total",
        &[("kind", "unreachable")],
    );
    for source in ConfigSource::ALL {
        assert_zero(
            scrape,
            "canary_lb_config_changes_total",
            &[("source", source.as_str())],
        );
    }
    assert_zero(
        scrape,
        "canary_lb_config_changes_total",
        &[("source", "file")],
    );
    for code in RefusalCode::ALL {
        assert_zero(
            scrape,
            "canary_lb_refused_requests_total",
            &[("code", code.as_str())],
        );
    }
    for pool in PoolKind::ALL {
        let p = ("pool", pool.as_str());
        for reason in Reason::ALL {
            let labels = [p, ("reason", reason.as_str())];
            assert_zero(scrape, "canary_lb_routing_decisions_total", &labels);
        }
        assert_zero(scrape, "canary_lb_retries_total", &[p]);
        assert_zero(scrape, "canary_lb_request_duration_seconds_count", &[p]);
        for code in PRESET_REQUEST_CODES {
            for method in MethodLabel::ALL {
                let labels = [p, ("code", &code.to_string()), ("method", method.as_str())];
                assert_zero(scrape, "canary_lb_requests_total", &labels);
            }
        }
        for state in ServerStateLabel::ALL {
            let labels = [p, ("state", state.as_str())];
            assert!(
                value(scrape, "canary_lb_pool_servers", &labels).is_some(),
                "canary_lb_pool_servers{labels:?} missing:\n{scrape}"
            );
        }
    }
    for (pool, server) in servers {
        let (p, s) = (("pool", pool.as_str()), ("server", server.as_str()));
        assert_eq!(
            value(scrape, "canary_lb_server_up", &[p, s]),
            Some(1.0),
            "{scrape}"
        );
        for class in CodeClass::ALL {
            let labels = [p, s, ("code_class", class.as_str())];
            assert_zero(scrape, "canary_lb_upstream_requests_total", &labels);
        }
    }
}

/// Wait until each pool has its one server in rotation.
fn wait_for_servers(proxy: &Proxy) {
    wait_until("both pools have their server in rotation", NOTICE, || {
        let status = proxy.status_json();
        PoolKind::ALL
            .iter()
            .all(|p| status["pools"][p.as_str()]["in_rotation"] == 1)
    });
}

#[test]
fn a_fresh_proxy_exports_every_metric_at_zero_with_static_servers() {
    let p1 = App::start("first-p1", "production");
    let c1 = App::start("first-c1", "canary");
    let body = |percent: u32| {
        format!(
            "threads: 1\n\
             grace_period: 1s\n\
             pools:\n  \
               production: {{ servers: [\"{}\"] }}\n  \
               canary: {{ servers: [\"{}\"] }}\n\
             {HEALTH}\
             routing: {{ canary_percent: {percent}, salt: \"first-scrape\" }}\n",
            p1.addr(),
            c1.addr()
        )
    };
    let (listen, metrics) = (free_port(), free_port());
    let proxy = Proxy::start(&proxy_config(listen, metrics, &body(10)));
    wait_for_servers(&proxy);

    // No request has gone through the proxy yet.
    let scrape = proxy.metrics_text();
    let servers = [
        (PoolKind::Production, p1.addr()),
        (PoolKind::Canary, c1.addr()),
    ];
    assert_first_scrape_complete(&scrape, &servers);

    // The series that were there at 0 are the ones that count: a reload counts once.
    proxy.rewrite_config(&proxy_config(listen, metrics, &body(20)));
    proxy.sighup();
    wait_until("the reload is counted on the file series", NOTICE, || {
        let scrape = proxy.metrics_text();
        value(
            &scrape,
            "canary_lb_config_changes_total",
            &[("source", "file")],
        ) == Some(1.0)
    });
    let scrape = proxy.metrics_text();
    assert_zero(
        &scrape,
        "canary_lb_config_changes_total",
        &[("source", "redis")],
    );
}

#[test]
fn a_fresh_proxy_exports_every_metric_at_zero_with_redis_discovery() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let ns = "first-scrape";
    let p1 = App::start("first-redis-p1", "production");
    let c1 = App::start("first-redis-c1", "canary");
    ctl_ok(&url, ns, &["register", "--pool", "production", &p1.addr()]);
    ctl_ok(&url, ns, &["register", "--pool", "canary", &c1.addr()]);
    let proxy = Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 1\n\
             grace_period: 1s\n\
             {HEALTH}\
             discovery: {{ provider: redis, url: \"{url}\", namespace: \"{ns}\", \
                           resync_interval: 1s }}\n"
        ),
    ));
    wait_for_servers(&proxy);
    wait_until("discovery is up", NOTICE, || {
        proxy.status_json()["discovery"]["up"] == true
    });

    let scrape = proxy.metrics_text();
    let servers = [
        (PoolKind::Production, p1.addr()),
        (PoolKind::Canary, c1.addr()),
    ];
    assert_first_scrape_complete(&scrape, &servers);
    assert_eq!(value(&scrape, "canary_lb_discovery_up", &[]), Some(1.0));

    // Redis goes away: the `unreachable` series that stood at 0 counts it.
    redis.kill();
    wait_until(
        "the outage is counted on the unreachable series",
        NOTICE,
        || {
            let scrape = proxy.metrics_text();
            value(
                &scrape,
                "canary_lb_discovery_errors_total",
                &[("kind", "unreachable")],
            )
            .is_some_and(|v| v >= 1.0)
        },
    );
    let scrape = proxy.metrics_text();
    assert_zero(
        &scrape,
        "canary_lb_discovery_errors_total",
        &[("kind", "store_lost")],
    );
}

/// Issue 22, observation 4: what an operator looks for first. Which build runs
/// (`canary_lb_build_info`), the process itself (`process_*`), and whether the last SIGHUP
/// reload applied: before, a refused reload left nothing but a log line.
#[test]
fn build_process_and_reload_outcome_are_exported() {
    let p1 = App::start("ops-p1", "production");
    let (listen, metrics) = (free_port(), free_port());
    let good = proxy_config(
        listen,
        metrics,
        &format!(
            "threads: 1\ngrace_period: 1s\n{}{HEALTH}",
            production_pool(&[&p1.addr()])
        ),
    );
    let proxy = Proxy::start(&good);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let scrape = proxy.metrics_text();

    // The commit is git's HEAD at build time (build.rs), unless the build was given one.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let commit = std::env::var("CANARY_LB_COMMIT")
        .ok()
        .or(head)
        .unwrap_or_else(|| "unknown".to_string());
    assert_eq!(
        value(
            &scrape,
            "canary_lb_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("commit", &commit)]
        ),
        Some(1.0),
        "build info names this build:\n{scrape}"
    );

    // The process collector: a start time near now, memory, descriptors.
    let start = value(&scrape, "process_start_time_seconds", &[]).expect("process start time");
    assert!(
        (started - 600.0..=started + 60.0).contains(&start),
        "process_start_time_seconds {start} is not about now ({started})"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
        "process_threads",
    ] {
        assert!(
            value(&scrape, name, &[]).is_some(),
            "{name} is not exported:\n{scrape}"
        );
    }
    assert!(value(&scrape, "process_open_fds", &[]).is_some_and(|v| v > 0.0));

    // From the first scrape: no reload yet, and the start counts as a successful load.
    for result in ["applied", "failed"] {
        assert_zero(
            &scrape,
            "canary_lb_config_reloads_total",
            &[("result", result)],
        );
    }
    assert_eq!(
        value(&scrape, "canary_lb_config_last_reload_success", &[]),
        Some(1.0)
    );
    let stamp = |s: &str| {
        value(s, "canary_lb_config_last_reload_timestamp_seconds", &[]).expect("reload timestamp")
    };
    let at_start = stamp(&scrape);
    assert!(at_start > 0.0);

    // A file that does not parse: refused, counted, and the gauge says so.
    proxy.rewrite_config("pools: [this is not a config\n");
    proxy.sighup();
    wait_until("the refused reload is counted", NOTICE, || {
        let scrape = proxy.metrics_text();
        value(
            &scrape,
            "canary_lb_config_reloads_total",
            &[("result", "failed")],
        ) == Some(1.0)
    });
    let scrape = proxy.metrics_text();
    assert_eq!(
        value(&scrape, "canary_lb_config_last_reload_success", &[]),
        Some(0.0),
        "the last reload failed:\n{scrape}"
    );
    assert_zero(
        &scrape,
        "canary_lb_config_reloads_total",
        &[("result", "applied")],
    );
    let at_failure = stamp(&scrape);
    assert!(at_failure >= at_start, "{at_failure} < {at_start}");

    // The good file again: applied, and the gauge is back to 1.
    proxy.rewrite_config(&good);
    proxy.sighup();
    wait_until("the applied reload is counted", NOTICE, || {
        let scrape = proxy.metrics_text();
        value(
            &scrape,
            "canary_lb_config_reloads_total",
            &[("result", "applied")],
        ) == Some(1.0)
    });
    let scrape = proxy.metrics_text();
    assert_eq!(
        value(&scrape, "canary_lb_config_last_reload_success", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "canary_lb_config_reloads_total",
            &[("result", "failed")]
        ),
        Some(1.0)
    );
    assert!(stamp(&scrape) >= at_failure);
}

#[test]
fn the_harness_parses_labels_with_commas_quotes_and_escapes() {
    let s = Scrape::parse(
        "# HELP x y\nx_total{a=\"1,2\",b=\"q\\\"t\"} 3\nx_total{a=\"2\"} 4\nup 1\nh_bucket{le=\"+Inf\"} 5\n",
    );
    assert_eq!(s.sum("x_total", &[]), 7.0);
    assert_eq!(s.value("x_total", &["a=\"1,2\""]), Some(3.0));
    assert_eq!(s.value("x_total", &["b=\"q\"t\""]), Some(3.0));
    assert_eq!(s.value("x_total", &["a=\"1\""]), None);
    assert_eq!(s.value("up", &[]), Some(1.0));
    assert!(s.has("h") && !s.has("x"));
}
