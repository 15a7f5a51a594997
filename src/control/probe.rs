//! `canary-lb health`: the container's `HEALTHCHECK` (liveness, `GET /healthz`); with
//! `--ready`, readiness (`GET /readyz`), for whatever decides where traffic goes.
//!
//! It reads the config exactly as `serve` does (the file, then the `CANARY_LB_*` overrides), so
//! the check follows `metrics_listen` wherever it was moved, and sends `GET /healthz` there:
//! exit 0 on a `200`, 1 on anything else. Being the binary itself, it lets the runtime image
//! do without curl. `--addr` probes a given address instead (the demo app servers of the
//! compose stack, which have no config).
//!
//! Whatever answers on that port is not trusted to behave: one connection, one request, one
//! deadline for connecting and reading the status line, and at most [`MAX_STATUS_LINE`] bytes
//! read, so a hung or babbling listener makes the check fail, never hang.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cli::HealthArgs;
use crate::config::{Config, ConfigError};

/// The most bytes read while looking for the end of the status line.
pub const MAX_STATUS_LINE: usize = 1024;

/// Why `canary-lb health` says unhealthy (every one exits 1).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "{}: metrics_listen is not set (nor CANARY_LB_METRICS_LISTEN): nothing serves /healthz",
        .0.display()
    )]
    NoMetricsListen(PathBuf),
    #[error("give --config (or CANARY_LB_CONFIG) or --addr")]
    NoTarget,
    #[error("GET http://{target}{path}: {problem}")]
    Unhealthy {
        target: SocketAddr,
        path: &'static str,
        problem: ProbeError,
    },
}

/// What went wrong with one `GET /healthz`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `step` is what failed: connect, send request, read response...
    #[error("{step}: {error}")]
    Io {
        step: &'static str,
        error: std::io::Error,
    },
    #[error("no status line in the first {MAX_STATUS_LINE} bytes")]
    NoStatusLine,
    #[error("connection closed before a status line")]
    Closed,
    #[error("no answer within {0:?}")]
    Silent(Duration),
    #[error("no answer in time")]
    OutOfTime,
    #[error("answered {0}")]
    Status(u16),
    #[error("not an HTTP status line: {0:?}")]
    NotHttp(String),
}

/// `canary-lb health`.
pub fn run(args: HealthArgs) -> Result<(), HealthError> {
    let addr = match (args.addr, &args.config) {
        (Some(addr), _) => addr,
        (None, Some(path)) => Config::load(path)?
            .metrics_listen
            .ok_or_else(|| HealthError::NoMetricsListen(path.clone()))?,
        (None, None) => return Err(HealthError::NoTarget),
    };
    let target = probe_addr(addr);
    let path = if args.ready { "/readyz" } else { "/healthz" };
    check_path(target, path, args.timeout).map_err(|problem| HealthError::Unhealthy {
        target,
        path,
        problem,
    })
}

/// Where to connect for a listen address: a wildcard (`0.0.0.0`, `[::]`) is reached on the
/// loopback address of its family.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

/// `GET /healthz` on `addr`; Ok when the status line says 200, all within `timeout`.
pub fn check(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    check_path(addr, "/healthz", timeout)
}

/// `GET path` on `addr`; Ok when the status line says 200, all within `timeout`.
pub fn check_path(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let io = |step| move |error| ProbeError::Io { step, error };
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io("connect"))?;
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(io("set write timeout"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: canary-lb-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(io("send request"))?;

    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    let line_end = loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            break end;
        }
        if head.len() >= MAX_STATUS_LINE {
            return Err(ProbeError::NoStatusLine);
        }
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(io("set read timeout"))?;
        let want = buf.len().min(MAX_STATUS_LINE - head.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Err(ProbeError::Closed),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ProbeError::Silent(timeout))
            }
            Err(e) => return Err(io("read response")(e)),
        }
    };
    match status_code(&head[..line_end]) {
        Some(200) => Ok(()),
        Some(code) => Err(ProbeError::Status(code)),
        None => Err(ProbeError::NotHttp(
            String::from_utf8_lossy(&head[..line_end.min(80)]).into_owned(),
        )),
    }
}

fn remaining(deadline: Instant) -> Result<Duration, ProbeError> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(ProbeError::OutOfTime),
    }
}

/// The code of `HTTP/1.x NNN reason`, or None when the line is not that.
pub fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"HTTP/1.1 200 OK", Some(200)),
            (b"HTTP/1.0 200 OK", Some(200)),
            (b"HTTP/1.1 200", Some(200)),
            (b"HTTP/1.1 503 Service Unavailable", Some(503)),
            (b"HTTP/1.1 2000 OK", None),
            (b"HTTP/1.1 20 OK", None),
            (b"HTTP/1.1 2x0 OK", None),
            (b"HTTP/2 200", None),
            (b"SSH-2.0-OpenSSH_9.2", None),
            (b"", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                status_code(line),
                *want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn wildcards_are_probed_on_loopback() {
        let cases = [
            ("0.0.0.0:9091", "127.0.0.1:9091"),
            ("[::]:9091", "[::1]:9091"),
            ("127.0.0.1:9191", "127.0.0.1:9191"),
            ("10.1.2.3:9091", "10.1.2.3:9091"),
        ];
        for (listen, want) in cases {
            let listen: SocketAddr = listen.parse().unwrap();
            assert_eq!(probe_addr(listen).to_string(), want);
        }
    }
}
