#!/usr/bin/env bash
# How often SIGINT fails to stop canary-lb (the accept-loop spin that patch 0003 fixes).
#
#   patches/pingora/measure/sigint-hang.sh [RUNS] [demo|serve] [BINARY]
#
# Each run starts BINARY (default: $CARGO_TARGET_DIR or target/, debug/canary-lb) on free
# loopback ports, as `canary-lb demo` or as `canary-lb serve` with a small static config
# (threads: 2, one production and one canary server that need not exist), waits until it
# serves (the proxy port answers HTTP; at most 20 s), sends one request, then SIGINT, and
# counts the run as a hang when the process has not exited 5 s later. A hung process is
# SIGKILLed; its log is kept only to count its `Accept() failed` lines. Every run is bounded
# (about 27 s at worst), so RUNS bounds the whole script. Only processes it started are
# signalled, by pid.
set -euo pipefail
cd "$(dirname "$0")/../../.."

RUNS=${1:-30}
MODE=${2:-demo}
BIN=${3:-${CARGO_TARGET_DIR:-$PWD/target}/debug/canary-lb}
EXIT_DEADLINE=5   # seconds from SIGINT to exit
START_DEADLINE=20 # seconds from spawn to serving

[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build first)" >&2; exit 2; }
case "$MODE" in demo | serve) ;; *) echo "mode must be demo or serve" >&2; exit 2 ;; esac

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# N free loopback ports, consecutive when CONSECUTIVE=1 (the demo's three apps).
free_ports() {
  python3 - "$@" <<'EOF'
import socket, sys
n, consecutive = int(sys.argv[1]), sys.argv[2] == "1"
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def bindable(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
if consecutive:
    for _ in range(100):
        b = free()
        if b < 65000 and all(bindable(b + i) for i in range(n)):
            print(b); break
else:
    print(" ".join(str(free()) for _ in range(n)))
EOF
}

# serving PORT: the proxy answers an HTTP request (any status) on PORT.
serving() {
  curl --silent --output /dev/null --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null
}

hangs=0
failed_starts=0
spins=()
for run in $(seq 1 "$RUNS"); do
  read -r listen metrics dead <<<"$(free_ports 3 0)"
  log="$work/run-$run.log"
  if [ "$MODE" = demo ]; then
    base=$(free_ports 3 1)
    "$BIN" demo --listen "127.0.0.1:$listen" --metrics-listen "127.0.0.1:$metrics" \
      --app-base-port "$base" >"$log" 2>&1 </dev/null &
  else
    cat >"$work/canary-lb.yaml" <<EOF
listen: ["127.0.0.1:$listen"]
metrics_listen: "127.0.0.1:$metrics"
threads: 2
grace_period: 1s
pools:
  production: { servers: ["127.0.0.1:$dead"] }
  canary: { servers: ["127.0.0.1:$dead"] }
EOF
    RUST_LOG=info "$BIN" serve --config "$work/canary-lb.yaml" >"$log" 2>&1 </dev/null &
  fi
  pid=$!

  started=0
  for _ in $(seq 1 $((START_DEADLINE * 10))); do
    if serving "$listen"; then started=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$started" = 0 ]; then
    failed_starts=$((failed_starts + 1))
    echo "run $run: did not start serving; log tail:" >&2
    tail -5 "$log" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    continue
  fi

  kill -INT "$pid"
  sent=$(date +%s.%N)
  exited=0
  for _ in $(seq 1 $((EXIT_DEADLINE * 20))); do
    if ! kill -0 "$pid" 2>/dev/null; then exited=1; break; fi
    sleep 0.05
  done
  if [ "$exited" = 1 ]; then
    wait "$pid" 2>/dev/null || true
    printf 'run %d: exited after %.2f s\n' "$run" "$(echo "$(date +%s.%N) - $sent" | bc)"
  else
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    n=$(grep -c 'Accept() failed' "$log" || true)
    hangs=$((hangs + 1))
    spins+=("$n")
    echo "run $run: HANG (still running ${EXIT_DEADLINE} s after SIGINT; $n 'Accept() failed' lines)"
  fi
  pid=
  rm -f "$log"
done

echo "$MODE, $RUNS runs: $hangs hung (no exit within ${EXIT_DEADLINE} s of SIGINT), $failed_starts failed to start"
[ "$hangs" = 0 ] && [ "$failed_starts" = 0 ]
