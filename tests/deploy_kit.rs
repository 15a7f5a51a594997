//! The deployment kit (Dockerfile, deploy/, conf/grafana, conf/prometheus) checked without a
//! Docker engine: every file parses, every path it names exists, its ports agree with the
//! config the containers mount, the image runs the command the tests run, and every metric a
//! dashboard panel or alert rule queries is one a running proxy really exports. With
//! `promtool` on PATH (Debian package `prometheus`), the rules and a live scrape are checked by
//! Prometheus itself as well.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::metrics::{family, names_in, Scrape};
use common::*;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

const DASHBOARD: &str = "conf/grafana/canary-lb.json";
const ALERTS: &str = "conf/prometheus/alerts.yml";
const ALERT_TESTS: &str = "conf/prometheus/alerts.test.yml";
const COMPOSE: &str = "deploy/compose.yaml";
const LB_CONFIG: &str = "deploy/canary-lb.yaml";
const PROMETHEUS: &str = "deploy/prometheus.yml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    let mut v: Yaml = serde_yaml_ng::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    v.apply_merge()
        .unwrap_or_else(|e| panic!("{path}: bad merge key: {e}"));
    v
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

/// Every PromQL text of the dashboard: panel targets, annotations, template variable queries.
fn dashboard_queries(v: &Json) -> Vec<String> {
    let mut out = Vec::new();
    match v {
        Json::Object(map) => {
            for (k, v) in map {
                match v {
                    Json::String(s) if ["expr", "query", "definition"].contains(&k.as_str()) => {
                        out.push(s.clone())
                    }
                    _ => out.extend(dashboard_queries(v)),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|i| out.extend(dashboard_queries(i))),
        _ => {}
    }
    out
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels array") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn exprs(panel: &Json) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["expr"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn dashboard_has_every_panel_and_the_template_variables() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "canary-lb");
    assert_eq!(dash["title"], "canary-lb");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for var in ["pool", "instance", "datasource"] {
        assert!(
            vars.contains(&var),
            "template variable `{var}` missing: {vars:?}"
        );
    }

    // (title fragment, what its queries must contain)
    let wanted: &[(&str, &[&str])] = &[
        (
            "Request rate per pool",
            &["canary_lb_requests_total", "by (pool)"],
        ),
        (
            "Canary share of traffic: actual vs configured",
            &["canary_lb_requests_total", "canary_lb_canary_percent"],
        ),
        (
            "5xx ratio: canary vs production",
            &["code=~\"5..\"", "by (pool)"],
        ),
        (
            "Latency p50 / p95 / p99 per pool",
            &[
                "histogram_quantile(0.5,",
                "histogram_quantile(0.95,",
                "histogram_quantile(0.99,",
                "canary_lb_request_duration_seconds_bucket",
            ],
        ),
        (
            "Servers per pool by state",
            &["canary_lb_pool_servers", "state"],
        ),
        (
            "Routing decisions by reason",
            &["canary_lb_routing_decisions_total", "reason"],
        ),
        ("Retries", &["canary_lb_retries_total"]),
        ("Discovery up", &["canary_lb_discovery_up"]),
        (
            "Discovery errors and resyncs",
            &[
                "canary_lb_discovery_errors_total",
                "canary_lb_discovery_resyncs_total",
            ],
        ),
    ];
    let all = panels(&dash);
    for (title, needles) in wanted {
        let panel = all
            .iter()
            .find(|p| p["title"] == *title)
            .unwrap_or_else(|| panic!("no panel `{title}`"));
        let queries = exprs(panel).join("\n");
        for needle in *needles {
            assert!(
                queries.contains(needle),
                "panel `{title}` lacks `{needle}`: {queries}"
            );
        }
    }
    let mut ids = BTreeSet::new();
    for p in all.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_i64().expect("numeric id")),
            "duplicate id: {title}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel `{title}`");
        let queries = exprs(p);
        assert!(!queries.is_empty(), "panel `{title}` has no query");
        for q in queries {
            // The per-pool panels follow $instance (and $pool where they are per pool).
            assert!(
                q.contains("$instance"),
                "panel `{title}` ignores $instance: {q}"
            );
        }
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_i64().unwrap_or(-1), g["w"].as_i64().unwrap_or(0));
        assert!(
            x >= 0 && w > 0 && x + w <= 24,
            "panel `{title}` off the grid: {g}"
        );
    }
}

/// A proxy following Redis, with traffic that makes every metric family appear: both pools,
/// X-Canary, a 5xx, a retry (a registered server nobody listens on), a bad Redis entry
/// (discovery error) and a canary percent from Redis (config change).
fn scrape_busy_proxy() -> String {
    let redis = RedisServer::start();
    let prod = App::start("prod", "production");
    let canary = App::start("canary", "canary");
    let dead = format!("127.0.0.1:{}", free_port());
    let url = redis.url();
    let ctl = |args: &[&str]| {
        ctl_ok(&url, "kit", args);
    };
    ctl(&["register", "--pool", "production", &prod.addr()]);
    ctl(&["register", "--pool", "production", &dead]);
    ctl(&["register", "--pool", "canary", &canary.addr()]);
    ctl(&["canary", "set", "50"]);
    // A bad entry written by hand.
    redis_cmd(
        &url,
        &[
            "ZADD",
            &common::store::servers_key("kit", "canary"),
            "+inf",
            "nowhere",
        ],
    );

    // Health checks far apart: the dead server stays in rotation, so requests to it retry.
    let proxy = Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "health_check: {{ kind: tcp, interval: 60s, timeout: 1s, unhealthy_threshold: 2 }}\n\
             discovery: {{ provider: redis, url: \"{url}\", namespace: kit, resync_interval: 1s }}\n"
        ),
    ));
    wait_until(
        "the proxy serves both pools",
        Duration::from_secs(20),
        || {
            let status = proxy.status_json();
            status["pools"]["production"]["in_rotation"] == 2
                && status["pools"]["canary"]["in_rotation"] == 1
        },
    );
    for i in 0..20 {
        let user = format!("user-{i}");
        let r = get(&proxy.url("/"), &[("X-User-Id", &user)]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    get(&proxy.url("/"), &[("X-Canary", "1")]);
    get(&proxy.url("/status/503"), &[("X-Canary", "0")]);
    wait_until(
        "a retry and a discovery error are counted",
        Duration::from_secs(20),
        || {
            let m = proxy.metrics_text();
            let retried = m.lines().any(|l| {
                l.starts_with("canary_lb_retries_total{pool=\"production\"} ") && !l.ends_with(" 0")
            });
            if !retried {
                get(&proxy.url("/"), &[("X-Canary", "0")]);
            }
            // The series exists at 0 from the first scrape; wait for the counted error.
            let address_error = m.lines().any(|l| {
                l.starts_with("canary_lb_discovery_errors_total{kind=\"address\"} ")
                    && !l.ends_with(" 0")
            });
            retried && address_error
        },
    );
    proxy.metrics_text()
}

#[test]
fn dashboard_and_alerts_query_only_metrics_the_proxy_exports() {
    let scrape = scrape_busy_proxy();
    let exported = Scrape::parse(&scrape).names();
    let families: BTreeSet<&str> = exported
        .iter()
        .filter(|n| n.starts_with("canary_lb_"))
        .map(|n| family(n))
        .collect();
    let used_by_dashboard = names_in(&dashboard_queries(&dashboard()).join("\n"));
    let alert_exprs: Vec<String> = yaml(ALERTS)["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|r| {
            r["expr"]
                .as_str()
                .expect("every rule has an expr")
                .to_string()
        })
        .collect();
    for (file, used) in [
        (DASHBOARD, used_by_dashboard.clone()),
        (ALERTS, names_in(&alert_exprs.join("\n"))),
    ] {
        assert!(!used.is_empty(), "{file} queries no canary_lb metric");
        for name in &used {
            assert!(
                exported.contains(name),
                "{file} queries `{name}`, which the proxy does not export; it exports: {exported:#?}"
            );
        }
    }
    // And the other way round: no exported family is missing from the dashboard.
    for family in families {
        assert!(
            used_by_dashboard.iter().any(|n| n.starts_with(family)),
            "the dashboard shows nothing of `{family}`"
        );
    }

    match which("promtool") {
        None => println!(
            "promtool not on PATH (Debian package `prometheus`): skipped `promtool check rules \
             {ALERTS}` and `promtool check metrics`"
        ),
        Some(promtool) => {
            let out = Command::new(&promtool)
                .args(["check", "rules"])
                .arg(repo().join(ALERTS))
                .output()
                .expect("run promtool");
            assert!(
                out.status.success(),
                "promtool check rules {ALERTS}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // The alert rules' own unit tests (e.g. a lost Redis store pages, an unreachable one warns).
            let out = Command::new(&promtool)
                .args(["test", "rules"])
                .arg(repo().join(ALERT_TESTS))
                .output()
                .expect("run promtool");
            assert!(
                out.status.success(),
                "promtool test rules {ALERT_TESTS}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut child = Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run promtool");
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(scrape.as_bytes())
                .expect("feed the scrape to promtool");
            let out = child.wait_with_output().expect("promtool check metrics");
            assert!(
                out.status.success(),
                "promtool check metrics on a live scrape:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The lines of README.md's section `heading` (up to the next `## `).
fn readme_section(heading: &str) -> Vec<String> {
    let readme = read("README.md");
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no section `{heading}`"));
    let rest = &readme[start + heading.len() + 2..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].lines().map(str::to_string).collect()
}

/// The backquoted words of the first cell of each table row of `lines` that satisfy `keep`.
fn first_cell_names(lines: &[String], keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2))
        .filter(|w| keep(w))
        .map(str::to_string)
        .collect()
}

/// Issue 22, observation 4: the README's metric table and a live scrape name the same
/// families, both ways (before, `canary_lb_client_connections*` and
/// `canary_lb_refused_requests_total` were exported and documented nowhere).
#[test]
fn readme_metric_table_matches_a_live_scrape() {
    let ours = |w: &str| {
        (w.starts_with("canary_lb_") || w.starts_with("process_"))
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let documented = first_cell_names(&readme_section("## Metrics and status"), ours);
    assert!(
        documented.len() > 20,
        "the README's metric table lists only {documented:?}"
    );
    let scrape = scrape_busy_proxy();
    // Families by their `# TYPE` line: a histogram is one family, whatever its samples.
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| ours(n))
        .map(str::to_string)
        .collect();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in README.md's metric table (section `Metrics and status`): {undocumented:?}"
    );
    let gone: Vec<_> = documented.difference(&exported).collect();
    assert!(
        gone.is_empty(),
        "in README.md's metric table but not exported by a running proxy: {gone:?}"
    );
}

/// The README's alert table names exactly the rules of alerts.yml, each with its severity
/// (before, it listed 6 of 12).
#[test]
fn readme_alert_table_matches_the_rules() {
    let rules: BTreeMap<String, String> = yaml(ALERTS)["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| {
            let name = r["alert"].as_str()?.to_string();
            let severity = r["labels"]["severity"].as_str().unwrap_or("").to_string();
            Some((name, severity))
        })
        .collect();
    assert!(!rules.is_empty(), "{ALERTS} has no alert rule");
    let lines = readme_section("## Deployment: container, dashboards, pipelines");
    let names = first_cell_names(&lines, |w| {
        w.bytes().all(|b| b.is_ascii_alphanumeric()) && w.starts_with(char::is_uppercase)
    });
    let documented: BTreeMap<String, String> = lines
        .iter()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            names
                .contains(name)
                .then(|| (name.to_string(), cells.get(2).unwrap_or(&"").to_string()))
        })
        .collect();
    assert_eq!(
        documented, rules,
        "README.md's alert table (section `Deployment`, `Dashboard and alerts`: alert, severity) \
         and {ALERTS} differ"
    );
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// The instructions of the Dockerfile, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

fn instruction(df: &[(String, String)], op: &str) -> Vec<String> {
    df.iter()
        .filter(|(o, _)| o == op)
        .map(|(_, a)| a.clone())
        .collect()
}

/// `ENV K=V K2=V2` of the Dockerfile.
fn dockerfile_env(df: &[(String, String)]) -> BTreeMap<String, String> {
    instruction(df, "ENV")
        .iter()
        .flat_map(|a| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn json_array(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("`{text}` is not a JSON array: {e}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no port in `{addr}`"))
}

/// The port of `listen` (an address, or a list whose addresses share one port).
fn listen_port(config: &Yaml) -> u16 {
    let listen = &config["listen"];
    let addrs = match listen.as_str() {
        Some(one) => vec![one.to_string()],
        None => strings(listen),
    };
    let ports: BTreeSet<u16> = addrs.iter().map(|a| port_of(a)).collect();
    assert_eq!(ports.len(), 1, "one listen port expected: {addrs:?}");
    ports.into_iter().next().unwrap()
}

#[test]
fn dockerfile_copies_existing_paths_and_runs_the_tested_command() {
    let df = dockerfile();
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(|l| l.trim().trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut config_dest = None;
    for args in instruction(&df, "COPY") {
        if args.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (dest, sources) = words.split_last().expect("COPY source dest");
        for src in sources {
            assert!(
                repo().join(src).exists(),
                "Dockerfile: COPY {src}: no such path"
            );
            let top = src.split('/').next().unwrap_or(src);
            assert!(
                !ignored.iter().any(|i| i == top),
                "COPY {src} is in .dockerignore"
            );
            if *src == "conf/canary-lb.yaml" {
                config_dest = Some(dest.to_string());
            }
        }
    }
    let env = dockerfile_env(&df);
    assert_eq!(
        env.get("CANARY_LB_CONFIG"),
        config_dest.as_ref(),
        "CANARY_LB_CONFIG must name the copied default config"
    );

    // The container runs exactly `canary-lb serve`, which is what common::Proxy starts
    // (`serve --config FILE`; the container passes the file through CANARY_LB_CONFIG).
    let entrypoint = json_array(&instruction(&df, "ENTRYPOINT").pop().expect("ENTRYPOINT"));
    let cmd = json_array(&instruction(&df, "CMD").pop().expect("CMD"));
    assert_eq!(entrypoint, ["canary-lb"]);
    assert_eq!(cmd, ["serve"]);
    assert_eq!(instruction(&df, "STOPSIGNAL"), ["SIGTERM"]);
    assert!(
        instruction(&df, "USER")
            .iter()
            .any(|u| u != "root" && u != "0"),
        "non-root USER"
    );

    // Exposed ports and the health check agree with the default config plus the image's env.
    let default_config = yaml("conf/canary-lb.yaml");
    let listen = listen_port(&default_config);
    let metrics = port_of(env.get("CANARY_LB_METRICS_LISTEN").expect("metrics env"));
    let exposed: BTreeSet<u16> = instruction(&df, "EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace().map(port_of).collect::<Vec<_>>())
        .collect();
    assert_eq!(exposed, BTreeSet::from([listen, metrics]));
    let health = instruction(&df, "HEALTHCHECK").pop().expect("HEALTHCHECK");
    // `canary-lb health` GETs /healthz (open even when `metrics_auth_token_file` guards
    // /status and /metrics) on the metrics_listen in force: tests/health_cmd.rs.
    let health_cmd = json_array(health.split_once("CMD").expect("HEALTHCHECK CMD").1.trim());
    assert_eq!(health_cmd, ["canary-lb", "health"], "{health}");
    let health_url = format!("http://127.0.0.1:{metrics}/healthz");

    // Run the image's command line the way the container does: ENTRYPOINT + CMD, config from
    // CANARY_LB_CONFIG (a copy of the default config), the image's ENV, loopback ports.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("canary-lb.yaml");
    std::fs::copy(repo().join("conf/canary-lb.yaml"), &config).expect("copy config");
    let (proxy_port, metrics_port) = (free_port(), free_port());
    let mut command = Command::new(bin());
    command.args(&entrypoint[1..]).args(&cmd);
    for var in [
        "CANARY_LB_REDIS_URL",
        "CANARY_LB_NAMESPACE",
        "CANARY_LB_CANARY_PERCENT",
    ] {
        command.env_remove(var);
    }
    command
        .envs(&env)
        .env("CANARY_LB_CONFIG", &config)
        .env("CANARY_LB_LISTEN", format!("127.0.0.1:{proxy_port}"))
        .env(
            "CANARY_LB_METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        );
    let container = Background::spawn("canary-lb serve (the image's command line)", command);
    let status_url = health_url.replace(&metrics.to_string(), &metrics_port.to_string());
    wait_until(
        "`canary-lb serve` answers its health check",
        STARTUP,
        || matches!(try_get(&status_url, &[]), Ok(r) if r.status == 200),
    );
    // The HEALTHCHECK command in the container's environment passes.
    let (config_env, metrics_env) = (
        config.display().to_string(),
        format!("127.0.0.1:{metrics_port}"),
    );
    let health_args: Vec<&str> = health_cmd[1..].iter().map(String::as_str).collect();
    let checked = run_cli_env(
        &health_args,
        &[
            ("CANARY_LB_CONFIG", &config_env),
            ("CANARY_LB_METRICS_LISTEN", &metrics_env),
        ],
        STARTUP,
    );
    assert!(checked.status.success(), "HEALTHCHECK: {checked:?}");
    drop(container);
}

// ---------------------------------------------------------------------------------------------
// Compose stack

/// The host side of a service's `volumes` (relative to deploy/), mapped by container path.
fn mounts(service: &Yaml) -> BTreeMap<String, PathBuf> {
    let base = repo().join("deploy");
    service["volumes"]
        .as_sequence()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let v = v.as_str().expect("short volume syntax");
            let mut parts = v.split(':');
            let (host, container) = (parts.next().unwrap(), parts.next().expect("host:container"));
            (container.to_string(), base.join(host))
        })
        .collect()
}

/// Where a container path lives on the host, through the service's mounts (the deepest
/// mount that contains it).
fn host_path(mounts: &BTreeMap<String, PathBuf>, container_path: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .filter_map(|(target, host)| {
            let rest = Path::new(container_path).strip_prefix(target).ok()?;
            let host = if rest.as_os_str().is_empty() {
                host.clone()
            } else {
                host.join(rest)
            };
            Some((target.len(), host))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, host)| host)
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn arg_after(command: &[String], flag: &str) -> String {
    let i = command
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {command:?}"));
    command[i + 1].clone()
}

#[test]
fn compose_stack_references_existing_paths_and_matching_ports() {
    let compose = yaml(COMPOSE);
    let services = compose["services"].as_mapping().expect("services");
    let name = |k: &Yaml| k.as_str().expect("service name").to_string();
    let service_names: BTreeSet<String> = services.keys().map(name).collect();
    for want in ["redis", "prometheus", "grafana"] {
        assert!(service_names.contains(want), "no `{want}` service");
    }

    // Every bind mount and build context exists.
    for (key, service) in services {
        let svc = name(key);
        for (_, host) in mounts(service) {
            assert!(
                host.exists(),
                "{svc}: volume source {} does not exist",
                host.display()
            );
        }
        if let Some(build) = service.get("build") {
            let context = repo()
                .join("deploy")
                .join(build["context"].as_str().expect("context"));
            assert!(
                context.is_dir(),
                "{svc}: build context {} missing",
                context.display()
            );
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(context.join(dockerfile).is_file(), "{svc}: no {dockerfile}");
        }
    }

    // The proxies: `serve`, the mounted config is the one CANARY_LB_CONFIG names, it is valid,
    // and the published container ports are its listen and metrics ports.
    let config = yaml(LB_CONFIG);
    let listen = listen_port(&config);
    let metrics = port_of(config["metrics_listen"].as_str().expect("metrics_listen"));
    let check = run_cli(
        &[
            "check",
            "--config",
            repo().join(LB_CONFIG).to_str().unwrap(),
        ],
        STARTUP,
    );
    assert!(
        check.status.success(),
        "{LB_CONFIG}: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let proxies: Vec<(String, &Yaml)> = services
        .iter()
        .filter(|(_, s)| strings(&s["command"]).first().map(String::as_str) == Some("serve"))
        .map(|(k, s)| (name(k), s))
        .collect();
    assert_eq!(proxies.len(), 2, "two canary-lb replicas");
    let mut host_ports = BTreeSet::new();
    for (svc, s) in &proxies {
        let env = &s["environment"];
        let config_path = env["CANARY_LB_CONFIG"]
            .as_str()
            .unwrap_or("/etc/canary-lb/canary-lb.yaml");
        let mounted = host_path(&mounts(s), config_path)
            .unwrap_or_else(|| panic!("{svc}: {config_path} is not mounted"));
        assert_eq!(
            mounted.canonicalize().unwrap(),
            repo().join(LB_CONFIG).canonicalize().unwrap()
        );
        assert!(
            env["CANARY_LB_REDIS_URL"]
                .as_str()
                .is_some_and(|u| u.contains("redis:6379")),
            "{svc}"
        );
        let container_ports: BTreeSet<u16> = strings(&s["ports"])
            .iter()
            .map(|p| {
                // HOST may be `${VAR:-8080}`.
                let (host, container) = p.rsplit_once(':').expect("HOST:CONTAINER");
                assert!(
                    host_ports.insert(host.to_string()),
                    "host port {host} published twice"
                );
                container.parse().expect("container port")
            })
            .collect();
        assert_eq!(
            container_ports,
            BTreeSet::from([listen, metrics]),
            "{svc} ports"
        );
    }

    // App servers register themselves under their service name and their listen port.
    let apps: Vec<(String, Vec<String>)> = services
        .iter()
        .map(|(k, s)| (name(k), strings(&s["command"])))
        .filter(|(_, c)| c.first().map(String::as_str) == Some("app"))
        .collect();
    let pools: Vec<String> = apps.iter().map(|(_, c)| arg_after(c, "--pool")).collect();
    assert_eq!(
        pools.iter().filter(|p| *p == "production").count(),
        2,
        "{pools:?}"
    );
    assert_eq!(
        pools.iter().filter(|p| *p == "canary").count(),
        1,
        "{pools:?}"
    );
    for (svc, command) in &apps {
        let advertise = arg_after(command, "--advertise");
        assert_eq!(
            advertise,
            format!("{svc}:{}", port_of(&arg_after(command, "--listen")))
        );
        assert!(arg_after(command, "--register-redis").contains("redis:6379"));
    }

    // Prometheus scrapes every replica on its metrics port and loads the alert rules.
    let prometheus = &compose["services"]["prometheus"];
    let prom_mounts = mounts(prometheus);
    let prom_config = yaml(PROMETHEUS);
    let targets: BTreeSet<String> = prom_config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .filter(|j| j["job_name"] == "canary-lb")
        .flat_map(|j| strings(&j["static_configs"][0]["targets"]))
        .collect();
    let want: BTreeSet<String> = proxies
        .iter()
        .map(|(s, _)| format!("{s}:{metrics}"))
        .collect();
    assert_eq!(targets, want, "scrape targets");
    assert!(host_path(&prom_mounts, "/etc/prometheus/prometheus.yml")
        .is_some_and(|p| p.ends_with("prometheus.yml")));
    for rule_file in strings(&prom_config["rule_files"]) {
        let host = host_path(&prom_mounts, &rule_file)
            .unwrap_or_else(|| panic!("rule file {rule_file} is not mounted"));
        assert_eq!(
            host.canonicalize().unwrap(),
            repo().join(ALERTS).canonicalize().unwrap()
        );
    }

    // Grafana: provisioning mounted, the dashboard provider's folder holds the dashboard.
    let grafana = &compose["services"]["grafana"];
    let g_mounts = mounts(grafana);
    let provisioning =
        host_path(&g_mounts, "/etc/grafana/provisioning").expect("provisioning mounted");
    let provider = yaml(
        provisioning
            .join("dashboards/canary-lb.yaml")
            .strip_prefix(repo())
            .unwrap()
            .to_str()
            .unwrap(),
    );
    let folder = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let dashboards = host_path(&g_mounts, folder).expect("dashboard folder mounted");
    assert!(dashboards.join("canary-lb.json").is_file());
    let datasources = yaml(
        provisioning
            .join("datasources/prometheus.yaml")
            .strip_prefix(repo())
            .unwrap()
            .to_str()
            .unwrap(),
    );
    let ds_url = datasources["datasources"][0]["url"]
        .as_str()
        .expect("datasource url");
    assert!(ds_url.starts_with("http://prometheus:"), "{ds_url}");
    if let Some(home) = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].as_str()
    {
        assert!(
            host_path(&g_mounts, home).is_some_and(|p| p.is_file()),
            "{home}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Pipelines

#[test]
fn pipelines_parse_and_map_branches_to_pools() {
    let script = repo().join("deploy/pipeline.sh");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash -n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = read("deploy/pipeline.sh");
    for needle in [
        "master) pool=production",
        "canary) pool=canary",
        "replace --pool",
        "canary set",
    ] {
        assert!(text.contains(needle), "deploy/pipeline.sh lacks `{needle}`");
    }
    let jenkins = read("deploy/jenkins/Jenkinsfile");
    for needle in [
        "master: 'production'",
        "canary: 'canary'",
        "canary-lb ctl replace --pool",
        "canary-lb ctl register --pool",
        "canary-lb ctl canary set",
        "input message:",
        "code == 2",
    ] {
        assert!(jenkins.contains(needle), "Jenkinsfile lacks `{needle}`");
    }
    assert_eq!(
        jenkins.matches('{').count(),
        jenkins.matches('}').count(),
        "unbalanced braces"
    );
    // The flags both pipelines pass exist.
    let help = run_cli(&["ctl", "replace", "--help"], Duration::from_secs(20));
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--timeout", "--settle", "--strict", "--weight", "--pool"] {
        assert!(help.contains(flag), "ctl replace --help lacks {flag}");
    }
    assert!(Path::new(&script).exists());
}

/// The canary branch's promotion gate: `ctl rollout start`, then `ctl rollout status --wait`,
/// whose exit code decides. Run for real with a stand-in `canary-lb` that records its
/// arguments and answers the wait with a chosen exit code (the real commands are tested in
/// tests/rollout_redis.rs; here: what the pipeline does with each answer).
#[test]
fn the_canary_branch_is_gated_on_the_rollout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stub = dir.path().join("canary-lb");
    std::fs::write(
        &stub,
        "#!/usr/bin/env bash\n\
         echo \"$*\" >> \"$STUB_LOG\"\n\
         case \"$*\" in *'rollout status --wait'*) exit \"$STUB_WAIT_CODE\" ;; esac\n\
         exit 0\n",
    )
    .expect("write stub");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let run = |branch: &str, wait_code: i32, extra: &[(&str, &str)]| {
        let log = dir.path().join(format!("calls-{branch}-{wait_code}.log"));
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("deploy/pipeline.sh"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BRANCH", branch)
            .env("NEW_ADDR", "10.0.0.9:3000")
            .env("CANARY_LB", &stub)
            .env("CANARY_LB_REDIS_URL", "redis://127.0.0.1:1/0")
            .env("STUB_LOG", &log)
            .env("STUB_WAIT_CODE", wait_code.to_string());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run deploy/pipeline.sh");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        (out, calls)
    };
    let gate = [
        ("ROLLOUT_STEPS", "5,50,100"),
        ("ROLLOUT_INTERVAL", "2s"),
        ("ROLLOUT_TIMEOUT", "10m"),
    ];
    // (exit of `status --wait`, exit of the pipeline): 0 succeeded, 2 rolled back -> 4,
    // 3 paused -> 5, anything else -> 1.
    for (wait_code, want) in [(0, 0), (2, 4), (3, 5), (1, 1)] {
        let (out, calls) = run("canary", wait_code, &gate);
        let shown = format!(
            "wait exit {wait_code}: pipeline exit {:?}\n{}{}\ncalls:\n{calls}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(want), "{shown}");
        let lines: Vec<&str> = calls.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("no `{needle}`: {shown}"))
        };
        let registered = at("ctl register --pool canary 10.0.0.9:3000");
        let started = at("ctl rollout start --steps 5,50,100 --interval 2s");
        let waited = at("ctl rollout status --wait --timeout 10m");
        assert!(registered < started && started < waited, "{shown}");
        assert_eq!(
            lines.contains(&"ctl status"),
            want == 0,
            "only a successful rollout goes on to the status step: {shown}"
        );
    }
    // Without the gate's settings the proxies' defaults apply (no flags passed).
    let (out, calls) = run("canary", 0, &[]);
    assert!(out.status.success(), "{calls}");
    assert!(calls.lines().any(|l| l == "ctl rollout start"), "{calls}");
    assert!(
        calls.lines().any(|l| l == "ctl rollout status --wait"),
        "{calls}"
    );
    // ROLLOUT=off: the percent by hand, no rollout.
    let (out, calls) = run("canary", 0, &[("ROLLOUT", "off"), ("CANARY_PERCENT", "7")]);
    assert!(out.status.success(), "{calls}");
    assert!(calls.lines().any(|l| l == "ctl canary set 7"), "{calls}");
    assert!(!calls.contains("rollout"), "{calls}");
    // Production deploys never start a rollout.
    let (out, calls) = run("master", 2, &gate);
    assert!(out.status.success(), "{calls}");
    assert!(!calls.contains("rollout"), "{calls}");

    // The Jenkinsfile gates the same way.
    let jenkins = read("deploy/jenkins/Jenkinsfile");
    for needle in [
        "canary-lb ctl rollout start --steps \"$ROLLOUT_STEPS\" --interval \"$ROLLOUT_INTERVAL\"",
        "canary-lb ctl rollout status --wait --timeout \"$ROLLOUT_TIMEOUT\"",
        "code == 3",
        "canary-lb ctl rollout resume",
        "canary-lb ctl rollout abort",
    ] {
        assert!(jenkins.contains(needle), "Jenkinsfile lacks `{needle}`");
    }
    // And the flags both pass exist on the real binary.
    for (args, flags) in [
        (
            &["ctl", "rollout", "start", "--help"][..],
            &["--steps", "--interval"][..],
        ),
        (
            &["ctl", "rollout", "status", "--help"][..],
            &["--wait", "--timeout", "--watch"][..],
        ),
        (&["ctl", "rollout", "history", "--help"][..], &["-n"][..]),
    ] {
        let help = run_cli(args, Duration::from_secs(20));
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in flags {
            assert!(help.contains(flag), "{args:?} lacks {flag}: {help}");
        }
    }
}
