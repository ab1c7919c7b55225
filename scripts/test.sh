#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run). Needs a Rust toolchain; the clients the
# end-to-end tests drive (curl, openssl, h2load, Python's grpcio and h2) are installed by
# scripts/test-deps.sh.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests start the real `zentinel` and `zentinel-backend` binaries, which
# `cargo test` does not build for another crate's tests: build every binary first. With the
# test-only faults (ZENTINEL_FAULT_INJECTION) compiled in: the upgrade tests arm them; the
# default build (no features) has none. `cargo test` gets the same features, so the crates
# are not built twice.
features=(--features zentinel-master/fault-injection)
scripts/test-deps.sh
# The gRPC and HTTP/2 upstream tests run grpcio and h2 from the venv test-deps.sh made.
export ZENTINEL_TEST_PYTHON="${ZENTINEL_TEST_VENV:-$HOME/.cache/zentinel-test-venv}/bin/python"
cargo build --workspace --bins "${features[@]}"
status=0
cargo test --workspace --no-fail-fast "${features[@]}" "$@" || status=$?

# The harness itself, end to end on the debug binaries just built: a few seconds of keep-alive
# load through Zentinel with one rolling upgrade in the middle; fails on any failed request.
# Runs even when a cargo test failed (like --no-fail-fast); the exit status reports both.
# (CARGO_TARGET_DIR is honoured by the script.)
scripts/loadtest.sh --debug --duration 6 --upgrades 1 --connections 8 || status=$?
exit "$status"
