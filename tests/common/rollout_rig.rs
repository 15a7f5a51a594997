//! Progressive delivery on one box: production and canary demo apps behind one proxy (file
//! provider) at canary_percent 0, the rollout driven through the admin endpoint, the canary's
//! faults set through its `/_control`, and a bounded load of many users.

use std::time::Duration;

use serde_json::Value;

use super::load::{Load, LoadSpec};
use super::{free_port, pools, post, proxy_config, rollout_admin, App, Proxy};

pub struct Rig {
    // Declared first: dropped (its log printed on panic) before the apps.
    pub proxy: Proxy,
    pub canary: App,
    pub _prod: App,
}

/// The apps and the proxy, with `rollout` as the config's `rollout:` section.
pub fn rig(rollout: &str) -> Rig {
    rig_with(rollout, "")
}

/// [`rig`] with `extra` config lines. The proxy trusts 127.0.0.1 as a forwarding proxy, so the
/// load's users count as distinct clients (`X-Forwarded-For`), as behind a load balancer: the
/// rollout caps what each client address contributes to a window.
pub fn rig_with(rollout: &str, extra: &str) -> Rig {
    let prod = App::start("prod-1", "production");
    let canary = App::start("canary-1", "canary");
    let yaml = proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 2\n{}\
             health_check: {{ kind: http, path: /healthz, interval: 500ms, timeout: 2s }}\n\
             routing: {{ canary_percent: 0, salt: rollout-it }}\n\
             trusted_proxies: [\"127.0.0.1/32\"]\nrollout: {rollout}\n{extra}",
            pools(&[&prod.addr()], &[&canary.addr()])
        ),
    );
    Rig {
        proxy: Proxy::start(&yaml),
        canary,
        _prod: prod,
    }
}

impl Rig {
    pub fn admin(&self, path: &str) -> String {
        rollout_admin::admin(&self.proxy, path)
    }

    pub fn rollout(&self) -> Value {
        rollout_admin::rollout(&self.proxy)
    }

    /// POST a rollout command; panics unless it answers `want`.
    pub fn command(&self, path_and_query: &str, want: u16) -> String {
        let r = post(&self.admin(path_and_query), &[], b"");
        assert_eq!(r.status, want, "POST {path_and_query}: {}", r.body);
        r.body
    }

    /// `POST /_control?{query}` on the canary app (`error_rate=0.5`, `latency_ms=800`, ...).
    pub fn control(&self, query: &str) {
        let r = post(&self.canary.url(&format!("/_control?{query}")), &[], b"");
        assert_eq!(r.status, 200, "canary /_control?{query}: {}", r.body);
    }

    /// A load of `threads` threads pausing `pause_ms` after each request, each user its own
    /// client address; it stops by itself after 90 s.
    pub fn load(&self, threads: usize, pause_ms: u64) -> Load {
        let mut spec = LoadSpec::new(vec![self.proxy.url("")]);
        spec.threads = threads;
        spec.pause = Duration::from_millis(pause_ms);
        spec.max_run = Duration::from_secs(90);
        spec.forwarded_for = true;
        Load::start(spec)
    }
}
