#!/usr/bin/env bash
# Install what building and testing canary-lb needs on Debian/Ubuntu, skipping what is there:
# cmake and a C compiler (Pingora builds zlib-ng), redis-server (integration tests, demo stack),
# curl, and for the container checks (deploy/container-test.sh) podman, runc, debootstrap and
# podman-compose (with CONTAINER_TEST=1, which scripts/test.sh sets by default). Run as root or
# with sudo available. Rust itself comes from rustup (rustc >= 1.95, Cargo.toml's rust-version).
set -euo pipefail

need=()
optional=() # installed where the distribution has them
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v redis-server >/dev/null || need+=(redis-server)
# redis-cli --cluster create (tests/common/redis_cluster.rs); Debian's redis-server depends on it.
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v curl >/dev/null || need+=(curl)
command -v pkg-config >/dev/null || need+=(pkg-config)
# promtool (tests/deploy_kit.rs: alert rules and a live scrape); Debian ships it in `prometheus`.
command -v promtool >/dev/null || need+=(prometheus)
if [ "${CONTAINER_TEST:-0}" = 1 ]; then
  command -v podman >/dev/null || need+=(podman)
  # Debian's podman takes crun or runc; crun refuses some machines' hybrid cgroup layout.
  command -v runc >/dev/null || need+=(runc)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
  command -v podman-compose >/dev/null || need+=(podman-compose)
  command -v python3 >/dev/null || need+=(python3)
  # Compose services find each other by name on a CNI network (bookworm's podman) only with
  # the dnsname plugin; distributions whose podman uses netavark do not have the package.
  [ -e /usr/lib/cni/dnsname ] || optional+=(golang-github-containernetworking-plugin-dnsname)
fi
if [ "${WITH_BENCH:-0}" = 1 ]; then
  command -v nginx >/dev/null || need+=(nginx)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v wrk >/dev/null || need+=(wrk)
  command -v bc >/dev/null || need+=(bc)
  command -v valgrind >/dev/null || need+=(valgrind)
  # h2load (benches/scaling.sh: a fixed offered load)
  command -v h2load >/dev/null || need+=(nghttp2-client)
fi

if [ ${#need[@]} -gt 0 ] || [ ${#optional[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  for pkg in "${optional[@]}"; do
    apt-cache show "$pkg" >/dev/null 2>&1 && need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found. Install Rust with rustup (https://rustup.rs), then re-run." >&2
  exit 1
fi
echo "setup: ok ($(cargo --version), $(cmake --version | head -1), $(redis-server --version | cut -d' ' -f1-3))"
