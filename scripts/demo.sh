#!/usr/bin/env bash
# The main job: zero-downtime rolling upgrades under load, reproducible on one machine.
# Builds Zentinel (release), then runs scripts/loadtest.sh twice: first Zentinel alone on its
# embedded default config (no file needed) with one rolling upgrade under load, then a backend
# with Zentinel (2 workers) in front of it, ~20 s of keep-alive load through it, and two
# `zentinel-ctl upgrade --rolling --canary 2s` during the load. The last line is zentinel-load's summary
# (`requests=N failed=0 ...`). Every process is stopped at exit, also on Ctrl-C.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
usage: scripts/demo.sh [--duration S] [--rate RPS]

Zero-downtime rolling upgrades under load:
  1. cargo build --release --bins
  2. zentinel --check, then Zentinel on its embedded default configuration (127.0.0.1:8080,
     built-in response): 6 s of keep-alive load with one rolling upgrade during it
  3. scripts/loadtest.sh: zentinel-backend + Zentinel (2 workers) on loopback, keep-alive load
     (32 connections, open loop at RPS requests/s) for S seconds, and 2 canary-gated rolling
     upgrades (--canary 2s) to alternate copies of the binary during it; zentinel-ctl status before and after; the
     throughput during the upgrades vs steady state; the load summary, whose last line must
     show failed=0.

options:
  --duration S   load duration (default 20)
  --rate RPS     request rate (default 5000: well within a 2-core machine shared by the load
                 generator, the proxy and the backend)
  -h, --help     this help
EOF
}
bad_usage() {
    printf 'demo.sh: %s\n(see scripts/demo.sh --help)\n' "$1" >&2
    exit 2
}

duration=20 rate=5000
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --duration | --rate) (($# >= 2)) || bad_usage "$1 needs a value" ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || bad_usage "$1 must be a whole number >= 1 (got '$2')"
    case "$1" in
        --duration) duration="$2" ;;
        --rate) rate="$2" ;;
    esac
    shift 2
done
((duration >= 5)) || bad_usage "--duration must be >= 5 (two upgrades 1 s apart in the middle 60%)"

zt_init
cd "$ZT_ROOT"

cat <<EOF
Zentinel demo: rolling binary upgrades under load, with zero failed requests.
  - build the release binaries
  - validate the embedded default configuration (zentinel --check), run Zentinel on it
    (127.0.0.1:8080) and upgrade it once under 6 s of load
  - start a test backend and Zentinel (master + 2 workers) on 127.0.0.1, free ports
  - send ${duration}s of keep-alive HTTP load through Zentinel (32 connections, ${rate} req/s),
    every response body checked against its checksum
  - during the load, upgrade the running binary twice: zentinel-ctl upgrade --rolling --canary 2s
    (pre-flight checks of the new binary; the new master takes over the listeners; the first new
    worker serves for 2 s as a canary compared with the old one; then the other is replaced:
    new one ready, old one drains)
  - show status before/after, and the load summary: its last line must say failed=0
EOF

zt_build

zt_log "the embedded default configuration: zentinel --check"
env -u ZENTINEL_CONFIG "$(zt_bin zentinel)" --check

# loadtest.sh runs as our child in the background so that a SIGTERM to this script (not only
# Ctrl-C, which reaches both) stops it, and it stops everything it started.
loadtest_pid=""
# shellcheck disable=SC2317  # called by zt_cleanup
zt_before_cleanup() {
    if [[ -n "$loadtest_pid" ]] && zt_alive "$loadtest_pid"; then
        ZT_STOP_TIMEOUT=30 zt_stop_pid "$loadtest_pid" loadtest.sh
    fi
}

# run_loadtest ARGS...: scripts/loadtest.sh as our child in the background, so that a SIGTERM
# to this script (not only Ctrl-C, which reaches both) stops it and everything it started.
run_loadtest() {
    zt_log "scripts/loadtest.sh $*"
    ZENTINEL_PROFILE=release scripts/loadtest.sh "$@" &
    loadtest_pid=$!
    local rc=0
    wait "$loadtest_pid" || rc=$?
    loadtest_pid=""
    if ((rc != 0)); then
        printf '\ndemo FAILED: scripts/loadtest.sh exited %d (see above)\n' "$rc" >&2
        exit "$rc"
    fi
}

run_loadtest --embedded-config --duration 6 --upgrades 1 --connections 32 --rate "$rate" \
    --mode keepalive
run_loadtest --duration "$duration" --upgrades 2 --connections 32 --rate "$rate" --mode keepalive \
    --canary 2s
