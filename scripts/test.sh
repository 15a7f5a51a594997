#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what is missing, check formatting and lints,
# then unit tests and integration tests (real redis-server, real proxy, real app servers), then
# the container image built and run with podman (CONTAINER_TEST=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
[ "${CONTAINER_TEST:-1}" = 0 ] || ./deploy/container-test.sh
