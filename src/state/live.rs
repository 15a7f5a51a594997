//! The settings a SIGHUP applies, as one snapshot the request path reads once per request.
//!
//! Built whole from the config file and the layers over it (`Live::new`), never edited. The
//! request path holds no serde type: `upstream:` and `client:` are turned here, once per
//! reload, into what a request reads ([`UpstreamSettings`], [`ClientSettings`]): timeouts
//! ready for a peer, the head limits as numbers, the keep-alive in Pingora's whole seconds,
//! as River keeps its internal config apart from the file's format. (A key that needs a
//! restart, `keepalive_pool_size`, `header_timeout`, `max_connections`, is not in here at all:
//! the runtime reads it from the config the process started with.)

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::Layers;
use crate::config::{Balance, ClientConfig, Config, UpstreamConfig};
use crate::flags::FlagSet;
use crate::model::PerPool;
use crate::pool::{PassiveHealth, PeerTimeouts};
use crate::rollout::shadow::ShadowSettings;
use crate::routing::CanaryPolicy;

/// The settings a SIGHUP applies, as one snapshot.
#[derive(Debug)]
pub struct Live {
    /// The file's `routing` section with the provider's overrides laid over it.
    pub policy: CanaryPolicy,
    /// An attempt's timeouts and `max_tries`.
    pub upstream: UpstreamSettings,
    pub fallback_to_canary: bool,
    /// The client limits enforced per request.
    pub client: ClientSettings,
    /// When a failing server leaves rotation (`passive_health`).
    pub passive_health: PassiveHealth,
    /// Read by the pools when they refresh (`Pool::set_balance`).
    pub balance: PerPool<Balance>,
    /// Peers whose forwarding headers are believed (`proxy::headers::client_address`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The feature flags in force: Redis's while it has any, else the file's `flags.items`.
    pub flags: Arc<FlagSet>,
    /// `redis` or `file`: where [`Live::flags`] come from.
    pub flags_source: &'static str,
    /// The header the flags that are on go upstream in (`flags.header`).
    pub flag_header: HeaderName,
    /// [`Live::flag_header`] as it goes out on the wire (the file's spelling), ready for
    /// Pingora's insert: a `HeaderName` would be re-spelled and copied on every request.
    pub flag_header_wire: bytes::Bytes,
    /// The testers' override header (`flags.override_header`).
    pub flag_override_header: HeaderName,
    /// The shadow step in force: a running rollout's, while it copies production requests
    /// to the canary.
    pub shadow: Option<Arc<ShadowRun>>,
    /// The header that marks the shadow step's copies (`rollout.shadow.header`, or the
    /// default's): removed from every request a client sends.
    pub shadow_header: HeaderName,
}

/// The copies' mark when `rollout.shadow` does not name one ([`ShadowSettings`]' default).
const DEFAULT_SHADOW_HEADER: &str = "x-canary-shadow";

/// The shadow step as a request reads it, built once per change: the settings with the copy
/// header and the methods parsed.
#[derive(Debug)]
pub struct ShadowRun {
    pub settings: Arc<ShadowSettings>,
    /// `shadow.header`, value `1` on every copy.
    pub header: HeaderName,
    /// `shadow.percent` as a fraction of `u32::MAX + 1`: a request is copied when a uniform
    /// random `u32` is below it.
    pub threshold: u64,
}

impl ShadowRun {
    fn new(settings: Arc<ShadowSettings>) -> Option<ShadowRun> {
        // Validated with the rollout's settings; a header that still does not parse copies
        // nothing rather than copying without the mark.
        let header = HeaderName::try_from(settings.header.as_str()).ok()?;
        let threshold = settings.percent.basis_points() as u64 * (1u64 << 32) / 10_000;
        Some(ShadowRun {
            settings,
            header,
            threshold,
        })
    }
}

/// `upstream:` as a request reads it: the timeouts of an attempt, built once.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamSettings {
    /// An ordinary request's attempt.
    timeouts: PeerTimeouts,
    /// An upgrade request's: its reads may be a tunnel's, idle for up to
    /// `client.tunnel_idle_timeout` (the wait for the `101` included).
    upgrade_timeouts: PeerTimeouts,
    /// Attempts per request on connect failure, each on a different server of the pool.
    pub max_tries: usize,
}

impl UpstreamSettings {
    fn new(upstream: &UpstreamConfig, client: &ClientConfig) -> UpstreamSettings {
        let timeouts = PeerTimeouts {
            connect: upstream.connect_timeout,
            read: upstream.read_timeout,
            write: upstream.write_timeout,
            idle: upstream.idle_timeout,
        };
        UpstreamSettings {
            timeouts,
            upgrade_timeouts: PeerTimeouts {
                read: upstream.read_timeout.max(client.tunnel_idle_timeout),
                ..timeouts
            },
            max_tries: upstream.max_tries,
        }
    }

    /// The timeouts of an attempt; `upgrade`: the request asks to switch protocols.
    #[inline]
    pub fn timeouts(&self, upgrade: bool) -> &PeerTimeouts {
        if upgrade {
            &self.upgrade_timeouts
        } else {
            &self.timeouts
        }
    }
}

/// The limits on a request head (`client.max_headers`, `max_header_line`,
/// `max_header_bytes`) that `proxy::framing` enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most header lines (the request line not counted).
    pub max_headers: usize,
    /// Longest request line or header line, without its line ending.
    pub max_header_line: usize,
    /// Largest whole head, request line to the empty line included.
    pub max_header_bytes: usize,
}

/// `client:` as a request reads it. `header_timeout`, `handshake_timeout`, `max_connections`,
/// the HTTP/2 stream and budget sizes and a raised `max_header_bytes` are Pingora's or the
/// listeners' and were taken at start.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub head: HeadLimits,
    /// Drop request headers whose names contain `_`.
    pub drop_underscore_headers: bool,
    /// `keepalive_timeout` in whole seconds, at least 1 (Pingora's unit; its 0 means never).
    pub keepalive_secs: u64,
    pub body_timeout: Duration,
    pub send_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    /// How long an HTTP/2 stream waits for a place in the upstream budgets.
    pub upstream_queue_timeout: Duration,
}

impl From<&ClientConfig> for ClientSettings {
    fn from(c: &ClientConfig) -> ClientSettings {
        ClientSettings {
            head: HeadLimits {
                max_headers: c.max_headers,
                max_header_line: c.max_header_line,
                max_header_bytes: c.max_header_bytes,
            },
            drop_underscore_headers: c.drop_underscore_headers,
            keepalive_secs: c.keepalive_timeout.as_secs().max(1),
            body_timeout: c.body_timeout,
            send_timeout: c.send_timeout,
            tunnel_idle_timeout: c.tunnel_idle_timeout,
            upstream_queue_timeout: c.upstream_queue_timeout,
        }
    }
}

impl Live {
    pub(super) fn new(config: &Config, policy: CanaryPolicy, layers: &Layers) -> Live {
        let (flags, flags_source) = match &layers.flags {
            Some(f) => (f.clone(), "redis"),
            None => (Arc::new(file_flags(config)), "file"),
        };
        let header = |name: &str, default: &'static str| {
            HeaderName::try_from(name).unwrap_or_else(|_| HeaderName::from_static(default))
        };
        let flag_header = header(&config.flags.header, "x-features");
        let flag_header_wire = if flag_header
            .as_str()
            .eq_ignore_ascii_case(&config.flags.header)
        {
            bytes::Bytes::copy_from_slice(config.flags.header.as_bytes())
        } else {
            bytes::Bytes::copy_from_slice(flag_header.as_str().as_bytes())
        };
        Live {
            flags,
            flags_source,
            flag_header,
            flag_header_wire,
            flag_override_header: header(&config.flags.override_header, "x-feature-override"),
            policy,
            upstream: UpstreamSettings::new(&config.upstream, &config.client),
            fallback_to_canary: config.fallback_to_canary,
            client: ClientSettings::from(&config.client),
            passive_health: PassiveHealth::from(&config.passive_health),
            balance: PerPool::from_fn(|kind| config.pools.get(kind).balance),
            trusted_proxies: config.trusted_proxies.clone(),
            shadow_header: config
                .rollout
                .shadow
                .as_ref()
                .and_then(|s| HeaderName::try_from(s.header.as_str()).ok())
                .unwrap_or_else(|| HeaderName::from_static(DEFAULT_SHADOW_HEADER)),
            shadow: layers
                .rollout
                .as_ref()
                .and_then(|r| r.shadow.clone())
                .and_then(ShadowRun::new)
                .map(Arc::new),
        }
    }
}

/// The file's `flags.items` (validated with the config, so building cannot fail; if it did,
/// no flag would be on and the error is logged).
fn file_flags(config: &Config) -> FlagSet {
    FlagSet::build(config.flags.items.iter().map(|(n, f)| (n.as_str(), f))).unwrap_or_else(|e| {
        log::error!("flags: the file's flags not applied: {e}");
        FlagSet::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_reads_for_as_long_as_a_tunnel_may_idle() {
        let upstream = UpstreamConfig {
            read_timeout: Duration::from_secs(5),
            ..UpstreamConfig::default()
        };
        let client = ClientConfig {
            tunnel_idle_timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        let s = UpstreamSettings::new(&upstream, &client);
        assert_eq!(s.timeouts(false).read, Duration::from_secs(5));
        assert_eq!(s.timeouts(true).read, Duration::from_secs(60));
        assert_eq!(s.timeouts(true).connect, upstream.connect_timeout);
        assert_eq!(s.timeouts(true).write, upstream.write_timeout);
        assert_eq!(s.timeouts(true).idle, upstream.idle_timeout);
        assert_eq!(s.max_tries, upstream.max_tries);
    }

    #[test]
    fn the_keepalive_is_whole_seconds_and_never_pingoras_zero() {
        let client = |t| ClientConfig {
            keepalive_timeout: t,
            ..ClientConfig::default()
        };
        let s = ClientSettings::from(&client(Duration::from_millis(300)));
        assert_eq!(s.keepalive_secs, 1);
        let s = ClientSettings::from(&client(Duration::from_millis(7_900)));
        assert_eq!(s.keepalive_secs, 7);
    }
}
