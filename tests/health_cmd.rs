//! `canary-lb health`, the container's HEALTHCHECK: it must follow `metrics_listen` wherever
//! the config file or `CANARY_LB_METRICS_LISTEN` put it, fail when the admin listener is down,
//! and fail (never hang, never pass) whatever a hostile or broken listener sends back.
//! Real `canary-lb serve` and `canary-lb app` processes on loopback; misbehaving listeners
//! answer with raw bytes (tests/common/canned.rs).

mod common;

use std::process::Output;
use std::time::Duration;

use common::raw::{RawBackend, Script};
use common::*;

/// Bound on one `canary-lb health` run: well above its own 2 s default timeout.
const RUN: Duration = Duration::from_secs(20);

fn start_proxy(app: &App) -> Proxy {
    Proxy::in_front_of(&[app.addr()], "threads: 1\ngrace_period: 1s\n")
}

fn health(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["health"];
    all.extend_from_slice(args);
    run_cli_env(&all, env, RUN)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_healthy(out: &Output) {
    assert!(out.status.success(), "expected exit 0: {out:?}");
}

/// Exit code 1 (a HEALTHCHECK's "unhealthy") and `needle` in the message.
fn assert_unhealthy(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {out:?}");
    assert!(
        stderr(out).contains(needle),
        "expected `{needle}` in: {}",
        stderr(out)
    );
}

/// A config file holding `yaml`, kept alive by the returned dir.
fn config_file(yaml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("canary-lb.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let path = path.display().to_string();
    (dir, path)
}

#[test]
fn passes_on_the_config_metrics_listen_and_fails_once_the_proxy_is_gone() {
    let app = App::start("hc-p1", "production");
    let mut proxy = start_proxy(&app);
    let config = proxy.config_path().display().to_string();

    assert_healthy(&health(&["--config", &config], &[]));
    // The image sets CANARY_LB_CONFIG instead of passing --config.
    assert_healthy(&health(&[], &[("CANARY_LB_CONFIG", &config)]));

    proxy.sigint();
    assert!(proxy.wait_exit(STARTUP).is_some(), "proxy did not exit");
    let out = health(&["--config", &config], &[]);
    assert_unhealthy(&out, &format!("127.0.0.1:{}", proxy.metrics_port()));
}

#[test]
fn follows_the_environment_override_like_serve() {
    let app = App::start("hc-p2", "production");
    let proxy = start_proxy(&app);
    let metrics = proxy.metrics_port();
    let dead = free_port();

    // The file points at a port nothing serves; the override at the running proxy.
    let (_dir, moved) = config_file(&proxy_config(
        free_port(),
        dead,
        &format!(
            "pools:\n  production: {{ servers: [\"{}\"] }}\n",
            app.addr()
        ),
    ));
    assert_unhealthy(&health(&["--config", &moved], &[]), &format!(":{dead}"));
    let here = format!("127.0.0.1:{metrics}");
    assert_healthy(&health(
        &["--config", &moved],
        &[("CANARY_LB_METRICS_LISTEN", &here)],
    ));
    // A wildcard listen address, as the image sets it (0.0.0.0:9091), is probed on loopback.
    let wildcard = format!("0.0.0.0:{metrics}");
    assert_healthy(&health(
        &["--config", &moved],
        &[("CANARY_LB_METRICS_LISTEN", &wildcard)],
    ));

    // And the other way round: a running proxy's own file, overridden to a dead port.
    let config = proxy.config_path().display().to_string();
    let elsewhere = format!("127.0.0.1:{dead}");
    assert_unhealthy(
        &health(
            &["--config", &config],
            &[("CANARY_LB_METRICS_LISTEN", &elsewhere)],
        ),
        &elsewhere,
    );
}

#[test]
fn a_config_without_admin_listener_or_with_errors_is_unhealthy_and_says_why() {
    let app = App::start("hc-p3", "production");
    let (_d1, no_admin) = config_file(&format!(
        "listen: \"127.0.0.1:{}\"\npools:\n  production: {{ servers: [\"{}\"] }}\n",
        free_port(),
        app.addr()
    ));
    assert_unhealthy(&health(&["--config", &no_admin], &[]), "metrics_listen");

    let (_d2, bad) = config_file(&format!(
        "listen: \"127.0.0.1:{}\"\nmetrics_listen: \"127.0.0.1:{}\"\nthreads: lots\n",
        free_port(),
        free_port()
    ));
    assert_unhealthy(&health(&["--config", &bad], &[]), "threads");

    assert_unhealthy(
        &health(&["--config", "/nonexistent/canary-lb.yaml"], &[]),
        "/nonexistent/canary-lb.yaml",
    );
}

#[test]
fn addr_probes_an_app_server_without_a_config() {
    let app = App::start("hc-p4", "production");
    assert_healthy(&health(&["--addr", &app.addr()], &[]));
}

#[test]
fn sends_one_plain_get_healthz() {
    let ok = RawBackend::scripted(Script::Reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".to_vec(),
    ));
    assert_healthy(&health(&["--addr", &ok.addr()], &[]));
    let received = ok.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let head = String::from_utf8_lossy(&received[0].head);
    assert!(
        head.starts_with("GET /healthz HTTP/1.1\r\n"),
        "request head: {head:?}"
    );
    assert!(
        head.contains(&format!("\r\nHost: {}\r\n", ok.addr())),
        "{head:?}"
    );
}

#[test]
fn hostile_or_broken_answers_are_unhealthy() {
    let cases: Vec<(&str, Script, &str)> = vec![
        (
            "an error status",
            Script::Reply(b"HTTP/1.1 503 Service Unavailable\r\n\r\n".to_vec()),
            "answered 503",
        ),
        (
            "a 2xx that is not 200",
            Script::Reply(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            "answered 204",
        ),
        (
            "a four-digit status",
            Script::Reply(b"HTTP/1.1 2000 OK\r\n\r\n".to_vec()),
            "not an HTTP status line",
        ),
        (
            "another protocol",
            Script::Reply(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()),
            "not an HTTP status line",
        ),
        (
            "a 200 without the line end",
            Script::Reply(b"HTTP/1.1 200 OK".to_vec()),
            "closed before a status line",
        ),
        (
            "a close without a byte",
            Script::Reply(Vec::new()),
            "closed before a status line",
        ),
        (
            "an endless line",
            Script::Reply(vec![b'A'; 64 * 1024]),
            "no status line in the first 1024 bytes",
        ),
        ("silence", Script::Silent, "no answer within"),
        // One byte every 50 ms: each read succeeds, so only a deadline for the whole status
        // line ends it before RUN (a per-read timeout would take 1024 x 50 ms = 51 s).
        (
            "a trickle",
            Script::Trickle {
                byte: b'H',
                every: Duration::from_millis(50),
            },
            "no answer",
        ),
    ];
    for (what, script, needle) in cases {
        let listener = RawBackend::scripted(script);
        let out = health(&["--addr", &listener.addr(), "--timeout", "1s"], &[]);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert!(
            stderr(&out).contains(needle),
            "{what}: expected `{needle}` in {}",
            stderr(&out)
        );
    }
}
