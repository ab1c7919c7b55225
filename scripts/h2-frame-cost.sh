#!/usr/bin/env bash
# Issue 16's evaluation: the CPU time, heap allocations and output bytes per HTTP/2 request of
# the h2 crate driven as worker/src/http2/conn.rs drives it, against a frame layer written over
# an HPACK crate (loona-hpack, as sozu's mux used; httlib-hpack for comparison). The same
# client bytes (recorded once from the h2 client) are fed to every path, in memory, and every
# path's responses are decoded and counted, so a broken path fails the run instead of looking
# fast. See worker/examples/h2_frame_cost/main.rs and docs/design/http2.md.
#
#   scripts/h2-frame-cost.sh [--requests N] [--runs R] [--only TEXT]
#
# Defaults: 100000 requests per case, 3 runs (the table shows medians). Builds the example with
# --release and prints a Markdown table. Not part of scripts/test.sh (the example's unit tests
# run under `cargo test`). Run it on a quiet machine: the numbers are CPU time of this process.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
esac

printf '==> building (release)\n' >&2
cargo build --release -p zentinel-worker --example h2_frame_cost >&2
target=${CARGO_TARGET_DIR:-target}
printf '==> %s, %s CPUs, load %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "$target/release/examples/h2_frame_cost" "$@"
