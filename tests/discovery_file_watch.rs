//! The `file_watch` discovery provider (issue 24): a servers file beside the config, followed as
//! it changes with no SIGHUP and no restart. Real app servers, the real proxy binary; every wait
//! is a condition with a deadline.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// The provider looks four times a second and applies a change once two looks agree; this
/// leaves room for a loaded 2-core machine.
const NOTICE: Duration = Duration::from_secs(10);

/// A proxy whose servers come from `servers.yaml` beside its config (a relative path).
fn proxy() -> Proxy {
    Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        "threads: 2\n\
         grace_period: 1s\n\
         health_check: { kind: http, path: /healthz, interval: 300ms, timeout: 2s, \
                         healthy_threshold: 1, unhealthy_threshold: 1 }\n\
         discovery: { provider: file_watch, path: servers.yaml }\n",
    ))
}

/// The servers file of `proxy`: `servers.yaml` in its config's directory.
fn servers_file(proxy: &Proxy) -> PathBuf {
    proxy
        .config_path()
        .parent()
        .expect("the config has a directory")
        .join("servers.yaml")
}

/// Write the file in place (not by rename): the provider must cope with a plain rewrite.
fn write(path: &Path, text: &str) {
    fs::write(path, text).expect("write the servers file");
}

/// The servers that answered `n` requests through the proxy (every request must succeed).
fn served_by(proxy: &Proxy, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let r = get(&proxy.url("/"), &[]);
            assert_eq!(r.status, 200, "{r:?}");
            r.served_by().expect("X-Served-By").to_string()
        })
        .collect()
}

/// `canary_lb_discovery_errors_total{kind="KIND"}` (0 when absent).
fn discovery_errors(proxy: &Proxy, kind: &str) -> f64 {
    let series = format!("canary_lb_discovery_errors_total{{kind=\"{kind}\"}} ");
    proxy
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn servers_follow_the_file_without_a_restart_and_a_bad_file_keeps_the_last_ones() {
    let _serial = serial();
    let a = App::start("fw-a", "production");
    let b = App::start("fw-b", "production");
    let proxy = proxy();
    let pid = proxy.pid();
    let file = servers_file(&proxy);

    // No file yet: counted as a discovery error (unreachable), discovery down, nothing served.
    wait_until("a missing servers file is counted", NOTICE, || {
        discovery_errors(&proxy, "unreachable") >= 1.0
    });
    let status = proxy.status_json();
    assert_eq!(status["discovery"]["provider"], "file_watch", "{status}");
    assert_eq!(status["discovery"]["up"], false, "{status}");

    // One server: it serves.
    write(&file, &format!("production:\n  - {}\n", a.addr()));
    wait_until(
        "fw-a serves",
        NOTICE,
        || matches!(try_get(&proxy.url("/"), &[]), Ok(r) if r.served_by() == Some("fw-a")),
    );
    assert_eq!(proxy.status_json()["discovery"]["up"], true);

    // A second one written into the file (the entry shape of `pools.X.servers`): both serve.
    write(
        &file,
        &format!(
            "production:\n  - {}\n  - {{ addr: \"{}\", weight: 1 }}\n",
            a.addr(),
            b.addr()
        ),
    );
    wait_until("fw-b gets requests too", NOTICE, || {
        served_by(&proxy, 10).contains("fw-b")
    });

    // Bad YAML: logged with its line, counted, discovery down, both servers keep serving.
    let invalid_before = discovery_errors(&proxy, "invalid");
    write(
        &file,
        &format!(
            "production:\n  - {}\n  - {{ addr: \"{}\"\n",
            a.addr(),
            b.addr()
        ),
    );
    wait_until("the bad file is counted", NOTICE, || {
        discovery_errors(&proxy, "invalid") > invalid_before
    });
    let status = proxy.status_json();
    assert_eq!(status["discovery"]["up"], false, "{status}");
    let error = status["discovery"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("line"), "the error names no line: {status}");
    assert!(
        proxy.logs().contains("serving the last known servers"),
        "{}",
        proxy.logs()
    );
    assert_eq!(
        served_by(&proxy, 20),
        BTreeSet::from(["fw-a".to_string(), "fw-b".to_string()]),
        "the last good servers keep serving"
    );

    // A server removed: it stops getting requests.
    write(&file, &format!("production: [\"{}\"]\n", a.addr()));
    wait_until("fw-b is out of the pool", NOTICE, || {
        served_by(&proxy, 10) == BTreeSet::from(["fw-a".to_string()])
    });
    assert_eq!(
        served_by(&proxy, 20),
        BTreeSet::from(["fw-a".to_string()]),
        "fw-b still gets requests"
    );
    assert_eq!(proxy.status_json()["discovery"]["up"], true);
    assert_eq!(proxy.pid(), pid, "the proxy was restarted");
}

#[test]
fn check_accepts_file_watch_and_refuses_it_without_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.yaml");
    fs::write(
        &good,
        "listen: [\"127.0.0.1:1\"]\ndiscovery: { provider: file_watch, path: servers.yaml }\n",
    )
    .expect("write");
    let out = run_cli(&["check", "--config", &good.to_string_lossy()], NOTICE);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let servers = dir.path().join("servers.yaml");
    assert!(
        text.contains(&format!("file {}", servers.display())),
        "the path is not resolved beside the config: {text}"
    );
    // The servers file is missing: a warning (the proxy would start and wait for it).
    assert!(
        text.contains("warning") && text.contains("cannot read"),
        "{text}"
    );
    // A bad one: the warning names its line; a good one: no warning.
    fs::write(&servers, "production:\n  - 127.0.0.1:1\n  - 127.0.0.1:0x\n").expect("write");
    let out = run_cli(&["check", "--config", &good.to_string_lossy()], NOTICE);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        text.contains("production[1]") && text.contains("line 3"),
        "{text}"
    );
    fs::write(&servers, "production: [\"127.0.0.1:1\"]\n").expect("write");
    let out = run_cli(&["check", "--config", &good.to_string_lossy()], NOTICE);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && !text.contains("warning"), "{text}");

    let bad = dir.path().join("bad.yaml");
    fs::write(
        &bad,
        "listen: [\"127.0.0.1:1\"]\ndiscovery:\n  provider: file_watch\n",
    )
    .expect("write");
    let out = run_cli(&["check", "--config", &bad.to_string_lossy()], NOTICE);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("discovery.provider")
            && text.contains("discovery.path")
            && text.contains("line 3"),
        "{text}"
    );
}
