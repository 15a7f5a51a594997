#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what is missing, check formatting and lints,
# then unit tests and integration tests (real redis-server, real proxy, real app servers).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/pingora-patches.sh check
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
