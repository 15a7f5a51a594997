//! Which keys a SIGHUP applies and which need a restart.
//!
//! Live, applied by SIGHUP (the request path reads them through one snapshot per request,
//! `state::Live`): `routing.*`, `fallback_to_canary`, `upstream.connect_timeout`,
//! `upstream.read_timeout`, `upstream.write_timeout`, `upstream.idle_timeout`,
//! `upstream.max_tries`, `passive_health.*`, `pools.*.balance`, `pools.*.servers` (with the
//! static provider), `client.keepalive_timeout`, `client.body_timeout`, `client.send_timeout`,
//! `client.max_header_line`, `client.max_headers`, `client.drop_underscore_headers`,
//! `client.max_header_bytes` (lowering it), `client.tunnel_idle_timeout`,
//! `client.upstream_queue_timeout`, `trusted_proxies`,
//! `metrics_auth_token_file`, `flags.*` (the header names and the file's flags; the file's
//! flags are in force only while Redis has none), `rollout.*`, which apply to the next
//! rollout started (a running one keeps the settings frozen at its start), and the
//! certificates of TLS listeners (`listen[].tls.cert`, `.key`, `.sni`: the files are read
//! again and swapped in for new handshakes; open connections keep theirs; a bad file refuses
//! the whole reload).
//!
//! Restart only, because Pingora or a background task takes them once at start: `listen`
//! (adding or removing a listener, its `addr`, `h2c`, `redirect_to_https`, TLS on or off),
//! `threads`, `metrics_listen`, `grace_period`, `health_check.*`, `discovery.*`,
//! `client.header_timeout`, `client.handshake_timeout`, `client.max_header_bytes` (raising it), `client.max_connections`,
//! `client.h2_max_concurrent_streams`, `client.max_upstream_per_connection`,
//! `client.max_upstream_connections` (the budgets are sized once, shared by all listeners),
//! `upstream.keepalive_pool_size`, `pools.*.tls` and `pools.*.protocol` (the pool reads its
//! files once), `server_header`, `access_log` (its file, format and queue are set up once;
//! SIGUSR1 reopens the file), `rollout.state_file`, and `pools.*.servers` when they are not
//! the provider's data (`ProviderRole::servers_in_config_file`: under any provider but
//! `static`, the file's lists serve only until the provider first answers). [`Config::restart_needed`] names
//! the ones that changed, so the reload log says them in one line.

use super::Config;
use crate::model::PoolKind;

impl Config {
    /// The restart-only keys whose value in `new` differs from `self`, the config the process
    /// started with (so a key stays named until the restart that applies it).
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let (old, new) = (self, new);
        let mut keys = Vec::new();
        let mut check = |key: &'static str, changed: bool| {
            if changed {
                keys.push(key);
            }
        };
        // Adding, removing or changing a listener needs a restart; its certificate files
        // (paths and contents) are live.
        let shapes = |c: &Config| c.listen.iter().map(|l| l.shape()).collect::<Vec<_>>();
        check("listen", shapes(old) != shapes(new));
        check("threads", old.threads != new.threads);
        check("server_header", old.server_header != new.server_header);
        check("metrics_listen", old.metrics_listen != new.metrics_listen);
        check("grace_period", old.grace_period != new.grace_period);
        check("health_check", old.health_check != new.health_check);
        let pools_differ = |f: fn(&super::PoolConfig, &super::PoolConfig) -> bool| {
            PoolKind::ALL
                .iter()
                .any(|&k| f(old.pools.get(k), new.pools.get(k)))
        };
        check("pools.*.tls", pools_differ(|o, n| o.tls != n.tls));
        check(
            "pools.*.protocol",
            pools_differ(|o, n| o.protocol != n.protocol),
        );
        check("discovery", old.discovery != new.discovery);
        let (oc, nc) = (&old.client, &new.client);
        check(
            "client.header_timeout",
            oc.header_timeout != nc.header_timeout,
        );
        check(
            "client.handshake_timeout",
            oc.handshake_timeout != nc.handshake_timeout,
        );
        check(
            "client.max_header_bytes (raising it)",
            nc.max_header_bytes > oc.max_header_bytes,
        );
        check(
            "client.max_connections",
            oc.max_connections != nc.max_connections,
        );
        check(
            "client.h2_max_concurrent_streams",
            oc.h2_max_concurrent_streams != nc.h2_max_concurrent_streams,
        );
        check(
            "client.max_upstream_per_connection",
            oc.max_upstream_per_connection != nc.max_upstream_per_connection,
        );
        check(
            "client.max_upstream_connections",
            oc.max_upstream_connections != nc.max_upstream_connections,
        );
        check(
            "upstream.keepalive_pool_size",
            old.upstream.keepalive_pool_size != new.upstream.keepalive_pool_size,
        );
        check("access_log", old.access_log != new.access_log);
        check(
            "rollout.state_file",
            old.rollout.state_file != new.rollout.state_file,
        );
        check("pid_file", old.pid_file != new.pid_file);
        if !old.discovery.provider.role().servers_in_config_file {
            for (kind, key) in [
                (PoolKind::Production, "pools.production.servers"),
                (PoolKind::Canary, "pools.canary.servers"),
            ] {
                check(
                    key,
                    old.pools.get(kind).servers != new.pools.get(kind).servers,
                );
            }
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_named_and_live_keys_are_not() {
        let base = Config::parse("threads: 1\n").expect("valid");
        assert!(base.restart_needed(&base.clone()).is_empty());
        let live = Config::parse(
            "threads: 1\nfallback_to_canary: true\nupstream: { read_timeout: 1s, max_tries: 3 }\n\
             passive_health: { max_failures: 7 }\npools: { production: { balance: consistent_hash, \
             servers: [\"127.0.0.1:1\"] } }\nrouting: { canary_percent: 5 }\n\
             client: { max_header_bytes: 32768, body_timeout: 5s }\n\
             flags: { header: X-F, items: { dark-mode: { percent: 50 } } }\n",
        )
        .expect("valid");
        assert_eq!(base.restart_needed(&live), Vec::<&str>::new());
        let restart = Config::parse(
            "threads: 3\nlisten: \"127.0.0.1:9\"\nhealth_check: { interval: 9s }\n\
             client: { max_header_bytes: 131072, max_connections: 5 }\n\
             upstream: { keepalive_pool_size: 1 }\ngrace_period: 3s\n",
        )
        .expect("valid");
        assert_eq!(
            base.restart_needed(&restart),
            [
                "listen",
                "threads",
                "grace_period",
                "health_check",
                "client.max_header_bytes (raising it)",
                "client.max_connections",
                "upstream.keepalive_pool_size",
            ]
        );
        // A listener's certificate files are live; its shape (TLS on/off, h2c, ...) is not.
        let tls = |cert: &str, h2c: bool| {
            Config::parse(&format!(
                "threads: 1\nlisten: [{{ addr: \"127.0.0.1:1\", tls: {{ cert: {cert}, key: /k }} }}, \
                 {{ addr: \"127.0.0.1:2\", h2c: {h2c} }}]\n"
            ))
            .expect("valid")
        };
        assert!(tls("/a", false)
            .restart_needed(&tls("/b", false))
            .is_empty());
        assert_eq!(
            tls("/a", false).restart_needed(&tls("/a", true)),
            ["listen"]
        );
        assert_eq!(
            tls("/a", false).restart_needed(&Config::parse("threads: 1\n").expect("valid")),
            ["listen"]
        );
        let redis = Config::parse(
            "discovery: { provider: redis }\npools: { canary: { servers: [\"127.0.0.1:1\"] } }\n",
        )
        .expect("valid");
        let mut moved = redis.clone();
        moved.pools.canary.servers.clear();
        assert_eq!(redis.restart_needed(&moved), ["pools.canary.servers"]);
    }
}
