#!/usr/bin/env bash
# One pinned run, one table: nginx, HAProxy, the bare-Pingora floor (benches/floor/) and
# canary-lb on the same backends, with requests/s, p50/p99, user and system CPU microseconds per
# request (/proc/PID/stat, all threads and processes of the proxy), context switches per request
# (/proc/PID/task/*/status, voluntary + nonvoluntary) and, for the two Pingora-based proxies,
# user-space instructions per small request (callgrind, benches/instructions.sh).
# The run itself is benches/proxy-bench.sh (wrk and backend on core 0, proxies on core 1).
#   ./benches/perf-table.sh                       # builds both (release), DUR=8 ROUNDS=3
#   NO_BUILD=1 CLB=path/to/canary-lb FLOOR=path/to/floor ./benches/perf-table.sh
#   NO_CALLGRIND=1 ./benches/perf-table.sh        # skip the instruction counts
# Env: everything proxy-bench.sh takes (DUR ROUNDS CONNS CASES CPU_* ...), CG_DUR (callgrind run,
# default 8 s). Bounded: every wrk run has a duration and a timeout; loopback only; every process
# is stopped by PID. Needs (Debian): nginx haproxy wrk valgrind curl util-linux (taskset).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for b in nginx haproxy wrk valgrind callgrind_control curl taskset; do
  command -v $b >/dev/null || missing+=($b)
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "perf-table: missing ${missing[*]}: apt-get install nginx haproxy wrk valgrind curl util-linux" >&2
  exit 1
fi
CLB=${CLB:-target/release/canary-lb}; FLOOR=${FLOOR:-target/release/examples/floor}
if [ -z "${NO_BUILD:-}" ]; then
  nice -n 10 cargo build --release --bin canary-lb --example floor >&2
fi
[ -x "$CLB" ] && [ -x "$FLOOR" ] || { echo "perf-table: $CLB or $FLOOR not built" >&2; exit 1; }
CLB=$(realpath "$CLB"); FLOOR=$(realpath "$FLOOR")

# (readable by nginx's worker user: the backend serves files from it)
export BENCH=${BENCH:-$(mktemp -d)} DUR=${DUR:-8} ROUNDS=${ROUNDS:-3}; chmod 755 "$BENCH"
export CPU_WRK=${CPU_WRK-0} CPU_BACKEND=${CPU_BACKEND-0} CPU_PROXY=${CPU_PROXY-1}
export RUST_LOG=${RUST_LOG:-warn}
export CANDIDATE_NAME=canary-lb CANDIDATE_PORT=8083 CANDIDATE_CMD="$CLB serve --config $PWD/benches/bench.yaml"
export CANDIDATE2_NAME=floor CANDIDATE2_PORT=8084 CANDIDATE2_CMD="$FLOOR 127.0.0.1:8084 127.0.0.1:9001 127.0.0.1:9002"
bash benches/proxy-bench.sh
RES=$(ls -d "$BENCH"/run-*/results.tsv | tail -1)

# Instructions per small request, one proxy at a time under callgrind (deterministic counts).
declare -A IR=()
if [ -z "${NO_CALLGRIND:-}" ]; then
  for t in canary-lb floor; do
    if [ $t = canary-lb ]; then cmd=("$CLB"); port=8083
    else cmd=("$FLOOR" 127.0.0.1:8084 127.0.0.1:9001 127.0.0.1:9002); port=8084; fi
    line=$(DUR=${CG_DUR:-8} PORT=$port OUT="$BENCH/callgrind-$t" bash benches/instructions.sh "${cmd[@]}")
    echo "callgrind $t: $line" >&2
    IR[$t]=$(sed -n 's/.*per request: \([0-9]*\).*/\1/p' <<<"$line")
  done
fi

echo
echo "pinned run: wrk -c${CONNS:-50} ${DUR}s x $ROUNDS rounds, medians; wrk+backend on cpu ${CPU_WRK:-any}, proxy on cpu ${CPU_PROXY:-any}; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
# Median of a space-separated list, for both tables below.
MEDIAN='
function srt(s,a,  n,i,j,t){n=split(s,a," "); for(i=2;i<=n;i++){t=a[i]; for(j=i-1;j>0&&a[j]+0>t+0;j--)a[j+1]=a[j]; a[j+1]=t}; return n}
function med(s,  a,n){n=srt(s,a); return n%2?a[(n+1)/2]:(a[n/2]+a[n/2+1])/2}
'
awk -F'\t' -v clk="$(getconf CLK_TCK)" -v irc="${IR[canary-lb]:-}" -v irf="${IR[floor]:-}" "$MEDIAN"'
NR>1 && $10>0 {k=$1 SUBSEP $2; if(!(k in q)){ord[++n]=k}; q[k]=q[k]" "$4; p5[k]=p5[k]" "$5; p9[k]=p9[k]" "$6
  us[k]=us[k]" "$11/clk*1e6/$10; sy[k]=sy[k]" "$12/clk*1e6/$10; cs[k]=cs[k]" "$13/$10; if($2=="nginx")ng[$1]=ng[$1]" "$4}
END{printf "| case | proxy | req/s | vs nginx | p50 ms | p99 ms | user us/req | sys us/req | ctx switches/req | instructions/req |\n"
  printf "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
  for(i=1;i<=n;i++){k=ord[i]; split(k,c,SUBSEP); ir="-"
    if(c[1]=="small"&&c[2]=="canary-lb"&&irc!="")ir=irc; if(c[1]=="small"&&c[2]=="floor"&&irf!="")ir=irf
    d=c[2]=="direct"; printf "| %s | %s | %.0f | %.2f | %.2f | %.2f | %s | %s | %s | %s |\n", c[1], c[2], med(q[k]),
      med(q[k])/med(ng[c[1]]), med(p5[k]), med(p9[k]), d?"-":sprintf("%.1f",med(us[k])),
      d?"-":sprintf("%.1f",med(sy[k])), d?"-":sprintf("%.2f",med(cs[k])), ir}}' "$RES"
echo "(direct = wrk against the backend itself; CPU and context switches are the proxy process's, all threads; results in $RES)"

# Issue 23's targets, from the table's medians: met or not, with the figure.
echo
awk -F'\t' -v irc="${IR[canary-lb]:-}" -v irf="${IR[floor]:-}" "$MEDIAN"'
function line(what, fig, ok){printf "| %s | %s | %s |\n", what, fig, ok?"met":"**not met**"}
NR>1 && $10>0 {q[$1,$2]=q[$1,$2]" "$4; p9[$1,$2]=p9[$1,$2]" "$6}
END{print "| target (issue 23) | measured | |"; print "|---|---|---|"
  if((("small","canary-lb") in q) && (("small","nginx") in q)){
    r=med(q["small","canary-lb"])/med(q["small","nginx"]); line("small: >= 0.75x nginx req/s", sprintf("%.2fx", r), r>=0.75)
    r=med(p9["small","canary-lb"])/med(p9["small","nginx"]); line("small: p99 <= 1.5x nginx", sprintf("%.2fx", r), r<=1.5)}
  if((("64k","canary-lb") in q) && (("64k","nginx") in q)){
    r=med(q["64k","canary-lb"])/med(q["64k","nginx"]); line("64 KiB: >= 1.05x nginx req/s", sprintf("%.2fx", r), r>=1.05)}
  if(irc!=""){line("<= 70,000 instructions per small request", irc, irc<=70000)
    if(irf!="")line("canary-lb within 15 % of the floor instructions", sprintf("+%.1f %%", (irc/irf-1)*100), irc<=irf*1.15)}}' "$RES"
