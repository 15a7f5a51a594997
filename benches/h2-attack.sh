#!/usr/bin/env bash
# Idle-connection, HTTP/2, admin-port and log-flood attacks against canary-lb and nginx in one
# run, in front of the same backend (issue 21; SECURITY.md, "HTTP/2 and idle-connection
# attacks"). Each proxy listens plain (HTTP/1.1), TLS (HTTP/2 and HTTP/1.1 by ALPN, one
# self-signed ECDSA certificate made here) and h2c (HTTP/2 prior knowledge), and is started
# fresh for every run. The attackers and probers are benches/h2-attack/attack.py (python3
# standard library only: HTTP/2 as raw frames, no `pip install`). Cases (CASES):
#   silent   CONNS silent connections held by one client for HOLD s, one run per VARIANTS
#            letter: a plain port, nothing sent; b plain port, 17 bytes `GET / HTTP/1.0\r\n\r`;
#            c h2c port, nothing sent; d h2c port, the preface's first 18 bytes; e TLS port,
#            TCP only; f TLS handshake with ALPN h2, then nothing (g, not run by default: h2c
#            port, a whole 18-byte `GET / HTTP/1.0\r\n\r\n`). A connection the proxy closes
#            is reopened, so the attacker keeps CONNS. Normal requests (RATE/s, new connection
#            each, 5 s deadline; HTTP/1.1 on plain, HTTP/1.1 over TLS on TLS, HTTP/2 prior
#            knowledge on h2c) for IDLE s before and for the hold: success share, p50/p99.
#   zerowin  ZW_CONNS h2c connections x ZW_STREAMS streams each GET the 1 MiB body with
#            SETTINGS_INITIAL_WINDOW_SIZE 0, held ZW_HOLD s: peak upstream connections (`ss`,
#            established to the backend port), peak vs idle RSS, normal requests on the plain port.
#   admin    ADMIN_IDLE (each) idle sockets on canary-lb's metrics_listen, then RATE/s GET
#            /healthz for 5 s; nginx: the same against a `location = /healthz { return 200; }`
#            server of its own.
#   logflood FLOOD_N plain-text connections to the TLS port, FLOOD_CONC at a time, then FLOOD_N
#            HTTP/2-over-TLS connections closed after the first DATA frame of the 1 MiB body:
#            lines and bytes added to the error log (canary-lb: stderr, RUST_LOG unset, i.e.
#            its default `info`; nginx: error_log at its default level `error`).
# Every run also counts the error-log lines written during the attack ($R/*.errkinds: their
# kinds, digits folded) and samples the proxy's RSS (VmRSS, nginx: master + worker), open
# descriptors and established connections to the backend every 0.5 s.
# Loopback only; every process it starts is stopped by PID on exit (trap), nothing else.
#
#   ./benches/h2-attack.sh                      # builds release canary-lb; about 8 minutes
#   CANARY_LB_BIN=target/release/canary-lb SKIP_BUILD=1 ./benches/h2-attack.sh
#   CASES="silent" VARIANTS="c f" PROXIES="canary-lb" ./benches/h2-attack.sh
#
# Env: CASES ("silent zerowin admin logflood"), PROXIES ("canary-lb nginx"), VARIANTS
# ("a b c d e f"); CONNS (10000) silent connections; HOLD (15) seconds they are held once all
# were tried (the attacker waits at most RAMP_MAX, 30, for that; CONNECT_CONC, 400, connects or
# handshakes in flight at a time); IDLE (3) seconds of normal
# requests before an attack; RATE (10) normal requests a second; ZW_CONNS (20), ZW_STREAMS
# (100), ZW_HOLD (20); ADMIN_IDLE ("64 500"); FLOOD_N (2000), FLOOD_CONC (50); ULIMIT_N
# (descriptor limit of the proxies, the attacker and the prober: default the hard limit, at
# most 65536); OUT (default ${TMPDIR:-/tmp}/h2-attack); PORT_BASE (19401: backend; +1..+4 nginx
# plain, TLS, h2c, healthz; +5..+8 canary-lb plain, TLS, h2c, admin).
# canary-lb runs with its defaults for every client limit (no `client:` section, so
# `client.max_connections` 10,000) and `threads: 1`; nginx 1 worker, worker_connections
# ULIMIT_N - 1000, its defaults otherwise. Needs nginx, python3, curl, openssl, ss (iproute2).
# Results: $OUT/run-*/summary.md, plus per-run files.
set -uo pipefail
cd "$(dirname "$0")/.."

CASES=${CASES:-"silent zerowin admin logflood"}; PROXIES=${PROXIES:-"canary-lb nginx"}
VARIANTS=${VARIANTS:-"a b c d e f"}
CONNS=${CONNS:-10000}; HOLD=${HOLD:-15}; IDLE=${IDLE:-3}; RATE=${RATE:-10}
export RAMP_MAX=${RAMP_MAX:-30}
ZW_CONNS=${ZW_CONNS:-20}; ZW_STREAMS=${ZW_STREAMS:-100}; ZW_HOLD=${ZW_HOLD:-20}
ADMIN_IDLE=${ADMIN_IDLE:-"64 500"}; FLOOD_N=${FLOOD_N:-2000}; FLOOD_CONC=${FLOOD_CONC:-50}
BASE=${PORT_BASE:-19401}; P_BACKEND=$BASE
P_NGX_PLAIN=$((BASE + 1)); P_NGX_TLS=$((BASE + 2)); P_NGX_H2C=$((BASE + 3)); P_NGX_ADMIN=$((BASE + 4))
P_CLB_PLAIN=$((BASE + 5)); P_CLB_TLS=$((BASE + 6)); P_CLB_H2C=$((BASE + 7)); P_CLB_ADMIN=$((BASE + 8))
ALL_PORTS="$(seq "$BASE" $((BASE + 8)) | xargs)"
OUT=${OUT:-${TMPDIR:-/tmp}/h2-attack}; R=$OUT/run-$(date -u +%Y%m%d-%H%M%S)
BIN=${CANARY_LB_BIN:-$PWD/target/release/canary-lb}
ATTACK=$PWD/benches/h2-attack/attack.py

die() { echo "ERROR: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
for b in nginx python3 curl openssl ss; do
  command -v $b >/dev/null || die "missing $b (apt-get install nginx python3 curl openssl iproute2)"
done

# One limit for everything started here: the attacker needs a descriptor per connection too.
HARD=$(ulimit -Hn); [ "$HARD" = unlimited ] && HARD=65536
WANT=${ULIMIT_N:-$((HARD < 65536 ? HARD : 65536))}
ulimit -n "$WANT" 2>/dev/null || die "cannot set ulimit -n $WANT (hard limit $(ulimit -Hn))"
ULIMIT=$(ulimit -n)
[ "$ULIMIT" -gt $((CONNS + 500)) ] || die "ulimit -n $ULIMIT is too low for CONNS=$CONNS"
NGX_WC=$((ULIMIT - 1000))

WANT_CLB=0; case " $PROXIES " in *" canary-lb "*) WANT_CLB=1 ;; esac
if [ $WANT_CLB = 1 ] && [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${CANARY_LB_BIN:-}" ]; then
  cargo build --release --bin canary-lb >&2 || die "cargo build --release failed"
fi
[ $WANT_CLB = 0 ] || [ -x "$BIN" ] || die "no canary-lb binary at $BIN"

mkdir -p "$R"/{logs,be/www,be/tmp,ngx/tmp,clb,pki} || die "mkdir $R"
PIDS=()  # everything started; stopped by PID on exit

alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null); [ -n "$s" ] && [ "${s:0:1}" != Z ]; }
open_() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
family() { echo "$1 $(ps -o pid= --ppid "$1" 2>/dev/null | xargs)"; }  # a PID and its children
stop() {  # TERM a PID and its children, wait <= 5 s, then KILL
  local p=$1 all i a q
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
  for p in $ALL_PORTS; do open_ "$p" && log "WARNING: port $p still open"; done
  rm -f "$R/be/www/1m"
  log "stopped PIDs: ${PIDS[*]:-none}; files in $R"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
for p in $ALL_PORTS; do open_ "$p" && die "127.0.0.1:$p already in use"; done

# A self-signed ECDSA certificate for `localhost` (cheap handshakes for a python attacker).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$R/pki/key.pem" -out "$R/pki/cert.pem" 2>"$R/logs/openssl.err" || die "openssl failed"

# The backend: nginx serving `ok` on / and a 1 MiB file on /1m, for both proxies.
head -c $((1024 * 1024)) /dev/zero | tr '\0' x > "$R/be/www/1m"
TMPS='client_body_temp_path tmp/b; proxy_temp_path tmp/p; fastcgi_temp_path tmp/f;
  uwsgi_temp_path tmp/u; scgi_temp_path tmp/s;'
cat > "$R/be/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $R/be/pid; error_log $R/logs/backend.err;
events { worker_connections $NGX_WC; }
http { $TMPS access_log off; default_type text/plain; sendfile on; keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_BACKEND backlog=4096; root $R/be/www;
    location = / { return 200 "ok\n"; } location / { } } }
EOF
# nginx as the proxy under test, its defaults for everything a client touches
# (client_header_timeout 60s, keepalive_timeout 75s, http2_recv_timeout 30s,
# http2_idle_timeout 3m, http2_max_concurrent_streams 128, proxy_buffering on).
cat > "$R/ngx/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $R/ngx/pid; error_log $R/ngx/error.log;
events { worker_connections $NGX_WC; }
http { $TMPS access_log off;
  upstream be { server 127.0.0.1:$P_BACKEND; keepalive 64; }
  server {
    listen 127.0.0.1:$P_NGX_PLAIN backlog=4096;
    listen 127.0.0.1:$P_NGX_TLS ssl http2 backlog=4096;
    listen 127.0.0.1:$P_NGX_H2C http2 backlog=4096;
    ssl_certificate $R/pki/cert.pem; ssl_certificate_key $R/pki/key.pem;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$P_NGX_ADMIN; location = /healthz { return 200 "ok\n"; } } }
EOF
# canary-lb with its defaults for every client limit (no `client:` section), one worker
# thread as nginx has one worker process; access log to a file, so stderr is the error log.
cat > "$R/clb/canary-lb.yaml" <<EOF
listen:
  - "127.0.0.1:$P_CLB_PLAIN"
  - { addr: "127.0.0.1:$P_CLB_TLS", tls: { cert: "$R/pki/cert.pem", key: "$R/pki/key.pem" } }
  - { addr: "127.0.0.1:$P_CLB_H2C", h2c: true }
threads: 1
metrics_listen: "127.0.0.1:$P_CLB_ADMIN"
pools:
  production: { servers: ["127.0.0.1:$P_BACKEND"] }
health_check: { kind: http, path: /, interval: 2s, timeout: 1s }
routing: { canary_percent: 0 }
access_log: { path: "$R/clb/access.log" }
grace_period: 1s
EOF
ngx() { echo "nginx -p $R/$1/ -c $R/$1/nginx.conf -e $R/logs/$1.err"; }
$(ngx be) -t -q && $(ngx ngx) -t -q || die "nginx config test failed"
[ $WANT_CLB = 0 ] || "$BIN" check --config "$R/clb/canary-lb.yaml" >&2 || die "canary-lb config check failed"

wait_port() {  # pid port: until the port accepts, <= 10 s
  local i
  for i in $(seq 100); do open_ "$2" && return 0; alive "$1" || return 1; sleep 0.1; done; return 1
}
$(ngx be) >"$R/logs/backend.out" 2>&1 &
PIDS+=($!); wait_port $! "$P_BACKEND" || die "backend did not start, see $R/logs/backend.out"

# px tag: starts one proxy fresh; sets PX_PID, PX_ERR (its error log) and PX_* ports.
start_proxy() {
  local px=$1 tag=$2 i p
  case $px in
    nginx)
      PX_PLAIN=$P_NGX_PLAIN; PX_TLS=$P_NGX_TLS; PX_H2C=$P_NGX_H2C; PX_ADMIN=$P_NGX_ADMIN
      PX_ERR=$R/ngx/error.log
      $(ngx ngx) >"$R/logs/$tag.out" 2>&1 & PX_PID=$! ;;
    canary-lb)
      PX_PLAIN=$P_CLB_PLAIN; PX_TLS=$P_CLB_TLS; PX_H2C=$P_CLB_H2C; PX_ADMIN=$P_CLB_ADMIN
      PX_ERR=$R/logs/$tag.err
      env -u RUST_LOG "$BIN" serve --config "$R/clb/canary-lb.yaml" >"$R/logs/$tag.out" 2>"$PX_ERR" &
      PX_PID=$! ;;
    *) die "unknown proxy $px" ;;
  esac
  PIDS+=("$PX_PID"); touch "$PX_ERR"
  for p in $PX_PLAIN $PX_TLS $PX_H2C $PX_ADMIN; do
    wait_port "$PX_PID" "$p" || die "$px did not open port $p, see $R/logs/$tag.*"
  done
  for i in $(seq 50); do
    [ "$(curl -s --noproxy '*' -m 2 "http://127.0.0.1:$PX_PLAIN/")" = ok ] && break; sleep 0.2
  done
  [ "$(curl -sk --noproxy '*' -m 5 "https://localhost:$PX_TLS/1m" --resolve "localhost:$PX_TLS:127.0.0.1" | wc -c)" = 1048576 ] ||
    die "$px does not serve the 1 MiB file over TLS"
  [ "$(curl -s --noproxy '*' -m 2 --http2-prior-knowledge "http://127.0.0.1:$PX_H2C/")" = ok ] ||
    die "$px does not answer HTTP/2 prior knowledge on $PX_H2C"
  grep "Max open files" /proc/$PX_PID/limits > "$R/logs/$tag.limits" 2>/dev/null
  sleep 1
}

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
upstream() { ss -Htn state established "( dport = :$P_BACKEND )" 2>/dev/null | wc -l; }
sample() {  # pid file: time, RSS, fds, upstream connections every 0.5 s until killed
  while alive "$1"; do
    echo "$(date +%s.%N) $(rss_kb "$1") $(fds "$1") $(upstream)" >> "$2"; sleep 0.5
  done
}
peak() { awk -v c="$2" 'BEGIN{m=0} $c>m{m=$c} END{print m}' "$1"; }
size() { stat -c %s "$1" 2>/dev/null || echo 0; }
grown() {  # file offset: "lines bytes" written after offset
  local f=$1 o=$2
  echo "$(tail -c +$((o + 1)) "$f" | wc -l) $(( $(size "$f") - o ))"
}
errkinds() {  # file offset: the kinds of lines written after offset, digits folded, counted
  tail -c +$(($2 + 1)) "$1" | cut -c1-300 | sed -E 's/^\[[^]]*Z //; s/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -20
}
probe() { python3 "$ATTACK" probe "$@"; }

SIL=$R/silent.tsv; ZW=$R/zerowin.tsv; ADM=$R/admin.tsv; FLD=$R/logflood.tsv
printf 'variant\tproxy\tidle_p50\tidle_p99\tsent\tok\tok_pct\tp50\tp99\terrors\topened\tclosed\tpeak_open\tfirst_close\tmedian_close\tat_once\tconnect_failed\tready\tidle_rss\tpeak_rss\tpeak_fds\tlog_lines\tlog_bytes\talive\n' > "$SIL"
printf 'proxy\tconns_up\tstreams_sent\theaders_got\theaders_200\tdata_bytes\trst\tgoaway\tclosed\tpeak_upstream\tidle_rss\tpeak_rss\tpeak_fds\tsent\tok\tok_pct\tp50\tp99\terrors\tlog_lines\tlog_bytes\talive\n' > "$ZW"
printf 'proxy\tidle_sockets\topened\tclosed\tpeak_open\tfirst_close\tmedian_close\tat_once\tconnect_failed\tsent\tok\tok_pct\tp50\tp99\terrors\n' > "$ADM"
printf 'flood\tproxy\tconnections\tfailed\tlog_lines\tlog_bytes\talive\n' > "$FLD"

run_silent() {  # variant letter, proxy
  local v=$1 px=$2 tag="silent-$1-$2" kind att mode port idle spid atk prb res ready off ok
  case $v in
    a) kind=plain; att=tcp ;;          b) kind=plain; att=http-partial ;;
    c) kind=h2c; att=tcp ;;            d) kind=h2c; att=h2c-partial ;;
    e) kind=tls; att=tls-tcp ;;        f) kind=tls; att=tls-h2 ;;
    g) kind=h2c; att=http10 ;;         *) die "unknown variant $v" ;;
  esac
  start_proxy "$px" "$tag"
  case $kind in
    plain) port=$PX_PLAIN; mode=http ;; h2c) port=$PX_H2C; mode=h2c ;; tls) port=$PX_TLS; mode=https ;;
  esac
  idle=$(probe $mode 127.0.0.1 "$port" / "$RATE" "$IDLE" "$R/$tag.idle.tsv")
  local irss; irss=$(rss_kb "$PX_PID"); off=$(size "$PX_ERR")
  sample "$PX_PID" "$R/$tag.samples" & spid=$!; PIDS+=($spid)
  log "$tag: $CONNS x $att on $kind port $port, hold ${HOLD}s"
  rm -f "$R/$tag.ready"
  timeout -k 5 $((RAMP_MAX + HOLD + 30)) python3 "$ATTACK" silent 127.0.0.1 "$port" "$att" "$CONNS" "$HOLD" \
    "$R/$tag.ready" "$R/$tag.closes.tsv" > "$R/$tag.attack" 2>"$R/logs/$tag.attack.err" &
  atk=$!; PIDS+=($atk)
  for _ in $(seq $((RAMP_MAX * 10 + 50))); do [ -s "$R/$tag.ready" ] && break; alive $atk || break; sleep 0.1; done
  ready=$(cat "$R/$tag.ready" 2>/dev/null); log "$tag: attacker ready: ${ready:-?} (open, seconds)"
  prb=$(probe $mode 127.0.0.1 "$port" / "$RATE" $((HOLD - 3)) "$R/$tag.probe.tsv")
  wait $atk 2>/dev/null
  sleep 1
  kill $spid 2>/dev/null; wait $spid 2>/dev/null
  alive "$PX_PID" && ok=yes || ok=NO
  local lg; lg=$(grown "$PX_ERR" "$off"); errkinds "$PX_ERR" "$off" > "$R/$tag.errkinds"
  stop "$PX_PID"
  IFS=$'\t' read -r _ _ _ ip50 ip99 _ <<< "$idle"
  IFS=$'\t' read -r n okn okp p50 p99 errs <<< "$prb"
  res=$(cat "$R/$tag.attack"); [ -n "$res" ] || res=$'?\t?\t?\t?\t?\t?\t?'
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$px" "$ip50" "$ip99" \
    "$n" "$okn" "$okp" "$p50" "$p99" "$errs" "$res" "${ready%% *}" "$irss" \
    "$(peak "$R/$tag.samples" 2)" "$(peak "$R/$tag.samples" 3)" "${lg// /	}	$ok" | tee -a "$SIL" >&2
}

run_zerowin() {  # proxy
  local px=$1 tag="zerowin-$1" spid atk prb res irss off ok
  start_proxy "$px" "$tag"
  irss=$(rss_kb "$PX_PID"); off=$(size "$PX_ERR")
  sample "$PX_PID" "$R/$tag.samples" & spid=$!; PIDS+=($spid)
  log "$tag: $ZW_CONNS h2c connections x $ZW_STREAMS streams of /1m, window 0, ${ZW_HOLD}s"
  timeout -k 5 $((ZW_HOLD + 30)) python3 "$ATTACK" zerowin 127.0.0.1 "$PX_H2C" "$ZW_CONNS" "$ZW_STREAMS" /1m "$ZW_HOLD" \
    > "$R/$tag.attack" 2>"$R/logs/$tag.attack.err" &
  atk=$!; PIDS+=($atk)
  sleep 3
  prb=$(probe http 127.0.0.1 "$PX_PLAIN" / "$RATE" $((ZW_HOLD - 5)) "$R/$tag.probe.tsv")
  wait $atk 2>/dev/null
  sleep 1
  kill $spid 2>/dev/null; wait $spid 2>/dev/null
  alive "$PX_PID" && ok=yes || ok=NO
  local lg; lg=$(grown "$PX_ERR" "$off"); errkinds "$PX_ERR" "$off" > "$R/$tag.errkinds"
  stop "$PX_PID"
  res=$(cat "$R/$tag.attack"); [ -n "$res" ] || res=$'?\t?\t?\t?\t?\t?\t?\t?'
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$px" "$res" "$(peak "$R/$tag.samples" 4)" "$irss" \
    "$(peak "$R/$tag.samples" 2)" "$(peak "$R/$tag.samples" 3)" "$prb" "${lg// /	}" "$ok" | tee -a "$ZW" >&2
}

run_admin() {  # proxy
  local px=$1 tag="admin-$1" k atk prb ready res
  start_proxy "$px" "$tag"
  for k in $ADMIN_IDLE; do
    log "$tag: $k idle sockets on $PX_ADMIN, then GET /healthz"
    rm -f "$R/$tag-$k.ready"
    RAMP_MAX=5 timeout -k 5 45 python3 "$ATTACK" silent 127.0.0.1 "$PX_ADMIN" tcp "$k" 10 \
      "$R/$tag-$k.ready" "$R/$tag-$k.closes.tsv" > "$R/$tag-$k.attack" 2>"$R/logs/$tag-$k.attack.err" &
    atk=$!; PIDS+=($atk)
    for _ in $(seq $((RAMP_MAX * 10 + 50))); do [ -s "$R/$tag-$k.ready" ] && break; alive $atk || break; sleep 0.1; done
    ready=$(cat "$R/$tag-$k.ready" 2>/dev/null)
    prb=$(probe http 127.0.0.1 "$PX_ADMIN" /healthz "$RATE" 5 "$R/$tag-$k.probe.tsv")
    wait $atk 2>/dev/null
    res=$(cat "$R/$tag-$k.attack"); [ -n "$res" ] || res=$'?\t?\t?\t?\t?\t?\t?'
    printf '%s\t%s\t%s\t%s\n' "$px" "$k" "$res" "$prb" | tee -a "$ADM" >&2
  done
  stop "$PX_PID"
}

run_logflood() {  # proxy
  local px=$1 tag="logflood-$1" off res ok lg
  start_proxy "$px" "$tag"
  off=$(size "$PX_ERR")
  log "$tag: $FLOOD_N plain-text connections to the TLS port $PX_TLS"
  res=$(timeout -k 5 120 python3 "$ATTACK" plain2tls 127.0.0.1 "$PX_TLS" "$FLOOD_N" "$FLOOD_CONC" 2>"$R/logs/$tag.plain.err")
  sleep 2; lg=$(grown "$PX_ERR" "$off"); alive "$PX_PID" && ok=yes || ok=NO
  errkinds "$PX_ERR" "$off" > "$R/$tag.plain.errkinds"
  printf 'plain-to-tls\t%s\t%s\t%s\t%s\n' "$px" "${res:-?	?}" "${lg// /	}" "$ok" | tee -a "$FLD" >&2
  off=$(size "$PX_ERR")
  log "$tag: $FLOOD_N HTTP/2 connections closed mid-response on $PX_TLS"
  res=$(timeout -k 5 180 python3 "$ATTACK" h2abort 127.0.0.1 "$PX_TLS" "$FLOOD_N" "$FLOOD_CONC" /1m 2>"$R/logs/$tag.h2.err")
  sleep 2; lg=$(grown "$PX_ERR" "$off"); alive "$PX_PID" && ok=yes || ok=NO
  errkinds "$PX_ERR" "$off" > "$R/$tag.h2.errkinds"
  IFS=$'\t' read -r d gd f <<< "$res"
  printf 'h2-abort\t%s\t%s (%s got DATA)\t%s\t%s\t%s\n' "$px" "${d:-?}" "${gd:-?}" "${f:-?}" "${lg// /	}" "$ok" | tee -a "$FLD" >&2
  stop "$PX_PID"
}

log "run $R: CASES=$CASES PROXIES=$PROXIES; ulimit -n $ULIMIT for everything started here"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg); T0=$(date +%s)
for c in $CASES; do
  case $c in
    silent) for v in $VARIANTS; do for px in $PROXIES; do run_silent "$v" "$px"; done; done ;;
    zerowin) for px in $PROXIES; do run_zerowin "$px"; done ;;
    admin) for px in $PROXIES; do run_admin "$px"; done ;;
    logflood) for px in $PROXIES; do run_logflood "$px"; done ;;
    *) die "unknown case $c" ;;
  esac
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg); T1=$(date +%s)

{
  echo "HTTP/2 and idle-connection attacks, $(date -u +%Y-%m-%d), canary-lb $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
       "($("$BIN" --version 2>/dev/null | head -1)), $(nginx -v 2>&1 | sed 's/.*version: //'), python $(python3 -c 'import platform; print(platform.python_version())')."
  echo "Loopback, $(nproc) cores, load average $LOAD_BEFORE before and $LOAD_AFTER after; $((T1 - T0)) s;" \
       "ulimit -n $ULIMIT for the proxies and the attacker; canary-lb: defaults (client.max_connections 10000)," \
       "threads 1; nginx: 1 worker, worker_connections $NGX_WC. Normal requests: $RATE/s, new connection each, 5 s deadline."
  if [ "$(wc -l < "$SIL")" -gt 1 ]; then
    echo
    echo "**Silent connections** ($CONNS held by one client for ${HOLD} s once open; a connection the proxy closes is reopened):"
    echo
    echo "| variant | proxy | idle p50 / p99 | normal requests ok % | p50 | p99 | attack conns open (peak) / cut by proxy (at once) | first / median cut after | peak RSS (idle) | peak fds | error-log lines (bytes) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' 'NR>1{
      name["a"]="a plain, nothing sent"; name["b"]="b plain, 17 B of a head"; name["c"]="c h2c, nothing sent"
      name["d"]="d h2c, 18 B of the preface"; name["e"]="e TLS, no ClientHello"; name["f"]="f TLS+ALPN h2, no preface"
      name["g"]="g h2c, whole 18 B HTTP/1.0 request"
      p50 = ($8 == "-") ? "-" : $8 " ms"; p99 = ($9 == "-") ? "-" : $9 " ms"
      printf "| %s | %s | %s / %s ms | %s %% (%s/%s) | %s | %s | %s / %s (%s) | %s / %s s | %.0f MB (%.0f) | %s | %s (%s) |%s\n",
        name[$1], $2, $3, $4, $7, $6, $5, p50, p99, $13, $12, $16, $14, $15, $20/1024, $19/1024, $21, $22, $23,
        ($24 == "yes" ? "" : " proxy DIED") }' "$SIL"
  fi
  if [ "$(wc -l < "$ZW")" -gt 1 ]; then
    echo
    echo "**Zero-window HTTP/2** ($ZW_CONNS h2c connections x $ZW_STREAMS streams of the 1 MiB body, SETTINGS_INITIAL_WINDOW_SIZE 0, ${ZW_HOLD} s; normal requests on the plain port):"
    echo
    echo "| proxy | streams answered 200 / other status / sent | RST_STREAM / GOAWAY / conns closed | peak upstream conns | peak RSS | idle RSS | peak fds | normal requests ok % | p50 | p99 | error-log lines (bytes) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' 'NR>1{
      p50 = ($17 == "-") ? "-" : $17 " ms"; p99 = ($18 == "-") ? "-" : $18 " ms"
      printf "| %s | %s / %s / %s | %s / %s / %s | %s | %.0f MB | %.0f MB | %s | %s %% (%s/%s) | %s | %s | %s (%s) |%s\n",
        $1, $5, $4 - $5, $3, $7, $8, $9, $10, $12/1024, $11/1024, $13, $16, $15, $14, p50, p99, $20, $21,
        ($22 == "yes" ? "" : " proxy DIED") }' "$ZW"
  fi
  if [ "$(wc -l < "$ADM")" -gt 1 ]; then
    echo
    echo "**Admin port** (idle sockets held on canary-lb's metrics_listen, nginx: a \`location = /healthz { return 200; }\` server; then $RATE/s GET /healthz for 5 s):"
    echo
    echo "| proxy | idle sockets | cut by proxy (at once) | median cut after | /healthz answered 200 | p50 | p99 | failures |"
    echo "|---|---|---|---|---|---|---|---|"
    awk -F'\t' 'NR>1{
      p50 = ($13 == "-") ? "-" : $13 " ms"; p99 = ($14 == "-") ? "-" : $14 " ms"
      printf "| %s | %s | %s (%s) | %s s | %s of %s | %s | %s | %s |\n", $1, $2, $4, $8, $7, $11, $10, p50, p99, $15 }' "$ADM"
  fi
  if [ "$(wc -l < "$FLD")" -gt 1 ]; then
    echo
    echo "**Log flood** ($FLOOD_N connections, $FLOOD_CONC at a time; canary-lb: stderr with RUST_LOG unset; nginx: error_log at its default level):"
    echo
    echo "| flood | proxy | connections (failed) | error-log lines | bytes |"
    echo "|---|---|---|---|---|"
    awk -F'\t' 'NR>1{
      name["plain-to-tls"]="plain HTTP to the TLS port"; name["h2-abort"]="HTTP/2 over TLS, closed mid-response"
      printf "| %s | %s | %s (%s) | %s | %s |%s\n", name[$1], $2, $3, $4, $5, $6, ($7 == "yes" ? "" : " proxy DIED") }' "$FLD"
  fi
} > "$R/summary.md"
cat "$R/summary.md"
