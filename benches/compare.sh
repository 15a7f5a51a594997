#!/usr/bin/env bash
# canary-lb next to nginx and HAProxy on this machine, same backends, same cases, one run.
# Builds canary-lb in release mode, then runs benches/proxy-bench.sh with canary-lb as the
# candidate (1 worker thread, routing + sticky cookies + metrics on: benches/bench.yaml).
# Env: everything proxy-bench.sh takes (DUR ROUNDS CONNS CASES CPU_WRK CPU_BACKEND CPU_PROXY ...);
# defaults pin wrk and the backend to core 0 and the proxy under test to core 1.
#   ./benches/compare.sh                      # 3 rounds x 10 s, small and 64 KiB bodies
#   DUR=5 ROUNDS=5 ./benches/compare.sh
#   THREADS_CANDIDATE=2 CPU_PROXY= ./benches/compare.sh   # canary-lb with threads: 2, unpinned
#   ACCESS_LOG=file ./benches/compare.sh      # canary-lb writing its JSON access log to a file
#                                               # (default: off, like nginx's and HAProxy's here)
#   FLAGS=10 CASES=small:/ ROUNDS=5 ./benches/compare.sh   # canary-lb with and without the 10
#                                               # feature flags of benches/bench-flags.yaml, twice
#                                               # (slots swapped), and the flags' cost: the median
#                                               # over rounds of (with flags / without) requests/s
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BENCH=1 ./scripts/setup.sh >&2
cargo build --release >&2
conf=$(mktemp --suffix=.yaml)
conf2=$(mktemp --suffix=.yaml)
log=$(mktemp --suffix=.access.log)
trap 'rm -f "$conf" "$conf2" "$log"' EXIT
sed "s/^threads: 1/threads: ${THREADS_CANDIDATE:-1}/" benches/bench.yaml > "$conf"
case "${ACCESS_LOG:-off}" in
  off) ;;
  file) sed -i "s|^access_log: off|access_log: { path: \"$log\" }|" "$conf" ;;
  *) echo "ACCESS_LOG must be off or file" >&2; exit 2 ;;
esac
export CPU_WRK=${CPU_WRK-0} CPU_BACKEND=${CPU_BACKEND-0} CPU_PROXY=${CPU_PROXY-1}
export RUST_LOG=${RUST_LOG:-warn}
export CANDIDATE_CMD="$PWD/target/release/canary-lb serve --config $conf"
case "${FLAGS:-}" in
  "") bash benches/proxy-bench.sh; exit ;;
  10) [ "${ACCESS_LOG:-off}" = off ] || { echo "FLAGS=10 measures with the access log off" >&2; exit 2; } ;;
  *) echo "FLAGS must be unset or 10" >&2; exit 2 ;;
esac
# The same binary and config, with and without the 10 flags, in one pinned run and then again
# with the two in each other's slot (ports 8083/8084), so neither gets the same slot twice.
to8084() { sed -e 's/127.0.0.1:8083/127.0.0.1:8084/' -e 's/127.0.0.1:9191/127.0.0.1:9192/'; }
sed "s/^threads: 1/threads: ${THREADS_CANDIDATE:-1}/" benches/bench-flags.yaml > "$conf2"
conf3=$(mktemp --suffix=.yaml); conf4=$(mktemp --suffix=.yaml)
trap 'rm -f "$conf" "$conf2" "$conf3" "$conf4" "$log"' EXIT
to8084 < "$conf" > "$conf3"; to8084 < "$conf2" > "$conf4"
bin=$PWD/target/release/canary-lb
# (readable by nginx's worker user: the backend serves files from it)
export BENCH=${BENCH:-$(mktemp -d)}; chmod 755 "$BENCH"
for order in 1 2; do
  if [ $order = 1 ]; then
    export CANDIDATE_NAME=canary-lb CANDIDATE_CMD="$bin serve --config $conf"
    export CANDIDATE2_NAME=canary-lb+flags CANDIDATE2_CMD="$bin serve --config $conf4"
  else
    export CANDIDATE_NAME=canary-lb+flags CANDIDATE_CMD="$bin serve --config $conf2"
    export CANDIDATE2_NAME=canary-lb CANDIDATE2_CMD="$bin serve --config $conf3"
  fi
  bash benches/proxy-bench.sh
done
# Per run, round and case: (with flags) / (without); the median of those ratios is the cost.
for res in $(ls -d "$BENCH"/run-*/results.tsv | tail -2); do
  awk -F'\t' -v run="$res" 'NR>1 && ($2=="canary-lb" || $2=="canary-lb+flags") {print run, $1, $3, $2, $4}' "$res"
done | awk '{k=$1 SUBSEP $2 SUBSEP $3; if($4=="canary-lb")b[k]=$5; else f[k]=$5; c[$2]=1}
  END{for(cs in c){m=0; delete a; for(k in b){split(k,x,SUBSEP); if(x[2]!=cs||!(k in f)||b[k]<=0)continue; a[++m]=f[k]/b[k]}
    for(i=2;i<=m;i++){t=a[i]; for(j=i-1;j>0&&a[j]>t;j--)a[j+1]=a[j]; a[j+1]=t}
    s=""; for(i=1;i<=m;i++)s=s sprintf(" %+.1f%%",(a[i]-1)*100)
    med=m%2?a[(m+1)/2]:(a[m/2]+a[m/2+1])/2
    printf "10 flags, case %s: requests/s %+.1f %% (median of %d rounds over both slot orders; sorted:%s)\n", cs, (med-1)*100, m, s}}'
