//! `client:`: the limits and timeouts on downstream clients.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::super::de::*;
use super::default_true;

/// Limits on downstream clients: every value a client controls has a bound or a timeout.
/// The defaults follow nginx and HAProxy (SECURITY.md lists them side by side).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// How long an idle keep-alive connection waits for the next request.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Deadline for the whole request head (request line and headers), like HAProxy's
    /// `timeout http-request`; a drip-fed head is cut off when it expires.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Deadline for a new connection to show its protocol: the TLS handshake, the h2c
    /// detection and the HTTP/2 connection preface each get this long (nginx's
    /// `ssl_handshake_timeout`); a connection that misses it is closed.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest a response write to the client may wait (nginx's `send_timeout`): a client that
    /// stops reading is cut off.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Largest request head in bytes (request line plus all headers), enforced while the head
    /// is read so no more is ever buffered; beyond it: 400 (as nginx).
    #[serde(
        default = "default_max_header_bytes",
        deserialize_with = "de_head_bytes"
    )]
    pub max_header_bytes: usize,
    /// Largest single header line or request line in bytes; beyond it: 431.
    #[serde(
        default = "default_max_header_line",
        deserialize_with = "de_head_bytes"
    )]
    pub max_header_line: usize,
    /// Most header lines in one request; beyond it: 431.
    #[serde(default = "default_max_headers", deserialize_with = "de_max_headers")]
    pub max_headers: usize,
    /// Open client connections per proxy process; past it new connections are closed at once.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "de_max_connections"
    )]
    pub max_connections: usize,
    /// Drop request headers whose names contain `_` (nginx's `underscores_in_headers off`):
    /// some frameworks read `X_Canary` as `X-Canary`.
    #[serde(default = "default_true")]
    pub drop_underscore_headers: bool,
    /// A switched connection (WebSocket) is closed when either side sends nothing for this
    /// long (HAProxy's `timeout tunnel`; a server's pings and the browser's automatic pongs
    /// keep both sides busy). It replaces `body_timeout` and `upstream.read_timeout` for
    /// upgrade requests (the wait for the `101` included).
    #[serde(default = "default_tunnel_idle_timeout", with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once (nginx's
    /// `http2_max_concurrent_streams`, HAProxy's `tune.h2.max-concurrent-streams`).
    #[serde(
        default = "default_h2_max_concurrent_streams",
        deserialize_with = "de_h2_streams"
    )]
    pub h2_max_concurrent_streams: u32,
    /// Upstream requests in flight at once for one client connection: HTTP/2 streams beyond
    /// it wait (up to `upstream_queue_timeout`) for a place, then get 503. HTTP/1 carries one
    /// request at a time and is not counted.
    #[serde(
        default = "default_max_upstream_per_connection",
        deserialize_with = "de_budget"
    )]
    pub max_upstream_per_connection: usize,
    /// Upstream requests in flight at once from all HTTP/2 streams of this process: what a
    /// few connections x many streams can hold (upstream connections, buffered bodies).
    #[serde(
        default = "default_max_upstream_connections",
        deserialize_with = "de_budget"
    )]
    pub max_upstream_connections: usize,
    /// How long an HTTP/2 stream waits for a place in those budgets before its 503 (HAProxy's
    /// `timeout queue`).
    #[serde(default = "default_upstream_queue_timeout", with = "humantime_serde")]
    pub upstream_queue_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            keepalive_timeout: default_keepalive_timeout(),
            header_timeout: default_header_timeout(),
            handshake_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            send_timeout: default_body_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_header_line: default_max_header_line(),
            max_headers: default_max_headers(),
            max_connections: default_max_connections(),
            drop_underscore_headers: true,
            tunnel_idle_timeout: default_tunnel_idle_timeout(),
            h2_max_concurrent_streams: default_h2_max_concurrent_streams(),
            max_upstream_per_connection: default_max_upstream_per_connection(),
            max_upstream_connections: default_max_upstream_connections(),
            upstream_queue_timeout: default_upstream_queue_timeout(),
        }
    }
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_body_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_tunnel_idle_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_h2_max_concurrent_streams() -> u32 {
    100
}

fn de_h2_streams<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, |v| int_in(v, 1, 10_000).map(|n| n as u32))
}

fn default_max_upstream_per_connection() -> usize {
    16
}

fn default_max_upstream_connections() -> usize {
    256
}

fn de_budget<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| int_in(v, 1, 1_000_000).map(|n| n as usize))
}

fn default_upstream_queue_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_max_header_line() -> usize {
    16 * 1024
}

fn default_max_headers() -> usize {
    100
}

fn default_max_connections() -> usize {
    10_000
}
