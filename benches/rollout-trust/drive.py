#!/usr/bin/env python3
"""The rollouts of benches/rollout-trust.sh: start each, follow it to its end, summarise.

Runs, in order: `--healthy` ramps with an unchanged canary, then `--regress` runs of each
regression (`errors`: the canary app fails 5 % of requests; `slow`: 10 % of its requests take
300 ms more), set on the canary app(s) through `POST /_control` before the rollout starts.
Before each run the canary apps are healed, `ctl canary set 0` puts everyone back on
production, and `--settle` seconds pass (slow requests drain, every replica follows).

Each run: `ctl --config C rollout start` (steps, interval, threshold, min_requests and the
salt from C), then `ctl rollout status --json` every 0.2 s until the phase is succeeded,
rolled_back, aborted or paused, or `--run-timeout` passes (then it is aborted and recorded as
`timeout`). Times come from the stored state (`updated_ms - started_ms`, the proxies' own
clocks, same machine); the verdicts and reasons of each window from `ctl rollout history`.

Writes `runs.tsv` (one line per run) and `summary.txt` in `--out`, and prints the summary.
Exit 0 when the run completed (whatever the verdicts), 1 on a setup error.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

END_PHASES = {"succeeded", "rolled_back", "aborted", "paused"}

REGRESSIONS = {
    # name: (/_control query, what it is)
    "errors": ("error_rate=0.05", "canary answers 5 % of requests with 500"),
    "slow": ("latency_ms=300&slow_share=0.1", "10 % of canary requests 300 ms slower"),
}
HEAL = "error_rate=0&latency_ms=0&slow_share=1"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Ctl:
    def __init__(self, binary, config):
        self.base = [binary, "ctl", "--config", config]

    def run(self, *args, timeout=15):
        p = subprocess.run(
            self.base + list(args), capture_output=True, text=True, timeout=timeout
        )
        return p.returncode, p.stdout, p.stderr

    def view(self):
        rc, out, err = self.run("rollout", "status", "--json")
        if rc != 0:
            raise RuntimeError(f"ctl rollout status: exit {rc}: {err.strip()}")
        return json.loads(out)

    def history(self, rollout_id, n=200):
        rc, out, err = self.run("rollout", "history", "-n", str(n), "--json")
        if rc != 0:
            raise RuntimeError(f"ctl rollout history: exit {rc}: {err.strip()}")
        entries = []
        for line in out.splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("rollout_id") == rollout_id:
                entries.append(e)
        entries.sort(key=lambda e: (e.get("at_ms", 0), e.get("window") or -1))
        return entries


def control(urls, query):
    for url in urls:
        req = urllib.request.Request(f"{url}/_control?{query}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=5) as r:
            if r.status != 200:
                raise RuntimeError(f"{url}/_control?{query}: {r.status}")


def loadavg():
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "-"


def one_run(ctl, args, kind, index):
    control(args.canary_apps, HEAL)
    rc, _, err = ctl.run("canary", "set", "0")
    if rc != 0:
        log(f"note: ctl canary set 0: exit {rc}: {err.strip()}")
    time.sleep(args.settle)
    if kind != "healthy":
        control(args.canary_apps, REGRESSIONS[kind][0])
    load = loadavg()
    t0 = time.time()
    rc, out, err = ctl.run("rollout", "start")
    if rc != 0:
        raise RuntimeError(f"ctl rollout start: exit {rc}: {err.strip() or out.strip()}")
    state, phase = None, "?"
    deadline = time.monotonic() + args.run_timeout
    rollout_id = None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            state = ctl.view().get("state") or {}
        except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as e:
            log(f"note: {e}")
            continue
        rollout_id = state.get("id")
        phase = state.get("phase", "?")
        if phase in END_PHASES and state.get("started_ms", 0) >= int(t0 * 1000) - 2000:
            break
    else:
        phase = "timeout"
        ctl.run("rollout", "abort")
    observed = time.time() - t0
    if phase == "paused":
        ctl.run("rollout", "abort")  # a paused rollout would block the next start
    control(args.canary_apps, HEAL)

    state = state or {}
    settings = state.get("settings") or {}
    interval_ms = parse_duration_ms(settings.get("interval")) or args.interval_ms
    started = state.get("started_ms") or int(t0 * 1000)
    updated = state.get("updated_ms") or int(time.time() * 1000)
    history = ctl.history(rollout_id) if rollout_id else []
    windows = [e for e in history if e.get("window") is not None]
    verdicts = " ".join(
        f"w{e['window']}:{e.get('verdict', '?')}({canary_requests(e)})" for e in windows
    )
    fails = [
        f"w{e['window']}: " + "; ".join(e.get("reasons") or [])
        for e in windows
        if e.get("verdict") == "fail"
    ]
    judged = [e for e in windows if e.get("verdict") in ("pass", "fail")]
    first_judged = judged[0]["window"] if judged else None
    elapsed = (updated - started) / 1000.0
    from_judged = (
        (updated - (started + first_judged * interval_ms)) / 1000.0
        if first_judged is not None
        else None
    )
    return {
        "kind": kind,
        "run": index,
        "id": rollout_id or "-",
        "phase": phase,
        "reason": state.get("reason", "-"),
        "elapsed_s": elapsed,
        "observed_s": observed,
        "first_judged_window": first_judged,
        "from_first_judged_s": from_judged,
        "windows": verdicts or "-",
        "fail_reasons": " | ".join(fails) or "-",
        "loadavg": load,
    }


def canary_requests(entry):
    """`n=<canary requests>` of a judged window, from the verdict's figures, when given."""
    for pair in entry.get("numbers") or []:
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and pair[0] == "canary_requests":
            return f"n={pair[1]:.0f}" if isinstance(pair[1], (int, float)) else "n=?"
    return "n=?"


def parse_duration_ms(v):
    """The settings' interval as serialised (humantime: `1s`, `500ms`), in ms; None if not."""
    if isinstance(v, (int, float)):
        return int(v * 1000)
    if not isinstance(v, str):
        return None
    total, num = 0.0, ""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
    i = 0
    while i < len(v):
        c = v[i]
        if c.isdigit() or c == ".":
            num += c
            i += 1
            continue
        if c == " ":
            i += 1
            continue
        unit = "ms" if v.startswith("ms", i) else c
        if unit not in units or not num:
            return None
        total += float(num) * units[unit]
        num = ""
        i += len(unit)
    return int(total) if not num else None


COLUMNS = [
    "kind", "run", "id", "phase", "reason", "elapsed_s", "observed_s", "first_judged_window",
    "from_first_judged_s", "windows", "fail_reasons", "loadavg",
]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v).replace("\t", " ").replace("\n", " ")


def summarise(rows, args):
    target = args.threshold * args.interval_ms / 1000.0 + 1.0
    out = []
    healthy = [r for r in rows if r["kind"] == "healthy"]
    if healthy:
        rolled = [r for r in healthy if r["phase"] == "rolled_back"]
        other = [r for r in healthy if r["phase"] not in ("succeeded", "rolled_back")]
        ok = len(rolled) == 0 and not other
        out.append(
            f"healthy ramps: {len(healthy)}; false rollbacks: {len(rolled)}/{len(healthy)} "
            f"(target 0) -> {'PASS' if ok else 'FAIL'}"
        )
        if other:
            out.append(
                "  not succeeded, not rolled back: "
                + ", ".join(f"#{r['run']} {r['phase']} ({r['reason']})" for r in other)
            )
        failed_windows = sum(r["windows"].count(":fail(") for r in healthy)
        n_windows = sum(r["windows"].count(":") for r in healthy)
        inconclusive = sum(r["windows"].count(":inconclusive(") for r in healthy)
        out.append(
            f"  windows judged in healthy ramps: {n_windows}, failed: {failed_windows}, "
            f"inconclusive: {inconclusive}"
        )
        took = [r["elapsed_s"] for r in healthy if r["phase"] == "succeeded"]
        if took:
            out.append(
                f"  time to succeed: median {statistics.median(took):.2f} s, "
                f"max {max(took):.2f} s"
            )
        for r in healthy:
            if r["fail_reasons"] != "-":
                out.append(f"  #{r['run']} {r['phase']}: {r['fail_reasons']}")
    for kind, (_, what) in REGRESSIONS.items():
        runs = [r for r in rows if r["kind"] == kind]
        if not runs:
            continue
        rolled = [r for r in runs if r["phase"] == "rolled_back"]
        t = [r["elapsed_s"] for r in rolled]
        j = [r["from_first_judged_s"] for r in rolled if r["from_first_judged_s"] is not None]
        ok = len(rolled) == len(runs) and all(x <= target for x in t)
        line = (
            f"regression '{kind}' ({what}): rolled back {len(rolled)}/{len(runs)}"
        )
        if t:
            line += (
                f"; time from start median {statistics.median(t):.2f} s, max {max(t):.2f} s"
            )
        if j:
            line += (
                f"; from the first judged window's start median {statistics.median(j):.2f} s, "
                f"max {max(j):.2f} s"
            )
        line += f" (target <= {target:.1f} s from start) -> {'PASS' if ok else 'FAIL'}"
        out.append(line)
        for r in runs:
            out.append(
                f"  #{r['run']} {r['phase']} in {r['elapsed_s']:.2f} s: {r['windows']}"
                + (f" | {r['fail_reasons']}" if r["fail_reasons"] != "-" else "")
            )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--config", required=True, help="a proxy config: Redis, salt, rollout:")
    ap.add_argument("--canary-app", action="append", dest="canary_apps", required=True,
                    help="http://127.0.0.1:PORT of a canary app (repeatable)")
    ap.add_argument("--healthy", type=int, default=50)
    ap.add_argument("--regress", type=int, default=5, help="runs of each regression")
    ap.add_argument("--interval-ms", type=int, default=1000)
    ap.add_argument("--threshold", type=int, default=2)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--run-timeout", type=float, default=60.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not (0 <= args.healthy <= 1000 and 0 <= args.regress <= 100):
        sys.exit("drive: --healthy must be 0..1000 and --regress 0..100")
    for url in args.canary_apps:
        if not url.startswith("http://127."):
            sys.exit(f"drive: {url} is not loopback; refusing")

    ctl = Ctl(args.bin, args.config)
    plan = [("healthy", i + 1) for i in range(args.healthy)]
    for kind in REGRESSIONS:
        plan += [(kind, i + 1) for i in range(args.regress)]
    rows = []
    tsv_path = os.path.join(args.out, "runs.tsv")
    with open(tsv_path, "w") as tsv:
        tsv.write("\t".join(COLUMNS) + "\n")
        for kind, i in plan:
            try:
                r = one_run(ctl, args, kind, i)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                log(f"ERROR in {kind} #{i}: {e}")
                return 1
            rows.append(r)
            tsv.write("\t".join(fmt(r[c]) for c in COLUMNS) + "\n")
            tsv.flush()
            log(
                f"{kind} #{i}: {r['phase']} in {r['elapsed_s']:.2f} s ({r['windows']})"
                + (f" {r['fail_reasons']}" if r["fail_reasons"] != "-" else "")
            )
    summary = summarise(rows, args)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write("\n".join(summary) + "\n")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
