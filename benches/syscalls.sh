#!/usr/bin/env bash
# Where the kernel time goes: for nginx (1 worker), the bare-Pingora floor and canary-lb, each
# alone on the same nginx backend, over a fixed number of small requests:
#  1. every thread of the proxy: its name, user/system CPU us and context switches per request
#     (/proc/PID/task/*), without a tracer attached;
#  2. syscalls per request over all threads (`strace -c -f -p PID` on a second run).
# Divides by the requests the client completed. strace slows the proxy a lot: its times are not
# speeds, only its counts are used.
# The client is h2load in HTTP/1.1 mode (-n: a fixed number of requests over keep-alive
# connections), unpinned, at full speed. Per-time work (the timer thread's 10 ms tick) is
# spread over the requests of that run, so it weighs more in the traced run, which is slower.
#   ./benches/syscalls.sh                       # N=50000 requests, 10 connections
#   NO_BUILD=1 CLB=... FLOOR=... ./benches/syscalls.sh
# Needs (Debian): nginx nghttp2-client (h2load) strace curl. Bounded (h2load -T/-N timeouts and
# `timeout` around it), loopback only, every process stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in nginx h2load strace curl; do
  command -v $b >/dev/null || { echo "syscalls: missing $b (apt-get install nginx nghttp2-client strace curl)" >&2; exit 1; }
done
N=${N:-50000}; CONNS=${CONNS:-10}
CLB=${CLB:-target/release/canary-lb}; FLOOR=${FLOOR:-target/release/examples/floor}
[ -n "${NO_BUILD:-}" ] || nice -n 10 cargo build --release --bin canary-lb --example floor >&2
D=$(mktemp -d); pids=(); echo "files in $D" >&2
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$D/be/tmp" "$D/ngx/tmp"
T='access_log off; keepalive_requests 1000000; keepalive_timeout 75s; client_body_temp_path tmp/b;
  proxy_temp_path tmp/p; fastcgi_temp_path tmp/f; uwsgi_temp_path tmp/u; scgi_temp_path tmp/s;'
cat > "$D/be/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $D/be/pid; error_log $D/be/err; events { worker_connections 4096; }
http { $T server { listen 127.0.0.1:9001; listen 127.0.0.1:9002; location / { return 200 "ok\n"; } } }
NGX
cat > "$D/ngx/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $D/ngx/pid; error_log $D/ngx/err; events { worker_connections 4096; }
http { $T upstream be { server 127.0.0.1:9001; server 127.0.0.1:9002; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:8081; location / { proxy_pass http://be; proxy_http_version 1.1;
    proxy_set_header Connection ""; } } }
NGX
wait_port() { for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done
  echo "syscalls: nothing answers on $1" >&2; exit 1; }
# load PORT N OUT: N requests over $CONNS keep-alive connections; prints the requests that succeeded.
load() { timeout 300 h2load --h1 -n "$2" -c "$CONNS" -T 10 -N 10 "http://127.0.0.1:$1/" > "$3" || true
  awk '/^requests:/{print $8}' "$3"; }
tasks() {  # tid comm utime stime ctxsw, one line per thread
  local t; for t in /proc/$1/task/*; do
    printf '%s %s %s %s\n' "${t##*/}" "$(tr ' ' _ < $t/comm)" \
      "$(awk '{sub(/.*\) /,""); print $12, $13}' $t/stat)" \
      "$(awk '/^(non)?voluntary_ctxt_switches/{n+=$2} END{print n}' $t/status)"; done; }

nginx -p "$D/be/" -c "$D/be/nginx.conf" & pids+=($!)
wait_port 9001
declare -A PIDOF=()
for name in nginx floor canary-lb; do
  case $name in
    nginx) nginx -p "$D/ngx/" -c "$D/ngx/nginx.conf" & pids+=($!); port=8081 ;;
    floor) RUST_LOG=warn "$FLOOR" 127.0.0.1:8084 127.0.0.1:9001 127.0.0.1:9002 2>"$D/floor.log" & pids+=($!); port=8084 ;;
    canary-lb) RUST_LOG=warn "$CLB" serve --config benches/bench.yaml 2>"$D/clb.log" & pids+=($!); port=8083 ;;
  esac
  main=$!; wait_port $port
  pid=$main; [ $name = nginx ] && pid=$(pgrep -P "$main" | head -1)   # the worker
  load $port 5000 "$D/$name.warm" >/dev/null                             # warm-up
  # 1. threads
  tasks "$pid" > "$D/$name.t0"; req=$(load $port "$N" "$D/$name.load1"); tasks "$pid" > "$D/$name.t1"
  echo "== $name: threads over $req requests (user us, system us, context switches per request)"
  join <(sort "$D/$name.t0") <(sort "$D/$name.t1") | awk -v r="$req" -v clk="$(getconf CLK_TCK)" '
    {u=($7-$3)/clk*1e6/r; s=($8-$4)/clk*1e6/r; c=($9-$5)/r; printf "  %-8s %-22s user %6.2f  sys %6.2f  csw %6.3f\n", $1, $2, u, s, c}'
  # 2. syscalls
  strace -c -f -q -p "$pid" -o "$D/$name.strace" 2>"$D/$name.strace.err" & st=$!
  for _ in $(seq 100); do   # attached once the tracer has the proxy's threads stopped-and-resumed
    grep -q "TracerPid:[[:space:]]*$st" /proc/$pid/status && break; sleep 0.1; done
  req=$(load $port "$N" "$D/$name.load2")
  kill -INT $st; wait $st || true
  awk -v r="$req" -v n="$name" '$NF ~ /^[a-z_0-9]+$/ && $(NF) != "total" && $1 ~ /^[0-9.]+$/ {
      calls = (NF == 6 ? $4 : $4); printf "%s %s %.3f\n", n, $NF, calls / r }' "$D/$name.strace" >> "$D/sys.txt"
  echo "$name $req" >> "$D/reqs.txt"
  kill "$main"; wait "$main" 2>/dev/null || true
done
echo
echo "syscalls per request (strace -c -f, all threads; requests: $(awk '{printf "%s %s  ", $1, $2}' "$D/reqs.txt"))"
awk '{v[$2,$1]=$3; s[$2]=1; t[$1]+=$3} END{
  printf "| syscall | nginx | floor | canary-lb |\n|---|---:|---:|---:|\n"
  for(k in s) printf "| %s | %.2f | %.2f | %.2f |\n", k, v[k,"nginx"], v[k,"floor"], v[k,"canary-lb"]
  printf "| **total** | **%.2f** | **%.2f** | **%.2f** |\n", t["nginx"], t["floor"], t["canary-lb"]}' "$D/sys.txt" > "$D/table.txt"
cat "$D/table.txt" \
  | { read -r h; read -r l; echo "$h"; echo "$l"; grep -v total | sort -t'|' -k5 -gr; }; grep total "$D/table.txt"
