#!/usr/bin/env bash
# TLS termination next to nginx, same backend, same certificate, one run:
#   HTTP/1.1 over TLS with wrk (keep-alive), HTTP/2 over TLS with h2load (Debian nghttp2-client).
# nginx: `listen ... ssl http2` (nginx 1.22 in Debian 12; `http2 on` is the 1.25+ spelling of the
# same thing), 1 worker; canary-lb: a TLS listener, 1 worker thread, routing + sticky cookies +
# metrics on (benches/bench.yaml's settings). The backend is an nginx answering `ok`.
# Both proxies get an ECDSA P-256 certificate made by openssl for this run.
# Env: PORT_BASE (19400) DUR (10) ROUNDS (3) CONNS (50) STREAMS (h2load -m, 10) CPU_LOAD (0) CPU_BACKEND (0)
#      CPU_PROXY (1) SKIP_BUILD (unset: build release first, niced) BIN (target/release/canary-lb).
#   ./benches/tls-bench.sh
#   DUR=5 ROUNDS=5 ./benches/tls-bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-50}; STREAMS=${STREAMS:-10}
CL=${CPU_LOAD-0}; CB=${CPU_BACKEND-0}; CP=${CPU_PROXY-1}
# Ports: backend B+1, nginx B+41, canary-lb B+42, its metrics B+92 (B = PORT_BASE, 19400).
B=${PORT_BASE:-19400}; BE=$((B+1)); NG=$((B+41)); CA=$((B+42)); MT=$((B+92))
die() { echo "ERROR: $*" >&2; exit 1; }

# This bench's own tools; not in CI.
need=()
for b in nginx wrk curl taskset openssl; do command -v $b >/dev/null || need+=($b); done
command -v h2load >/dev/null || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]/taskset/util-linux}" >&2 \
    || die "cannot install ${need[*]}"
fi
if [ -z "${SKIP_BUILD:-}" ]; then nice -n 10 cargo build --release >&2 || die "cargo build"; fi
BIN=${BIN:-$PWD/target/release/canary-lb}; [ -x "$BIN" ] || die "no $BIN"

R=$(mktemp -d "${TMPDIR:-/tmp}/tls-bench-XXXXXX"); PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  echo "stopped PIDs: ${PIDS[*]}; files in $R" >&2
}
trap cleanup EXIT; trap 'exit 130' INT TERM
open_() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
pin() { [ -n "$1" ] && echo "taskset -c $1"; }
for p in $BE $NG $CA $MT; do open_ $p && die "127.0.0.1:$p already in use"; done
mkdir -p $R/{be,ngx,logs}/tmp

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout $R/key.pem -out $R/cert.pem 2>/dev/null || die "openssl"

T='access_log off; keepalive_requests 1000000; keepalive_timeout 75s; client_body_temp_path tmp/b;
  proxy_temp_path tmp/p; fastcgi_temp_path tmp/f; uwsgi_temp_path tmp/u; scgi_temp_path tmp/s;'
cat > $R/be/nginx.conf <<EOF
worker_processes 1; daemon off; pid $R/be/pid; events { worker_connections 8192; }
http { $T default_type text/plain;
  server { listen 127.0.0.1:$BE backlog=4096; location / { return 200 "ok\n"; } } }
EOF
cat > $R/ngx/nginx.conf <<EOF
worker_processes 1; daemon off; pid $R/ngx/pid; events { worker_connections 8192; }
http { $T
  upstream be { server 127.0.0.1:$BE; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NG ssl http2 backlog=4096;
    ssl_certificate $R/cert.pem; ssl_certificate_key $R/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-Proto https; } } }
EOF
cat > $R/canary-lb.yaml <<EOF
listen: [{ addr: "127.0.0.1:$CA", tls: { cert: "$R/cert.pem", key: "$R/key.pem" } }]
threads: 1
metrics_listen: "127.0.0.1:$MT"
pools:
  production: { servers: ["127.0.0.1:$BE"] }
  canary: { servers: ["127.0.0.1:$BE"] }
health_check: { kind: http, path: /, interval: 2s, timeout: 1s }
routing: { canary_percent: 10, salt: bench, user_header: X-User-Id }
EOF
ngx() { echo "nginx -p $R/$1/ -c $R/$1/nginx.conf -e $R/logs/$1.err"; }
start() {  # name cpus port cmd...
  local n=$1 c=$2 port=$3 i; shift 3
  $(pin "$c") "$@" >$R/logs/$n.out 2>&1 &
  PIDS+=($!)
  for i in $(seq 100); do open_ $port && return 0; sleep 0.1; done
  die "$n did not start, see $R/logs/$n.*"
}
$(ngx be) -t -q && $(ngx ngx) -t -q || die "nginx config test failed"
start backend "$CB" $BE $(ngx be)
start nginx "$CP" $NG $(ngx ngx)
RUST_LOG=warn start canary-lb "$CP" $CA "$BIN" serve --config $R/canary-lb.yaml
declare -A PORT=([nginx]=$NG [canary-lb]=$CA)
for t in nginx canary-lb; do
  u=https://bench.test:${PORT[$t]}/
  for v in --http1.1 --http2; do
    got=$(curl -s --cacert $R/cert.pem --resolve bench.test:${PORT[$t]}:127.0.0.1 $v \
      -o /dev/null -w '%{http_code} %{http_version}' $u)
    case "$v $got" in "--http1.1 200 1.1"|"--http2 200 2") ;; *) die "$t $v: got $got";; esac
  done
done
# wrk and h2load connect to 127.0.0.1 without SNI: both proxies serve their only certificate.

ms() { awk -v v="$1" 'BEGIN{u=v; sub(/^[0-9.]+/,"",u); printf "%.3f",v*(u=="us"?.001:u=="s"?1000:u=="m"?60000:1)}'; }
RES=$R/results.tsv; : > $RES
run() {  # proto target round
  local o=$R/$1-$2-$3.txt u=https://127.0.0.1:${PORT[$2]}/
  if [ $1 = h1 ]; then
    $(pin "$CL") wrk -t1 -c$CONNS -d${DUR}s --timeout 2s --latency $u >$o 2>&1
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' h1 $2 $3 "$(awk '/^Requests\/sec:/{print $2+0}' $o)" \
      "$(ms "$(awk '$1=="50%"{print $2}' $o)")" "$(ms "$(awk '$1=="99%"{print $2}' $o)")" >>$RES
  else
    $(pin "$CL") h2load -t1 -c$CONNS -m$STREAMS -D$DUR --warm-up-time=1 $u >$o 2>&1
    # `time for request: min max mean sd +/- sd`; h2load prints no percentiles.
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' h2 $2 $3 "$(awk '/^finished in/{print $4+0}' $o)" \
      "$(ms "$(awk '/^time for request:/{print $6}' $o)")" "$(ms "$(awk '/^time for request:/{print $5}' $o)")" >>$RES
  fi
  tail -1 $RES >&2
}
for p in h1 h2; do
  for r in $(seq $ROUNDS); do
    if [ $((r % 2)) = 1 ]; then run $p nginx $r; run $p canary-lb $r; else run $p canary-lb $r; run $p nginx $r; fi
  done
done
echo "TLS loopback, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $CONNS connections," \
     "${DUR}s x $ROUNDS rounds, medians; h2load -m$STREAMS; pin load=${CL:-any} backend=${CB:-any} proxy=${CP:-any}"
awk -F'\t' '
function med(s,  a,n,i,j,t){n=split(s,a," "); for(i=2;i<=n;i++){t=a[i]; for(j=i-1;j>0&&a[j]+0>t+0;j--)a[j+1]=a[j]; a[j+1]=t}
  return n%2?a[(n+1)/2]:(a[n/2]+a[n/2+1])/2}
{k=$1 SUBSEP $2; q[k]=q[k]" "$4; a[k]=a[k]" "$5; b[k]=b[k]" "$6}
END{printf "%-5s %-10s %10s %10s %10s %9s\n","proto","target","req/s","lat_a_ms","lat_b_ms","vs_nginx"
  split("h1 h2",P," "); split("nginx canary-lb",T," ")
  for(i=1;i<=2;i++){n=med(q[P[i],"nginx"]); for(j=1;j<=2;j++){k=P[i] SUBSEP T[j]
    printf "%-5s %-10s %10.0f %10.3f %10.3f %9.2f\n",P[i],T[j],med(q[k]),med(a[k]),med(b[k]),(n>0?med(q[k])/n:0)}}
  print "lat_a/lat_b: h1 = wrk p50/p99; h2 = h2load mean/max time for request"}' $RES
