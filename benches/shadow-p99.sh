#!/usr/bin/env bash
# What the shadow step costs users (issue 25): user latency (wrk's p50 and p99) and requests/s
# through canary-lb with no rollout, and with a rollout in its shadow step copying every
# production request (percent 100) to a canary that HANGS (every request held 60 s by the demo
# app's /_control latency_ms=60000), in alternating rounds of one run on the same machine.
# The copies are bounded by shadow.max_in_flight (64) and shadow.timeout (2 s): past 64 copies
# out, the rest are dropped and counted, so the hanging canary should cost users nothing.
#   ./benches/shadow-p99.sh [BINARY]        # default target/release/canary-lb
# Env: DUR (10) seconds per round, ROUNDS (3), CONNS (16), CANARY (hang | healthy), PERCENT
# (100: shadow.percent),
# PORT_BASE (19501: +0 production app, +1 canary app, +2 proxy, +3 admin). Loopback only;
# every process it starts is stopped by PID on exit. Needs wrk and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/canary-lb}")
DUR=${DUR:-10}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-16}; CANARY=${CANARY:-hang}
PERCENT=${PERCENT:-100}
BASE=${PORT_BASE:-19501}
P_PROD=$BASE; P_CANARY=$((BASE + 1)); P_PROXY=$((BASE + 2)); P_ADMIN=$((BASE + 3))
for b in wrk curl; do command -v $b >/dev/null || { echo "missing $b" >&2; exit 1; }; done
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

wait_http() {  # URL: bounded wait (20 s) for a 200
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2; exit 1
}

"$BIN" app --listen "127.0.0.1:$P_PROD" --name prod-1 --pool production >"$TMP/prod.log" 2>&1 &
PIDS+=($!)
"$BIN" app --listen "127.0.0.1:$P_CANARY" --name canary-1 --pool canary >"$TMP/canary.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_PROD/healthz"
wait_http "http://127.0.0.1:$P_CANARY/healthz"
if [ "$CANARY" = hang ]; then
  curl -s -X POST "http://127.0.0.1:$P_CANARY/_control?latency_ms=60000" >/dev/null
fi
cat >"$TMP/proxy.yaml" <<EOF
listen: "127.0.0.1:$P_PROXY"
metrics_listen: "127.0.0.1:$P_ADMIN"
threads: 1
access_log: off
pools:
  production: { servers: ["127.0.0.1:$P_PROD"] }
  canary: { servers: ["127.0.0.1:$P_CANARY"] }
routing: { canary_percent: 0, salt: shadow-bench }
rollout:
  interval: 1s
  min_requests: 100000000
  max_inconclusive: 10000
  state_file: "$TMP/rollout-state.json"
  shadow: { percent: $PERCENT, windows: 10000, max_in_flight: 64, timeout: 2s }
EOF
"$BIN" serve --config "$TMP/proxy.yaml" >"$TMP/proxy.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_ADMIN/readyz"
wait_http "http://127.0.0.1:$P_PROXY/"

admin() { curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$P_ADMIN$1"; }
copies() {  # canary_lb_shadow_requests_total{outcome=$1}
  curl -s "http://127.0.0.1:$P_ADMIN/metrics" |
    awk -v o="outcome=\"$1\"" 'index($0, "canary_lb_shadow_requests_total{") == 1 && index($0, o) { print $2 }'
}
ms() {  # wrk's latency text (e.g. 1.23ms, 456.00us, 1.02s) in ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[0-9]s$/ && v !~ /ms$/) n *= 1000; printf "%.3f", n }'
}
run_wrk() {  # MODE ROUND: one wrk run, one result line
  wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "http://127.0.0.1:$P_PROXY/" >"$TMP/wrk-$1-$2.txt"
  local p50 p99 rps non2xx
  p50=$(awk '$1 == "50%" { print $2 }' "$TMP/wrk-$1-$2.txt")
  p99=$(awk '$1 == "99%" { print $2 }' "$TMP/wrk-$1-$2.txt")
  rps=$(awk '/^Requests\/sec/ { print $2 }' "$TMP/wrk-$1-$2.txt")
  non2xx=$(awk '/Non-2xx/ { print $NF }' "$TMP/wrk-$1-$2.txt")
  echo "$1 $2 $(ms "$p50") $(ms "$p99") $rps ${non2xx:-0}" >>"$TMP/results"
  printf '%-7s round %s: p50 %8s ms  p99 %8s ms  %10s req/s  non-2xx %s\n' \
    "$1" "$2" "$(ms "$p50")" "$(ms "$p99")" "$rps" "${non2xx:-0}"
}

echo "canary: $CANARY, shadow.percent $PERCENT; $ROUNDS rounds of ${DUR}s, $CONNS connections, one proxy worker"
for round in $(seq "$ROUNDS"); do
  run_wrk off "$round"
  [ "$(admin /rollout/start?steps=100)" = 200 ] || { echo "rollout did not start" >&2; exit 1; }
  before_t=$(copies timeout); before_d=$(copies dropped); before_a=$(copies answered)
  sleep 1
  run_wrk shadow "$round"
  echo "         copies: answered +$(awk -v a="$(copies answered)" -v b="$before_a" 'BEGIN{print a-b}')," \
    "timeout +$(awk -v a="$(copies timeout)" -v b="$before_t" 'BEGIN{print a-b}')," \
    "dropped +$(awk -v a="$(copies dropped)" -v b="$before_d" 'BEGIN{print a-b}')"
  [ "$(admin /rollout/abort)" = 200 ] || { echo "rollout did not abort" >&2; exit 1; }
  sleep 2.5  # the copies out time out (2 s) before the next round without shadowing
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "| shadowing | p50 ms (median) | p99 ms (median) | req/s (median) |"
echo "|---|---:|---:|---:|"
for mode in off shadow; do
  p50=$(awk -v m=$mode '$1 == m { print $3 }' "$TMP/results" | median)
  p99=$(awk -v m=$mode '$1 == m { print $4 }' "$TMP/results" | median)
  rps=$(awk -v m=$mode '$1 == m { print $5 }' "$TMP/results" | median)
  echo "| $mode | $p50 | $p99 | $rps |"
done
