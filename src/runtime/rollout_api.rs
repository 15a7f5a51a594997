//! The rollout's admin API (README, "Progressive delivery"), served by `admin.rs` on
//! `metrics_listen` with the same token as `/status`:
//! - `GET /rollout`: 200 `{"state", "history" (newest last, up to 20), "leader", "replica"}`
//!   ([`RolloutView`]: the state with its salt shown only as `salt_fingerprint`);
//! - `POST /rollout/start?steps=5,10,25&interval=2s&windows_per_step=1&threshold=3` (every key
//!   optional, over the config's `rollout:` section as last loaded; also `min_requests`,
//!   `max_inconclusive`, `hard_fail_errors`): 200 the same JSON, 400 naming a bad or unknown
//!   key, 409 with the reason when refused (a rollout is running);
//! - `POST /rollout/pause|resume|abort|promote`: 200 the same JSON, 409 with the reason.
//!
//! Commands change routing, so without `metrics_auth_token_file` they are served only when
//! `metrics_listen` is a loopback address (403 otherwise): a published admin port without a
//! token stays read-only.
//!
//! Every command must also come from the operator's tools, not from a web page the operator
//! has open (request forgery, DNS rebinding): an `Origin` header, which browsers send on every
//! cross-site POST and `ctl`/curl never do, must name the admin address itself; and without a
//! token, `Host` must be that address (`IP:port`, any IP when `metrics_listen` is
//! `0.0.0.0`/`[::]`, or `localhost:port` on a loopback or unspecified one); otherwise 403 and
//! nothing is done. A name such as `evil.example` that resolves to the admin address is never
//! the admin address, so a rebinding page is refused. With a token the `Host` is not checked:
//! a page cannot send the `Authorization` header across sites (it needs a CORS preflight this
//! port never answers), and operators reach a token-protected port by a DNS name
//! (`ctl rollout --admin http://lb-1:9091`).
//!
//! A command also applies its weight to this process's routing at once (an abort is 0 % from
//! the next request); other replicas follow within a tick of their engines.

use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderValue, Method, Response};
use serde_json::json;

use super::admin::reply;
use crate::model::now_ms;
use crate::rollout::engine::{route_for, RolloutSink};
use crate::rollout::view::RolloutView;
use crate::rollout::{
    start_key_names, Command, HistoryEntry, RolloutSettings, RolloutState, START_KEYS,
};
use crate::state::Shared;
use pingora_http::RequestHeader;

/// History entries in the JSON.
pub const HISTORY: usize = 20;
/// Query keys accepted at most (each at most once).
const MAX_KEYS: usize = 16;

/// The rollout object of `GET /rollout` and `/status` (`null` without a coordinator, an
/// `error` member when it does not answer).
pub async fn view(shared: &Shared) -> serde_json::Value {
    let Some(handle) = shared.rollout() else {
        return serde_json::Value::Null;
    };
    let c = &handle.coordinator;
    let (state, history, leader) = tokio::join!(c.state(), c.history(HISTORY), c.leader());
    match (state, history, leader) {
        // Through the view, never the state itself: the salt shows only as its fingerprint.
        (Ok(state), Ok(history), Ok(leader)) => serde_json::to_value(RolloutView::new(
            state.as_ref(),
            history,
            leader,
            Some(handle.replica.clone()),
        ))
        .unwrap_or_else(|e| json!({ "error": e.to_string(), "replica": handle.replica })),
        (s, h, l) => {
            let error = [s.err(), h.err(), l.err()]
                .into_iter()
                .flatten()
                .map(|e| e.to_string())
                .next()
                .unwrap_or_default();
            json!({ "error": error, "replica": handle.replica })
        }
    }
}

fn text(code: u16, message: impl Into<String>) -> Response<Vec<u8>> {
    let mut m = message.into();
    m.push('\n');
    reply(code, "text/plain; charset=utf-8", m.as_bytes())
}

/// A `/rollout...` request (already authorized).
pub async fn handle(shared: &Shared, req: &RequestHeader) -> Response<Vec<u8>> {
    let path = req.uri.path();
    let command = match path.strip_prefix("/rollout") {
        Some("") => None,
        Some("/start") => Some(None),
        Some("/pause") => Some(Some(Command::Pause)),
        Some("/resume") => Some(Some(Command::Resume)),
        Some("/abort") => Some(Some(Command::Abort)),
        Some("/promote") => Some(Some(Command::Promote)),
        _ => {
            return text(
                404,
                "not found: try /rollout or POST /rollout/start|pause|resume|abort|promote",
            )
        }
    };
    let allowed = if command.is_some() {
        "POST"
    } else {
        "GET, HEAD"
    };
    let method_ok = match command {
        Some(_) => req.method == Method::POST,
        None => req.method == Method::GET || req.method == Method::HEAD,
    };
    if !method_ok {
        let mut r = text(405, format!("method not allowed: use {allowed}"));
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        return r;
    }
    if command.is_some() {
        let listen = shared.started().metrics_listen;
        let check_host = shared.config().metrics_auth_token_file.is_none();
        if !listen.is_some_and(|l| from_admin_address(l, req, check_host)) {
            return text(
                403,
                "forbidden: a rollout command needs Host set to the admin address (IP:port or \
                 localhost:port) and no Origin of another site",
            );
        }
    }
    if command.is_some() && !commands_allowed(shared) {
        return text(
            403,
            "rollout commands on a non-loopback metrics_listen need metrics_auth_token_file",
        );
    }
    if shared.rollout().is_none() {
        return text(
            503,
            "no rollout engine runs in this process (Redis discovery: use `canary-lb ctl rollout`)",
        );
    }
    let result = match command {
        None => Ok(()),
        Some(None) => start(shared, req.uri.query()).await,
        Some(Some(cmd)) => run_command(shared, cmd).await,
    };
    if let Err(refusal) = result {
        return refusal;
    }
    let mut r = reply(
        200,
        "application/json",
        &serde_json::to_vec_pretty(&view(shared).await).unwrap_or_default(),
    );
    if req.method == Method::HEAD {
        r.body_mut().clear();
    }
    r
}

/// Whether this process takes rollout commands: with an admin token, or on loopback only.
fn commands_allowed(shared: &Shared) -> bool {
    let config = shared.config();
    config.metrics_auth_token_file.is_some()
        || shared
            .started()
            .metrics_listen
            .is_some_and(|a| a.ip().is_loopback())
}

/// Whether `authority` (`IP:port`, `[v6]:port`, `localhost:port`; no port means 80) names
/// the admin listener at `listen`.
fn is_admin_address(listen: SocketAddr, authority: &str) -> bool {
    let (host, port) = match authority.parse::<SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !h.is_empty() => match p.parse::<u16>() {
                Ok(p) => (h.to_string(), p),
                Err(_) => return false,
            },
            _ => (authority.to_string(), 80),
        },
    };
    if port != listen.port() {
        return false;
    }
    let any = listen.ip().is_unspecified();
    if host.eq_ignore_ascii_case("localhost") {
        return any || listen.ip().is_loopback();
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // `0.0.0.0` is refused even on `0.0.0.0`: browsers connect it to this machine.
    host.parse::<IpAddr>()
        .is_ok_and(|ip| !ip.is_unspecified() && (any || ip == listen.ip()))
}

/// Whether a command's `Origin`, if any, is `http://` the admin listener's address and (with
/// `check_host`: no token configured) its `Host` (exactly one) and any absolute-form target
/// name that address (see the module doc).
fn from_admin_address(listen: SocketAddr, req: &RequestHeader, check_host: bool) -> bool {
    let one = |name: header::HeaderName| {
        let mut all = req.headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.to_str().ok()),
            (None, _) => None,
            (Some(_), Some(_)) => Some(None),
        }
    };
    let host_ok = match one(header::HOST) {
        Some(Some(host)) => is_admin_address(listen, host),
        _ => false,
    };
    // An absolute-form target names its own authority: it must be the admin address too.
    let target_ok = req
        .uri
        .authority()
        .is_none_or(|a| is_admin_address(listen, a.as_str()));
    let origin_ok = match one(header::ORIGIN) {
        None => true,
        Some(Some(origin)) => origin
            .strip_prefix("http://")
            .is_some_and(|a| is_admin_address(listen, a)),
        Some(None) => false,
    };
    origin_ok && (!check_host || (host_ok && target_ok))
}

/// The settings of a start: the config's `rollout:` with the query's keys over it, parsed
/// as `application/x-www-form-urlencoded` (`form_urlencoded`) and set through the rollout's
/// one key table. The error names the key, never echoes the value.
pub fn settings_from_query(
    base: &RolloutSettings,
    query: Option<&str>,
) -> Result<RolloutSettings, String> {
    let query = query.unwrap_or("");
    if let Some(at) = bad_escape(query) {
        // The key of the pair holding it, as sent (shown only when plain).
        let start = query[..at].rfind('&').map_or(0, |i| i + 1);
        let end = query[at..].find('&').map_or(query.len(), |i| at + i);
        let pair = &query[start..end];
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        return Err(format!("{}: bad %-encoding", printable(key)));
    }
    let mut s = base.clone();
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if seen.len() >= MAX_KEYS {
            return Err(format!("at most {MAX_KEYS} query keys"));
        }
        if seen.iter().any(|k| *k == key) {
            return Err(format!("{}: given twice", printable(&key)));
        }
        // Decoded bytes that are not UTF-8 come out as U+FFFD.
        if value.contains('\u{FFFD}') {
            return Err(format!("{}: bad %-encoding", printable(&key)));
        }
        if !START_KEYS.iter().any(|k| k.name == key) {
            return Err(format!(
                "unknown key {}: use {}",
                printable(&key),
                start_key_names().join(", ")
            ));
        }
        // The parser `ctl rollout start` uses; its problem never holds the value sent.
        s.set(&key, &value).map_err(|e| match e.value {
            Some(_) => format!("{}: the value sent {}", e.key, e.problem),
            None => format!("{}: {}", e.key, e.problem),
        })?;
        seen.push(key.into_owned());
    }
    s.validate()
        .map_err(|(key, problem)| format!("{key}: {problem}"))?;
    Ok(s)
}

/// The position of the first `%` of `query` that starts no `%XX` escape (`form_urlencoded`
/// keeps a stray `%` as it is; a start refuses it instead of guessing).
fn bad_escape(query: &str) -> Option<usize> {
    let b = query.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b'%'
            && !b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    })
}

/// A key as shown in an error: short, and only when it is plain (never arbitrary bytes).
fn printable(key: &str) -> String {
    if key.len() <= 32 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        format!("`{key}`")
    } else {
        "(not shown)".into()
    }
}

fn coordination_failed(e: impl std::fmt::Display) -> Response<Vec<u8>> {
    text(503, format!("the rollout store did not answer: {e}"))
}

const CHANGED: &str = "the rollout changed meanwhile; read it again and retry";

async fn start(shared: &Shared, query: Option<&str>) -> Result<(), Response<Vec<u8>>> {
    let settings = settings_from_query(&shared.config().rollout.settings(), query)
        .map_err(|e| text(400, e))?;
    let handle = shared
        .rollout()
        .ok_or_else(|| text(503, "no rollout engine"))?;
    let c = &handle.coordinator;
    let previous = c.state().await.map_err(coordination_failed)?;
    let now = now_ms();
    let next = RolloutState::start(
        format!("r-{now}"),
        settings,
        shared.base_salt(),
        now,
        previous.as_ref(),
    )
    .map_err(|e| text(409, e.to_string()))?;
    let entry = HistoryEntry {
        rollout_id: next.id.clone(),
        window: None,
        at_ms: now,
        verdict: "start".into(),
        reasons: vec![format!(
            "started: steps {} every {}",
            next.settings
                .steps
                .iter()
                .map(|p| p.as_f64().to_string())
                .collect::<Vec<_>>()
                .join(","),
            humantime::format_duration(next.settings.interval)
        )],
        numbers: Vec::new(),
        phase: next.phase,
        step: next.step,
        weight: next.weight,
    };
    if !c
        .command(previous.as_ref(), &next, &entry)
        .await
        .map_err(coordination_failed)?
    {
        return Err(text(409, CHANGED));
    }
    shared.set_route(route_for(Some(&next), now));
    log::info!(
        "rollout {} started by hand at {} %",
        next.id,
        next.weight.as_f64()
    );
    Ok(())
}

async fn run_command(shared: &Shared, cmd: Command) -> Result<(), Response<Vec<u8>>> {
    let handle = shared
        .rollout()
        .ok_or_else(|| text(503, "no rollout engine"))?;
    let c = &handle.coordinator;
    let Some(current) = c.state().await.map_err(coordination_failed)? else {
        return Err(text(409, format!("no rollout to {}", cmd.as_str())));
    };
    let now = now_ms();
    let (next, entry) = current
        .command(cmd, now)
        .map_err(|e| text(409, e.to_string()))?;
    if !c
        .command(Some(&current), &next, &entry)
        .await
        .map_err(coordination_failed)?
    {
        return Err(text(409, CHANGED));
    }
    shared.set_route(route_for(Some(&next), now));
    log::info!(
        "rollout {}: {} by hand, now {} at {} %",
        next.id,
        cmd.as_str(),
        next.phase.as_str(),
        next.weight.as_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn commands_come_from_the_admin_address_only() {
        let req = |headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("POST", b"/rollout/start", None).expect("request");
            for (n, v) in headers {
                r.append_header(n.to_string(), *v).expect("header");
            }
            r
        };
        let lo: SocketAddr = "127.0.0.1:9091".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:9091".parse().expect("addr");
        let v6: SocketAddr = "[::1]:9091".parse().expect("addr");
        let ok = |listen, headers: &[(&str, &str)]| from_admin_address(listen, &req(headers), true);
        // ctl and curl: Host only.
        assert!(ok(lo, &[("host", "127.0.0.1:9091")]));
        assert!(ok(lo, &[("host", "LocalHost:9091")]));
        assert!(ok(v6, &[("host", "[::1]:9091")]));
        assert!(ok(v6, &[("host", "localhost:9091")]));
        assert!(ok(any, &[("host", "10.1.2.3:9091")]));
        assert!(ok(any, &[("host", "localhost:9091")]));
        let same = [
            ("host", "127.0.0.1:9091"),
            ("origin", "http://127.0.0.1:9091"),
        ];
        assert!(ok(lo, &same));
        // A web page: another site's Origin, a rebinding name, a wrong port, nothing.
        for bad in [
            &[
                ("host", "127.0.0.1:9091"),
                ("origin", "http://evil.example"),
            ][..],
            &[("host", "127.0.0.1:9091"), ("origin", "null")],
            &[
                ("host", "127.0.0.1:9091"),
                ("origin", "https://127.0.0.1:9091"),
            ],
            &[("host", "evil.example:9091")],
            &[("host", "evil.example")],
            &[("host", "127.0.0.1:9092")],
            &[("host", "127.0.0.1")],
            &[("host", "10.1.2.3:9091")],
            &[("host", "a")],
            &[],
            &[("host", "127.0.0.1:9091"), ("host", "127.0.0.1:9091")],
        ] {
            assert!(!ok(lo, bad), "{bad:?}");
        }
        assert!(!ok(any, &[("host", "0.0.0.0:9091")]));
        assert!(!ok(any, &[("host", "evil.example:9091")]));
        let port80: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        assert!(ok(port80, &[("host", "127.0.0.1")]));
        let mut absolute = req(&[("host", "127.0.0.1:9091")]);
        absolute.set_uri(
            "http://evil.example/rollout/start"
                .parse()
                .expect("absolute uri"),
        );
        assert!(!from_admin_address(lo, &absolute, true));
        // With a token (no Host check): a DNS name is fine, another site's Origin is not.
        let named = req(&[("host", "lb-1.internal:9091")]);
        assert!(from_admin_address(lo, &named, false));
        let forged = req(&[
            ("host", "lb-1.internal:9091"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!from_admin_address(lo, &forged, false));
    }

    #[test]
    fn query_keys_override_the_config_and_bad_ones_name_the_key() {
        let base = RolloutSettings::default();
        let s = settings_from_query(&base, Some("steps=10%2C50,100&interval=1500ms&threshold=2"))
            .expect("valid");
        assert_eq!(
            s.steps.iter().map(|p| p.as_f64()).collect::<Vec<_>>(),
            [10.0, 50.0, 100.0]
        );
        assert_eq!(s.interval, Duration::from_millis(1500));
        assert_eq!(s.threshold, 2);
        assert_eq!(s.min_requests, base.min_requests);
        assert_eq!(settings_from_query(&base, None).expect("defaults"), base);
        for (q, key) in [
            ("steps=10,5", "steps"),
            ("steps=abc", "steps"),
            ("steps=0,10", "steps"),
            ("interval=10ms", "interval"),
            ("interval=soon", "interval"),
            ("threshold=0", "threshold"),
            ("threshold=-1", "threshold"),
            ("windows_per_step=x", "windows_per_step"),
            ("bogus=1", "unknown key `bogus`"),
            ("threshold=1&threshold=2", "twice"),
            ("steps=%zz", "%-encoding"),
        ] {
            let e = settings_from_query(&base, Some(q)).expect_err(q);
            assert!(e.contains(key), "{q}: {e}");
        }
        let hostile = "<script>alert(1)</script>=1";
        let e = settings_from_query(&base, Some(hostile)).expect_err("hostile");
        assert!(!e.contains("script"), "{e}");
        // The values are never echoed either.
        for key in start_key_names() {
            let e =
                settings_from_query(&base, Some(&format!("{key}=%3Cscript%3E"))).expect_err(key);
            assert!(e.starts_with(key) && !e.contains("script"), "{e}");
        }
        // The limits are the rollout's (`RolloutSettings::validate`), not the admin's own.
        let s = settings_from_query(&base, Some("interval=200ms&min_requests=0")).expect("valid");
        assert_eq!(s.interval, Duration::from_millis(200));
        let e = settings_from_query(&base, Some("windows_per_step=10001")).expect_err("10001");
        assert_eq!(e, "windows_per_step: must be 1..=10000, got 10001");
    }

    /// The query is read as a form: `+` is a space, keys may be escaped too, and what `ctl`
    /// sends (every byte but letters, digits and `,._-` as `%XX`) reads back as typed.
    #[test]
    fn the_query_is_read_as_a_form() {
        let base = RolloutSettings::default();
        let s = settings_from_query(&base, Some("interval=1m+30s&st%65ps=5%2C%2010,100"))
            .expect("valid");
        assert_eq!(s.interval, Duration::from_secs(90));
        assert_eq!(
            s.steps.iter().map(|p| p.as_f64()).collect::<Vec<_>>(),
            [5.0, 10.0, 100.0]
        );
        let s = settings_from_query(&base, Some("steps=5,12.5&interval=1500ms&threshold=2"))
            .expect("ctl's query");
        assert_eq!((s.interval, s.threshold), (Duration::from_millis(1500), 2));
        for (q, want) in [
            ("threshold=%FF", "`threshold`: bad %-encoding"),
            ("threshold=1%", "`threshold`: bad %-encoding"),
            ("a%2=1", "(not shown): bad %-encoding"),
            ("&&threshold=2&&", ""),
        ] {
            match settings_from_query(&base, Some(q)) {
                Ok(s) => assert!(want.is_empty() && s.threshold == 2, "{q}"),
                Err(e) => assert_eq!(e, want, "{q}"),
            }
        }
    }

    #[test]
    fn commands_need_a_token_unless_the_admin_port_is_loopback() {
        let allowed = |yaml: &str| {
            let config = crate::config::Config::parse(yaml).expect("config");
            commands_allowed(&Shared::new(config).expect("shared"))
        };
        assert!(allowed("metrics_listen: \"127.0.0.1:9\"\n"));
        assert!(!allowed("metrics_listen: \"0.0.0.0:9\"\n"));
        assert!(!allowed("metrics_listen: \"[::]:9\"\n"));
    }
}
