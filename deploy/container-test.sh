#!/usr/bin/env bash
# Build the canary-lb image from the top-level Dockerfile and check it for real with Podman:
# the container on the host network in front of demo app servers on loopback, then the core of
# deploy/compose.yaml (Redis, three self-registering app servers, two proxy replicas).
#
#   deploy/container-test.sh            # bases, build, check, compose (what scripts/test.sh runs)
#   deploy/container-test.sh bases      # only make sure the base images are there
#   deploy/container-test.sh build      # bases, then build the image and print its size
#   deploy/container-test.sh check      # bases, then the single-container checks on $IMAGE
#   deploy/container-test.sh compose    # bases, then the compose checks on $IMAGE
#   deploy/container-test.sh size       # what $IMAGE adds above its base
#
# Needs root, podman, runc, debootstrap, podman-compose (scripts/setup.sh installs them),
# python3 and curl. Base images: the real docker.io debian:bookworm-slim, rust:1-bookworm and
# redis:7-bookworm when they are present or can be pulled; otherwise stand-ins of the same names
# made from Debian packages (debootstrap), kept in the local image store and reused by later
# runs (rebuilt only when this script's recipe for them changes). Every container this script
# starts carries the label io.canary-lb.test and is removed on exit, failure included; every
# wait is bounded. Output: one `ok:` line per check, then `container-test: N passed, M failed`.
#
# Environment: IMAGE (tag to build, default localhost/canary-lb:test), CARGO_PROFILE (the
# Dockerfile's build argument: release by default, as real images are built; scripts/test.sh
# passes image-check, the same without fat LTO, so CI's cold build stays short), RUNTIME (OCI
# runtime, default runc when installed: crun refuses some hybrid cgroup layouts), DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."

PHASE=${1:-all}
IMAGE=${IMAGE:-localhost/canary-lb:test}
CARGO_PROFILE=${CARGO_PROFILE:-release}
DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
RUST_IMAGE=docker.io/library/rust:1-bookworm
REDIS_IMAGE=docker.io/library/redis:7-bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STANDIN_LABEL=io.canary-lb.standin
HOST_CA=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
TEST_LABEL=io.canary-lb.test
RUN_ID="$$"
# Every wait is bounded by one of these (seconds).
START_WAIT=60
STOP_GRACE=20

log() { printf '[container-test %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
fail() {
  printf '[container-test] FAIL: %s\n' "$*" >&2
  exit 1
}
PASSED=0
pass() {
  PASSED=$((PASSED + 1))
  printf '[container-test] ok: %s\n' "$*"
}

command -v podman >/dev/null || fail "podman not found (apt-get install podman runc debootstrap podman-compose, or scripts/setup.sh)"
command -v curl >/dev/null || fail "curl not found"
command -v python3 >/dev/null || fail "python3 not found"

# --- podman flags --------------------------------------------------------------------------
# Container limits no higher than this shell's own (podman's defaults are above them on some
# machines, where raising a limit is denied): nofile as here, nproc at most 4096 (plenty for a
# proxy's threads; higher values were refused on a machine whose own limit was 96365).
# phase_bases checks them and falls back to 1024:1024.
soft_limit() {
  local v
  v=$(ulimit "$1")
  if [ "$v" = unlimited ] || [ "$v" -gt "$2" ]; then echo "$2"; else echo "$v"; fi
}
NOFILE=$(soft_limit -n 65536)
NPROC=$(soft_limit -u 4096)
if [ -z "${RUNTIME:-}" ] && command -v runc >/dev/null; then RUNTIME=runc; fi
PODMAN=(podman)
[ -n "${RUNTIME:-}" ] && PODMAN+=(--runtime "$RUNTIME")
LIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")

WORK=$(mktemp -d /var/tmp/canary-lb-container-test.XXXXXX)
COMPOSE_UP=""
cleanup() {
  local rc=$?
  set +e
  local ids
  ids=$(podman ps -aq --filter "label=$TEST_LABEL=$RUN_ID")
  if [ -n "$ids" ] && [ "$rc" != 0 ]; then
    for id in $ids; do
      echo "--- logs of $(podman inspect -f '{{.Name}}' "$id") (last 30 lines)" >&2
      podman logs --tail 30 "$id" >&2 2>&1
    done
  fi
  if [ -n "$COMPOSE_UP" ]; then
    podman-compose "${COMPOSE_ARGS[@]}" down -t 2 >"$WORK/compose-down.log" 2>&1
  fi
  ids=$(podman ps -aq --filter "label=$TEST_LABEL=$RUN_ID")
  # shellcheck disable=SC2086
  [ -z "$ids" ] || podman rm -f -t 0 $ids >/dev/null 2>&1
  # podman-compose 1.0 leaves the project's network behind.
  [ -z "$COMPOSE_UP" ] || podman network rm -f "${COMPOSE_PROJECT}_default" >/dev/null 2>&1
  case "$WORK" in /var/tmp/canary-lb-container-test.*) rm -rf "$WORK" ;; esac
  log "done in ${SECONDS}s"
  echo "container-test: $PASSED passed, $([ "$rc" = 0 ] && echo 0 || echo 1) failed"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Containers and compose networks of an earlier run killed before its trap ran: those whose
# run (the label holds its pid) is gone. A network still in use is not removed.
podman ps -a --filter "label=$TEST_LABEL" --format "{{.ID}} {{index .Labels \"$TEST_LABEL\"}}" |
  while read -r id owner; do
    kill -0 "$owner" 2>/dev/null || podman rm -f -t 0 "$id" >/dev/null 2>&1 || true
  done
for net in $(podman network ls --format '{{.Name}}' | grep -E '^clb-test-[0-9]+_default$' || true); do
  podman network rm "$net" >/dev/null 2>&1 || true
done

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for WHAT SECONDS CMD...: run CMD every 0.2 s until it succeeds; fail after SECONDS.
wait_for() {
  local what=$1 secs=$2 deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

# run_ctr NAME ARGS...: a detached container on the host network, labelled for cleanup.
run_ctr() {
  local name=$1
  shift
  # stderr to a file: without systemd, podman complains on every run that it cannot set up
  # the periodic health checks (`podman healthcheck run` still works).
  "${PODMAN[@]}" run -d --name "clb-$RUN_ID-$name" --label "$TEST_LABEL=$RUN_ID" \
    --network host "${LIMITS[@]}" "$@" >/dev/null 2>"$WORK/run-$name.err" ||
    { cat "$WORK/run-$name.err" >&2; fail "podman run $name failed"; }
  echo "clb-$RUN_ID-$name"
}

# --- base images ---------------------------------------------------------------------------

# ensure_base IMAGE MAKER [INPUT]: use IMAGE when it is present (a stand-in only if made by the
# current recipe: MAKER's text and INPUT) or can be pulled; otherwise run MAKER to make one.
ensure_base() {
  local image=$1 maker=$2 want have
  want=$({ declare -f "$maker"; echo "${3:-}"; } | sha256sum | cut -c1-16)
  if podman image exists "$image"; then
    have=$(podman image inspect -f "{{index .Labels \"$STANDIN_LABEL\"}}" "$image" 2>/dev/null || true)
    if [ -z "$have" ] || [ "$have" = "<no value>" ]; then
      log "base $image: present (pulled)"
      return
    elif [ "$have" = "$want" ]; then
      log "base $image: cached stand-in ($want)"
      return
    fi
    log "base $image: stand-in of an older recipe ($have), rebuilding"
  elif timeout 120 podman pull -q "$image" >/dev/null 2>"$WORK/pull.log"; then
    log "base $image: pulled"
    return
  else
    log "base $image: cannot be pulled ($(tail -1 "$WORK/pull.log" | cut -c1-120)); making a stand-in"
  fi
  "$maker" "$want"
}

# debian:bookworm-slim: debootstrap's minbase, with the slim image's apt sources, its dpkg
# excludes (no docs, man pages or locales) and its apt settings (no package caches kept), so
# what a Dockerfile layer adds on it is what it adds on the real one. One layer.
standin_debian() {
  local tag=$1 root="$WORK/rootfs"
  command -v debootstrap >/dev/null || fail "debootstrap not found (apt-get install debootstrap)"
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  timeout 900 debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${DEBIAN_MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  tar -C "$root" --numeric-owner -c . |
    podman import --change 'CMD ["bash"]' --change "LABEL $STANDIN_LABEL=$tag" - "$DEBIAN_IMAGE" >/dev/null 2>"$WORK/import.log"
  rm -rf "$root"
  log "base $DEBIAN_IMAGE: stand-in made ($(podman image inspect -f '{{.Size}}' "$DEBIAN_IMAGE") bytes)"
}

# rust:1-bookworm: Rust from bookworm-security (rustc-web, cargo-web), a C toolchain and cmake,
# CARGO_HOME where the official image has it. It trusts this machine's CA bundle, so cargo can
# fetch crates where the registries are reached through a TLS-inspecting proxy.
standin_rust() {
  local tag=$1 ctx="$WORK/rust-standin"
  mkdir -p "$ctx"
  mkdir -p "$ctx/ca"
  [ ! -f "$HOST_CA" ] || cp "$HOST_CA" "$ctx/ca/host-ca-bundle.crt"
  cat >"$ctx/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && apt-get install -y --no-install-recommends ca-certificates rustc-web cargo-web \\
      gcc g++ libc6-dev make cmake pkg-config \\
 && rm -rf /var/lib/apt/lists/* \\
 && update-ca-certificates >/dev/null
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL $STANDIN_LABEL=$tag
EOF
  timeout 900 "${PODMAN[@]}" build -q --network host "${LIMITS[@]}" -t "$RUST_IMAGE" "$ctx" >"$WORK/rust-standin.log" 2>&1 ||
    { tail -30 "$WORK/rust-standin.log" >&2; fail "building the rust stand-in failed"; }
  log "base $RUST_IMAGE: stand-in made ($(podman run --rm "${LIMITS[@]}" "$RUST_IMAGE" rustc --version))"
}

# redis:7-bookworm (compose only): bookworm's redis-server (7.0) and redis-cli. Like the official
# image's entrypoint, `redis-server ARGS` gets --protected-mode no (no config file: other
# containers must reach it).
standin_redis() {
  local tag=$1 ctx="$WORK/redis-standin"
  mkdir -p "$ctx"
  cat >"$ctx/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update \\
 && apt-get install -y --no-install-recommends redis-server redis-tools \\
 && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
ENTRYPOINT ["sh", "-c", "if [ \"\$1\" = redis-server ]; then shift; exec redis-server \"\$@\" --protected-mode no; fi; exec \"\$@\"", "--"]
CMD ["redis-server"]
LABEL $STANDIN_LABEL=$tag
EOF
  timeout 900 "${PODMAN[@]}" build -q --network host "${LIMITS[@]}" -t "$REDIS_IMAGE" "$ctx" >"$WORK/redis-standin.log" 2>&1 ||
    { tail -30 "$WORK/redis-standin.log" >&2; fail "building the redis stand-in failed"; }
  log "base $REDIS_IMAGE: stand-in made"
}

phase_bases() {
  ensure_base "$DEBIAN_IMAGE" standin_debian
  if ! "${PODMAN[@]}" run --rm --network host "${LIMITS[@]}" "$DEBIAN_IMAGE" true 2>"$WORK/limits.log"; then
    log "limits ${LIMITS[*]} refused ($(tail -1 "$WORK/limits.log" | cut -c1-160)); using 1024:1024"
    LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
    "${PODMAN[@]}" run --rm --network host "${LIMITS[@]}" "$DEBIAN_IMAGE" true ||
      fail "podman cannot run a container here (runtime ${RUNTIME:-default})"
  fi
  log "podman: runtime ${RUNTIME:-default}, ${LIMITS[*]}"
  # A new debian base (another recipe, or pulled) makes a new rust stand-in.
  # So does another CA bundle on this machine.
  ensure_base "$RUST_IMAGE" standin_rust "$(podman image inspect -f '{{.Id}}' "$DEBIAN_IMAGE") $({ sha256sum <"$HOST_CA"; } 2>/dev/null)"
}

# --- the image -----------------------------------------------------------------------------

phase_build() {
  log "building $IMAGE from Dockerfile, cargo profile $CARGO_PROFILE (podman build --format docker: the OCI format drops HEALTHCHECK)"
  local t0=$SECONDS old new
  old=$(podman image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  timeout 2400 "${PODMAN[@]}" build --format docker --network host "${LIMITS[@]}" \
    --build-arg CARGO_PROFILE="$CARGO_PROFILE" \
    --build-arg CANARY_LB_COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || true)" \
    -t "$IMAGE" -f Dockerfile . \
    >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; fail "podman build failed (or took over 40 minutes)"; }
  new=$(podman image inspect -f '{{.Id}}' "$IMAGE")
  log "built $IMAGE in $((SECONDS - t0))s ($(grep -c -- '--> Using cache' "$WORK/build.log" || true) steps from the layer cache)"
  # The image this tag named before, now unnamed: drop it (kept while a container uses it).
  if [ -n "$old" ] && [ "$old" != "$new" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
  local hc
  hc=$(podman image inspect -f '{{json .Config.Healthcheck}}' "$IMAGE")
  case "$hc" in
    *'"canary-lb","health"'*) pass "HEALTHCHECK kept: $hc" ;;
    *) fail "the image has no canary-lb health HEALTHCHECK: $hc" ;;
  esac
  print_size
}

# What the image adds above its base (the runtime stage's layers).
print_size() {
  local total base layers base_layers bin
  total=$(podman image inspect -f '{{.Size}}' "$IMAGE")
  base=$(podman image inspect -f '{{.Size}}' "$DEBIAN_IMAGE")
  layers=$(podman image inspect -f '{{len .RootFS.Layers}}' "$IMAGE")
  base_layers=$(podman image inspect -f '{{len .RootFS.Layers}}' "$DEBIAN_IMAGE")
  log "image size: $((total / 1000000)) MB in all, $(((total - base) / 1000000)) MB above $DEBIAN_IMAGE ($((base / 1000000)) MB); its layers above the base:"
  podman history --format '{{.Size}}	{{.CreatedBy}}' "$IMAGE" | awk -F'\t' '$1 != "0B" && $1 != "0 B"' |
    head -n $((layers - base_layers)) | cut -c1-150 | sed 's/^/    /'
  bin=$("${PODMAN[@]}" run --rm --network none "${LIMITS[@]}" --entrypoint stat "$IMAGE" -c %s /usr/local/bin/canary-lb)
  log "  of which /usr/local/bin/canary-lb: $((bin / 1000000)) MB"
}

# --- the single container in front of app servers on loopback -------------------------------

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
# The body of a response; fails on a transport error or a status >= 400.
http_body() { curl -sf --max-time 10 "$@"; }
# json_field URL EXPR: EXPR (Python, on the parsed JSON `d`) of the JSON at URL.
json_field() {
  curl -sf --max-time 5 "$1" | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"
}
healthcheck() { podman healthcheck run "$1" >/dev/null 2>&1; }
# The output of a container's last health check that said anything.
last_health_output() {
  podman inspect -f '{{range .State.Health.Log}}{{.Output}}{{"\n"}}{{end}}' "$1" | grep . | tail -1
}

phase_check() {
  local p1 c1 lb_file lb_env adm adm_file dead
  p1=$(free_port) c1=$(free_port) lb_file=$(free_port) lb_env=$(free_port)
  adm=$(free_port) adm_file=$(free_port) dead=$(free_port)

  # Two demo app servers from the same image: production and canary.
  run_ctr app-prod "$IMAGE" app --listen "127.0.0.1:$p1" --name prod-1 --pool production >/dev/null
  run_ctr app-canary "$IMAGE" app --listen "127.0.0.1:$c1" --name canary-1 --pool canary >/dev/null
  wait_for "app servers on :$p1 and :$c1" "$START_WAIT" \
    sh -c "curl -sf --max-time 2 http://127.0.0.1:$p1/healthz && curl -sf --max-time 2 http://127.0.0.1:$c1/healthz"

  # The proxy: a config mounted read-only over the image's, and environment overrides that
  # move its listener and its admin listener away from what the file says.
  cat >"$WORK/lb.yaml" <<EOF
listen: "127.0.0.1:$lb_file"
metrics_listen: "127.0.0.1:$adm_file"
threads: 1
grace_period: 10s
health_check: { kind: http, path: /healthz, interval: 1s, timeout: 1s }
routing: { canary_percent: 0, salt: "container-test" }
pools:
  production: { servers: ["127.0.0.1:$p1"] }
  canary: { servers: ["127.0.0.1:$c1"] }
EOF
  chmod 644 "$WORK/lb.yaml"
  local lb
  lb=$(run_ctr lb -v "$WORK/lb.yaml:/etc/canary-lb/canary-lb.yaml:ro" \
    -e "CANARY_LB_LISTEN=127.0.0.1:$lb_env" -e "CANARY_LB_METRICS_LISTEN=127.0.0.1:$adm" \
    "$IMAGE")
  wait_for "the proxy container on :$lb_env" "$START_WAIT" curl -sf --max-time 2 "http://127.0.0.1:$lb_env/"

  # 1. A request flows through the container, routed by X-Canary: 1.
  local plain canary
  plain=$(http_body "http://127.0.0.1:$lb_env/hello")
  case "$plain" in *"pool=production server=prod-1"*) ;; *) fail "no header: expected production, got: $plain" ;; esac
  canary=$(http_body -H 'X-Canary: 1' "http://127.0.0.1:$lb_env/hello")
  case "$canary" in *"pool=canary server=canary-1"*) ;; *) fail "X-Canary: 1: expected canary, got: $canary" ;; esac
  pass "routing: no header -> '${plain%$'\n'}', X-Canary: 1 -> '${canary%$'\n'}'"

  # 2. Not root: the ids of the container's main process as the host sees them (no user
  #    namespace here, so they are the container's).
  local pid ids
  pid=$(podman inspect -f '{{.State.Pid}}' "$lb")
  ids=$(awk '/^Uid:/ {printf "uid %s ", $2} /^Gid:/ {printf "gid %s", $2}' "/proc/$pid/status")
  case "$ids" in
    "uid 10001 "*) pass "user: the proxy (host pid $pid, $(cat "/proc/$pid/comm")) runs as $ids (USER $(podman image inspect -f '{{.Config.User}}' "$IMAGE"))" ;;
    *) fail "the proxy runs as $ids, not uid 10001" ;;
  esac

  # 3. The mounted file and the overrides took effect: the file's pools serve (above), its
  #    canary_percent is in force, its listen and metrics_listen are replaced by the variables.
  local percent
  percent=$(json_field "http://127.0.0.1:$adm/status" 'd["routing"]["canary_percent"]')
  [ "$percent" = 0.0 ] || [ "$percent" = 0 ] || fail "canary_percent from the mounted file is not in force: $percent"
  [ "$(http_code "http://127.0.0.1:$lb_file/")" = 000 ] || fail "the file's listen :$lb_file answers despite CANARY_LB_LISTEN"
  [ "$(http_code "http://127.0.0.1:$adm_file/healthz")" = 000 ] || fail "the file's metrics_listen :$adm_file answers despite CANARY_LB_METRICS_LISTEN"
  [ "$(podman inspect -f '{{range .Mounts}}{{if eq .Destination "/etc/canary-lb/canary-lb.yaml"}}{{.RW}}{{end}}{{end}}' "$lb")" = false ] ||
    fail "the config is not mounted read-only"
  if podman exec -u 0 "$lb" sh -c ': >>/etc/canary-lb/canary-lb.yaml' 2>/dev/null; then fail "the mounted config is writable, even by root"; fi
  pass "config: mounted read-only (not writable even by root in the container), its pools and canary_percent $percent in force; CANARY_LB_LISTEN moved :$lb_file -> :$lb_env, CANARY_LB_METRICS_LISTEN moved :$adm_file -> :$adm"

  # 4. HEALTHCHECK: passes on the moved admin port; fails while the admin listener does not
  #    answer (the process stopped) and passes again after; fails where nothing listens.
  healthcheck "$lb" || fail "podman healthcheck run: unhealthy on :$adm ($(last_health_output "$lb"))"
  kill -STOP "$pid"
  if healthcheck "$lb"; then
    kill -CONT "$pid"
    fail "healthy while the proxy is stopped (SIGSTOP)"
  fi
  kill -CONT "$pid"
  local hung
  hung=$(last_health_output "$lb")
  wait_for "the healthcheck to pass again after SIGCONT" "$START_WAIT" healthcheck "$lb"
  # An app-server container from the image: its HEALTHCHECK probes the admin port of the
  # image's config, where nothing listens.
  local lone absent
  lone=$(run_ctr no-admin -e "CANARY_LB_METRICS_LISTEN=127.0.0.1:$dead" "$IMAGE" app --listen "127.0.0.1:$(free_port)")
  if healthcheck "$lone"; then fail "healthy without an admin listener on :$dead"; fi
  absent=$(last_health_output "$lone")
  pass "healthcheck: healthy on the moved admin port :$adm; unhealthy while it hangs ('$hung'), healthy after SIGCONT; unhealthy with no admin listener ('$absent')"

  # 5. podman stop (SIGTERM) during a slow request: the request finishes and the container
  #    exits 0 within the grace period (after -t seconds podman SIGKILLs: exit code 137).
  curl -s --max-time 30 -o "$WORK/slow.out" -w '%{http_code}' \
    "http://127.0.0.1:$lb_env/slow?ms=3000" >"$WORK/slow.code" &
  local curl_pid=$! t0 took code
  wait_for "the slow request in flight" 10 \
    sh -c "[ \"\$(curl -sf --max-time 2 http://127.0.0.1:$adm/status | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"in_flight\"])')\" = 1 ]"
  t0=$(date +%s%N)
  podman stop -t "$STOP_GRACE" "$lb" >/dev/null 2>&1
  took=$((($(date +%s%N) - t0) / 1000000))
  wait "$curl_pid" || true
  code=$(podman inspect -f '{{.State.ExitCode}}' "$lb")
  [ "$(cat "$WORK/slow.code")" = 200 ] || fail "the in-flight slow request got '$(cat "$WORK/slow.code")' across podman stop"
  grep -q "pool=production server=prod-1 path=/slow" "$WORK/slow.out" || fail "the slow response is incomplete: $(cat "$WORK/slow.out")"
  [ "$code" = 0 ] || fail "the container exited $code on podman stop (137: killed after ${STOP_GRACE}s)"
  pass "podman stop: the in-flight /slow?ms=3000 finished with 200, the container exited 0, ${took} ms after SIGTERM (grace_period 10s, podman stop -t $STOP_GRACE)"
}

# --- the compose stack's core ----------------------------------------------------------------

# compose_status PORT EXPR: EXPR on a replica's /status (see json_field).
compose_status() { json_field "http://127.0.0.1:$1/status" "$2"; }
# The names of the servers in rotation in POOL on the replica whose admin port is PORT.
in_rotation() {
  compose_status "$1" "' '.join(sorted(s['name'] for s in d['pools']['$2']['servers'] if s['in_rotation']))"
}
rotation_is() { [ "$(in_rotation "$1" "$2")" = "$3" ]; }
percent_is() {
  [ "$(compose_status "$1" "d['routing']['canary_percent'], d['routing']['canary_percent_from']")" = "$2" ]
}
# served_by URL HEADER...: the server= of the answer.
served_by() { http_body "${@:2}" "$1" | sed -n 's/.*server=\([^ ]*\).*/\1/p'; }

phase_compose() {
  for svc in redis app-prod-1 app-prod-2 app-canary-1 lb-1 lb-2; do
    grep -q "^  $svc:" deploy/compose.yaml || fail "deploy/compose.yaml has no service $svc"
  done
  command -v podman-compose >/dev/null || fail "podman-compose not found (apt-get install podman-compose)"
  # Service names resolve on a CNI network only with the dnsname plugin.
  if [ "$(podman info --format '{{.Host.NetworkBackend}}')" = cni ] &&
    ! [ -x /usr/lib/cni/dnsname ] && ! [ -x /usr/libexec/cni/dnsname ] && ! [ -x /opt/cni/bin/dnsname ]; then
    fail "podman uses CNI without the dnsname plugin: compose services cannot resolve each other (apt-get install golang-github-containernetworking-plugin-dnsname)"
  fi
  ensure_base "$REDIS_IMAGE" standin_redis "$(podman image inspect -f '{{.Id}}' "$DEBIAN_IMAGE")"
  # The file's image name, so podman-compose runs the image just built instead of building.
  podman tag "$IMAGE" localhost/canary-lb:local

  export LB_1_PORT LB_1_ADMIN_PORT LB_2_PORT LB_2_ADMIN_PORT
  LB_1_PORT=$(free_port) LB_1_ADMIN_PORT=$(free_port) LB_2_PORT=$(free_port) LB_2_ADMIN_PORT=$(free_port)
  COMPOSE_PROJECT="clb-test-$RUN_ID"
  COMPOSE_ARGS=(-p "$COMPOSE_PROJECT" -f deploy/compose.yaml
    --podman-run-args "--label $TEST_LABEL=$RUN_ID ${LIMITS[*]}")
  [ -n "${RUNTIME:-}" ] && COMPOSE_ARGS+=(--podman-args "--runtime $RUNTIME")
  # Prometheus and Grafana stay out: no stand-ins for their images.
  log "podman-compose up: redis, app-prod-1, app-prod-2, app-canary-1, lb-1 (:$LB_1_PORT, admin :$LB_1_ADMIN_PORT), lb-2 (:$LB_2_PORT, admin :$LB_2_ADMIN_PORT)"
  COMPOSE_UP=1
  timeout 300 podman-compose "${COMPOSE_ARGS[@]}" up -d redis app-prod-1 app-prod-2 app-canary-1 lb-1 lb-2 \
    >"$WORK/compose-up.log" 2>&1 || { tail -30 "$WORK/compose-up.log" >&2; fail "podman-compose up failed"; }

  # 1. Both replicas follow Redis: every registered app in rotation, and both serve them.
  local admin port
  for admin in "$LB_1_ADMIN_PORT" "$LB_2_ADMIN_PORT"; do
    wait_for "replica :$admin to have both production apps in rotation" "$START_WAIT" \
      rotation_is "$admin" production "app-prod-1:3000 app-prod-2:3000"
    wait_for "replica :$admin to have the canary app in rotation" "$START_WAIT" \
      rotation_is "$admin" canary "app-canary-1:3000"
  done
  local seen
  for port in "$LB_1_PORT" "$LB_2_PORT"; do
    [ "$(served_by "http://127.0.0.1:$port/" -H 'X-Canary: 1')" = canary-1 ] ||
      fail "replica :$port: X-Canary: 1 not served by canary-1"
    seen=""
    for _ in 1 2 3 4 5 6; do seen="$seen $(served_by "http://127.0.0.1:$port/" -H 'X-Canary: 0')"; done
    case "$seen" in *prod-1*prod-2* | *prod-2*prod-1*) ;; *) fail "replica :$port: production requests went to:$seen" ;; esac
  done
  pass "compose: both replicas have app-prod-1, app-prod-2 and app-canary-1 (self-registered in Redis) in rotation and serve them (X-Canary: 0 ->$seen; X-Canary: 1 -> canary-1)"

  # 2. ctl canary set on one replica's container applies on both.
  podman exec "${COMPOSE_PROJECT}_lb-1_1" canary-lb ctl canary set 30 >"$WORK/ctl.log" 2>&1 ||
    { cat "$WORK/ctl.log" >&2; fail "ctl canary set 30 failed"; }
  for admin in "$LB_1_ADMIN_PORT" "$LB_2_ADMIN_PORT"; do
    wait_for "replica :$admin to use canary_percent 30 from Redis" "$START_WAIT" percent_is "$admin" "30.0 redis"
  done
  pass "compose: 'canary-lb ctl canary set 30' (podman exec in lb-1) is in force on both replicas (/status: canary_percent 30.0 from redis)"

  # 3. A stopped app server leaves rotation on both replicas, and requests go elsewhere.
  podman stop -t 10 "${COMPOSE_PROJECT}_app-prod-2_1" >/dev/null 2>&1
  for admin in "$LB_1_ADMIN_PORT" "$LB_2_ADMIN_PORT"; do
    wait_for "replica :$admin to take the stopped app-prod-2 out of rotation" "$START_WAIT" \
      rotation_is "$admin" production "app-prod-1:3000"
  done
  for port in "$LB_1_PORT" "$LB_2_PORT"; do
    seen=""
    for _ in 1 2 3 4; do seen="$seen $(served_by "http://127.0.0.1:$port/" -H 'X-Canary: 0')"; done
    [ "$seen" = " prod-1 prod-1 prod-1 prod-1" ] || fail "replica :$port: after app-prod-2 stopped, production went to:$seen"
  done
  pass "compose: podman stop app-prod-2 -> out of rotation on both replicas; production requests all served by prod-1"

  # 4. The health checks of the stack: the proxies' (image HEALTHCHECK) and the apps' and
  #    Redis's (compose healthcheck, CMD-SHELL).
  local svc
  for svc in lb-1 lb-2 app-prod-1 app-canary-1 redis; do
    healthcheck "${COMPOSE_PROJECT}_${svc}_1" || fail "compose: $svc unhealthy ($(last_health_output "${COMPOSE_PROJECT}_${svc}_1"))"
  done
  pass "compose: podman healthcheck run passes on lb-1, lb-2, app-prod-1, app-canary-1, redis"
}

case "$PHASE" in
  bases) phase_bases ;;
  build) phase_bases; phase_build ;;
  check) phase_bases; phase_check ;;
  compose) phase_bases; phase_compose ;;
  redis) phase_bases; ensure_base "$REDIS_IMAGE" standin_redis "$(podman image inspect -f '{{.Id}}' "$DEBIAN_IMAGE")" ;;
  size) print_size ;;
  all) phase_bases; phase_build; phase_check; phase_compose ;;
  *) fail "unknown phase $PHASE (all, bases, build, check, compose, size)" ;;
esac
