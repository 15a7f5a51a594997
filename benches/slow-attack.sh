#!/usr/bin/env bash
# Slow-client attacks against canary-lb and nginx in one run, in front of the same backend
# (SECURITY.md, "Slow attacks"). For each attack (slowhttptest: slowloris -H, slow body -B,
# slow read -X of an 8 MiB response; 1,000 connections each) and each proxy, started fresh:
#   - a bounded stream of normal requests (new connection each, fixed rate, 5 s deadline)
#     measures the share that succeed and their p50/p99 while the attack is on;
#   - the proxy's RSS (/proc/PID/status VmRSS, nginx: master + workers) and open descriptors
#     are sampled, and the peaks printed;
#   - after the attack, whether a normal request succeeds again within 15 s.
# Loopback only; every process it starts is stopped by PID on exit (trap), nothing else.
#
#   ./benches/slow-attack.sh                    # builds release canary-lb, ~5 minutes
#   CONNS=1000 DUR=35 RATE=10 ./benches/slow-attack.sh
#   CANARY_LB_BIN=target/release/canary-lb SKIP_BUILD=1 ./benches/slow-attack.sh
#   ATTACKS="slowloris slowread" PROXIES="canary-lb" ./benches/slow-attack.sh
#   ULIMIT_N=1024 ./benches/slow-attack.sh      # proxies under the limit of many default hosts
#
# Env: CONNS (1000) attack connections; DUR (35) seconds per attack; RAMP (5) seconds before
# the normal requests start; RATE (10) normal requests per second; ATTACKS, PROXIES; ULIMIT_N
# (descriptor limit of the two proxies only; the attacker and the prober keep the shell's);
# OUT (output root, default ${TMPDIR:-/tmp}/slow-attack); PORT_BASE (19301: backend, +1 nginx,
# +2 canary-lb, +3 canary-lb admin); NGINX_EXTRA: directives added to the nginx proxy's
# location, e.g. 'proxy_max_temp_file_size 0;' (no temp files for large responses). Needs nginx, slowhttptest, python3, curl (Debian packages
# nginx slowhttptest python3 curl). Results: $OUT/run-*/summary.md, plus per-run files.
set -uo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-1000}; DUR=${DUR:-35}; RAMP=${RAMP:-5}; RATE=${RATE:-10}
ATTACKS=${ATTACKS:-"slowloris slowbody slowread"}; PROXIES=${PROXIES:-"canary-lb nginx"}
BASE=${PORT_BASE:-19301}; P_BACKEND=$BASE; P_NGINX=$((BASE + 1)); P_CLB=$((BASE + 2)); P_ADMIN=$((BASE + 3))
OUT=${OUT:-${TMPDIR:-/tmp}/slow-attack}; R=$OUT/run-$(date -u +%Y%m%d-%H%M%S)
BIN=${CANARY_LB_BIN:-$PWD/target/release/canary-lb}

die() { echo "ERROR: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
for b in nginx slowhttptest python3 curl; do
  command -v $b >/dev/null || die "missing $b (apt-get install nginx slowhttptest python3 curl)"
done

ULIMIT_SHELL=$(ulimit -n)
ULIMIT_PROXY=${ULIMIT_N:-$ULIMIT_SHELL}
[ "$ULIMIT_PROXY" -le "$(ulimit -Hn)" ] || die "ULIMIT_N=$ULIMIT_PROXY is above the hard limit $(ulimit -Hn)"
# slowhttptest needs a descriptor per connection too; it runs under this shell's limit.
[ "$ULIMIT_SHELL" -gt $((CONNS + 64)) ] || die "ulimit -n $ULIMIT_SHELL is too low for CONNS=$CONNS"
# A prefix that runs a command under ULIMIT_N (words, not a function: `$!` stays the server).
LIMITED=(bash -c 'ulimit -n "$0" && exec "$@"' "$ULIMIT_PROXY")

if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${CANARY_LB_BIN:-}" ]; then
  cargo build --release --bin canary-lb >&2 || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "no canary-lb binary at $BIN"

mkdir -p "$R"/{logs,be/www,be/tmp,ngx/tmp,clb} || die "mkdir $R"
PIDS=()  # everything started; stopped by PID on exit

alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null); [ -n "$s" ] && [ "${s:0:1}" != Z ]; }
open_() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
family() { echo "$1 $(ps -o pid= --ppid "$1" 2>/dev/null | xargs)"; }  # a PID and its children
stop() {  # TERM a PID and its children, wait <= 5 s, then KILL
  local p=$1 all i a
  all=$(family "$p")
  for q in $all; do kill -TERM "$q" 2>/dev/null; done
  for i in $(seq 50); do
    a=0; for q in $all; do alive "$q" && a=1; done; [ $a = 0 ] && break; sleep 0.1
  done
  for q in $all; do alive "$q" && kill -KILL "$q" 2>/dev/null; done
  wait "$p" 2>/dev/null
}
cleanup() {
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do alive "$p" && stop "$p"; done
  for p in $P_BACKEND $P_NGINX $P_CLB $P_ADMIN; do open_ $p && log "WARNING: port $p still open"; done
  rm -f "$R/be/www/8m"
  log "stopped PIDs: ${PIDS[*]:-none}; files in $R"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
for p in $P_BACKEND $P_NGINX $P_CLB $P_ADMIN; do open_ $p && die "127.0.0.1:$p already in use"; done

start() {  # name port cmd... ; sets STARTED to the PID
  local n=$1 port=$2 i; shift 2
  "$@" >"$R/logs/$n.out" 2>&1 &
  STARTED=$!; PIDS+=("$STARTED")
  for i in $(seq 100); do open_ "$port" && return 0; alive "$STARTED" || break; sleep 0.1; done
  die "$n did not start, see $R/logs/$n.out"
}

# The backend: nginx serving `ok` on / and an 8 MiB file on /8m, for both proxies.
head -c $((8 * 1024 * 1024)) /dev/zero | tr '\0' x > "$R/be/www/8m"
TMPS='client_body_temp_path tmp/b; proxy_temp_path tmp/p; fastcgi_temp_path tmp/f;
  uwsgi_temp_path tmp/u; scgi_temp_path tmp/s;'
cat > "$R/be/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $R/be/pid; error_log $R/logs/backend.err;
events { worker_connections 16384; }
http { $TMPS access_log off; default_type text/plain; sendfile on; keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_BACKEND backlog=4096; root $R/be/www;
    location = / { return 200 "ok\n"; } location / { } } }
EOF
# nginx as the proxy under test: its defaults for everything a slow client touches
# (client_header_timeout 60s, client_body_timeout 60s, send_timeout 60s, keepalive_timeout
# 75s, large_client_header_buffers 4 8k, proxy_buffering on with a temp file).
cat > "$R/ngx/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $R/ngx/pid; error_log $R/logs/nginx.err;
events { worker_connections 16384; }
http { $TMPS access_log off;
  upstream be { server 127.0.0.1:$P_BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$P_NGINX backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      ${NGINX_EXTRA:-} } } }
EOF
# canary-lb with its defaults for every client limit (no `client:` section), one worker
# thread as nginx has one worker process.
cat > "$R/clb/canary-lb.yaml" <<EOF
listen: "127.0.0.1:$P_CLB"
threads: 1
metrics_listen: "127.0.0.1:$P_ADMIN"
pools:
  production: { servers: ["127.0.0.1:$P_BACKEND"] }
health_check: { kind: http, path: /, interval: 2s, timeout: 1s }
routing: { canary_percent: 0 }
grace_period: 1s
EOF
ngx() { echo "nginx -p $R/$1/ -c $R/$1/nginx.conf -e $R/logs/$1.err"; }
$(ngx be) -t -q && $(ngx ngx) -t -q || die "nginx config test failed"
"$BIN" check --config "$R/clb/canary-lb.yaml" >&2 || die "canary-lb config check failed"
start backend $P_BACKEND $(ngx be)

# The normal requests: RATE a second for SECS, each on a new connection with a 5 s deadline;
# one line per request (index, ok, seconds, error), then a summary line.
cat > "$R/probe.py" <<'EOF'
import http.client, sys, threading, time
port, path, rate, secs, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
DEADLINE = 5.0
rows, lock = [], threading.Lock()
def one(i):
    t0, ok, err = time.monotonic(), False, ""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        r.read()
        c.close()
        ok, err = r.status == 200, "" if r.status == 200 else "status %d" % r.status
    except Exception as e:
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
print("%d\t%d\t%.1f\t%s\t%s" % (n, okn, 100.0 * okn / n if n else 0, pct(0.50), pct(0.99)))
EOF

rss_kb() {  # summed VmRSS of a PID and its children
  local t=0 q v
  for q in $(family "$1"); do
    v=$(awk '/^VmRSS:/{print $2}' /proc/$q/status 2>/dev/null); t=$((t + ${v:-0}))
  done; echo $t
}
fds() {  # open descriptors of a PID and its children
  local t=0 q
  for q in $(family "$1"); do t=$((t + $(ls /proc/$q/fd 2>/dev/null | wc -l))); done; echo $t
}
sample() {  # pid file: RSS and fds every 0.5 s until killed
  while alive "$1"; do echo "$(date +%s.%N) $(rss_kb "$1") $(fds "$1")" >> "$2"; sleep 0.5; done
}

SUMMARY=$R/summary.tsv
printf 'attack\tproxy\tsent\tok\tok_pct\tp50_ms\tp99_ms\tidle_rss_kb\tpeak_rss_kb\tpeak_fds\trecovered\tpeak_attack_conns\tattack_conns_closed\n' > "$SUMMARY"

run() {  # attack proxy
  local a=$1 px=$2 port pid args url sampler atk probe idle peak pfds rec i tag=$1-$2
  case $px in
    nginx) start nginx $P_NGINX "${LIMITED[@]}" $(ngx ngx); port=$P_NGINX ;;
    canary-lb) start canary-lb $P_CLB "${LIMITED[@]}" env RUST_LOG=warn "$BIN" serve --config "$R/clb/canary-lb.yaml"
               port=$P_CLB ;;
  esac
  pid=$STARTED
  grep "Max open files" /proc/$pid/limits > "$R/logs/$tag.limits" 2>/dev/null
  for i in $(seq 50); do
    [ "$(curl -s --noproxy '*' -m 2 "http://127.0.0.1:$port/")" = ok ] && break; sleep 0.2
  done
  [ "$(curl -s --noproxy '*' -m 2 "http://127.0.0.1:$port/8m" | wc -c)" = $((8 * 1024 * 1024)) ] ||
    die "$px does not serve the 8 MiB file"
  url=http://127.0.0.1:$port/
  case $a in
    slowloris) args=(-H -i 10 -x 24 -t GET -u "$url") ;;
    slowbody)  args=(-B -i 10 -x 24 -s 8192 -t POST -u "$url") ;;
    slowread)  args=(-X -w 512 -y 1024 -n 5 -z 32 -k 1 -t GET -u "${url}8m") ;;
    *) die "unknown attack $a" ;;
  esac
  sleep 1
  idle=$(rss_kb "$pid")
  sample "$pid" "$R/$tag.samples" & local spid=$!; PIDS+=($spid)
  log "$tag: slowhttptest ${args[*]} -c $CONNS -r 200 -l $DUR"
  timeout -k 5 $((DUR + 30)) slowhttptest "${args[@]}" -c "$CONNS" -r 200 -l "$DUR" -p 3 -g \
    -o "$R/$tag" > "$R/logs/$tag.slowhttptest" 2>&1 &
  atk=$!; PIDS+=($atk)
  sleep "$RAMP"
  probe=$(python3 "$R/probe.py" "$port" / "$RATE" $((DUR - RAMP - 2)) "$R/$tag.probe.tsv")
  wait $atk 2>/dev/null
  rec=no
  for i in $(seq 30); do
    [ "$(curl -s --noproxy '*' -m 2 "$url")" = ok ] && { rec=yes; break; }; sleep 0.5
  done
  kill $spid 2>/dev/null; wait $spid 2>/dev/null
  peak=$(awk 'BEGIN{m=0} $2>m{m=$2} END{print m}' "$R/$tag.samples")
  pfds=$(awk 'BEGIN{m=0} $3>m{m=$3} END{print m}' "$R/$tag.samples")
  stop "$pid"
  IFS=$'\t' read -r n okn okp p50 p99 <<< "$probe"
  # slowhttptest's CSV: seconds, closed, pending, connected, service available.
  local conn closed
  conn=$(awk -F, 'NR>1 && $4+0>m{m=$4+0} END{print m+0}' "$R/$tag.csv" 2>/dev/null)
  closed=$(awk -F, 'NR>1 && $2+0>m{m=$2+0} END{print m+0}' "$R/$tag.csv" 2>/dev/null)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$a" "$px" "$n" "$okn" "$okp" "$p50" \
    "$p99" "$idle" "$peak" "$pfds" "$rec" "${conn:-?}" "${closed:-?}" | tee -a "$SUMMARY" >&2
}

log "run $R: CONNS=$CONNS DUR=${DUR}s RATE=$RATE/s; ulimit -n: shell $ULIMIT_SHELL, proxies $ULIMIT_PROXY"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for a in $ATTACKS; do for px in $PROXIES; do run "$a" "$px"; done; done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "Slow-client attacks, $(date -u +%Y-%m-%d), canary-lb $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
       "($("$BIN" --version 2>/dev/null | head -1)), $(nginx -v 2>&1 | sed 's/.*version: //'), $(slowhttptest -h 2>&1 | awk '/version/{print $NF; exit}' | sed 's/^/slowhttptest /')."
  echo "Loopback, $(nproc) cores, load average $LOAD_BEFORE before and $LOAD_AFTER after; ulimit -n" \
       "$ULIMIT_PROXY for the proxies ($ULIMIT_SHELL for the attacker). $CONNS attack connections at 200/s for ${DUR}s per run; normal requests:" \
       "$RATE/s on new connections with a 5 s deadline, from ${RAMP}s into the attack. Both proxies: one" \
       "worker, fresh process per run, same nginx backend; RSS: VmRSS (nginx: master + worker)." \
       "${NGINX_EXTRA:+nginx proxy location adds: $NGINX_EXTRA}"
  echo "Columns: share of normal requests answered 200 within 5 s during the attack, and the p50/p99" \
       "of those; the proxy's peak and idle RSS and peak open descriptors; slowhttptest's peak of" \
       "connected attack connections and how many it saw closed; whether a normal request succeeded" \
       "within 15 s after the attack."
  echo
  echo "| attack | proxy | normal requests ok % | p50 | p99 | peak RSS | idle RSS | peak fds | attack conns open (peak) / cut by proxy | ok after |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' 'NR>1{
    name["slowloris"]="slowloris (-H)"; name["slowbody"]="slow body (-B)"; name["slowread"]="slow read (-X, 8 MiB)"
    printf "| %s | %s | %s %% (%s/%s) | %s ms | %s ms | %.0f MB | %.0f MB | %s | %s / %s | %s |\n",
      name[$1], $2, $5, $4, $3, $6, $7, $9/1024, $8/1024, $10, $12, $13, $11 }' "$SUMMARY"
} > "$R/summary.md"
cat "$R/summary.md"
