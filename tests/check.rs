//! `canary-lb check` on broken configs, run as a user runs it (the real binary): every error
//! names the config file, the key and its line, and says what to write instead; warnings for
//! configs that can only answer 503 leave the exit code 0 unless `--strict`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::tls::TestCa;
use common::*;

/// Run `check` on `yaml` written to a file in `dir`; the exit code, stdout and stderr.
fn check(dir: &Path, name: &str, yaml: &str, strict: bool) -> (Option<i32>, String, String) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write config");
    let path = path.to_str().expect("utf-8 path");
    let mut args = vec!["check", "--config", path];
    if strict {
        args.push("--strict");
    }
    let out = run_cli(&args, Duration::from_secs(30));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_error_names_the_file_the_key_and_the_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let good = ca.issue("site", &["site.test"]);
    let expired = ca.issue_expired("old", &["old.test"]);
    let not_pem = dir.path().join("notes.txt");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let (cert, key, old_cert, old_key, text) = (
        good.cert.display().to_string(),
        good.key.display().to_string(),
        expired.cert.display().to_string(),
        expired.key.display().to_string(),
        not_pem.display().to_string(),
    );
    let tls = |cert: &str, key: &str| {
        format!("listen:\n  - addr: \"127.0.0.1:8443\"\n    tls:\n      cert: {cert}\n      key: {key}\n")
    };
    // (name, config, what the error must say: key and message, then the line)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "duration-without-unit",
            "upstream:\n  read_timeout: 30\n".into(),
            vec!["upstream.read_timeout: 30 has no unit; write 30s or 30ms", "line 2"],
        ),
        (
            "quoted-duration-without-unit",
            "health_check:\n  interval: \"5\"\n".into(),
            vec!["health_check.interval: 5 has no unit; write 5s or 5ms", "line 2"],
        ),
        (
            "fraction-without-unit",
            "threads: 1\nclient: { header_timeout: 1.5 }\n".into(),
            vec!["client.header_timeout: 1.5 has no unit", "line 2"],
        ),
        (
            "duration-in-words",
            "grace_period: ten\n".into(),
            vec![
                "grace_period: `ten` is not a duration: write a number and a unit, like 500ms, 10s or 1m",
                "line 1",
            ],
        ),
        (
            "duration-unknown-unit",
            "rollout:\n  interval: 10 parsecs\n".into(),
            vec!["rollout.interval: `10 parsecs`: unknown unit `parsecs`", "line 2"],
        ),
        (
            "duplicate-top-level-key",
            "listen: \"127.0.0.1:1\"\nthreads: 1\nlisten: \"127.0.0.1:2\"\n".into(),
            vec!["duplicate field `listen`", "line 3"],
        ),
        (
            "unknown-top-level-key",
            "threads: 1\nlisten_on: \"127.0.0.1:1\"\n".into(),
            vec!["unknown field `listen_on`", "line 2"],
        ),
        (
            "duplicate-server",
            "pools:\n  production:\n    servers:\n      - \"127.0.0.1:3001\"\n      - \"127.0.0.1:3001\"\n"
                .into(),
            vec!["pools.production.servers[1]: `127.0.0.1:3001` is listed twice", "line 5"],
        ),
        (
            "duplicate-server-weighted",
            "pools:\n  canary:\n    servers: [\"10.0.0.1:80\", { addr: \"10.0.0.1:80\", weight: 2 }]\n"
                .into(),
            vec!["pools.canary.servers[1]", "listed twice", "line 3"],
        ),
        (
            "steps-descending",
            "rollout:\n  steps: [10, 5]\n".into(),
            vec!["rollout.steps: must be strictly ascending: 5 follows 10", "line 2"],
        ),
        (
            "steps-empty",
            "threads: 1\nrollout:\n  steps: []\n".into(),
            vec!["rollout.steps: must have 1 to 100 steps", "line 3"],
        ),
        (
            "steps-zero",
            "rollout: { steps: [0, 50] }\n".into(),
            vec!["rollout.steps: step 1 is 0", "line 1"],
        ),
        (
            "rollout-interval-short",
            "rollout:\n  interval: 50ms\n".into(),
            vec!["rollout.interval: must be at least 100ms", "line 2"],
        ),
        (
            "rollout-count-too-large",
            "rollout:\n  threshold: 2\n  windows_per_step: 10001\n".into(),
            vec!["rollout.windows_per_step: must be 1..=10000, got 10001", "line 3"],
        ),
        (
            "metrics-listen-is-listen",
            "listen: \"127.0.0.1:9000\"\nmetrics_listen: \"127.0.0.1:9000\"\n".into(),
            vec!["metrics_listen: 127.0.0.1:9000 is also a proxy listen address", "line 2"],
        ),
        (
            "metrics-listen-is-a-tls-listener",
            "threads: 1\nlisten:\n  - \"127.0.0.1:9001\"\n  - { addr: \"127.0.0.1:9002\", h2c: true }\nmetrics_listen: \"127.0.0.1:9002\"\n"
                .into(),
            vec!["metrics_listen: 127.0.0.1:9002 is also a proxy listen address", "line 5"],
        ),
        (
            "tls-cert-missing",
            tls("/nonexistent/site.crt", &key),
            vec![
                "listen[0].tls.cert: TLS certificate `/nonexistent/site.crt`: cannot read it",
                "line 4",
            ],
        ),
        (
            "tls-key-missing",
            tls(&cert, "/nonexistent/site.key"),
            vec!["listen[0].tls.key: TLS certificate `/nonexistent/site.key`", "line 5"],
        ),
        (
            "tls-cert-not-pem",
            tls(&text, &key),
            vec!["listen[0].tls.cert: TLS certificate `", "notes.txt`", "line 4"],
        ),
        (
            "tls-cert-expired",
            tls(&old_cert, &old_key),
            vec!["listen[0].tls.cert: TLS certificate `", "old.crt`", "expired", "line 4"],
        ),
        (
            "tls-sni-cert-missing",
            format!(
                "listen:\n  - addr: \"127.0.0.1:8443\"\n    tls:\n      cert: {cert}\n      key: {key}\n      sni:\n        - cert: /nonexistent/b.crt\n          key: {key}\n"
            ),
            vec!["listen[0].tls.sni[0].cert: TLS certificate `/nonexistent/b.crt`", "line 7"],
        ),
        (
            "listen-twice",
            "listen:\n  - \"127.0.0.1:8080\"\n  - \"127.0.0.1:8080\"\n".into(),
            vec!["listen[1].addr: 127.0.0.1:8080 is listed twice", "line 3"],
        ),
        (
            "redirect-without-tls",
            "listen:\n  - { addr: \"127.0.0.1:8080\", redirect_to_https: true }\n".into(),
            vec!["listen[0].redirect_to_https: no TLS listener to redirect to", "line 2"],
        ),
        (
            "weight-zero",
            "pools:\n  production:\n    servers: [{ addr: \"127.0.0.1:1\", weight: 0 }]\n".into(),
            vec!["pools.production.servers[0]", "weight must be 1..=1000, got 0", "line 3"],
        ),
        (
            "percent-too-large",
            "routing:\n  canary_percent: 150\n".into(),
            vec!["routing.canary_percent: canary percent must be 0..=100, got 150", "line 2"],
        ),
        (
            "threads-zero",
            "threads: 0\n".into(),
            vec!["threads: must be 1..=256, got 0", "line 1"],
        ),
        (
            "redis-url",
            "discovery:\n  provider: redis\n  url: \"http://x\"\n".into(),
            vec!["discovery.url: `http://x` is not a redis:// or rediss:// URL", "line 3"],
        ),
        (
            "header-line-above-head",
            "client:\n  max_header_bytes: 16384\n  max_header_line: 65536\n".into(),
            vec!["client.max_header_line: 65536 is above client.max_header_bytes", "line 3"],
        ),
        (
            "flag-name",
            "flags:\n  items:\n    Bad_Name: { percent: 5 }\n".into(),
            vec!["flags.items.Bad_Name: flag name `Bad_Name`", "line 3"],
        ),
        (
            "timeout-too-short",
            "client:\n  header_timeout: 10ms\n".into(),
            vec!["client.header_timeout: must be at least 100ms", "line 2"],
        ),
    ];
    assert!(
        cases.len() >= 25,
        "the issue asks for 25 broken configs at least"
    );
    for (name, yaml, wants) in &cases {
        let (code, stdout, stderr) = check(dir.path(), name, yaml, false);
        assert_eq!(code, Some(1), "{name}: check passed:\n{stdout}{stderr}");
        let file = format!(
            "config file {}",
            dir.path().join(format!("{name}.yaml")).display()
        );
        assert!(
            stderr.contains(&file),
            "{name}: `{stderr}` should name {file}"
        );
        for want in wants {
            assert!(
                stderr.contains(want),
                "{name}: `{stderr}` should say `{want}`"
            );
        }
        assert_eq!(
            stderr.lines().count(),
            1,
            "{name}: one line, no backtrace:\n{stderr}"
        );
    }
}

#[test]
fn configs_that_can_only_answer_503_are_warned_about_and_strict_fails_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("empty", "", vec!["the file sets nothing", "every request is answered 503"]),
        ("only-comments", "# todo\n", vec!["the file sets nothing"]),
        (
            "no-servers",
            "threads: 1\nlisten: \"127.0.0.1:8080\"\n",
            vec!["pools: no servers in either pool", "every request is answered 503"],
        ),
        (
            "no-production",
            "threads: 1\npools:\n  canary:\n    servers: [\"127.0.0.1:3001\"]\n",
            vec!["pools.production.servers: no production server", "line 3"],
        ),
        (
            "same-server-in-both-pools",
            "pools:\n  production:\n    servers: [\"127.0.0.1:3001\"]\n  canary:\n    servers: [\"127.0.0.1:3001\"]\n",
            vec![
                "pools.canary.servers[0]: `127.0.0.1:3001` is also pools.production.servers[0]",
                "line 5",
            ],
        ),
        (
            "name-does-not-resolve",
            // `.invalid` never resolves (RFC 6761).
            "pools:\n  production:\n    servers: [\"127.0.0.1:3001\", \"app.nowhere.invalid:80\"]\n",
            vec![
                "pools.production.servers[1]: `app.nowhere.invalid:80` does not resolve",
                "line 3",
            ],
        ),
    ];
    for (name, yaml, wants) in &cases {
        let (code, stdout, stderr) = check(dir.path(), name, yaml, false);
        assert_eq!(
            code,
            Some(0),
            "{name}: a warning is not an error:\n{stdout}{stderr}"
        );
        assert!(
            stdout.contains("OK") && stdout.contains("1 warning(s)"),
            "{name}: {stdout}"
        );
        let file = format!(
            "warning: config file {}",
            dir.path().join(format!("{name}.yaml")).display()
        );
        assert!(
            stderr.starts_with(&file),
            "{name}: `{stderr}` should start `{file}`"
        );
        for want in wants {
            assert!(
                stderr.contains(want),
                "{name}: `{stderr}` should say `{want}`"
            );
        }
        let (code, _, stderr) = check(dir.path(), name, yaml, true);
        assert_eq!(
            code,
            Some(1),
            "{name}: --strict passed a warning:\n{stderr}"
        );
        assert!(
            stderr.contains("--strict makes a warning an error"),
            "{name}: {stderr}"
        );
    }
    // A config that can serve: no warning, and --strict passes it.
    let good = "pools:\n  production:\n    servers: [\"127.0.0.1:3001\", \"localhost:3002\"]\n  canary:\n    servers: [\"127.0.0.1:4001\"]\n";
    let (code, stdout, stderr) = check(dir.path(), "good", good, true);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("OK") && !stdout.contains("warning"),
        "{stdout}"
    );
    assert!(stderr.is_empty(), "{stderr}");
}
