#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable on a noisy
# machine where requests/s are not. Starts an nginx backend on 127.0.0.1:9001/9002, canary-lb
# (release build, benches/bench.yaml) under callgrind, warms up, zeroes the counters, sends
# requests with wrk for DUR seconds, dumps the counts and divides by the requests wrk completed.
#   ./benches/instructions.sh [BINARY]      # default target/release/canary-lb
#   PORT=8084 ./benches/instructions.sh target/release/examples/floor 127.0.0.1:8084   # any proxy:
#                                           # BINARY ARGS..., listening on 127.0.0.1:$PORT
# Env: DUR (default 10), CONNS (default 10), OUT (callgrind output dir, default a temp dir),
#      PORT (default 8083, the port of benches/bench.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/canary-lb}
if [ $# -gt 1 ]; then CMD=("$@"); else CMD=("$BIN" serve --config benches/bench.yaml); fi
DUR=${DUR:-10}; CONNS=${CONNS:-10}; PORT=${PORT:-8083}
OUT=${OUT:-$(mktemp -d)}
for b in valgrind callgrind_control nginx wrk curl; do
  command -v $b >/dev/null || { echo "missing $b (apt-get install valgrind nginx wrk curl)" >&2; exit 1; }
done
mkdir -p "$OUT/be/tmp"
cat > "$OUT/be/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $OUT/be/pid; error_log $OUT/be/err; events { worker_connections 1024; }
http { access_log off; client_body_temp_path tmp/b; proxy_temp_path tmp/p; fastcgi_temp_path tmp/f;
  uwsgi_temp_path tmp/u; scgi_temp_path tmp/s; keepalive_requests 1000000;
  server { listen 127.0.0.1:9001; listen 127.0.0.1:9002; location / { return 200 "ok\n"; } } }
NGX
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
nginx -p "$OUT/be/" -c "$OUT/be/nginx.conf" & pids+=($!)
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" \
  "${CMD[@]}" 2>"$OUT/valgrind.log" & pids+=($!)
for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
wrk -t1 -c"$CONNS" -d3s "http://127.0.0.1:$PORT/" >/dev/null    # warm-up: pools, allocator, caches
callgrind_control -z "${pids[1]}" >/dev/null
wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:$PORT/" > "$OUT/wrk.txt"
callgrind_control -d "${pids[1]}" >/dev/null
sleep 1
req=$(awk '/requests in/{print $1}' "$OUT/wrk.txt")
ir=$(for f in "$OUT"/callgrind.out.*.*; do awk '/^summary:/{print $2}' "$f"; done | sort -n | tail -1)
echo "requests: $req  instructions: $ir  per request: $((ir / req))  (callgrind files in $OUT)"
