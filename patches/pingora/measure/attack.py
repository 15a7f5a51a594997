#!/usr/bin/env python3
"""Figures for the patch headers: hostile clients against the measure server, patches off
(settings unset = pristine Pingora behaviour) and on. Loopback only; each run is bounded.

  cargo build --manifest-path patches/pingora/measure/Cargo.toml   (CARGO_TARGET_DIR honoured)
  python3 patches/pingora/measure/attack.py heads|drip|conns|emfile
"""
import os, resource, socket, subprocess, sys, tempfile, time

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "target"))
BIN = os.path.join(TARGET, "debug", "pingora-patches-measure")
STATS_DIR = tempfile.mkdtemp(prefix="pingora-measure-")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(env, preexec_fn=None):
    port = free_port()
    path = os.path.join(STATS_DIR, str(port))
    e = dict(os.environ, PORT=str(port), STATS=path, RUST_LOG="off", **{k: str(v) for k, v in env.items()})
    p = subprocess.Popen([BIN], env=e, preexec_fn=preexec_fn, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.5)
    return p, port, path


def stop(p):
    p.kill()  # SIGTERM would wait for Pingora's grace period
    p.wait()


def stats(path):
    rss, fds, active, refused = open(path).read().split()
    return dict(rss_mib=int(rss) / 1024, fds=int(fds), active=int(active), refused=int(refused))


def big_heads(env, n=100, size=1_000_000):
    """n connections each send `size` bytes of a head that never ends, and stay open."""
    p, port, path = start(env)
    base = stats(path)
    payload = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * size
    conns = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        c.setblocking(False)
        conns.append([c, memoryview(payload)])
    deadline = time.time() + 20
    while time.time() < deadline and any(len(m) for _, m in conns):
        for cm in conns:
            c, m = cm
            if not len(m):
                continue
            try:
                cm[1] = m[c.send(m[:65536]):]
            except BlockingIOError:
                pass
            except OSError:  # closed by the server
                cm[1] = m[:0]
        time.sleep(0.001)
    time.sleep(2)
    s = stats(path)
    for c, _ in conns:
        c.close()
    stop(p)
    return base, s


def drip(env, limit_s=15):
    """One connection sends a request line, then one header byte a second."""
    p, port, _ = start(env)
    c = socket.create_connection(("127.0.0.1", port))
    c.settimeout(0.01)
    t0, got, closed = time.time(), b"", None
    c.sendall(b"GET / HTTP/1.1\r\n")
    while closed is None and time.time() - t0 < limit_s:
        try:
            c.send(b"X")
        except OSError:
            closed = time.time() - t0
        end = time.time() + 1
        while closed is None and time.time() < end:
            try:
                d = c.recv(4096)
                if not d:
                    closed = time.time() - t0
                got += d
            except socket.timeout:
                pass
            except OSError:
                closed = time.time() - t0
    c.close()
    stop(p)
    return closed, got


def idle_conns(env, n=300):
    """n connections that send nothing; then they leave and one normal request follows."""
    p, port, path = start(env)
    base = stats(path)
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    time.sleep(2)
    s = stats(path)
    closed = 0
    for c in conns:
        c.settimeout(0.05)
        try:
            closed += c.recv(1) == b""
        except socket.timeout:
            pass
        except OSError:
            closed += 1
    for c in conns:
        c.close()
    time.sleep(1)
    c = socket.create_connection(("127.0.0.1", port))
    c.settimeout(5)
    c.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    ok = c.recv(100).startswith(b"HTTP/1.1 200")
    c.close()
    after = stats(path)
    stop(p)
    return base, s, closed, ok, after


def emfile():
    """RLIMIT_NOFILE 64 and 100 idle connections: accept() fails with EMFILE."""
    def lim():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    p, port, _ = start({}, preexec_fn=lim)

    def cpu():
        f = open(f"/proc/{p.pid}/stat").read().split(")")[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    time.sleep(1)
    c0 = cpu()
    time.sleep(5)
    used = cpu() - c0
    for c in conns:
        c.close()
    t0 = time.time()
    c = socket.create_connection(("127.0.0.1", port))
    c.settimeout(10)
    c.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = c.recv(100)[:15]
    took = time.time() - t0
    c.close()
    stop(p)
    return used, answer, took


def label(env):
    return " ".join(f"{k}={v}" for k, v in env.items()) or "unset"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "heads":
        for env in ({}, {"MAX_HEAD": 65536}):
            base, s = big_heads(env)
            print(f"{label(env)}: 100 x 1 MB unfinished heads: RSS {base['rss_mib']:.1f} -> {s['rss_mib']:.1f} MiB, fds {base['fds']} -> {s['fds']}")
        base, s = big_heads({"MAX_HEAD": 65536}, size=65000)
        print(f"MAX_HEAD=65536: 100 x 65,000-byte unfinished heads held open: RSS {base['rss_mib']:.1f} -> {s['rss_mib']:.1f} MiB, fds {base['fds']} -> {s['fds']}")
    elif what == "drip":
        for env in ({}, {"HEAD_TIMEOUT_MS": 3000}):
            closed, got = drip(env)
            when = "still open when the run stopped at 15 s" if closed is None else f"closed after {closed:.1f} s"
            print(f"{label(env)}: head dripped 1 byte/s: {when}, answer {got[:29]!r}")
    elif what == "conns":
        for env in ({}, {"MAX_CONN": 100}):
            base, s, closed, ok, after = idle_conns(env)
            print(f"{label(env)}: 300 idle connections: fds {base['fds']} -> {s['fds']}, closed at once {closed}, refused() {s['refused']}, active() {s['active']}; after they left: fds {after['fds']}, next request 200: {ok}")
    elif what == "emfile":
        used, answer, took = emfile()
        print(f"EMFILE (RLIMIT_NOFILE 64, 100 idle connections): {used:.2f} s CPU in 5 s; after they left, next request {answer!r} in {took:.2f} s")
    else:
        sys.exit(__doc__)
