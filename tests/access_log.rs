//! The access log (issue 10): one line per request, its fields checked against what the
//! request did and what the app server saw; hostile bytes stay inside one valid line; the
//! text format; `off`; a file reopened on SIGUSR1; lines dropped and counted when the writer
//! cannot keep up.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::raw::{raw_exchange, RawClient};
use common::{free_port, get, pools, post, proxy_config, wait_until, App, Proxy};
use serde_json::Value;

const NOTICE: Duration = Duration::from_secs(20);

fn config(production: &str, canary: &str, extra: &str) -> String {
    proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 1\ngrace_period: 1s\n{}\
             health_check: {{ kind: tcp, interval: 1s, timeout: 500ms }}\n{extra}",
            pools(&[production], &[canary])
        ),
    )
}

/// The file's lines, each parsed as JSON (panics on a line that is not one JSON object).
fn json_lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"))
        })
        .collect()
}

/// Wait until the log at `path` has a line whose `request_id` is `id`, and return it.
fn line_for(path: &Path, id: &str) -> Value {
    let mut found = None;
    wait_until(&format!("the access log has request {id}"), NOTICE, || {
        found = json_lines(path).into_iter().find(|v| v["request_id"] == id);
        found.is_some()
    });
    found.unwrap()
}

fn metric(proxy: &Proxy, name: &str) -> Option<f64> {
    proxy.scrape().series(name)
}

#[test]
fn json_lines_record_what_each_request_did() {
    let prod = App::start("prod-1", "production");
    let canary = App::start("canary-1", "canary");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&config(
        &prod.addr(),
        &canary.addr(),
        &format!("access_log: {{ path: \"{}\" }}\n", log.display()),
    ));
    assert_eq!(
        metric(&proxy, "canary_lb_access_log_dropped_total"),
        Some(0.0),
        "the dropped counter is exported at 0 from the first scrape"
    );

    // Forced to canary by the header; the query string is not logged by default.
    let r = get(
        &proxy.url("/hello?token=hunter2"),
        &[("X-Canary", "1"), ("X-Request-Id", "req-canary")],
    );
    assert_eq!(r.status, 200);
    let l = line_for(&log, "req-canary");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/hello");
    assert_eq!(l["status"], 200);
    assert_eq!(l["pool"], "canary");
    assert_eq!(l["reason"], "header");
    assert_eq!(l["upstream"], canary.addr());
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["http"], "HTTP/1.1");
    assert_eq!(l["tls"], Value::Null, "plain HTTP has no TLS version");
    assert_eq!(l["bytes_out"], r.body.len());
    assert_eq!(l["bytes_in"], 0);
    assert_eq!(
        l["user"],
        Value::Null,
        "no user key: header routing made none"
    );
    let (d, u) = (
        l["duration_ms"].as_f64().expect("duration"),
        l["upstream_time_ms"].as_f64().expect("upstream time"),
    );
    assert!(u >= 0.0 && d >= u, "duration {d} ms, upstream {u} ms");
    assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");

    // By percentage, with a user cookie and a body; the proxy makes the request id: the log's
    // is the one the app saw.
    let cookie = "uid=SECRET-COOKIE-VALUE-4711";
    let r = post(&proxy.url("/submit"), &[("Cookie", cookie)], b"hello");
    assert_eq!(r.status, 200);
    let id = r
        .header("x-seen-request-id")
        .expect("the app saw a request id");
    assert_eq!(r.header("x-request-id"), Some(id));
    let l = line_for(&log, id);
    assert_eq!(l["method"], "POST");
    assert_eq!(
        (&l["pool"], &l["reason"]),
        (&"production".into(), &"percent".into())
    );
    assert_eq!(l["bytes_in"], 5);
    assert_eq!(l["upstream"], prod.addr());
    let user = l["user"].as_str().expect("a user-key hash");
    assert!(
        user.len() == 12 && user.bytes().all(|b| b.is_ascii_hexdigit()),
        "{user}"
    );
    let text = fs::read_to_string(&log).expect("read the log");
    assert!(
        !text.contains("SECRET-COOKIE"),
        "the raw cookie is in the log:\n{text}"
    );
    assert!(
        !text.contains("hunter2"),
        "the query is in the log:\n{text}"
    );

    // An error status from the app, and a request the proxy refuses (HTTP/1.1 without Host),
    // are logged too.
    let r = get(&proxy.url("/status/503"), &[("X-Request-Id", "req-503")]);
    assert_eq!(r.status, 503);
    assert_eq!(line_for(&log, "req-503")["status"], 503);
    let out = raw_exchange(
        proxy.listen_port(),
        b"GET /refused HTTP/1.1\r\nX-Request-Id: no-host\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(out.status, 400, "{out:?}");
    wait_until("the refused request is logged", NOTICE, || {
        json_lines(&log)
            .iter()
            .any(|v| v["path"] == "/refused" && v["status"] == 400 && v["pool"].is_null())
    });
    assert_eq!(json_lines(&log).len(), 4, "one line per request");
}

/// Hostile bytes in the path and headers: each request is still exactly one valid JSON line
/// that gives the bytes back as sent (or cut to the bound), and the app got the request.
#[test]
fn hostile_bytes_stay_inside_one_json_line() {
    let backend = App::start("prod-1", "production");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&config(
        &backend.addr(),
        &backend.addr(),
        &format!(
            "access_log: {{ path: \"{}\", query: true }}\n",
            log.display()
        ),
    ));
    // Quotes, backslashes and JSON punctuation pass Pingora's parser and the framing checks.
    let injection = "/a\"b\\c'{\"k\":\"v\"},\"status\":1}?q={}\\";
    let long_path = format!("/{}", "p".repeat(6000));
    let user_agent: &[u8] = b"\"quoted\" \\ back\tslash \xff\xfe {\"json\":1}\"}";
    let referer = "r".repeat(9000);
    let send = |target: &str, id: &str| {
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nX-Request-Id: {id}\r\nConnection: close\r\n\
             Referer: {referer}\r\nUser-Agent: "
        )
        .into_bytes();
        req.extend_from_slice(user_agent);
        req.extend_from_slice(b"\r\n\r\n");
        raw_exchange(proxy.listen_port(), &req, Duration::from_secs(10))
    };
    let out = send(injection, "h-inject");
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(
        out.header("x-served-by"),
        Some("prod-1"),
        "the app got the hostile request"
    );
    assert_eq!(send(&long_path, "h-long").status, 200);
    // An escaped NUL in the path is refused by the framing checks: logged all the same.
    assert_eq!(send("/nul%00", "h-nul").status, 400);

    let l = line_for(&log, "h-inject");
    assert_eq!(l["path"], injection, "the path comes back byte for byte");
    assert_eq!(l["status"], 200);
    assert_eq!(
        l["user_agent"],
        "\"quoted\" \\ back\tslash \u{fffd}\u{fffd} {\"json\":1}\"}"
    );
    assert_eq!(
        l["referer"].as_str().map(str::len),
        Some(512),
        "referer cut"
    );
    assert_eq!(
        line_for(&log, "h-long")["path"].as_str().map(str::len),
        Some(2048),
        "path cut"
    );
    wait_until("the refused request is logged", NOTICE, || {
        json_lines(&log)
            .iter()
            .any(|v| v["path"] == "/nul%00" && v["status"] == 400)
    });
    let text = fs::read_to_string(&log).expect("read the log");
    assert_eq!(text.lines().count(), 3, "one line per request:\n{text}");
    // Every line parsed as one JSON object (json_lines panics otherwise).
    assert_eq!(json_lines(&log).len(), 3);
}

#[test]
fn text_format_stdout_and_off() {
    let prod = App::start("prod-1", "production");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let text = Proxy::start(&config(
        &prod.addr(),
        &prod.addr(),
        &format!(
            "access_log: {{ path: \"{}\", format: text }}\n",
            log.display()
        ),
    ));
    let r = get(
        &text.url("/t?q=1"),
        &[
            ("X-Request-Id", "txt-1"),
            ("User-Agent", "ua \"quoted\" \\x"),
        ],
    );
    assert_eq!(r.status, 200);
    let mut line = String::new();
    wait_until("the text line is written", NOTICE, || {
        line = fs::read_to_string(&log).unwrap_or_default();
        line.contains("request_id=txt-1")
    });
    assert_eq!(line.lines().count(), 1, "{line}");
    let line = line.trim_end();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    let rest = &line[line.find("] ").expect("time") + 2..];
    let expected_start = format!("\"GET /t HTTP/1.1\" 200 {} \"-\" \"ua \\x22quoted\\x22 \\x5Cx\" pool=production reason=percent upstream={} upstream_time=", r.body.len(), prod.addr());
    assert!(
        rest.starts_with(&expected_start),
        "{rest}\nwant: {expected_start}"
    );
    assert!(rest.ends_with("request_id=txt-1 tls=-"), "{rest}");

    // The default: JSON lines on stdout (the proxy's output).
    let stdout = Proxy::start(&config(&prod.addr(), &prod.addr(), ""));
    let off = Proxy::start(&config(&prod.addr(), &prod.addr(), "access_log: off\n"));
    assert_eq!(
        get(&stdout.url("/s"), &[("X-Request-Id", "std-1")]).status,
        200
    );
    assert_eq!(
        get(&off.url("/s"), &[("X-Request-Id", "off-1")]).status,
        200
    );
    wait_until("the stdout log has the request", NOTICE, || {
        stdout
            .logs()
            .lines()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["request_id"] == "std-1"))
    });
    // The line came within the wait above for the other proxy; none from this one.
    assert!(
        !off.logs().contains("off-1"),
        "access_log: off still logged:\n{}",
        off.logs()
    );
    assert_eq!(
        metric(&off, "canary_lb_access_log_dropped_total"),
        Some(0.0)
    );
}

#[test]
fn sigusr1_reopens_the_file_after_a_rename() {
    let prod = App::start("prod-1", "production");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let proxy = Proxy::start(&config(
        &prod.addr(),
        &prod.addr(),
        &format!("access_log: {{ path: \"{}\" }}\n", log.display()),
    ));
    get(&proxy.url("/"), &[("X-Request-Id", "before-1")]);
    line_for(&log, "before-1");
    fs::rename(&log, &rotated).expect("rotate");
    // Until the signal, lines go on into the renamed file (the open handle).
    get(&proxy.url("/"), &[("X-Request-Id", "before-2")]);
    line_for(&rotated, "before-2");
    proxy.sigusr1();
    let mut n = 0;
    wait_until("lines go to a new file after SIGUSR1", NOTICE, || {
        n += 1;
        get(&proxy.url("/"), &[("X-Request-Id", &format!("after-{n}"))]);
        log.exists() && !json_lines(&log).is_empty()
    });
    // Every request's line lands in exactly one of the two files.
    wait_until("every line is written", NOTICE, || {
        json_lines(&log).len() + json_lines(&rotated).len() >= 2 + n
    });
    let new = json_lines(&log);
    let old = json_lines(&rotated);
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|l| l["request_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert!(
        ids(&new).iter().all(|id| id.starts_with("after-")),
        "{:?}",
        ids(&new)
    );
    assert_eq!(&ids(&old)[..2], ["before-1", "before-2"]);
    assert_eq!(
        old.len() + new.len(),
        2 + n,
        "a line was lost or doubled in the rotation"
    );
    assert!(proxy.logs().contains("reopened"), "{}", proxy.logs());
}

/// A log file nobody reads (a FIFO with a reader that never reads, its pipe shrunk to one
/// page): the writer blocks, its one-line queue fills, and further lines are dropped and
/// counted, while every request is still answered.
#[test]
fn lines_are_dropped_and_counted_when_the_writer_is_stuck() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let prod = App::start("prod-1", "production");
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("stuck.log");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success());
    // Opened (non-blocking) before the proxy, so the proxy's open for writing does not wait.
    let reader = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("open the FIFO for reading");
    // SAFETY: plain fcntl on an fd we own.
    unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let proxy = Proxy::start(&config(
        &prod.addr(),
        &prod.addr(),
        &format!(
            "access_log: {{ path: \"{}\", buffer: 1 }}\n",
            fifo.display()
        ),
    ));
    assert_eq!(
        metric(&proxy, "canary_lb_access_log_dropped_total"),
        Some(0.0)
    );
    let mut answered = 0;
    let mut c = RawClient::connect(proxy.listen_port());
    // A 4 KiB pipe plus a 64 KiB write buffer hold a few hundred lines; 2,000 is plenty.
    for i in 0..2000 {
        c.send(format!("GET /d{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_response().expect("every request is answered");
        assert_eq!(r.status, 200);
        answered += 1;
        if i % 100 == 99 && metric(&proxy, "canary_lb_access_log_dropped_total") > Some(0.0) {
            break;
        }
    }
    let dropped = metric(&proxy, "canary_lb_access_log_dropped_total").unwrap_or(0.0);
    assert!(dropped > 0.0, "{answered} requests and nothing dropped");
    drop(reader);
}

/// SIGTERM with requests in flight: the proxy exits once they are answered, and every one of
/// them has its line in the log (the drain ends after the line is queued, and the queue is
/// written out before the exit).
#[test]
fn sigterm_writes_the_lines_of_the_requests_it_drained() {
    let prod = App::start("drain-p", "production");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let mut yaml = config(
        &prod.addr(),
        &prod.addr(),
        &format!("access_log: {{ path: \"{}\" }}\n", log.display()),
    );
    yaml = yaml.replace("grace_period: 1s", "grace_period: 20s");
    let mut proxy = Proxy::start(&yaml);

    let ids: Vec<String> = (0..16).map(|i| format!("drain-{i}")).collect();
    let clients: Vec<_> = ids
        .iter()
        .map(|id| {
            let (url, id) = (proxy.url("/slow?ms=1500"), id.clone());
            std::thread::spawn(move || get(&url, &[("X-Request-Id", id.as_str())]).status)
        })
        .collect();
    // Orders the signal after the requests reached the app; the assertions do not depend on it.
    wait_until("the requests are in flight", NOTICE, || {
        proxy.status_json()["in_flight"].as_i64() == Some(16)
    });
    proxy.sigterm();
    for c in clients {
        assert_eq!(c.join().expect("client thread"), 200);
    }
    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running 30 s after SIGTERM:\n{}", proxy.logs()));
    assert!(status.success(), "{status}\n{}", proxy.logs());

    let logged: Vec<String> = json_lines(&log)
        .iter()
        .filter_map(|l| l["request_id"].as_str().map(str::to_string))
        .collect();
    for id in &ids {
        assert!(logged.contains(id), "{id} missing from the log: {logged:?}");
    }
}
