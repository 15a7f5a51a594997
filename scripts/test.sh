#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what is missing, check formatting and lints,
# then unit tests and integration tests (real redis-server, real proxy, real app servers), then
# with CONTAINER_TEST=1, the container image built and run with podman (deploy/container-test.sh;
# not yet part of CI: a cold run takes about 15 minutes here).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/pingora-patches.sh check
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
if [ "${CONTAINER_TEST:-0}" = 1 ]; then
  ./deploy/container-test.sh
fi
