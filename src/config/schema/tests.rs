//! The file's parsing and validation, key by key and as a whole.

use super::*;
use crate::model::{Percent, ServerAddr};

#[test]
fn access_log_and_trusted_proxies_are_validated() {
    let c = Config::parse("threads: 1\n").expect("defaults");
    assert_eq!(
        c.access_log,
        AccessLogConfig::On(AccessLogSettings::default())
    );
    assert!(c.trusted_proxies.is_empty());
    assert_eq!(c.client.tunnel_idle_timeout, Duration::from_secs(600));
    assert_eq!(
        Config::parse("access_log: off\n").expect("off").access_log,
        AccessLogConfig::Off
    );
    let c = Config::parse(
        "access_log: { path: /tmp/a.log, format: text, query: true, buffer: 8 }\n\
             trusted_proxies: [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
    )
    .expect("valid");
    let s = c.access_log.settings().expect("on");
    assert_eq!(s.path.as_deref(), Some(std::path::Path::new("/tmp/a.log")));
    assert_eq!(
        (s.format, s.query, s.buffer),
        (AccessLogFormat::Text, true, 8)
    );
    assert_eq!(c.trusted_proxies.len(), 2);
    for (yaml, want) in [
        ("access_log: { format: xml }\n", "access_log.format"),
        ("access_log: { buffer: 0 }\n", "access_log.buffer"),
        ("access_log: { pth: /x }\n", "pth"),
        ("access_log: sometimes\n", "access_log"),
        ("trusted_proxies: [\"10.0.0.0/33\"]\n", "trusted_proxies"),
        (
            "client: { tunnel_idle_timeout: 1ms }\n",
            "client.tunnel_idle_timeout",
        ),
    ] {
        let e = Config::parse(yaml).expect_err(yaml).to_string();
        assert!(
            e.contains(want) && (e.contains("line") || want.starts_with("client")),
            "{yaml}: {e}"
        );
    }
}

#[test]
fn client_and_passive_health_sections_are_validated() {
    let c = Config::parse("threads: 1\n").expect("defaults");
    assert_eq!(c.client, ClientConfig::default());
    assert_eq!(c.client.max_header_bytes, 64 * 1024);
    assert_eq!(c.passive_health.max_ejection_percent, 50);
    assert!(c.passive_health.error_rate.is_none());
    let c = Config::parse(
        "passive_health: { max_ejection_percent: 0, \
               error_rate: { window: 30s, min_requests: 5, max_percent: 12.5 } }\n",
    )
    .expect("valid");
    let rate = c.passive_health.error_rate.expect("error_rate set");
    assert_eq!(rate.max_percent.basis_points(), 1250);
    for (yaml, key) in [
        ("client: { max_headers: 1000 }\n", "client.max_headers"),
        (
            "client: { max_header_bytes: 10 }\n",
            "client.max_header_bytes",
        ),
        (
            "client: { header_timeout: 10ms }\n",
            "client.header_timeout",
        ),
        (
            "client: { max_header_line: 65536, max_header_bytes: 16384 }\n",
            "client.max_header_line",
        ),
        ("client: { max_conections: 5 }\n", "max_conections"),
        (
            "passive_health: { max_ejection_percent: 101 }\n",
            "max_ejection_percent",
        ),
        (
            "passive_health: { error_rate: { window: 100ms } }\n",
            "passive_health.error_rate.window",
        ),
        ("routing: { header: X_Canary }\n", "X_Canary"),
        ("routing: { user_header: X_User }\n", "X_User"),
    ] {
        let e = Config::parse(yaml).expect_err(yaml).to_string();
        assert!(e.contains(key), "{yaml}: {e}");
    }
    Config::parse("routing: { header: X_Canary }\nclient: { drop_underscore_headers: false }\n")
        .expect("underscore header allowed when underscores are kept");
}

#[test]
fn rollout_keys_of_this_release_are_not_written_at_their_defaults() {
    // A rollout's settings are stored (Redis, state files) and read by the previous
    // release, which refuses unknown keys: the new keys appear only when set.
    let json = serde_json::to_string(&RolloutConfig::default()).expect("json");
    for key in ["confidence", "per_client_requests", "per_client_failures"] {
        assert!(!json.contains(key), "{key} written at its default: {json}");
    }
    let set = RolloutConfig {
        confidence: 0.99,
        per_client_requests: 50,
        per_client_failures: 2,
        ..RolloutConfig::default()
    };
    let json = serde_json::to_string(&set).expect("json");
    let back: RolloutConfig = serde_json::from_str(&json).expect("read back");
    assert_eq!(back, set);
    let old: RolloutConfig =
        serde_json::from_str(r#"{"steps":[10,100],"interval":"1s"}"#).expect("old json");
    assert_eq!(old.confidence, DEFAULT_ROLLOUT_CONFIDENCE);
    assert_eq!(old.per_client_requests, DEFAULT_PER_CLIENT_REQUESTS);
}

/// The rollout's settings built from the file's section store exactly what the section
/// serialized to before the two types were split (the stored format is unchanged).
#[test]
fn rollout_settings_store_the_bytes_the_section_did() {
    use crate::rollout::settings::RolloutSettings;
    let set = RolloutConfig {
        steps: vec![
            Percent::from_basis_points(250),
            Percent::from_basis_points(10_000),
        ],
        interval: Duration::from_millis(1500),
        count_forced: true,
        mann_whitney: true,
        confidence: 0.99,
        per_client_requests: 0,
        per_client_failures: 3,
        state_file: Some("/tmp/x.json".into()),
        latency: RolloutLatency {
            p99_max: Duration::from_secs(2),
            ..RolloutLatency::default()
        },
        ..RolloutConfig::default()
    };
    for c in [RolloutConfig::default(), set] {
        let file = serde_json::to_string(&c).expect("json");
        let settings = RolloutSettings::from(&c);
        assert_eq!(serde_json::to_string(&settings).expect("json"), file);
        let back: RolloutSettings = serde_json::from_str(&file).expect("read back");
        assert_eq!(back, settings);
    }
    assert_eq!(
        RolloutSettings::from(RolloutConfig::default()),
        RolloutSettings::default()
    );
}

/// The file's `rollout:` section and a start's keys take and refuse the same values,
/// with the same words (one check: `RolloutSettings::validate`).
#[test]
fn the_file_and_a_start_agree_on_every_limit() {
    use crate::rollout::settings::RolloutSettings;
    for (key, value, yaml_value, ok) in [
        ("interval", "100ms", "100ms", true),
        ("interval", "200ms", "200ms", true),
        ("interval", "99ms", "99ms", false),
        ("interval", "25h", "25h", false),
        ("windows_per_step", "10000", "10000", true),
        ("windows_per_step", "10001", "10001", false),
        ("threshold", "0", "0", false),
        ("max_inconclusive", "10001", "10001", false),
        ("hard_fail_errors", "0", "0", false),
        ("min_requests", "0", "0", true),
        ("steps", "10,5", "[10, 5]", false),
        ("steps", "0,10", "[0, 10]", false),
        ("steps", "50,100", "[50, 100]", true),
    ] {
        let start = RolloutSettings::default().with_keys([(key, value)]);
        let file = Config::parse(&format!("rollout: {{ {key}: {yaml_value} }}\n"));
        assert_eq!(start.is_ok(), ok, "start {key}={value}: {start:?}");
        assert_eq!(file.is_ok(), ok, "file {key}: {yaml_value}");
        if let (Err(s), Err(f)) = (start, file) {
            let f = f.to_string();
            assert!(
                f.contains(&format!("rollout.{key}: {}", s.problem)),
                "{key}: the file says `{f}`, a start `{s}`"
            );
        }
    }
}

#[test]
fn rollout_section_is_validated_with_its_key() {
    let c = Config::parse(
        "rollout: { steps: [1, 2.5, 100], interval: 2s, threshold: 2, \
             latency: { p99_max: 300ms } }\n",
    )
    .expect("valid");
    assert_eq!(c.rollout.steps[1].basis_points(), 250);
    assert_eq!(c.rollout.interval, Duration::from_secs(2));
    assert_eq!(c.rollout.windows_per_step, 1, "default kept");
    for (yaml, key) in [
        ("rollout: { steps: [] }\n", "rollout.steps"),
        ("rollout: { steps: [0, 10] }\n", "rollout.steps"),
        ("rollout: { steps: [10, 10] }\n", "rollout.steps"),
        ("rollout: { steps: [50, 10] }\n", "rollout.steps"),
        ("rollout: { steps: [101] }\n", "steps"),
        ("rollout: { interval: 50ms }\n", "rollout.interval"),
        ("rollout: { threshold: 0 }\n", "rollout.threshold"),
        (
            "rollout: { windows_per_step: 0 }\n",
            "rollout.windows_per_step",
        ),
        (
            "rollout: { max_inconclusive: 0 }\n",
            "rollout.max_inconclusive",
        ),
        (
            "rollout: { hard_fail_errors: 0 }\n",
            "rollout.hard_fail_errors",
        ),
        (
            "rollout: { error_rate: { z: 0 } }\n",
            "rollout.error_rate.z",
        ),
        (
            "rollout: { error_rate: { max_percent: -1 } }\n",
            "rollout.error_rate.max_percent",
        ),
        (
            "rollout: { latency: { p99_max_ratio: 0 } }\n",
            "rollout.latency.p99_max_ratio",
        ),
        (
            "rollout: { latency: { p99_max: 0s } }\n",
            "rollout.latency.p99_max",
        ),
        ("rollout: { confidence: 1 }\n", "rollout.confidence"),
        ("rollout: { confidence: 0.2 }\n", "rollout.confidence"),
        (
            "rollout: { per_client_requests: 1000001 }\n",
            "rollout.per_client_requests",
        ),
        (
            "rollout: { per_client_failures: 10001 }\n",
            "rollout.per_client_failures",
        ),
        ("rollout: { stepz: [1] }\n", "stepz"),
        (
            "rollout: { shadow: { percent: 0 } }\n",
            "rollout.shadow.percent",
        ),
        (
            "rollout: { shadow: { methods: [get] } }\n",
            "rollout.shadow.methods",
        ),
        (
            "rollout: { shadow: { timeout: 0s } }\n",
            "rollout.shadow.timeout",
        ),
        ("rollout: { shadow: { percnt: 5 } }\n", "percnt"),
    ] {
        let e = Config::parse(yaml).expect_err(yaml).to_string();
        assert!(e.contains(key), "{yaml}: {e}");
    }
}

#[test]
fn the_shadow_step_is_configured_and_a_start_may_ask_for_it() {
    use crate::rollout::shadow::Compare;
    let c = Config::parse(
        "rollout:\n  shadow:\n    percent: 10\n    windows: 5\n    methods: [GET, HEAD]\n    \
         max_in_flight: 64\n    timeout: 2s\n    compare: [status, latency, body_hash]\n",
    )
    .expect("valid");
    let s = c.rollout.settings();
    let shadow = s.shadow.clone().expect("shadow on");
    assert_eq!(shadow.percent.as_f64(), 10.0);
    assert_eq!(
        shadow.compare,
        [Compare::Status, Compare::Latency, Compare::BodyHash]
    );
    assert!(!shadow.forward_credentials, "off unless asked");
    // `--shadow 25` keeps the file's other shadow settings; `--shadow 0` turns it off.
    let asked = s.with_keys([("shadow", "25")]).expect("valid");
    let asked_shadow = asked.shadow.expect("on");
    assert_eq!(asked_shadow.percent.as_f64(), 25.0);
    assert_eq!(asked_shadow.windows, 5);
    assert!(s
        .with_keys([("shadow", "0")])
        .expect("valid")
        .shadow
        .is_none());
    // Without the section it is off, and a start turns it on with the defaults.
    let plain = Config::parse("listen: \"127.0.0.1:1\"\n").expect("valid");
    assert!(plain.rollout.settings().shadow.is_none());
    let on = plain
        .rollout
        .settings()
        .with_keys([("shadow", "10")])
        .expect("on");
    assert_eq!(on.shadow.map(|s| s.windows), Some(5));
}

#[test]
fn full_example_parses() {
    let c = Config::parse(
            r#"
listen: "0.0.0.0:8080"
threads: 2
metrics_listen: "127.0.0.1:9091"
pools:
  production:
    servers: ["127.0.0.1:3001", { addr: "127.0.0.1:3002", weight: 2 }]
  canary:
    servers: ["app.internal:4001"]
health_check: { kind: http, path: /healthz, interval: 2s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 2 }
routing:
  canary_percent: 12.5
  salt: "release-1"
  header: X-Canary
  flag_cookie: canary
  user_cookie: canary_uid
"#,
        )
        .expect("valid config");
    assert_eq!(c.pools.production.servers[1].weight.get(), 2);
    assert_eq!(c.routing.canary_percent.basis_points(), 1250);
    assert_eq!(c.pools.canary.servers[0].addr.as_str(), "app.internal:4001");
    assert_eq!(c.health_check.interval, Duration::from_secs(2));
}

#[test]
fn flag_errors_name_the_key() {
    let ok = Config::parse(
        "flags:\n  header: X-F\n  items:\n    new-checkout: { percent: 12.5, allow: [u1] }\n",
    )
    .expect("valid flags");
    assert_eq!(ok.flags.items["new-checkout"].percent.basis_points(), 1250);
    assert!(ok.flags.items["new-checkout"].enabled);
    for (yaml, want) in [
        (
            "flags: { items: { Bad_Name: { percent: 1 } } }\n",
            "flags.items.Bad_Name",
        ),
        ("flags:\n  items:\n    a: { percent: 150 }\n", "line 3"),
        ("flags: { items: { a: { percnt: 5 } } }\n", "percnt"),
        (
            "flags: { items: { a: { allow: [\"\"] } } }\n",
            "flags.items.a.allow",
        ),
        ("flags: { header: \"X Bad\" }\n", "flags.header"),
        (
            "flags: { header: X-A, override_header: x-a }\n",
            "flags.override_header",
        ),
    ] {
        let e = Config::parse(yaml).expect_err(yaml).to_string();
        assert!(e.contains(want), "{yaml}: {e}");
    }
    let many: String = (0..=MAX_FLAGS).map(|i| format!("f{i}: {{}}, ")).collect();
    let e = Config::parse(&format!("flags: {{ items: {{ {many} }} }}\n"))
        .expect_err("too many")
        .to_string();
    assert!(e.contains("at most 64"), "{e}");
}

#[test]
fn reinit_grace_is_bounded() {
    assert_eq!(
        Config::parse("threads: 1\n")
            .expect("defaults")
            .discovery
            .reinit_grace,
        Duration::from_secs(30)
    );
    let c = Config::parse("discovery: { reinit_grace: 3s }\n").expect("3s");
    assert_eq!(c.discovery.reinit_grace, Duration::from_secs(3));
    for bad in ["500ms", "2h"] {
        let e = Config::parse(&format!("discovery: {{ reinit_grace: {bad} }}\n"))
            .expect_err(bad)
            .to_string();
        assert!(e.contains("discovery.reinit_grace"), "{e}");
    }
}

#[test]
fn errors_name_key_and_line() {
    let cases = [
        (
            "pools:\n  production:\n    servers: [{ addr: \"127.0.0.1:1\", weight: 0 }]\n",
            "pools.production.servers[0]",
            "line 3",
        ),
        (
            "routing:\n  canary_percent: 150\n",
            "routing.canary_percent",
            "line 2",
        ),
        ("threads: 2\nlisten: nowhere\n", "listen", "line 2"),
        (
            "health_check:\n  interval: soon\n",
            "health_check.interval",
            "line 2",
        ),
        ("routing:\n  canary_pct: 5\n", "canary_pct", "line 2"),
        // Pingora's health-check builder panics on these; refused here instead.
        (
            "health_check:\n  host: \"a\\nb\"\n",
            "health_check.host",
            "line 2",
        ),
        (
            "threads: 1\nhealth_check: { path: \"/a b\" }\n",
            "health_check.path",
            "line 2",
        ),
        (
            "health_check:\n  path: healthz\n",
            "health_check.path",
            "line 2",
        ),
    ];
    for (text, key, line) in cases {
        let e = Config::parse(text).expect_err(text).to_string();
        assert!(e.contains(key), "error `{e}` should name `{key}`");
        assert!(e.contains(line), "error `{e}` should name `{line}`");
    }
}

#[test]
fn listeners_plain_tls_h2c_redirect() {
    let c = Config::parse(
        "listen:\n  - \"127.0.0.1:8080\"\n  - { addr: \"127.0.0.1:8081\", h2c: true }\n  \
             - { addr: \"127.0.0.1:8082\", redirect_to_https: true }\n  \
             - addr: \"127.0.0.1:8443\"\n    tls:\n      cert: /c.pem\n      key: /k.pem\n      \
             sni: [{ cert: /a.pem, key: /ak.pem }]\n",
    )
    .expect("valid");
    assert_eq!(c.listen.len(), 4);
    assert_eq!(
        c.listen[0],
        Listener::plain("127.0.0.1:8080".parse().unwrap())
    );
    assert!(c.listen[1].h2c && c.listen[2].redirect_to_https);
    let tls = c.listen[3].tls.as_ref().expect("tls");
    assert_eq!(tls.pairs().count(), 2);
    assert_eq!(c.https_port(), Some(8443));
    // One map on its own is a list of one; the old forms still parse.
    let one = Config::parse("listen: { addr: \"127.0.0.1:1\", h2c: true }\n").expect("map");
    assert!(one.listen[0].h2c);
    let yaml = serde_yaml_ng::to_string(&c.listen).expect("serialize");
    let back = Config::parse(&format!("listen:\n{yaml}")).expect("round trip");
    assert_eq!(back.listen, c.listen);

    for (yaml, key, line) in [
        (
            "listen:\n  - { addr: nowhere }\n",
            "listen[0].addr",
            "line 2",
        ),
        (
            "listen:\n  - \"127.0.0.1:1\"\n  - { addr: \"127.0.0.1:2\", tsl: {} }\n",
            "tsl",
            "line 3",
        ),
        (
            "listen:\n  - { addr: \"127.0.0.1:2\", tls: { cert: /c } }\n",
            "key",
            "line 2",
        ),
        (
            "listen: [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
            "listen[1].addr",
            "",
        ),
        (
            "listen: [{ addr: \"127.0.0.1:1\", redirect_to_https: true }]\n",
            "listen[0].redirect_to_https",
            "",
        ),
        (
            "listen: [{ addr: \"127.0.0.1:1\", h2c: true, tls: { cert: /c, key: /k } }]\n",
            "listen[0]",
            "",
        ),
        (
            "listen: [{ addr: \"127.0.0.1:1\", tls: { cert: \"\", key: /k } }]\n",
            "listen[0].tls",
            "",
        ),
    ] {
        let e = Config::parse(yaml).expect_err(yaml).to_string();
        assert!(
            e.contains(key) && e.contains(line),
            "{yaml}: `{e}` should name {key} {line}"
        );
    }
}

#[test]
fn bad_server_addresses_are_refused() {
    for bad in [
        "127.0.0.1",
        "host:",
        ":80",
        "a b:80",
        "127.0.0.1:0",
        "h:99999",
    ] {
        assert!(ServerAddr::parse(bad).is_err(), "{bad} should be refused");
    }
    for good in [
        "127.0.0.1:80",
        "[::1]:8080",
        "app-1.internal:3000",
        "localhost:1",
    ] {
        assert!(ServerAddr::parse(good).is_ok(), "{good} should parse");
    }
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact_url("redis://user:secret@10.0.0.1:6379/0"),
        "redis://user:***@10.0.0.1:6379/0"
    );
    assert_eq!(redact_url("redis://127.0.0.1/0"), "redis://127.0.0.1/0");
}

#[test]
fn server_header_is_off_on_or_a_printable_text() {
    let parse = |yaml: &str| Config::parse(yaml).map(|c| c.server_header);
    assert_eq!(parse("threads: 1\n").expect("default"), ServerHeader::Off);
    for (yaml, want) in [
        ("server_header: off\n", None),
        ("server_header: false\n", None),
        ("server_header: \"off\"\n", None),
        ("server_header: on\n", Some("canary-lb")),
        ("server_header: true\n", Some("canary-lb")),
        ("server_header: edge/1.0 (ours)\n", Some("edge/1.0 (ours)")),
    ] {
        assert_eq!(parse(yaml).expect(yaml).text(), want, "{yaml}");
    }
    let long = format!("server_header: {}\n", "a".repeat(MAX_SERVER_HEADER + 1));
    for yaml in [
        "server_header: \"\"\n",
        "server_header: \" edge\"\n",
        "server_header: \"a\\tb\"\n",
        "server_header: \"caf\u{e9}\"\n",
        "server_header: 5\n",
        long.as_str(),
    ] {
        let e = parse(yaml).expect_err(yaml).to_string();
        assert!(
            e.contains("server_header") && e.contains("line"),
            "{yaml}: {e}"
        );
    }
}
