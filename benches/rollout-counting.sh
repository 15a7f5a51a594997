#!/usr/bin/env bash
# What counting a rollout's windows costs the request path, in callgrind instructions per
# request (benches/instructions.sh: repeatable on a noisy machine). Runs BINARY with
# benches/bench.yaml (file provider, one worker) on PORT/METRICS, once idle and once with a
# rollout that never leaves its first step (min_requests out of reach), started through the
# admin port while instructions.sh warms up, so every measured request is counted. wrk sends
# every request from 127.0.0.1 without X-Forwarded-For: one client, so past its first
# `per_client_requests` of a window each request takes the per-client cap's path.
#   ./benches/rollout-counting.sh [BINARY]     # default target/release/canary-lb
# Env: DUR (5), RUNS (2), PORT (8084), METRICS (9192). Needs valgrind, nginx, wrk, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/canary-lb}")
DUR=${DUR:-5}; RUNS=${RUNS:-2}; PORT=${PORT:-8084}; METRICS=${METRICS:-9192}
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
sed -e "s/127.0.0.1:8083/127.0.0.1:$PORT/" -e "s/127.0.0.1:9191/127.0.0.1:$METRICS/" \
  benches/bench.yaml > "$TMP/bench.yaml"
start_rollout() {  # POST until the admin port answers 200 (bounded: 120 s)
  local q="steps=10,100&interval=2s&min_requests=100000000&max_inconclusive=100000"
  for _ in $(seq 1200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$METRICS/rollout/start?$q" || true)
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  echo "rollout never started" >&2
}
for run in $(seq "$RUNS"); do
  for mode in idle rollout; do
    rm -f "$TMP/bench.yaml.rollout-state.json"  # the state file (releases that keep one)
    [ "$mode" = rollout ] && { start_rollout & }
    line=$(DUR=$DUR PORT=$PORT ./benches/instructions.sh "$BIN" serve --config "$TMP/bench.yaml" | tail -1)
    wait 2>/dev/null || true
    echo "run $run $mode: $line"
  done
done
