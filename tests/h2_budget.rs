//! HTTP/2 upstream budgets (issue 21, finding 2): a client that never opens its flow-control
//! window must not hold more upstream connections than `client.max_upstream_per_connection`
//! per connection and `client.max_upstream_connections` in all; its streams are reset after
//! `client.send_timeout`; a normal client still gets whole 1 MiB bodies.
//!
//! The backend ([`BigBackend`]) answers 1 MiB and counts the connections the proxy holds open
//! at once (`held`, peak kept); the client is the `h2` crate with prior knowledge (h2c).

mod common;

use std::time::Duration;

use common::h2client::{connect, get, pattern, read_body, BigBackend};
use common::*;
use h2::RecvStream;

const MIB: usize = 1 << 20;
/// No stream may be left waiting longer than this: answered, refused or reset.
const SETTLE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An h2c proxy in front of `backend` with `client` (flow-style YAML keys) as its client limits.
fn proxy(backend: &BigBackend, client: &str) -> Proxy {
    let (port, metrics) = (free_port(), free_port());
    Proxy::start(&format!(
        "listen: [{{ addr: \"127.0.0.1:{port}\", h2c: true }}]\n\
         metrics_listen: \"127.0.0.1:{metrics}\"\nthreads: 2\ngrace_period: 1s\n\
         health_check: {{ kind: tcp, interval: 10s }}\n\
         {}\
         client: {{ {client} }}\n",
        pools(&[&backend.addr()], &[])
    ))
}

/// The sum of the samples of `name` whose labels contain `label` ("" for all).
fn metric(proxy: &Proxy, name: &str, label: &str) -> f64 {
    let labels: &[&str] = if label.is_empty() { &[] } else { &[label] };
    proxy.scrape().sum(name, labels)
}

/// `streams` zero-window GETs of `/big` on each of `conns` connections, all sent at once; every
/// one's status (or `None` for a stream error), with the bodies kept open (dropping them would
/// reset the streams from the client side).
fn zero_window_streams(
    rt: &tokio::runtime::Runtime,
    port: u16,
    conns: usize,
    streams: usize,
) -> Vec<(Option<u16>, Option<RecvStream>)> {
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let send = connect(port, Some(0)).await;
            for _ in 0..streams {
                let send = send.clone();
                tasks.push(tokio::spawn(async move {
                    match get(&send, "/big").await {
                        Ok(r) => (Some(r.status().as_u16()), Some(r.into_body())),
                        Err(_) => (None, None),
                    }
                }));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            match tokio::time::timeout(SETTLE, t).await {
                Ok(Ok(r)) => out.push(r),
                _ => panic!("a stream got no answer within {SETTLE:?}"),
            }
        }
        out
    })
}

fn count(results: &[(Option<u16>, Option<RecvStream>)], status: u16) -> usize {
    results.iter().filter(|(s, _)| *s == Some(status)).count()
}

#[test]
fn zero_window_streams_of_one_connection_hold_at_most_its_budget() {
    let _serial = serial();
    let backend = BigBackend::start(MIB);
    let proxy = proxy(
        &backend,
        "max_upstream_per_connection: 4, max_upstream_connections: 100, \
         upstream_queue_timeout: 1s, send_timeout: 4s",
    );
    let rt = runtime();
    let results = zero_window_streams(&rt, proxy.listen_port(), 1, 20);
    let (ok, refused) = (count(&results, 200), count(&results, 503));
    assert_eq!(ok + refused, 20, "each stream is answered 200 or 503");
    assert!(
        backend.peak_held() <= 4,
        "one connection held {} upstream connections (budget 4)",
        backend.peak_held()
    );
    assert!(refused >= 1, "streams over the budget get 503, not a hang");
    assert_eq!(
        metric(
            &proxy,
            "canary_lb_upstream_budget_refused_total",
            "budget=\"connection\""
        ),
        refused as f64
    );
    drop(results);
    wait_until("upstream connections released", SETTLE, || {
        backend.held() == 0
    });
}

#[test]
fn zero_window_streams_of_many_connections_hold_at_most_the_total() {
    let _serial = serial();
    let backend = BigBackend::start(MIB);
    let proxy = proxy(
        &backend,
        "max_upstream_per_connection: 8, max_upstream_connections: 10, \
         upstream_queue_timeout: 1s, send_timeout: 4s",
    );
    let rt = runtime();
    let results = zero_window_streams(&rt, proxy.listen_port(), 4, 10);
    let (ok, refused) = (count(&results, 200), count(&results, 503));
    assert_eq!(ok + refused, 40, "each stream is answered 200 or 503");
    assert!(
        backend.peak_held() <= 10,
        "4 connections held {} upstream connections (total budget 10)",
        backend.peak_held()
    );
    assert!(
        metric(
            &proxy,
            "canary_lb_upstream_budget_refused_total",
            "budget=\"total\""
        ) >= 1.0,
        "the total budget refused streams"
    );
    assert_eq!(
        metric(&proxy, "canary_lb_upstream_budget_refused_total", ""),
        refused as f64
    );
}

#[test]
fn a_zero_window_stream_is_reset_after_send_timeout_and_its_upstream_ends() {
    let _serial = serial();
    let backend = BigBackend::start(MIB);
    let proxy = proxy(
        &backend,
        "max_upstream_per_connection: 4, upstream_queue_timeout: 5s, send_timeout: 1s",
    );
    let rt = runtime();
    rt.block_on(async {
        let send = connect(proxy.listen_port(), Some(0)).await;
        let resp = tokio::time::timeout(SETTLE, get(&send, "/big"))
            .await
            .expect("a response head")
            .expect("no stream error");
        assert_eq!(resp.status(), 200);
        assert_eq!(backend.held(), 1, "the upstream request is open");
        assert_eq!(
            metric(&proxy, "canary_lb_h2_upstream_in_flight", ""),
            1.0,
            "it holds a place"
        );
        let mut body = resp.into_body();
        // No window, so no data: the next event is the proxy's reset.
        let next = tokio::time::timeout(SETTLE, body.data())
            .await
            .expect("the proxy resets the stream in time");
        assert!(
            matches!(next, Some(Err(ref e)) if e.is_reset()),
            "stream reset, got {next:?}"
        );
    });
    wait_until("the upstream request ends", SETTLE, || backend.held() == 0);
    wait_until("its place is given back", SETTLE, || {
        metric(&proxy, "canary_lb_h2_upstream_in_flight", "") == 0.0
    });
}

#[test]
fn a_normal_h2_client_gets_whole_bodies_its_streams_taking_turns() {
    let _serial = serial();
    // Each answer waits 100 ms, so streams let through together overlap at the backend.
    let backend = BigBackend::start_slow(MIB, Duration::from_millis(100));
    let proxy = proxy(
        &backend,
        "max_upstream_per_connection: 3, upstream_queue_timeout: 30s",
    );
    let rt = runtime();
    let want = pattern(MIB);
    let bodies = rt.block_on(async {
        let send = connect(proxy.listen_port(), None).await;
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let send = send.clone();
                tokio::spawn(async move {
                    let resp = get(&send, "/big").await?;
                    let status = resp.status().as_u16();
                    read_body(resp.into_body()).await.map(|b| (status, b))
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            let r = tokio::time::timeout(SETTLE, t)
                .await
                .expect("every stream completes in time")
                .expect("task");
            out.push(r.expect("no stream error"));
        }
        out
    });
    for (status, body) in &bodies {
        assert_eq!(*status, 200);
        assert_eq!(body.len(), MIB);
        assert!(body == &want, "the body arrived intact");
    }
    assert_eq!(backend.requests(), 12);
    assert!(
        backend.peak_active() <= 3,
        "{} upstream requests at once (budget 3)",
        backend.peak_active()
    );
}

/// The proxy's resident memory in KiB (Linux).
fn rss_kib(proxy: &Proxy) -> u64 {
    let pid = proxy.pid().expect("proxy pid");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_zero_window_stream_buffers_little_of_its_response() {
    let _serial = serial();
    let backend = BigBackend::start(MIB);
    // Budgets out of the way: this is about what one held stream buffers.
    let proxy = proxy(
        &backend,
        "max_upstream_per_connection: 1000, max_upstream_connections: 1000, send_timeout: 60s",
    );
    let rt = runtime();
    let before = rss_kib(&proxy);
    let results = zero_window_streams(&rt, proxy.listen_port(), 1, 100);
    assert_eq!(count(&results, 200), 100);
    wait_until("100 upstream requests open", SETTLE, || {
        backend.held() == 100
    });
    // The response pipes fill within moments on loopback; take the highest of a second's
    // samples (the assertion is on a bound, not on a speed).
    let mut peak = 0;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss_kib(&proxy));
    }
    let grown = peak.saturating_sub(before);
    // Bounded: two 64 KiB pieces and the upstream read buffer a stream, about 14 MiB for 100
    // (measured); the unbounded pipe held about ten pieces, about 55 MiB.
    assert!(
        grown < 32 * 1024,
        "100 zero-window streams grew RSS by {} MiB",
        grown / 1024
    );
    drop(results);
}

#[test]
fn the_stream_limit_a_connection_is_offered_is_the_configured_one() {
    let _serial = serial();
    let backend = BigBackend::start(16);
    let proxy = proxy(&backend, "h2_max_concurrent_streams: 5");
    let rt = runtime();
    rt.block_on(async {
        let send = connect(proxy.listen_port(), None).await;
        // The server's SETTINGS have arrived once a response has.
        let resp = get(&send, "/small").await.expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            read_body(resp.into_body()).await.expect("body"),
            pattern(16)
        );
        assert_eq!(send.current_max_send_streams(), 5);
    });
}
