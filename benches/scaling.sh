#!/usr/bin/env bash
# How the proxy uses more than one core: canary-lb at `threads: 1..N` beside nginx at
# `worker_processes 1..N` (`listen ... reuseport`, upstream keepalive), same backends, same run.
# For each proxy and thread count, two measurements:
#   max    wrk -t2 -c$CONNS for $DUR s: requests/s, CPU microseconds per request (user+system,
#          every thread and process of the proxy), context switches per request;
#   fixed  h2load --h1 at a fixed offered load of $RATE requests/s ($RATE_CONNS connections):
#          the same per-request CPU and context switches, so 1 and N threads are compared doing
#          the same work (the issue's "no more CPU per request with threads: 2").
# N defaults to the machine's cores; the script runs unchanged on a bigger machine.
#   ./benches/scaling.sh                          # builds canary-lb (release); N=$(nproc)
#   NO_BUILD=1 CLB=path/to/canary-lb MAX_THREADS=4 RATE=20000 ./benches/scaling.sh
# Env: DUR (8), CONNS (50), RATE (5000), RATE_CONNS (10), ROUNDS (1; medians when more),
#      BACKEND_WORKERS (1). Bounded: every load run has a duration; loopback only; every process
#      is stopped by PID. Needs (Debian): nginx wrk nghttp2-client (h2load) curl.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in nginx wrk h2load curl; do
  command -v $b >/dev/null || { echo "scaling: missing $b (apt-get install nginx wrk nghttp2-client curl)" >&2; exit 1; }
done
N=${MAX_THREADS:-$(nproc)}; DUR=${DUR:-8}; CONNS=${CONNS:-50}; RATE=${RATE:-5000}
RATE_CONNS=${RATE_CONNS:-10}; ROUNDS=${ROUNDS:-1}; BW=${BACKEND_WORKERS:-1}
CLB=${CLB:-target/release/canary-lb}
if [ -z "${NO_BUILD:-}" ]; then nice -n 10 cargo build --release --bin canary-lb >&2; fi
[ -x "$CLB" ] || { echo "scaling: $CLB not built" >&2; exit 1; }
CLB=$(realpath "$CLB")
W=$(mktemp -d); chmod 755 "$W"; mkdir -p "$W"/{be,ngx}/tmp
CLK=$(getconf CLK_TCK)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "files in $W" >&2
}
trap cleanup EXIT
open_() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
wait_port() { for _ in $(seq 100); do open_ "$1" && return 0; sleep 0.1; done; echo "scaling: nothing on :$1" >&2; exit 1; }
for p in 9001 9002 8081 8083 9191; do open_ $p && { echo "scaling: 127.0.0.1:$p in use" >&2; exit 1; }; done

# "user+system ticks" and "context switches" of a process, its children, all their threads.
usage() {
  local t=0 c=0 p f v
  for p in $1 $(ps -o pid= --ppid "$1"); do
    v=$(awk '{sub(/.*\) /,""); print $12+$13}' /proc/$p/stat 2>/dev/null) && t=$((t + ${v:-0}))
    for f in /proc/$p/task/*/status; do
      v=$(awk '/^(non)?voluntary_ctxt_switches/{n+=$2} END{print n+0}' "$f" 2>/dev/null) && c=$((c + ${v:-0}))
    done
  done
  echo "$t $c"
}

T='access_log off; keepalive_requests 1000000; keepalive_timeout 75s; client_body_temp_path tmp/b;
  proxy_temp_path tmp/p; fastcgi_temp_path tmp/f; uwsgi_temp_path tmp/u; scgi_temp_path tmp/s;'
cat > "$W/be/nginx.conf" <<EOF
worker_processes $BW; daemon off; pid $W/be/pid; error_log $W/be/err; events { worker_connections 8192; }
http { $T server { listen 127.0.0.1:9001 backlog=4096; listen 127.0.0.1:9002 backlog=4096;
  location / { return 200 "ok\n"; } } }
EOF
nginx -p "$W/be/" -c "$W/be/nginx.conf" & pids+=($!)
wait_port 9001

# start_proxy KIND THREADS: sets PROXY (pid) and PORT.
start_proxy() {
  if [ "$1" = nginx ]; then
    cat > "$W/ngx/nginx.conf" <<EOF
worker_processes $2; daemon off; pid $W/ngx/pid; error_log $W/ngx/err; events { worker_connections 8192; }
http { $T
  upstream be { server 127.0.0.1:9001; server 127.0.0.1:9002; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:8081 backlog=4096 reuseport;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
    nginx -p "$W/ngx/" -c "$W/ngx/nginx.conf" & PROXY=$!; PORT=8081
  else
    sed "s/^threads: .*/threads: $2/" benches/bench.yaml > "$W/canary-lb.yaml"
    RUST_LOG=warn "$CLB" serve --config "$W/canary-lb.yaml" 2>"$W/canary-lb.err" & PROXY=$!; PORT=8083
  fi
  pids+=("$PROXY")
  wait_port $PORT
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
}
stop_proxy() {
  kill "$PROXY" 2>/dev/null || true
  wait "$PROXY" 2>/dev/null || true
  for _ in $(seq 100); do open_ $PORT || return 0; sleep 0.1; done
}

# measure MODE: one load run against $PORT; prints "req/s cpu_us_per_req ctxsw_per_req".
measure() {
  local u0 u1 out req secs
  read -r t0 c0 < <(usage "$PROXY")
  if [ "$1" = max ]; then
    out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --timeout 5s "http://127.0.0.1:$PORT/")
    req=$(awk '/requests in/{print $1}' <<<"$out")
  else
    out=$(h2load --h1 -c "$RATE_CONNS" --rps $((RATE / RATE_CONNS)) -D "$DUR" -T 5 "http://127.0.0.1:$PORT/" 2>&1)
    req=$(awk '/^requests:/{print $8}' <<<"$out") # "succeeded"
  fi
  read -r t1 c1 < <(usage "$PROXY")
  awk -v r="$req" -v d="$DUR" -v t=$((t1 - t0)) -v c=$((c1 - c0)) -v k="$CLK" \
    'BEGIN{ if (r < 1) r = 1; printf "%.0f %.1f %.3f\n", r / d, t / k * 1e6 / r, c / r }'
}

med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

RES="$W/results.tsv"
for n in $(seq 1 "$N"); do
  for kind in nginx canary-lb; do
    start_proxy $kind "$n"
    wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$PORT/" >/dev/null # warm-up
    for mode in max fixed; do
      for r in $(seq "$ROUNDS"); do
        echo -e "$kind\t$n\t$mode\t$r\t$(measure $mode | tr ' ' '\t')" | tee -a "$RES" >&2
      done
    done
    stop_proxy
  done
done

echo
echo "scaling: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); max = wrk -t2 -c$CONNS ${DUR}s; fixed = h2load --h1 -c$RATE_CONNS at $RATE req/s; medians of $ROUNDS"
echo "| proxy | threads | max req/s | vs 1 thread | CPU us/req (max) | ctx sw/req (max) | CPU us/req at $RATE req/s | ctx sw/req at $RATE req/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for kind in nginx canary-lb; do
  one=
  for n in $(seq 1 "$N"); do
    col() { awk -F'\t' -v k=$kind -v n="$n" -v m="$1" -v c="$2" '$1==k && $2==n && $3==m {printf "%s ", $c}' "$RES" | med; }
    rps=$(col max 5); one=${one:-$rps}
    printf '| %s | %s | %.0f | %.2f | %s | %s | %s | %s |\n' "$kind" "$n" "$rps" \
      "$(awk -v a="$rps" -v b="$one" 'BEGIN{print a/b}')" "$(col max 6)" "$(col max 7)" "$(col fixed 6)" "$(col fixed 7)"
  done
done
