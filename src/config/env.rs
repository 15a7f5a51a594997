//! The `CANARY_LB_*` environment overrides, laid over the file before validation ends.

use std::net::SocketAddr;

use super::{validate_redis_url, Config, ConfigError, Provider, RedisUrls};
use crate::model::Percent;

impl Config {
    /// Apply the documented `CANARY_LB_*` overrides; `get` reads a variable.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let err = |var: &'static str, message: String| ConfigError::Env { var, message };
        if let Some(v) = get("CANARY_LB_LISTEN") {
            let list: Result<Vec<SocketAddr>, _> = v
                .split(',')
                .map(|s| s.trim().parse::<SocketAddr>())
                .collect();
            let list = list.map_err(|e| err("CANARY_LB_LISTEN", format!("`{v}`: {e}")))?;
            self.listen = list.into_iter().map(super::Listener::plain).collect();
        }
        if let Some(v) = get("CANARY_LB_THREADS") {
            self.threads = match v.trim().parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => return Err(err("CANARY_LB_THREADS", format!("`{v}` is not 1..=256"))),
            };
        }
        if let Some(v) = get("CANARY_LB_METRICS_LISTEN") {
            self.metrics_listen = Some(
                v.trim()
                    .parse()
                    .map_err(|e| err("CANARY_LB_METRICS_LISTEN", format!("`{v}`: {e}")))?,
            );
        }
        if let Some(v) = get("CANARY_LB_CANARY_PERCENT") {
            self.routing.canary_percent =
                Percent::parse(&v).map_err(|e| err("CANARY_LB_CANARY_PERCENT", e.to_string()))?;
        }
        if let Some(v) = get("CANARY_LB_SALT") {
            self.routing.salt = v;
        }
        if let Some(v) = get("CANARY_LB_REDIS_URL") {
            // `a,b,c`: a cluster's seed nodes (with CANARY_LB_REDIS_CLUSTER or the file's
            // `discovery.cluster`).
            let urls = RedisUrls::from_comma_separated(&v);
            for url in urls.as_slice() {
                validate_redis_url(url).map_err(|e| err("CANARY_LB_REDIS_URL", e.to_string()))?;
            }
            self.discovery.url = urls;
            self.discovery.provider = Provider::Redis;
            // A `file_watch` file's path means nothing under Redis.
            self.discovery.path = None;
        }
        if let Some(v) = get("CANARY_LB_REDIS_CLUSTER") {
            self.discovery.cluster = match v.trim() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" | "" => false,
                _ => {
                    return Err(err(
                        "CANARY_LB_REDIS_CLUSTER",
                        format!("`{v}` is not true or false"),
                    ))
                }
            };
        }
        if let Some(v) = get("CANARY_LB_NAMESPACE") {
            if v.is_empty() {
                return Err(err("CANARY_LB_NAMESPACE", "must not be empty".into()));
            }
            self.discovery.namespace = v;
        }
        self.validate()
            .map_err(|e| err("CANARY_LB_*", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_apply_and_validate() {
        let mut c = Config::parse("threads: 1\n").expect("valid");
        let env = |k: &str| match k {
            "CANARY_LB_LISTEN" => Some("127.0.0.1:1,127.0.0.1:2".to_string()),
            "CANARY_LB_CANARY_PERCENT" => Some("7.5".to_string()),
            "CANARY_LB_REDIS_URL" => Some("redis://u:secret@127.0.0.1:6379/1".to_string()),
            _ => None,
        };
        c.apply_env(env).expect("valid env");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.routing.canary_percent.basis_points(), 750);
        assert_eq!(c.discovery.provider, Provider::Redis);
        assert_eq!(
            c.discovery.url.as_slice(),
            ["redis://u:secret@127.0.0.1:6379/1"]
        );
        let seeds = |k: &str| match k {
            "CANARY_LB_REDIS_URL" => Some("redis://a:7000, redis://b:7001".to_string()),
            "CANARY_LB_REDIS_CLUSTER" => Some("true".to_string()),
            _ => None,
        };
        c.apply_env(seeds).expect("cluster seeds");
        assert!(c.discovery.cluster);
        assert_eq!(
            c.discovery.url.as_slice(),
            ["redis://a:7000", "redis://b:7001"]
        );
        let bad = |k: &str| (k == "CANARY_LB_THREADS").then(|| "zero".to_string());
        let e = c.apply_env(bad).expect_err("bad threads");
        assert!(e.to_string().contains("CANARY_LB_THREADS"));
    }
}
