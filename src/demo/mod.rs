//! `canary-lb demo`: the proxy in front of three demo app servers on loopback, in one
//! process, with a static config, a TLS listener with its own CA, and a tour of curl lines.
//!
//! - `mod.rs`: the orchestration (`run`) and the printed tour;
//! - `app.rs`: the demo app server (`canary-lb app` and the demo's apps): its endpoints;
//! - `faults.rs`: what `POST /_control` injects (errors, latency, a slow share);
//! - `registration.rs`: `canary-lb app --register-redis`, the heartbeat and deregistration;
//! - `tls.rs`: the demo's CA and certificate, made at start.

mod app;
mod faults;
mod registration;
mod tls;

pub use app::{app_service, run_app, DemoApp};
use tls::{demo_certificate, print_tls_tour};

use std::net::SocketAddr;

use pingora_core::server::configuration::ServerConf;

use crate::cli::DemoArgs;
use crate::runtime::serve::ExitNow;

/// `canary-lb demo`: the proxy plus two production and one canary demo app on loopback, in
/// one process, with a static config; prints curl lines to try. Ctrl-C stops everything.
/// `exit_now` as in [`Assembled::run`](crate::runtime::serve::Assembled::run). An edge, like
/// [`run_app`]: returns `anyhow` to `main`.
pub fn run(args: DemoArgs, exit_now: ExitNow) -> anyhow::Result<()> {
    let ip = args.listen.ip();
    let apps: Vec<(String, &str, SocketAddr)> = [
        ("prod-1", "production"),
        ("prod-2", "production"),
        ("canary-1", "canary"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, pool))| {
        let port = args.app_base_port.checked_add(i as u16).unwrap_or(0);
        (name.to_string(), pool, SocketAddr::new(ip, port))
    })
    .collect();
    for addr in [args.listen, args.metrics_listen, args.tls_listen]
        .iter()
        .chain(apps.iter().map(|(_, _, a)| a))
    {
        let busy = match std::net::TcpListener::bind(addr) {
            _ if addr.port() == 0 => Some("port 0".to_string()),
            Err(e) => Some(e.to_string()),
            Ok(_) => None,
        };
        if let Some(e) = busy {
            anyhow::bail!(
                "cannot listen on {addr}: {e}; choose other ports, e.g. `canary-lb demo \
                 --listen 127.0.0.1:18080 --metrics-listen 127.0.0.1:19091 --app-base-port 13001`"
            );
        }
    }
    let servers = |pool: &str| {
        apps.iter()
            .filter(|(_, p, _)| *p == pool)
            .map(|(_, _, a)| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tls = demo_certificate()?;
    // The tour's traffic is one curl loop on this box: every user shares 127.0.0.1, so the
    // rollout's per-client caps (which stop one address from failing a window) are off here.
    let yaml = format!(
        "listen: [\"{listen}\", {{ addr: \"{tls_listen}\", tls: {{ cert: \"{cert}\", \
         key: \"{key}\" }} }}]\nthreads: 2\nmetrics_listen: \"{metrics}\"\n\
         pools:\n  production: {{ servers: [{prod}] }}\n  canary: {{ servers: [{canary}] }}\n\
         health_check: {{ kind: http, path: /healthz, interval: 1s, timeout: 500ms }}\n\
         grace_period: 2s\n\
         routing: {{ canary_percent: {pct}, salt: demo, user_header: X-User-Id }}\n\
         rollout: {{ steps: [5, 25, 50, 100], interval: 5s, min_requests: 20, \
         per_client_requests: 0, per_client_failures: 0 }}\n\
         flags: {{ items: {{ new-checkout: {{ percent: 50 }}, dark-mode: {{ percent: 10 }} }} }}\n",
        listen = args.listen,
        tls_listen = args.tls_listen,
        cert = tls.cert.display(),
        key = tls.key.display(),
        metrics = args.metrics_listen,
        prod = servers("production"),
        canary = servers("canary"),
        pct = args.canary_percent,
    );
    let assembled = crate::config::Config::parse(&yaml)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            crate::runtime::serve::assemble(
                config,
                None,
                pingora_core::server::configuration::Opt::default(),
                ServerConf::default(),
            )
        });
    let mut assembled = match assembled {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tls.dir);
            return Err(e);
        }
    };
    // The CA and key are the demo's alone: gone when it stops (Ctrl-C, SIGTERM).
    assembled.cleanup.remove_dir(tls.dir.clone());
    for (name, pool, addr) in &apps {
        assembled.server.add_service(app_service(name, pool, *addr));
    }
    print_tour(&args, &apps);
    print_tls_tour(&args, &tls);
    assembled.run(exit_now);
    Ok(())
}

fn print_tour(args: &DemoArgs, apps: &[(String, &str, SocketAddr)]) {
    let p = format!("http://{}", args.listen);
    let m = format!("http://{}", args.metrics_listen);
    let canary_url = apps
        .iter()
        .find(|(_, pool, _)| *pool == "canary")
        .map(|(_, _, a)| format!("http://{a}"))
        .unwrap_or_default();
    let apps = apps
        .iter()
        .map(|(n, pool, a)| format!("{n} ({pool}) on {a}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "\ncanary-lb demo: proxy on {p}, metrics on {m}\n\
         app servers: {apps}\n\
         {pct}% of users go to canary (sticky per user). Try, in another terminal:\n\n\
         \x20 curl -i {p}/                                  # new user: gets a canary_uid cookie\n\
         \x20 curl -s -H 'X-Canary: 1' {p}/                 # force canary\n\
         \x20 curl -s -H 'X-Canary: 0' {p}/                 # force production\n\
         \x20 curl -s --cookie 'canary=always' {p}/          # flag cookie\n\
         \x20 for u in $(seq 1 200); do curl -s -H \"X-User-Id: user$u\" {p}/; done | sort | uniq -c\n\
         \x20                                                 # the split: about {pct}% canary\n\
         \x20 for u in $(seq 1 200); do curl -s -o /dev/null -D - -H \"X-User-Id: user$u\" {p}/ | grep -i '^x-seen-features'; done | sort | uniq -c\n\
         \x20                                                 # feature flags: new-checkout on for about 50% of users\n\
         \x20 curl -s {m}/status                           # pools, health, routing and flags in force\n\
         \x20 curl -s {m}/metrics | grep canary_lb_         # Prometheus metrics\n\n\
         Progressive delivery: the proxy ramps the canary and judges it against production:\n\n\
         \x20 while :; do curl -s -o /dev/null -H \"X-User-Id: u$RANDOM\" {p}/; done &   # traffic\n\
         \x20 canary-lb ctl rollout --admin {m} start --steps 5,25,50,100 --interval 5s\n\
         \x20 canary-lb ctl rollout --admin {m} status --watch   # healthy: 5 -> 25 -> 50 -> 100 %\n\
         Then a rollback, on its own, with a canary failing half its requests:\n\
         \x20 canary-lb ctl rollout --admin {m} start --steps 5,25,50,100 --interval 5s\n\
         \x20 curl -X POST '{canary}/_control?error_rate=0.5'   # or latency_ms=800\n\
         \x20 canary-lb ctl rollout --admin {m} status --watch   # rolled_back, 0 %, within 3 windows\n\
         \x20 curl -X POST '{canary}/_control?error_rate=0'     # heal the canary\n\
         \x20 curl -s {m}/rollout                              # state and verdicts as JSON\n\n\
         The shadow step: the canary judged on copies of production's requests before any\n\
         user reaches it (the same request's two answers compared, the canary's thrown away):\n\n\
         \x20 curl -X POST '{canary}/_control?error_rate=0.3'   # or latency_ms=50\n\
         \x20 canary-lb ctl rollout --admin {m} start --shadow 50 --steps 5,25,50,100 --interval 5s\n\
         \x20 canary-lb ctl rollout --admin {m} status --watch   # shadow: copying 50 %, then rolled_back at 0 %\n\
         \x20 curl -s {m}/metrics | grep canary_lb_shadow_requests_total   # the copies, by outcome\n\
         \x20 curl -X POST '{canary}/_control?error_rate=0'     # heal it, start again: the shadow\n\
         \x20                                                   # step passes, then step 1 routes 5 % of users\n\n\
         Ctrl-C stops the demo.\n",
        pct = args.canary_percent,
        canary = canary_url,
    );
}
