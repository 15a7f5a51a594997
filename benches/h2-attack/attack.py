#!/usr/bin/env python3
"""Attack and probe clients for benches/h2-attack.sh (issue 21), standard library only.

HTTP/2 is written as raw frames (preface, SETTINGS, HEADERS with HPACK literals, no Huffman)
so the bench needs no `pip install`; a response's `:status` is read only as "200 or not"
(both proxies send 200 as the static-table index 8, byte 0x88).

Subcommands (each bounded by its own deadline; one summary line on stdout, tab-separated):
  silent  HOST PORT VARIANT CONNS HOLD READY_FILE EVENTS_FILE
          hold CONNS silent connections for HOLD s after READY_FILE is written (once each has
          been tried, or after RAMP_MAX s); a connection the proxy closes is reopened (0.2 s later),
          so the attacker keeps its count, and the close is recorded with its age.
          VARIANT: tcp (nothing sent), http-partial (17 bytes `GET / HTTP/1.0\\r\\n\\r`),
          h2c-partial (the preface's first 18 bytes), http10 (a whole 18-byte
          `GET / HTTP/1.0\\r\\n\\r\\n`, for an h2c port that waits for 24), tls-tcp (TCP only,
          no ClientHello), tls-h2 (handshake with ALPN h2, then nothing).
          -> opened  closed_by_peer  peak_open  first_close_s  median_close_s  at_once  failed
  probe   MODE HOST PORT PATH RATE SECS OUT
          RATE requests a second for SECS, each on a new connection, 5 s deadline; MODE http,
          https (HTTP/1.1 over TLS, ALPN http/1.1) or h2c (HTTP/2 prior knowledge).
          -> sent  ok  ok_pct  p50_ms  p99_ms  errors
  zerowin HOST PORT CONNS STREAMS PATH HOLD
          CONNS h2c connections with SETTINGS_INITIAL_WINDOW_SIZE 0, STREAMS GETs each, held
          HOLD s (PINGs answered, no WINDOW_UPDATE).
          -> conns_up  streams_sent  headers_got  headers_200  data_bytes  rst  goaway  closed
  plain2tls HOST PORT N CONC
          N connections sending a plain HTTP/1.1 request to a TLS port, CONC at a time.
          -> done  failed
  h2abort HOST PORT N CONC PATH
          N HTTP/2-over-TLS connections that GET PATH with a large window, read the first DATA
          frame and close with the response unread.
          -> done  got_data  failed
"""

import asyncio
import http.client
import os
import socket
import ssl
import statistics
import struct
import sys
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEADLINE = 5.0
RAMP_MAX = float(os.environ.get("RAMP_MAX", "30"))
CONNECT_CONC = int(os.environ.get("CONNECT_CONC", "400"))


# --- HTTP/2 frames -------------------------------------------------------------------------

def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def settings(pairs):
    return frame(4, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def hpack_str(s):
    b = s.encode()
    assert len(b) < 127
    return bytes([len(b)]) + b


def get_headers(sid, path, authority, scheme):
    # :method GET (idx 2), :scheme http/https (6/7), :path and :authority as literals
    # without indexing with an indexed name (4 and 1).
    block = b"\x82" + (b"\x87" if scheme == "https" else b"\x86")
    block += b"\x04" + hpack_str(path) + b"\x01" + hpack_str(authority)
    return frame(1, 0x5, sid, block)  # END_STREAM | END_HEADERS


class FrameReader:
    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        out = []
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                break
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            out.append((ftype, flags, sid, self.buf[9:9 + n]))
            self.buf = self.buf[9 + n:]
        return out


def acks(frames):
    """The SETTINGS and PING acknowledgements a well-behaved client sends back."""
    out = b""
    for ftype, flags, _, payload in frames:
        if ftype == 4 and not flags & 1:
            out += frame(4, 1, 0)
        elif ftype == 6 and not flags & 1:
            out += frame(6, 1, 0, payload)
    return out


def tls_ctx(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    return ctx


# --- silent connections ---------------------------------------------------------------------

async def silent(host, port, variant, conns, hold, ready_file, events_file):
    payload = {"tcp": b"", "tls-tcp": b"", "tls-h2": b"",
               "http-partial": b"GET / HTTP/1.0\r\n\r",
               "h2c-partial": PREFACE[:18],
               "http10": b"GET / HTTP/1.0\r\n\r\n"}[variant]
    ctx = tls_ctx(["h2"]) if variant == "tls-h2" else None
    gate = asyncio.Semaphore(CONNECT_CONC)
    st = {"open": 0, "peak": 0, "opened": 0, "closed": [], "failed": 0, "at_once": 0, "tried": 0}
    # Ready once every connection has been tried once: all open, or the proxy's limit reached.
    all_open = asyncio.Event()
    stop = asyncio.Event()
    t_start = time.monotonic()
    events = open(events_file, "w")

    def tried(first):
        if first:
            st["tried"] += 1
            if st["tried"] >= conns:
                all_open.set()

    async def one():
        first = True
        while not stop.is_set():
            async with gate:
                if stop.is_set():
                    return
                try:
                    tls = {"ssl": ctx, "server_hostname": "localhost"} if ctx else {}
                    r, w = await asyncio.wait_for(asyncio.open_connection(host, port, **tls), 10)
                except (OSError, asyncio.TimeoutError, ssl.SSLError):
                    st["failed"] += 1
                    tried(first)
                    first = False
                    await asyncio.sleep(0.5)
                    continue
            t0 = time.monotonic()
            st["opened"] += 1
            st["open"] += 1
            st["peak"] = max(st["peak"], st["open"])
            tried(first)
            first = False
            try:
                if payload:
                    w.write(payload)
                reader = asyncio.ensure_future(r.read(65536))
                waiter = asyncio.ensure_future(stop.wait())
                peer_closed = False
                while True:
                    done, _ = await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    if reader in done:
                        try:
                            data = reader.result()
                        except (OSError, ssl.SSLError):
                            data = b""
                        if not data:  # EOF or reset: the proxy closed it
                            peer_closed = True
                            waiter.cancel()
                            break
                        reader = asyncio.ensure_future(r.read(65536))
                        continue
                    reader.cancel()
                    break
            finally:
                st["open"] -= 1
                w.transport.abort()
            if not peer_closed:
                return
            age = time.monotonic() - t0
            st["closed"].append(age)
            if age < 1.0:
                st["at_once"] += 1
            events.write("%.3f\t%.3f\n" % (t0 - t_start, age))
            await asyncio.sleep(0.2 if age >= 1.0 else 0.5)

    tasks = [asyncio.ensure_future(one()) for _ in range(conns)]
    try:
        await asyncio.wait_for(all_open.wait(), RAMP_MAX)
    except asyncio.TimeoutError:
        pass
    with open(ready_file, "w") as f:
        f.write("%d %.1f\n" % (st["open"], time.monotonic() - t_start))
    await asyncio.sleep(hold)
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    events.close()
    c = sorted(st["closed"])
    fmt = lambda v: "%.1f" % v if v is not None else "-"
    print("%d\t%d\t%d\t%s\t%s\t%d\t%d" % (
        st["opened"], len(c), st["peak"], fmt(c[0] if c else None),
        fmt(statistics.median(c) if c else None), st["at_once"], st["failed"]))


# --- the normal client ----------------------------------------------------------------------

def h2c_get(host, port, path):
    s = socket.create_connection((host, port), timeout=DEADLINE)
    try:
        s.settimeout(DEADLINE)
        s.sendall(PREFACE + settings([]) + get_headers(1, path, "localhost", "http"))
        fr, status, deadline = FrameReader(), None, time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                raise ConnectionError("EOF")
            frames = fr.feed(data)
            back = acks(frames)
            for ftype, flags, sid, payload in frames:
                if ftype == 7:
                    raise ConnectionError("GOAWAY")
                if sid != 1:
                    continue
                if ftype == 3:
                    raise ConnectionError("RST_STREAM")
                if ftype == 1 and status is None:
                    status = 200 if payload[:1] == b"\x88" else 0
                if ftype == 0 and payload:
                    back += frame(8, 0, 0, struct.pack(">I", len(payload)))
                if ftype in (0, 1) and flags & 1:
                    return status
            if back:
                s.sendall(back)
        raise TimeoutError("deadline")
    finally:
        s.close()


def probe(mode, host, port, path, rate, secs, out):
    rows, lock = [], threading.Lock()

    def one(i):
        t0, ok, err = time.monotonic(), False, ""
        try:
            if mode == "h2c":
                status = h2c_get(host, port, path)
            else:
                if mode == "https":
                    c = http.client.HTTPSConnection(host, port, timeout=DEADLINE,
                                                    context=tls_ctx(["http/1.1"]))
                else:
                    c = http.client.HTTPConnection(host, port, timeout=DEADLINE)
                c.request("GET", path, headers={"Connection": "close"})
                r = c.getresponse()
                r.read()
                c.close()
                status = r.status
            ok, err = status == 200, "" if status == 200 else "status %s" % status
        except Exception as e:  # every failure is a data point, not a crash
            err = type(e).__name__
        dt = time.monotonic() - t0
        if ok and dt > DEADLINE:
            ok, err = False, "over %ss" % DEADLINE
        with lock:
            rows.append((i, ok, dt, err))

    n, start, threads = int(rate * secs), time.monotonic(), []
    for i in range(n):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(DEADLINE * 3)
    with lock:
        done = sorted(rows)
    lat = sorted(dt for _, ok, dt, _ in done if ok)

    def pct(p):
        return "%.1f" % (1000 * lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else "-"
    with open(out, "w") as f:
        for i, ok, dt, err in done:
            f.write("%d\t%d\t%.4f\t%s\n" % (i, ok, dt, err))
    okn = sum(1 for r in done if r[1])
    errs = {}
    for r in done:
        if not r[1]:
            errs[r[3]] = errs.get(r[3], 0) + 1
    print("%d\t%d\t%.1f\t%s\t%s\t%s" % (n, okn, 100.0 * okn / n if n else 0, pct(0.50), pct(0.99),
                                      ",".join("%s:%d" % kv for kv in sorted(errs.items())) or "-"))


# --- zero-window HTTP/2 ---------------------------------------------------------------------

async def zerowin(host, port, conns, streams, path, hold):
    st = {"up": 0, "sent": 0, "headers": 0, "h200": 0, "data": 0, "rst": 0, "goaway": 0, "closed": 0}
    stop = asyncio.Event()

    async def one():
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, asyncio.TimeoutError):
            return
        st["up"] += 1
        # MAX_CONCURRENT_STREAMS from us is irrelevant; INITIAL_WINDOW_SIZE 0 stops all DATA.
        out = PREFACE + settings([(4, 0)])
        for k in range(streams):
            out += get_headers(2 * k + 1, path, "localhost", "http")
        w.write(out)
        st["sent"] += streams
        fr = FrameReader()
        waiter = asyncio.ensure_future(stop.wait())
        try:
            while True:
                reader = asyncio.ensure_future(r.read(65536))
                done, _ = await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if reader not in done:
                    reader.cancel()
                    return
                try:
                    data = reader.result()
                except OSError:
                    data = b""
                if not data:
                    st["closed"] += 1
                    return
                frames = fr.feed(data)
                for ftype, _, _, payload in frames:
                    if ftype == 1:
                        st["headers"] += 1
                        st["h200"] += payload[:1] == b"\x88"
                    elif ftype == 0:
                        st["data"] += len(payload)
                    elif ftype == 3:
                        st["rst"] += 1
                    elif ftype == 7:
                        st["goaway"] += 1
                back = acks(frames)
                if back:
                    w.write(back)
        finally:
            waiter.cancel()
            w.transport.abort()

    tasks = [asyncio.ensure_future(one()) for _ in range(conns)]
    await asyncio.sleep(hold)
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    print("\t".join(str(st[k]) for k in ("up", "sent", "headers", "h200", "data", "rst", "goaway", "closed")))


# --- log floods -----------------------------------------------------------------------------

async def bounded(n, conc, fn):
    gate = asyncio.Semaphore(conc)
    res = {"done": 0, "failed": 0, "data": 0}

    async def run():
        async with gate:
            try:
                got = await asyncio.wait_for(fn(), DEADLINE)
                res["done"] += 1
                res["data"] += 1 if got else 0
            except (OSError, asyncio.TimeoutError, ssl.SSLError, ConnectionError):
                res["failed"] += 1
    await asyncio.gather(*(run() for _ in range(n)))
    return res


async def plain2tls(host, port, n, conc):
    async def one():
        r, w = await asyncio.open_connection(host, port)
        try:
            w.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            while await r.read(65536):
                pass
        finally:
            w.transport.abort()
        return True
    res = await bounded(n, conc, one)
    print("%d\t%d" % (res["done"], res["failed"]))


async def h2abort(host, port, n, conc, path):
    ctx = tls_ctx(["h2"])

    async def one():
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
        try:
            big = 1 << 30
            w.write(PREFACE + settings([(4, big)]) + frame(8, 0, 0, struct.pack(">I", big))
                    + get_headers(1, path, "localhost", "https"))
            fr = FrameReader()
            while True:
                data = await r.read(65536)
                if not data:
                    return False
                frames = fr.feed(data)
                if any(f[0] == 0 and f[3] for f in frames):
                    return True  # first DATA: hang up with the rest of the body unread
                back = acks(frames)
                if back:
                    w.write(back)
        finally:
            w.transport.abort()
    res = await bounded(n, conc, one)
    print("%d\t%d\t%d" % (res["done"], res["data"], res["failed"]))


def main(argv):
    cmd, a = argv[1], argv[2:]
    if cmd == "silent":
        asyncio.run(silent(a[0], int(a[1]), a[2], int(a[3]), float(a[4]), a[5], a[6]))
    elif cmd == "probe":
        probe(a[0], a[1], int(a[2]), a[3], float(a[4]), float(a[5]), a[6])
    elif cmd == "zerowin":
        asyncio.run(zerowin(a[0], int(a[1]), int(a[2]), int(a[3]), a[4], float(a[5])))
    elif cmd == "plain2tls":
        asyncio.run(plain2tls(a[0], int(a[1]), int(a[2]), int(a[3])))
    elif cmd == "h2abort":
        asyncio.run(h2abort(a[0], int(a[1]), int(a[2]), int(a[3]), a[4]))
    else:
        sys.exit("unknown subcommand %s" % cmd)


if __name__ == "__main__":
    main(sys.argv)
