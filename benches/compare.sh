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
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BENCH=1 ./scripts/setup.sh >&2
cargo build --release >&2
conf=$(mktemp --suffix=.yaml)
log=$(mktemp --suffix=.access.log)
trap 'rm -f "$conf" "$log"' EXIT
sed "s/^threads: 1/threads: ${THREADS_CANDIDATE:-1}/" benches/bench.yaml > "$conf"
case "${ACCESS_LOG:-off}" in
  off) ;;
  file) sed -i "s|^access_log: off|access_log: { path: \"$log\" }|" "$conf" ;;
  *) echo "ACCESS_LOG must be off or file" >&2; exit 2 ;;
esac
export CPU_WRK=${CPU_WRK-0} CPU_BACKEND=${CPU_BACKEND-0} CPU_PROXY=${CPU_PROXY-1}
export RUST_LOG=${RUST_LOG:-warn}
export CANDIDATE_CMD="$PWD/target/release/canary-lb serve --config $conf"
bash benches/proxy-bench.sh
