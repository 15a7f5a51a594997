#!/usr/bin/env python3
"""Paced, bounded HTTP load for benches/rollout-trust.sh (loopback only, stdlib only).

Threads share the target rate; each keeps one keep-alive connection to one proxy replica (the
threads are spread over the replicas) and sends `GET /` at its own fixed pace (it never bursts
to catch up: a thread that fell more than a second behind starts a new schedule). Each request
picks a random user id out of `--users` (sent in `X-User-Id`, the proxy's `routing.user_header`)
and sends that user's own fake client address in `X-Forwarded-For`: user `u` is client
`10.x.y.z` number `u % --clients`. With `trusted_proxies: [127.0.0.1/32]` the proxy takes that
address as the client, so per-client caps see `--clients` distinct clients, each with a few
users, as real traffic would be.

Service time: real app servers are not instant, and a judgement of tail latency must cope with
their tail. Each request asks the demo app for a service time (`/slow?ms=N`), drawn the same
way whichever pool serves it: exponential with mean `--service-mean-ms` (at most 20 ms), and
with probability `--tail-share` a pause uniform in `--tail-ms` instead (a GC pause, a cold
cache). The defaults (mean 2 ms, 0.5 % in 20-60 ms) give a p99 near 10 ms, as the issue's
Express app servers had. `--service-mean-ms 0 --tail-share 0` sends `GET /` (no service time).

Stops after `--duration` seconds (or on SIGTERM/SIGINT) and prints a stats line every
`--report` seconds and at the end, on stdout: requests, answers by status class, transport
errors, answers per pool (`X-Canary-Pool`), client-side p50/p99.
"""

import argparse
import http.client
import random
import signal
import sys
import threading
import time


def client_ip(user: int, clients: int) -> str:
    c = user % clients
    return f"10.{(c >> 16) & 255}.{(c >> 8) & 255}.{c & 255}"


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()
        self.total = 0

    def reset(self):
        self.sent = 0
        self.status = {}
        self.errors = 0
        self.pools = {}
        self.lat = []

    def add(self, status, pool, seconds):
        with self.lock:
            self.sent += 1
            self.total += 1
            if status is None:
                self.errors += 1
            else:
                k = f"{status // 100}xx"
                self.status[k] = self.status.get(k, 0) + 1
                self.pools[pool] = self.pools.get(pool, 0) + 1
                if len(self.lat) < 200_000:
                    self.lat.append(seconds)

    def line(self, elapsed):
        with self.lock:
            lat = sorted(self.lat)
            q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0
            out = (
                f"loadgen: {elapsed:.0f}s sent={self.sent} rate={self.sent / max(elapsed, 1e-9):.0f}/s "
                f"status={self.status} errors={self.errors} pools={self.pools} "
                f"p50={q(0.5):.1f}ms p99={q(0.99):.1f}ms total={self.total}"
            )
            self.reset()
            return out


def service_path(rng, args):
    """The path of one request: `/slow?ms=N` with N drawn as the module docs say, or `--path`."""
    if args.tail_share > 0 and rng.random() < args.tail_share:
        return f"/slow?ms={rng.randint(args.tail_lo, args.tail_hi)}"
    if args.service_mean_ms > 0:
        ms = min(20, round(rng.expovariate(1.0 / args.service_mean_ms)))
        return f"/slow?ms={ms}"
    return args.path


def worker(target, rate, args, stats, stop, seed):
    rng = random.Random(seed)
    host, port = target.rsplit(":", 1)
    conn = None
    period = 1.0 / rate
    next_at = time.monotonic() + rng.random() * period
    while not stop.is_set():
        now = time.monotonic()
        if next_at > now:
            if stop.wait(next_at - now):
                break
        elif now - next_at > 1.0:
            next_at = now  # fell behind (a slow answer): no burst to catch up
        next_at += period
        user = rng.randrange(args.users)
        headers = {
            "X-User-Id": f"u{user}",
            "X-Forwarded-For": client_ip(user, args.clients),
        }
        t = time.monotonic()
        status, pool = None, "-"
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
            conn.request("GET", service_path(rng, args), headers=headers)
            resp = conn.getresponse()
            resp.read()
            status, pool = resp.status, resp.getheader("X-Canary-Pool", "-")
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            conn = None
        stats.add(status, pool, time.monotonic() - t)
    if conn is not None:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", required=True, help="host:port[,host:port...] (loopback)")
    ap.add_argument("--rate", type=float, default=400.0, help="requests per second in all")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=900.0, help="seconds, then stop")
    ap.add_argument("--report", type=float, default=30.0, help="seconds between stats lines")
    ap.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    ap.add_argument("--path", default="/", help="without a service time")
    ap.add_argument("--service-mean-ms", type=float, default=2.0)
    ap.add_argument("--tail-share", type=float, default=0.005)
    ap.add_argument("--tail-ms", default="20-60", help="LO-HI milliseconds")
    args = ap.parse_args()
    try:
        args.tail_lo, args.tail_hi = (int(x) for x in args.tail_ms.split("-"))
    except ValueError:
        sys.exit("loadgen: --tail-ms must be LO-HI in milliseconds, e.g. 20-60")
    if not (0 <= args.tail_lo <= args.tail_hi <= 1000 and 0 <= args.tail_share <= 1):
        sys.exit("loadgen: --tail-ms must be within 0-1000 and --tail-share 0..1")
    if not 0 <= args.service_mean_ms <= 100:
        sys.exit("loadgen: --service-mean-ms must be 0..100")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if not (t.startswith("127.") or t.startswith("localhost:")):
            sys.exit(f"loadgen: {t} is not loopback; refusing")
    if not (0 < args.rate <= 5000 and 1 <= args.threads <= 256 and args.duration <= 7200):
        sys.exit("loadgen: rate must be 0..5000, threads 1..256, duration at most 7200 s")
    if not (1 <= args.clients <= 1 << 24 and args.users >= 1):
        sys.exit("loadgen: --clients must be 1..2^24 and --users at least 1")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stats = Stats()
    threads = [
        threading.Thread(
            target=worker,
            args=(targets[i % len(targets)], args.rate / args.threads, args, stats, stop, i),
            daemon=True,
        )
        for i in range(args.threads)
    ]
    start = last = time.monotonic()
    for t in threads:
        t.start()
    end = start + args.duration
    while not stop.is_set() and time.monotonic() < end:
        stop.wait(min(args.report, max(0.0, end - time.monotonic())))
        now = time.monotonic()
        if now - last >= args.report - 0.01 or stop.is_set() or now >= end:
            print(stats.line(now - last), flush=True)
            last = now
    stop.set()
    for t in threads:
        t.join(timeout=args.timeout + 1)
    print(f"loadgen: done after {time.monotonic() - start:.0f}s, {stats.total} requests", flush=True)


if __name__ == "__main__":
    main()
