#!/usr/bin/env bash
# Zero-window HTTP/2 streams against canary-lb (issue 21, finding 2): what CONNS connections x
# STREAMS streams, each GET of a 1 MiB response with a flow-control window of 0, cost the proxy.
# An nginx backend serves the 1 MiB file; canary-lb (h2c listener) proxies to it; a raw-frame
# Python client opens the streams, answers SETTINGS/PING, never sends WINDOW_UPDATE, and holds
# everything for HOLD seconds. Printed: idle RSS, peak RSS while held, peak upstream connections
# (established to the backend port), response heads seen, streams reset, RSS after the client
# left. Loopback only; every process it starts is stopped by PID on exit (trap).
#
#   CANARY_LB_BIN=target/release/canary-lb ./benches/h2-budget.sh
#   CONNS=20 STREAMS=100 HOLD=20 CLIENT='max_upstream_per_connection: 16' ./benches/h2-budget.sh
#
# Env: CANARY_LB_BIN (target/release/canary-lb; built if absent), CONNS (20), STREAMS (100),
# HOLD (20 s), CLIENT (extra keys of the `client:` section, flow style, e.g.
# 'send_timeout: 60s'; empty for a build without the budget keys), PORT_BASE (19571: backend,
# +1 canary-lb, +2 admin), OUT (${TMPDIR:-/tmp}/h2-budget). Needs nginx, python3, ss.
set -uo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-20}; STREAMS=${STREAMS:-100}; HOLD=${HOLD:-20}; CLIENT=${CLIENT:-}
BASE=${PORT_BASE:-19571}; P_BACKEND=$BASE; P_CLB=$((BASE + 1)); P_ADMIN=$((BASE + 2))
BIN=${CANARY_LB_BIN:-$PWD/target/release/canary-lb}
OUT=${OUT:-${TMPDIR:-/tmp}/h2-budget}; R=$OUT/run-$(date -u +%Y%m%d-%H%M%S)-$$

die() { echo "ERROR: $*" >&2; exit 1; }
for b in nginx python3 ss curl; do command -v $b >/dev/null || die "missing $b"; done
if [ ! -x "$BIN" ]; then
  cargo build --release --bin canary-lb >&2 || die "cargo build --release failed"
fi
mkdir -p "$R"/{www,tmp} || die "mkdir $R"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT

head -c $((1 << 20)) /dev/zero > "$R/www/big"
cat > "$R/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $R/nginx.pid;
error_log $R/nginx.err warn;
events { worker_connections 8192; }
http {
  access_log off; client_body_temp_path $R/tmp; proxy_temp_path $R/tmp;
  fastcgi_temp_path $R/tmp; uwsgi_temp_path $R/tmp; scgi_temp_path $R/tmp;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$P_BACKEND; root $R/www; }
}
EOF
nginx -c "$R/nginx.conf" -e "$R/nginx.err" & PIDS+=($!)
cat > "$R/canary-lb.yaml" <<EOF
listen: [{ addr: "127.0.0.1:$P_CLB", h2c: true }]
metrics_listen: "127.0.0.1:$P_ADMIN"
threads: 2
grace_period: 1s
access_log: off
health_check: { kind: tcp, interval: 10s }
pools:
  production: { servers: ["127.0.0.1:$P_BACKEND"] }
  canary: { servers: [] }
client: { $CLIENT }
EOF
ulimit -n 65536 2>/dev/null || true
"$BIN" serve --config "$R/canary-lb.yaml" > "$R/canary-lb.log" 2>&1 & CLB=$!; PIDS+=($CLB)
for _ in $(seq 1 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$P_CLB/big" && break; sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$P_CLB/big" || die "canary-lb does not serve (see $R/canary-lb.log)"
rss() { awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$CLB/status"; }
upstream() { ss -Htn state established "( dport = :$P_BACKEND )" | wc -l; }
# A few normal requests so the idle figure includes warmed-up pools and buffers.
for _ in 1 2 3 4 5; do curl -s -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$P_CLB/big"; done
sleep 1
IDLE=$(rss)

python3 - "$P_CLB" "$CONNS" "$STREAMS" "$HOLD" > "$R/client.txt" 2>&1 <<'EOF' & CLIENT_PID=$!; PIDS+=($CLIENT_PID)
import socket, struct, sys, threading, time
port, conns, streams, hold = map(int, sys.argv[1:5])
heads = [0]; resets = [0]; lock = threading.Lock()
def frame(t, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload
# :method GET, :scheme http, :path /big (literal, indexed name 4), :authority bench
BLOCK = b"\x82\x86\x04\x04/big\x01\x05bench"
def run(end):
    s = socket.create_connection(("127.0.0.1", port))
    # SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream may get a byte of DATA.
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, struct.pack(">HI", 4, 0))
    out += b"".join(frame(1, 0x5, 1 + 2 * i, BLOCK) for i in range(streams))
    s.sendall(out)
    s.settimeout(0.5); buf = b""
    while time.time() < end:
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not d:
            break
        buf += d
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big"); t, fl = buf[3], buf[4]
            if len(buf) < 9 + n:
                break
            payload, buf = buf[9:9 + n], buf[9 + n:]
            if t == 4 and not fl & 1:
                s.sendall(frame(4, 1, 0))
            elif t == 6 and not fl & 1:
                s.sendall(frame(6, 1, 0, payload))
            elif t == 1:
                with lock: heads[0] += 1
            elif t == 3:
                with lock: resets[0] += 1
    s.close()
end = time.time() + hold
ts = [threading.Thread(target=run, args=(end,)) for _ in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
print(f"heads={heads[0]} resets={resets[0]}")
EOF

PEAK_RSS=$IDLE; PEAK_UP=0
END=$((SECONDS + HOLD + 5))
while kill -0 "$CLIENT_PID" 2>/dev/null && [ $SECONDS -lt $END ]; do
  r=$(rss); u=$(upstream)
  [ "$r" -gt "$PEAK_RSS" ] && PEAK_RSS=$r
  [ "$u" -gt "$PEAK_UP" ] && PEAK_UP=$u
  sleep 0.5
done
wait "$CLIENT_PID" 2>/dev/null
sleep 2
AFTER=$(rss)
echo "| conns x streams | client settings | idle RSS MB | peak RSS MB | peak upstream conns | heads, resets | RSS after MB |"
echo "|---|---|---|---|---|---|---|"
echo "| $CONNS x $STREAMS | ${CLIENT:-defaults} | $IDLE | $PEAK_RSS | $PEAK_UP | $(cat "$R/client.txt") | $AFTER |"
