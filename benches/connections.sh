#!/usr/bin/env bash
# 10,000 concurrent keep-alive client connections through nginx and through canary-lb:
# errors, requests/s, and resident memory per connection (RSS growth / connections).
#   ./benches/connections.sh            # CONNS=10000 DUR=15
#   NO_BUILD=1 CLB=path/to/canary-lb ./benches/connections.sh   # another build
# Needs nginx, wrk, curl; raises the open-file limit for itself. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10000}; DUR=${DUR:-15}
CLB=${CLB:-target/release/canary-lb}
if [ -z "${NO_BUILD:-}" ]; then
  WITH_BENCH=1 ./scripts/setup.sh >&2
  cargo build --release >&2
fi
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((CONNS + 1000)) ] || { echo "open-file limit $(ulimit -n) too low" >&2; exit 1; }
D=$(mktemp -d); pids=(); echo "files in $D" >&2
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$D/be/tmp" "$D/ngx/tmp"
T='access_log off; keepalive_requests 1000000; keepalive_timeout 75s; client_body_temp_path tmp/b;
  proxy_temp_path tmp/p; fastcgi_temp_path tmp/f; uwsgi_temp_path tmp/u; scgi_temp_path tmp/s;'
cat > "$D/be/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $D/be/pid; error_log $D/be/err; worker_rlimit_nofile $(ulimit -n);
events { worker_connections $((CONNS + 1000)); }
http { $T server { listen 127.0.0.1:9001 backlog=16384; listen 127.0.0.1:9002 backlog=16384;
  location / { return 200 "ok\n"; } } }
NGX
cat > "$D/ngx/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $D/ngx/pid; error_log $D/ngx/err; worker_rlimit_nofile $(ulimit -n);
events { worker_connections $(( $(ulimit -n) - 100 )); }   # a client and an upstream fd per request
http { $T upstream be { server 127.0.0.1:9001; server 127.0.0.1:9002; keepalive 64; }
  server { listen 127.0.0.1:8081 backlog=16384; location / { proxy_pass http://be;
    proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
rss() { awk '/^VmRSS/{print $2}' /proc/$1/status; }               # KiB, main process
tree_rss() { local t=0 p; for p in $1 $(pgrep -P $1 || true); do t=$((t + $(rss $p))); done; echo $t; }
wait_port() { for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; exit 1; }
nginx -p "$D/be/" -c "$D/be/nginx.conf" & pids+=($!)
nginx -p "$D/ngx/" -c "$D/ngx/nginx.conf" & pids+=($!); ngx=$!
RUST_LOG=warn "$CLB" serve --config benches/bench.yaml 2>"$D/clb.log" & pids+=($!); clb=$!
wait_port 8081; wait_port 8083
printf '%-10s %8s %10s %8s %12s %14s\n' proxy conns req/s errors rss_delta_MiB KiB_per_conn
for t in nginx:8081:$ngx canary-lb:8083:$clb; do
  IFS=: read -r name port pid <<<"$t"
  before=$(tree_rss "$pid")
  wrk -t2 -c"$CONNS" -d"${DUR}s" --timeout 10s "http://127.0.0.1:$port/" > "$D/$name.wrk" &
  w=$!; sleep $((DUR * 2 / 3)); during=$(tree_rss "$pid"); wait $w
  rps=$(awk '/^Requests\/sec:/{print $2}' "$D/$name.wrk")
  errs=$(awk '/Socket errors/{gsub(/,/,""); print $4+$6+$8+$10} /Non-2xx/{print $NF}' "$D/$name.wrk" | paste -sd+ | bc 2>/dev/null || echo 0)
  printf '%-10s %8s %10s %8s %12.1f %14.1f\n' "$name" "$CONNS" "$rps" "${errs:-0}" \
    "$(echo "($during - $before) / 1024" | bc -l)" "$(echo "($during - $before) / $CONNS" | bc -l)"
done
