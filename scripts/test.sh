#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what is missing, check the Pingora patch set,
# formatting and lints, then unit tests and integration tests (real redis-server, real proxy,
# real app servers), then the container image built from the Dockerfile and run with podman
# (deploy/container-test.sh). The image is built with the `image-check` cargo profile (release
# without fat LTO) so a cold build fits CI's budget; CARGO_PROFILE=release checks the image as
# it ships. CONTAINER_TEST=0 skips the container part (e.g. on a machine without podman).
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINER_TEST=${CONTAINER_TEST:-1}
# CI builds once from a clean checkout: incremental compilation state would only take disk.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
fi
disk() { if [ -n "${CI:-}" ]; then echo "test.sh: $1: $(df -h --output=avail . | tail -1) free"; fi; }
disk start
./scripts/setup.sh
./scripts/pingora-patches.sh check
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
disk "after cargo test"
if [ "$CONTAINER_TEST" = 1 ]; then
  CARGO_PROFILE=${CARGO_PROFILE:-image-check} ./deploy/container-test.sh
  disk "after container checks"
fi
