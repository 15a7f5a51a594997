#!/usr/bin/env bash
# Copied from the team's shared/bench/proxy-bench.sh so the repository benchmarks on its own; keep in sync.
# Loopback HTTP/1.1 reverse-proxy benchmark: direct backend vs nginx vs haproxy [vs a candidate proxy].
# Needs nginx, haproxy, wrk, curl (Debian packages). Env: DUR WARM ROUNDS CONNS THREADS BACKEND_WORKERS CASES
#      CPU_WRK CPU_BACKEND CPU_PROXY (taskset lists; e.g. CPU_WRK=0 CPU_BACKEND=0 CPU_PROXY=1 steadies the numbers)
#      CANDIDATE_CMD (stays in foreground, 1 worker thread, listens on 127.0.0.1:$CANDIDATE_PORT (8083),
#      proxies to upstreams 127.0.0.1:9001 and :9002). Every process it starts is stopped by PID on exit.
#      CANDIDATE2_CMD/CANDIDATE2_PORT (8084): a second candidate in the same run; CANDIDATE_NAME,
#      CANDIDATE2_NAME name them in the tables. results.tsv also gets, per run: requests completed,
#      user and system CPU ticks and context switches (all threads of all processes) of the proxy.
set -uo pipefail
B=${BENCH:-${TMPDIR:-/tmp}/proxy-bench}; DUR=${DUR:-10}; WARM=${WARM:-2}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-50}
THREADS=${THREADS:-1}; BW=${BACKEND_WORKERS:-1}; CASES=${CASES:-"small:/ 64k:/64k"}
PC=${CANDIDATE_CMD:-}; PP=${CANDIDATE_PORT:-8083}; PC2=${CANDIDATE2_CMD:-}; PP2=${CANDIDATE2_PORT:-8084}
N1=${CANDIDATE_NAME:-candidate}; N2=${CANDIDATE2_NAME:-candidate2}; CW=${CPU_WRK:-}; CB=${CPU_BACKEND:-}; CP=${CPU_PROXY:-}
R=$B/run-$(date +%Y%m%d-%H%M%S); CLK=$(getconf CLK_TCK); PORTS="9001 9002 8081 8082"; PIDS=(); KIDS=()
[ -n "$PC" ] && PORTS="$PORTS $PP"; [ -n "$PC2" ] && PORTS="$PORTS $PP2"
die() { echo "ERROR: $*" >&2; exit 1; }
for b in nginx haproxy wrk curl taskset; do command -v $b >/dev/null || die "missing $b"; done
mkdir -p $R/{logs,raw,be/www,be/tmp,ngx/tmp,hap} || die mkdir
ulimit -n "$(ulimit -Hn)" 2>/dev/null
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null); [ -n "$s" ] && [ "${s:0:1}" != Z ]; }
open_() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
cleanup() {  # TERM by PID, wait <=5 s, then KILL survivors (incl. nginx workers)
  trap - EXIT INT TERM; local p i a
  for p in ${WRK:-} "${PIDS[@]}"; do kill -TERM $p 2>/dev/null; done
  for i in $(seq 50); do
    a=0; for p in "${PIDS[@]}" "${KIDS[@]}"; do alive $p && a=1; done; [ $a = 0 ] && break; sleep 0.1
  done
  for p in "${PIDS[@]}" "${KIDS[@]}"; do alive $p && kill -KILL $p; done
  for p in "${PIDS[@]}"; do wait $p 2>/dev/null; done
  echo "stopped PIDs: ${PIDS[*]} ${KIDS[*]}; files in $R" >&2
  [ ${#PIDS[@]} -gt 0 ] && for p in $PORTS; do open_ $p && echo "WARNING: port $p still open" >&2; done
}
trap cleanup EXIT; trap 'exit 130' INT TERM
pin() { [ -n "$1" ] && echo "taskset -c $1"; }   # prefix words; never background a shell function
declare -A PID PORT=([direct]=9001 [nginx]=8081 [haproxy]=8082 [$N1]=$PP [$N2]=$PP2)
start() {  # name cpus port cmd...   ($! is the server itself: taskset execs)
  local n=$1 c=$2 port=$3 i; shift 3
  $(pin "$c") "$@" >$R/logs/$n.out 2>&1 &
  PID[$n]=$!; PIDS+=($!)
  for i in $(seq 50); do open_ $port && return 0; alive ${PID[$n]} || break; sleep 0.1; done
  die "$n did not start, see $R/logs/$n.*"
}
ticks() {  # utime+stime (clock ticks) of a PID and its children
  local t=0 p v; for p in $1 $(ps -o pid= --ppid $1); do
    v=$(awk '{sub(/.*\) /,""); print $12+$13}' /proc/$p/stat 2>/dev/null) && t=$((t+${v:-0})); done; echo $t; }
usage() {  # "user_ticks sys_ticks context_switches" of a PID and its children, all threads
  local u=0 s=0 c=0 p f v w; for p in $1 $(ps -o pid= --ppid $1); do
    read -r v w < <(awk '{sub(/.*\) /,""); print $12, $13}' /proc/$p/stat 2>/dev/null) && u=$((u+v)) s=$((s+w))
    for f in /proc/$p/task/*/status; do
      v=$(awk '/^(non)?voluntary_ctxt_switches/{n+=$2} END{print n+0}' $f 2>/dev/null) && c=$((c+${v:-0})); done
  done; echo "$u $s $c"; }
for p in $PORTS; do open_ $p && die "127.0.0.1:$p already in use"; done

head -c 65536 /dev/zero | tr '\0' x > $R/be/www/64k
T='access_log off; keepalive_requests 1000000; keepalive_timeout 75s; client_body_temp_path tmp/b;
  proxy_temp_path tmp/p; fastcgi_temp_path tmp/f; uwsgi_temp_path tmp/u; scgi_temp_path tmp/s;'
cat > $R/be/nginx.conf <<EOF
worker_processes $BW; daemon off; pid $R/be/pid; events { worker_connections 8192; }
http { $T default_type text/plain; sendfile on;
  server { listen 127.0.0.1:9001 backlog=4096; listen 127.0.0.1:9002 backlog=4096; root $R/be/www;
    add_header X-Backend \$server_port always; location = / { return 200 "ok\n"; } location / { } } }
EOF
cat > $R/ngx/nginx.conf <<EOF
worker_processes 1; daemon off; pid $R/ngx/pid; events { worker_connections 8192; }
http { $T
  upstream be { server 127.0.0.1:9001; server 127.0.0.1:9002; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:8081 backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffers 32 4k; proxy_max_temp_file_size 0; } } }
EOF
printf '%s\n' global '  nbthread 1' '  maxconn 4096' defaults '  mode http' '  option http-keep-alive' \
  '  http-reuse always' '  timeout connect 5s' '  timeout client 30s' '  timeout server 30s' frontend\ fe \
  '  bind 127.0.0.1:8082 backlog 4096' '  default_backend be' backend\ be '  balance roundrobin' \
  '  server s1 127.0.0.1:9001' '  server s2 127.0.0.1:9002' > $R/hap/haproxy.cfg
ngx() { echo "nginx -p $R/$1/ -c $R/$1/nginx.conf -e $R/logs/$1.err"; }
$(ngx be) -t -q && $(ngx ngx) -t -q && haproxy -c -q -f $R/hap/haproxy.cfg || die "config test failed"
start backend "$CB" 9002 $(ngx be)
start nginx "$CP" 8081 $(ngx ngx)
start haproxy "$CP" 8082 haproxy -db -f $R/hap/haproxy.cfg
TARGETS=(direct nginx haproxy); PID[direct]=
if [ -n "$PC" ]; then start $N1 "$CP" $PP bash -c "exec $PC"; TARGETS+=($N1); fi
if [ -n "$PC2" ]; then start $N2 "$CP" $PP2 bash -c "exec $PC2"; TARGETS+=($N2); fi
for m in backend nginx; do KIDS+=($(ps -o pid= --ppid ${PID[$m]})); done

get() { curl -s --noproxy '*' -m 2 "$@"; }
for t in "${TARGETS[@]}"; do u=http://127.0.0.1:${PORT[$t]}
  [ "$(get $u/)" = ok ] && [ "$(get -o /dev/null -w '%{size_download}' $u/64k)" = 65536 ] || die "$t: bad response"
  echo "sanity $t ok; backends seen: $(for i in 1 2 3 4; do get -D - -o /dev/null $u/ | tr -d '\r' |
    awk 'tolower($1)=="x-backend:"{print $2}'; done | sort -u | xargs)" >&2
done

ms() { awk -v v="$1" 'BEGIN{u=v; sub(/^[0-9.]+/,"",u); printf "%.3f",v*(u=="us"?.001:u=="s"?1000:u=="m"?60000:1)}'; }
cpu() { awk -v d=$1 -v e=$2 -v k=$CLK 'BEGIN{printf "%.0f",d/k*1e5/e}'; }   # ticks, ms -> %
RES=$R/results.tsv; printf 'case\ttarget\tround\trps\tp50ms\tp99ms\terrors\tproxycpu\tbackendcpu\trequests\tusr_ticks\tsys_ticks\tctxsw\n' > $RES
bench() {  # case path target round secs
  local o=$R/raw/$1-$3-r$4.txt p=${PID[$3]} a=0 b=0 x y t0 t1 el pc u0="0 0 0" u1="0 0 0"
  [ -n "$p" ] && { a=$(ticks $p); u0=$(usage $p); }; x=$(ticks ${PID[backend]}); t0=$(date +%s%N)
  timeout $(($5+20)) $(pin "$CW") wrk -t$THREADS -c$CONNS -d$5s --timeout 2s --latency \
    http://127.0.0.1:${PORT[$3]}$2 >$o 2>&1 &
  WRK=$!; wait $WRK; WRK=
  t1=$(date +%s%N); y=$(ticks ${PID[backend]}); [ -n "$p" ] && { b=$(ticks $p); u1=$(usage $p); }
  [ $4 = warm ] && return
  el=$(((t1-t0)/1000000)); pc=-; [ -n "$p" ] && pc=$(cpu $((b-a)) $el)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' $1 $3 $4 $(awk '/^Requests\/sec:/{r=$2} END{print r+0}' $o) \
    $(ms "$(awk '$1=="50%"{print $2}' $o)") $(ms "$(awk '$1=="99%"{print $2}' $o)") \
    $(awk '/Socket errors/{gsub(/,/,"");s=$4+$6+$8+$10} /Non-2xx/{n=$NF} END{print s+n+0}' $o) \
    $pc $(cpu $((y-x)) $el) $(awk '/requests in/{print $1+0}' $o) \
    $(echo $u0 $u1 | awk '{print $4-$1, $5-$2, $6-$3}') | tee -a $RES >&2
}
n=${#TARGETS[@]}
for cp in $CASES; do c=${cp%%:*} path=${cp#*:}
  for t in "${TARGETS[@]}"; do bench $c $path $t warm $WARM; done
  for r in $(seq $ROUNDS); do for i in $(seq 0 $((n-1))); do   # order rotates per round: ABC BCA CAB
    bench $c $path ${TARGETS[$(((i+r-1)%n))]} $r $DUR; done; done
done

echo "HTTP/1.1, loopback, $(nproc) cores, wrk -t$THREADS -c$CONNS -d${DUR}s, $ROUNDS rounds, medians;" \
     "pin wrk=${CW:-any} backend=${CB:-any} proxy=${CP:-any}"
awk -F'\t' -v order="${TARGETS[*]}" -v cases="$(for cp in $CASES; do printf '%s ' ${cp%%:*}; done)" '
function srt(s,a,  n,i,j,t){n=split(s,a," "); for(i=2;i<=n;i++){t=a[i]; for(j=i-1;j>0&&a[j]+0>t+0;j--)a[j+1]=a[j]; a[j+1]=t}; return n}
function med(s,  a,n){n=srt(s,a); return n%2?a[(n+1)/2]:(a[n/2]+a[n/2+1])/2}
NR>1{k=$1 SUBSEP $2; q[k]=q[k]" "$4; l5[k]=l5[k]" "$5; l9[k]=l9[k]" "$6; pc[k]=pc[k]" "$8; bc[k]=bc[k]" "$9
  err+=$7; v[$1,$2,$3]=$4; rd[$3]=1}
END{f="%-6s %-8s %9s %9s %9s %7s %7s %7s %6s %-11s %6s %6s\n"; g="%-6s %-8s %9.0f %9.0f %9.0f %7s %7.3f %7.3f %6.2f %-11s %6s %6s\n"
  printf f,"case","target","rps_med","rps_min","rps_max","spread","p50_ms","p99_ms","vs_dir","(per-round)","pxCPU%","beCPU%"
  nc=split(cases,C," "); nt=split(order,T," ")
  for(i=1;i<=nc;i++){d=med(q[C[i],"direct"]); for(j=1;j<=nt;j++){k=C[i] SUBSEP T[j]; if(!(k in q))continue
    n=srt(q[k],A); m=med(q[k]); rr=""; for(r in rd) if(v[C[i],"direct",r]>0) rr=rr" "v[C[i],T[j],r]/v[C[i],"direct",r]; z=srt(rr,Z)
    printf g,C[i],T[j],m,A[1],A[n],sprintf("%.1f%%",m>0?(A[n]-A[1])/m*100:0),med(l5[k]),med(l9[k]),(d>0?m/d:0),sprintf("%.2f-%.2f",Z[1],Z[z]),T[j]=="direct"?"-":med(pc[k]),med(bc[k])}}
  print "socket errors + non-2xx over all measured runs: " err+0}' $RES
