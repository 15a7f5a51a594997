#!/usr/bin/env bash
# Can a rollout be trusted to decide alone? (issue 20, "Done when"). On loopback: one Redis, two
# proxy replicas following it, demo app servers (the same build in both pools: PROD_APPS
# production, CANARY_APPS canary), a CPU hog beside the proxies, and a paced load generator
# (benches/rollout-trust/loadgen.py: RATE req/s over both replicas, USERS user ids in
# X-User-Id, each user with its own fake client address in X-Forwarded-For, CLIENTS of them,
# believed because the proxies have `trusted_proxies: [127.0.0.1/32]`; each request asks the app
# for a service time, drawn the same for both pools: exponential, mean SERVICE_MEAN_MS (2), and
# a TAIL_SHARE (0.005) of pauses in TAIL_MS (20-60) ms; p99 about 10 ms, like the Express apps
# of the issue; SERVICE_MEAN_MS=0 TAIL_SHARE=0 for instant answers). Then
# (benches/rollout-trust/drive.py):
#   - HEALTHY ramps of an unchanged canary: false rollbacks, target 0;
#   - REGRESS runs of each regression, set on the canary app before the start: 5 % errors
#     (`/_control?error_rate=0.05`) and 10 % of requests 300 ms slower
#     (`/_control?latency_ms=300&slow_share=0.1`): time from start to rolled_back, and from the
#     start of the first judged (not inconclusive) window, target threshold x interval + 1 s.
# The rollout: `steps: [10, 25, 50, 100], interval: 1s, threshold: 2, min_requests: 20,
# hard_fail_errors: 10` (ROLLOUT overrides the whole flow mapping), started with
# `ctl --config` (so the salt is the config's) against Redis.
#
#   ./benches/rollout-trust.sh                 # 50 healthy ramps, 5 of each regression, ~7 min
#   ./benches/rollout-trust.sh 10 2            # [healthy_ramps] [regression_runs]
#   CANARY_LB_BIN=target/release/canary-lb ./benches/rollout-trust.sh   # no cargo at all
#
# Binary: `cargo build --release --bin canary-lb` first (cargo itself decides whether
# target/release/canary-lb is fresh: a no-op then), unless CANARY_LB_BIN is given.
# CPU hog: HOGS (1) busy-loop shells (`while :; do :; done`), not pinned unless HOG_CPU is a
# CPU list for taskset; HOGS=0 for none. The proxies are not pinned either.
# Env: RATE (400) req/s in all; THREADS (16) load threads; USERS (5000); CLIENTS (2000);
# SERVICE_MEAN_MS, TAIL_SHARE, TAIL_MS (above); PROD_APPS (2); CANARY_APPS (1); PROXY_THREADS
# (2) worker threads per replica; SETTLE (2) s between runs; RUN_TIMEOUT (60) s per rollout;
# OUT (output root, default ${TMPDIR:-/tmp}/rollout-trust). Results: $OUT/run-*/{summary.txt,runs.tsv,*.log,*.yaml}.
# Loopback only; ports from the OS; every process it starts is stopped by PID on exit (trap).
# Needs redis-server, python3, curl.
set -uo pipefail
cd "$(dirname "$0")/.."

HEALTHY=${1:-50}; REGRESS=${2:-5}
RATE=${RATE:-400}; THREADS=${THREADS:-16}; USERS=${USERS:-5000}; CLIENTS=${CLIENTS:-2000}
PROD_APPS=${PROD_APPS:-2}; CANARY_APPS=${CANARY_APPS:-1}; PROXY_THREADS=${PROXY_THREADS:-2}
SERVICE_MEAN_MS=${SERVICE_MEAN_MS:-2}; TAIL_SHARE=${TAIL_SHARE:-0.005}; TAIL_MS=${TAIL_MS:-20-60}
HOGS=${HOGS:-1}; HOG_CPU=${HOG_CPU:-}; SETTLE=${SETTLE:-2}; RUN_TIMEOUT=${RUN_TIMEOUT:-60}
ROLLOUT=${ROLLOUT:-"{ steps: [10, 25, 50, 100], interval: 1s, threshold: 2, min_requests: 20, hard_fail_errors: 10 }"}
OUT=${OUT:-${TMPDIR:-/tmp}/rollout-trust}; R=$OUT/run-$(date -u +%Y%m%d-%H%M%S)
BIN=${CANARY_LB_BIN:-$PWD/target/release/canary-lb}
HERE=$PWD/benches/rollout-trust

die() { echo "ERROR: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
for b in redis-server python3 curl; do command -v $b >/dev/null || die "missing $b"; done
[[ $HEALTHY =~ ^[0-9]+$ && $REGRESS =~ ^[0-9]+$ ]] || die "usage: $0 [healthy_ramps] [regression_runs]"
[ "$HEALTHY" -le 1000 ] && [ "$REGRESS" -le 100 ] || die "at most 1000 ramps and 100 regression runs"
# The interval and threshold of ROLLOUT, for the target and the drive's fallbacks.
INTERVAL_MS=$(python3 -c 'import re,sys; m=re.search(r"interval:\s*([0-9.]+)(ms|s)\b", sys.argv[1]); print(int(float(m.group(1))*(1 if m.group(2)=="ms" else 1000)) if m else 1000)' "$ROLLOUT")
THRESHOLD=$(python3 -c 'import re,sys; m=re.search(r"threshold:\s*([0-9]+)", sys.argv[1]); print(m.group(1) if m else 3)' "$ROLLOUT")

if [ -z "${CANARY_LB_BIN:-}" ]; then
  cargo build --release --bin canary-lb >&2 || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "no canary-lb binary at $BIN"
mkdir -p "$R" || die "mkdir $R"

PIDS=()  # everything started; stopped by PID on exit
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null); [ -n "$s" ] && [ "${s:0:1}" != Z ]; }
stop() {  # TERM a PID, wait <= 5 s, then KILL
  local p=$1 i
  kill -TERM "$p" 2>/dev/null
  for i in $(seq 50); do alive "$p" || break; sleep 0.1; done
  alive "$p" && kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null
}
cleanup() {
  trap - EXIT INT TERM
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do alive "${PIDS[$i]}" && stop "${PIDS[$i]}"; done
  log "stopped PIDs: ${PIDS[*]:-none}; files in $R"
}
trap cleanup EXIT; trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {  # seconds description command...: until the command succeeds, or die
  local secs=$1 what=$2 end; shift 2
  end=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "$what: not ready after ${secs}s (logs in $R)"
    sleep 0.2
  done
}
start() {  # name cmd... ; its output in $R/name.log
  local name=$1; shift
  "$@" >"$R/$name.log" 2>&1 &
  PIDS+=($!)
}

# Redis, keeping nothing on disk.
REDIS_PORT=$(free_port)
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
wait_for 10 redis redis-cli -p "$REDIS_PORT" ping

# App servers.
PROD=(); CANARY=()
for ((i = 1; i <= PROD_APPS + CANARY_APPS; i++)); do
  port=$(free_port)
  if [ "$i" -le "$PROD_APPS" ]; then pool=production; name=prod-$i; PROD+=("127.0.0.1:$port")
  else pool=canary; name=canary-$((i - PROD_APPS)); CANARY+=("127.0.0.1:$port"); fi
  start "app-$name" "$BIN" app --listen "127.0.0.1:$port" --name "$name" --pool "$pool"
  wait_for 10 "app $name" curl -fsS "http://127.0.0.1:$port/healthz"
done

# Two proxy replicas following the Redis; replica 1's config is also ctl's.
LISTEN=(); ADMIN=()
for n in 1 2; do
  LISTEN+=("$(free_port)"); ADMIN+=("$(free_port)")
  cat >"$R/proxy-$n.yaml" <<EOF
listen: ["127.0.0.1:${LISTEN[$((n - 1))]}"]
metrics_listen: "127.0.0.1:${ADMIN[$((n - 1))]}"
threads: $PROXY_THREADS
grace_period: 1s
access_log: off
health_check: { kind: http, path: /healthz, interval: 1s, timeout: 1s }
discovery: { provider: redis, url: "redis://127.0.0.1:$REDIS_PORT/0", namespace: "rollout-trust", resync_interval: 1s }
routing: { canary_percent: 0, salt: "rollout-trust-bench", user_header: X-User-Id }
trusted_proxies: ["127.0.0.1/32"]
rollout: $ROLLOUT
EOF
  "$BIN" check --config "$R/proxy-$n.yaml" >&2 || die "proxy-$n.yaml is refused"
done
CTL=("$BIN" ctl --config "$R/proxy-1.yaml")
for a in "${PROD[@]}"; do "${CTL[@]}" register --pool production "$a" >/dev/null || die "register $a"; done
for a in "${CANARY[@]}"; do "${CTL[@]}" register --pool canary "$a" >/dev/null || die "register $a"; done
"${CTL[@]}" canary set 0 >/dev/null || die "ctl canary set 0"
for n in 1 2; do
  start "proxy-$n" env RUST_LOG=info "$BIN" serve --config "$R/proxy-$n.yaml"
done
pool_of() {  # port X-Canary-value wanted-pool: the proxy sends a forced request there
  curl -fsS -o /dev/null -D - -H "X-Canary: $2" "http://127.0.0.1:$1/" | grep -qi "^x-app-pool: $3"
}
for n in 0 1; do
  wait_for 30 "proxy $((n + 1)) production" pool_of "${LISTEN[$n]}" 0 production
  wait_for 30 "proxy $((n + 1)) canary" pool_of "${LISTEN[$n]}" 1 canary
done

# The CPU hog(s) beside the proxies.
for ((i = 1; i <= HOGS; i++)); do
  if [ -n "$HOG_CPU" ]; then start "hog-$i" taskset -c "$HOG_CPU" sh -c 'while :; do :; done'
  else start "hog-$i" sh -c 'while :; do :; done'; fi
done

# Load, bounded by a duration longer than the runs can take (and stopped on exit anyway).
RUNS=$((HEALTHY + 2 * REGRESS))
LOAD_SECS=$((60 + RUNS * (RUN_TIMEOUT + SETTLE + 5)))
start loadgen python3 "$HERE/loadgen.py" --targets "127.0.0.1:${LISTEN[0]},127.0.0.1:${LISTEN[1]}" \
  --rate "$RATE" --threads "$THREADS" --users "$USERS" --clients "$CLIENTS" \
  --service-mean-ms "$SERVICE_MEAN_MS" --tail-share "$TAIL_SHARE" --tail-ms "$TAIL_MS" \
  --duration "$LOAD_SECS" --report 30
LOADGEN=${PIDS[-1]}
sleep 3  # warm up: connections open, both pools' latency histograms filled
alive "$LOADGEN" || die "the load generator stopped: $(cat "$R/loadgen.log")"

{
  echo "rollout-trust $(date -u +%Y-%m-%dT%H:%M:%SZ): $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty')"
  echo "binary: $BIN ($(stat -c %y "$BIN" | cut -d. -f1))"
  echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
  echo "rollout: $ROLLOUT; replicas: 2 x threads $PROXY_THREADS; apps: $PROD_APPS production, $CANARY_APPS canary"
  echo "load: $RATE req/s, $THREADS threads, $USERS users, $CLIENTS client addresses (XFF); service time exp mean ${SERVICE_MEAN_MS} ms + ${TAIL_SHARE} in ${TAIL_MS} ms; CPU hogs: $HOGS${HOG_CPU:+ on CPU $HOG_CPU}"
  echo "command: $0 $HEALTHY $REGRESS"
} | tee "$R/header.txt" >&2

CANARY_URLS=(); for a in "${CANARY[@]}"; do CANARY_URLS+=(--canary-app "http://$a"); done
# In the background, and waited for: a signal to this script then runs the trap at once
# (bash defers traps until a foreground child ends).
python3 "$HERE/drive.py" --bin "$BIN" --config "$R/proxy-1.yaml" "${CANARY_URLS[@]}" \
  --healthy "$HEALTHY" --regress "$REGRESS" --interval-ms "$INTERVAL_MS" --threshold "$THRESHOLD" \
  --settle "$SETTLE" --run-timeout "$RUN_TIMEOUT" --out "$R" &
PIDS+=($!)
wait "${PIDS[-1]}"
rc=$?
stop "$LOADGEN"
echo "--- load generator" >&2; tail -n 4 "$R/loadgen.log" >&2
echo "--- summary ($R/summary.txt; every run in $R/runs.tsv)" >&2
cat "$R/header.txt" "$R/summary.txt" 2>/dev/null >"$R/report.txt"
exit $rc
