#!/usr/bin/env bash
# The access log's cost: canary-lb with `access_log: off` next to the same build writing its JSON
# access log to a file, in one run, rounds interleaved (off/file, then file/off, ...), each
# proxy pinned like benches/compare.sh (wrk and the nginx backend on core 0, the proxy on core 1).
# Ports of its own (19001-19002 backend, 18183/18184 proxies), so it can run beside compare.sh.
# Needs nginx, wrk, taskset and a release build (`nice -n 10 cargo build --release`).
# Env: DUR (10) ROUNDS (3) CONNS (50). Prints per round req/s and the proxy's CPU time per
# request (all its threads, writer included, from /proc), then the medians. On a shared machine
# the CPU time per request is the steadier figure: req/s moves with whatever else runs, and a
# process with a second busy thread (the writer) gets a larger share of a contended core.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-50}; BIN=$PWD/target/release/canary-lb
[ -x "$BIN" ] || { echo "build first: nice -n 10 cargo build --release" >&2; exit 1; }
D=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
mkdir -p "$D/be/tmp"
cat > "$D/be/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $D/be/pid; events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path tmp/b; proxy_temp_path tmp/p;
  fastcgi_temp_path tmp/f; uwsgi_temp_path tmp/u; scgi_temp_path tmp/s;
  server { listen 127.0.0.1:19001 backlog=4096; listen 127.0.0.1:19002 backlog=4096;
    location = / { return 200 "ok\n"; } } }
NGX
taskset -c 0 nginx -p "$D/be/" -c "$D/be/nginx.conf" -e "$D/be/err.log" & PIDS+=($!)
declare -A PORT=([off]=18183 [file]=18184) MPORT=([off]=19291 [file]=19292) PPID_=()
for m in off file; do
  sed -e "s/8083/${PORT[$m]}/; s/9191/${MPORT[$m]}/; s/9001/19001/g; s/9002/19002/g" \
    benches/bench.yaml > "$D/$m.yaml"
  [ $m = file ] && sed -i "s|^access_log: off|access_log: { path: \"$D/access.log\" }|" "$D/$m.yaml"
  RUST_LOG=warn taskset -c 1 "$BIN" serve --config "$D/$m.yaml" > "$D/$m.out" 2>&1 & PIDS+=($!)
  PPID_[$m]=$!
done
for m in off file; do
  for i in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:${PORT[$m]}/" && break; sleep 0.1; done
done
CLK=$(getconf CLK_TCK)
ticks() { awk '{sub(/.*\) /,""); print $12+$13}' "/proc/$1/stat"; }
# req/s, then the proxy's CPU microseconds per request
run() {
  local a b out; a=$(ticks "${PPID_[$2]}")
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"$1"s --timeout 2s "http://127.0.0.1:${PORT[$2]}/")
  b=$(ticks "${PPID_[$2]}")
  echo "$out" | awk -v t=$((b-a)) -v k="$CLK" '/^Requests\/sec:/{r=$2} /requests in/{n=$1}
    END{printf "%s %.2f\n", r, (n>0? t/k*1e6/n : 0)}'
}
for m in off file; do run 2 $m > /dev/null; done   # warm-up
declare -A R=([off]="" [file]="") U=([off]="" [file]="")
for r in $(seq "$ROUNDS"); do
  order="off file"; [ $((r % 2)) = 0 ] && order="file off"
  for m in $order; do
    read -r v u < <(run "$DUR" $m); R[$m]="${R[$m]} $v"; U[$m]="${U[$m]} $u"
    echo "round $r $m $v req/s, $u us CPU/request" >&2
  done
done
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
off=$(echo "${R[off]}" | med); file=$(echo "${R[file]}" | med)
echo "access_log off:  median $off req/s (rounds:${R[off]})"
echo "access_log file: median $file req/s (rounds:${R[file]}); $(wc -l < "$D/access.log") lines written"
awk -v a="$off" -v b="$file" 'BEGIN{printf "req/s file/off = %.3f (%.1f %% fewer with the log on)\n", b/a, (1-b/a)*100}'
uoff=$(echo "${U[off]}" | med); ufile=$(echo "${U[file]}" | med)
echo "CPU per request: off $uoff us, file $ufile us (rounds off:${U[off]}; file:${U[file]})"
awk -v a="$uoff" -v b="$ufile" 'BEGIN{printf "CPU-bound req/s file/off = %.3f (%.1f %% fewer with the log on)\n", a/b, (1-a/b)*100}'
echo "dropped: $(curl -s "http://127.0.0.1:${MPORT[file]}/metrics" | awk '/^canary_lb_access_log_dropped_total/{print $2}')"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
