#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for a while, starting from the checked-in seed corpus.
#   scripts/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]
# Installs cargo-fuzz if missing. libFuzzer needs nightly-only rustc flags; this machine has one
# stable toolchain, so RUSTC_BOOTSTRAP=1 unlocks them for the fuzz build only.
# New inputs found are kept in a scratch corpus (not the checked-in one), removed at exit unless
# FUZZ_SCRATCH=DIR names where to keep it (to pick small, interesting inputs for the seed corpus
# by hand). A crash leaves its input under fuzz/artifacts/TARGET/ and makes this script exit
# non-zero. Per target it prints the run count, time and corpus growth from libFuzzer's stats.
# What each target checks lives in fuzz/checks/TARGET.rs, which tests/tests/fuzz_short.rs also
# runs (over the corpus and mutants of it) in every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2; }
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(http_request chunked_body frame_decoder state_file)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

if [[ -n "${FUZZ_SCRATCH:-}" ]]; then
    scratch=$FUZZ_SCRATCH
    mkdir -p "$scratch"
else
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
fi
status=0
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    echo "==> fuzzing $target for ${seconds}s"
    log="$scratch/$target.log"
    if cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^Done [0-9]+ runs|stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb' "$log" || true
    else
        tail -40 "$log" >&2
        echo "!! $target failed: a crashing input is saved under fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
