#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run). Needs only a Rust toolchain.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests start the real `zentinel` and `zentinel-backend` binaries, which
# `cargo test` does not build for another crate's tests: build every binary first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
