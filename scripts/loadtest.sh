#!/usr/bin/env bash
# Load test with rolling upgrades: a zentinel-backend, Zentinel (2 workers) in front of it,
# zentinel-load through Zentinel, and K `zentinel-ctl upgrade --rolling` in the middle of the
# load, alternating between two copies of the binary. Exits non-zero on any failed request,
# any failed upgrade, or processes that did not change as expected.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
usage: scripts/loadtest.sh [options]

Starts zentinel-backend and Zentinel (2 workers) on loopback (or Zentinel alone on its
embedded default configuration, --embedded-config), runs zentinel-load through
Zentinel, and triggers K rolling upgrades (`zentinel-ctl upgrade --rolling --binary COPY`,
alternating between two copies of the zentinel binary) spaced evenly between 20% and 80% of
the load. Prints each upgrade's output and timing, `zentinel-ctl status` before and after, the
throughput during the upgrade windows versus steady state, and the zentinel-load summary.

options:
  --duration S          load duration in seconds (default 10)
  --connections N       concurrent connections (default 32)
  --threads N           zentinel-load event-loop threads (default 2)
  --upgrades K          rolling upgrades during the load (default 2; 0 = none)
  --mode keepalive|close  reuse connections (default) or a new connection per request
  --body BYTES          response size asked of the backend (GET) or upload size (POST) (default 1024)
  --method GET|POST     default GET
  --rate RPS            open loop at RPS requests/s in total (default: closed loop, as fast as possible)
  --canary DUR          gate each upgrade on a canary (`upgrade --rolling --canary DUR`): the first
                        new worker serves alone for DUR and must not fail more than the old ones
  --embedded-config     run Zentinel on its embedded default configuration (127.0.0.1:8080,
                        a built-in static response, one worker per CPU) instead of in front of
                        a zentinel-backend; responses are checked by status and framing only
  --debug               use target/debug binaries without building (as CI does); also
                        ZENTINEL_PROFILE=debug. Default: cargo build --release --bins
  -h, --help            this help

Exit status: 0 when no request failed, every upgrade succeeded and every process was replaced
as expected; 1 otherwise; 2 on a usage error. ZT_KEEP_TMP=1 keeps the temp dir (logs).
EOF
}

bad_usage() {
    printf 'loadtest.sh: %s\n(see scripts/loadtest.sh --help)\n' "$1" >&2
    exit 2
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
positive() {
    if ! is_uint "$2" || ((10#$2 < 1)); then bad_usage "$1 must be a whole number >= 1 (got '$2')"; fi
}

duration=10 connections=32 threads=2 upgrades=2 mode=keepalive body=1024 method=GET rate=""
canary=""
embedded=""
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --debug) zt_use_profile debug; shift; continue ;;
        --embedded-config) embedded=1; shift; continue ;;
        --duration | --connections | --threads | --upgrades | --mode | --body | --method | --rate | --canary)
            (($# >= 2)) || bad_usage "$1 needs a value" ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
    case "$1" in
        --duration) duration="$2" ;;
        --connections) connections="$2" ;;
        --threads) threads="$2" ;;
        --upgrades) upgrades="$2" ;;
        --mode) mode="$2" ;;
        --body) body="$2" ;;
        --method) method="$2" ;;
        --rate) rate="$2" ;;
        --canary) canary="$2" ;;
    esac
    shift 2
done
positive --duration "$duration"
positive --connections "$connections"
positive --threads "$threads"
is_uint "$upgrades" || bad_usage "--upgrades must be a whole number (got '$upgrades')"
is_uint "$body" || bad_usage "--body must be a number of bytes (got '$body')"
[[ "$mode" == keepalive || "$mode" == close ]] || bad_usage "--mode must be keepalive or close"
[[ "$method" == GET || "$method" == POST ]] || bad_usage "--method must be GET or POST"
[[ -z "$rate" ]] || positive --rate "$rate"
[[ -z "$canary" || "$canary" =~ ^[0-9]+(\.[0-9]+)?(ms|s|m)?$ ]] || bad_usage "--canary must be a duration like 2s (got '$canary')"
upgrade_args=(--rolling)
[[ -z "$canary" ]] || upgrade_args+=(--canary "$canary")
if ((upgrades > 0 && duration * 600 / upgrades < 1000)); then
    bad_usage "$upgrades upgrades do not fit in the middle 60% of ${duration}s (need >= 1 s apart)"
fi

zt_init
cd "$ZT_ROOT"
zt_build

if [[ -z "$embedded" ]]; then
    zt_log "starting zentinel-backend"
    zt_start_backend backend
    zt_info "backend pid $ZT_BACKEND_PID on $ZT_BACKEND_ADDR"
fi

# Two copies of the binary in the temp dir, upgraded to alternately: the point is to show a
# different binary path each time, and copies are immune to a rebuild of target/ meanwhile.
bin_a="$ZT_TMP/zentinel-a"
bin_b="$ZT_TMP/zentinel-b"
cp "$(zt_bin zentinel)" "$bin_a"
cp "$(zt_bin zentinel)" "$bin_b"

if [[ -n "$embedded" ]]; then
    zt_log "starting zentinel on its embedded default configuration from $bin_a"
    zt_start_zentinel "" "$bin_a"
else
    zt_log "starting zentinel (2 workers) from $bin_a"
    config="$ZT_TMP/zentinel.kdl"
    zt_write_config "$config" "$ZT_BACKEND_ADDR" "$ZT_TMP/zentinel.sock" 2
    zt_start_zentinel "$config" "$bin_a"
fi
zt_info "listening on $ZT_ADDR ($ZT_WORKERS workers), control socket $ZT_SOCK, log $ZT_LOG"

zt_log "zentinel-ctl status (before)"
zt_ctl status

load_args=(--addr "$ZT_ADDR" -c "$connections" -t "$threads" -d "${duration}s" --mode "$mode"
    --method "$method" --body "$body" --timeline-csv "$ZT_TMP/timeline.csv")
[[ -n "$rate" ]] && load_args+=(--rate "$rate")
# The embedded configuration answers every path with its static response: no checksum to check.
[[ -z "$embedded" ]] || load_args+=(--path / --verify status)
zt_log "load: zentinel-load ${load_args[*]} (${upgrades} rolling upgrade(s) during it)"
load_start=$(zt_now_ms)
"$(zt_bin zentinel-load)" "${load_args[@]}" >"$ZT_TMP/load.out" 2>&1 &
load_pid=$!
zt_register_pid "$load_pid" zentinel-load

# Interrupted: stop the load first (SIGTERM makes zentinel-load print its report) and show it.
# shellcheck disable=SC2317  # called by zt_cleanup
zt_before_cleanup() {
    if [[ -n "${load_pid:-}" ]] && zt_alive "$load_pid"; then
        zt_stop_pid "$load_pid" zentinel-load
        printf '\n==> load summary so far (zentinel-load, stopped early)\n'
        cat "$ZT_TMP/load.out"
    fi
}

problems=()
windows=""
old_worker_pids=()

# check_upgrade BEFORE_JSON AFTER_JSON BINARY: the master and every running worker must be new
# processes on BINARY, one generation up.
check_upgrade() {
    local before="$1" after="$2" bin="$3" n="$4"
    local m_pid0 m_gen0 m_pid1 m_gen1 m_bin1 old_pids running=0 id pid gen wbin state
    read -r m_pid0 m_gen0 _ <<<"$(zt_status_master "$before")"
    read -r m_pid1 m_gen1 m_bin1 <<<"$(zt_status_master "$after")"
    [[ "$m_pid1" != "$m_pid0" ]] || problems+=("upgrade $n: master pid unchanged ($m_pid0)")
    [[ "$m_bin1" == "$bin" ]] || problems+=("upgrade $n: master binary is $m_bin1, expected $bin")
    [[ "$m_gen1" == $((m_gen0 + 1)) ]] || problems+=("upgrade $n: generation $m_gen0 -> $m_gen1, expected +1")
    old_pids=" $(zt_status_workers "$before" | awk '{printf "%s ", $2}')"
    while read -r id pid gen wbin state; do
        [[ "$state" == running ]] || continue
        running=$((running + 1))
        [[ "$old_pids" != *" $pid "* ]] || problems+=("upgrade $n: worker $id still has pid $pid")
        [[ "$wbin" == "$bin" ]] || problems+=("upgrade $n: worker $id (pid $pid) runs $wbin, expected $bin")
        [[ "$gen" == "$m_gen1" ]] || problems+=("upgrade $n: worker $id (pid $pid) generation $gen, expected $m_gen1")
    done < <(zt_status_workers "$after")
    ((running == ZT_WORKERS)) || problems+=("upgrade $n: $running running workers after the upgrade, expected $ZT_WORKERS")
    # shellcheck disable=SC2206  # pids are plain numbers
    old_worker_pids+=($old_pids)
}

for ((i = 1; i <= upgrades; i++)); do
    # Evenly spaced inside [20%, 80%] of the load: centre of the i-th of K equal slots.
    at=$((load_start + duration * (200 + 600 * (2 * i - 1) / (2 * upgrades))))
    if ! zt_sleep_until "$at" "$load_pid"; then
        problems+=("zentinel-load ended before upgrade $i was due")
        break
    fi
    ((i % 2 == 1)) && bin="$bin_b" || bin="$bin_a"
    before="$(zt_ctl status --json)"
    t0=$(zt_now_ms)
    rc=0
    out="$(timeout 120 "$(zt_bin zentinel-ctl)" --socket "$ZT_SOCK" upgrade "${upgrade_args[@]}" --binary "$bin" 2>&1)" || rc=$?
    t1=$(zt_now_ms)
    windows+="$t0:$t1 "
    zt_log "upgrade $i/$upgrades to $bin: t=$(zt_secs $((t0 - load_start)))s .. t=$(zt_secs $((t1 - load_start)))s ($((t1 - t0)) ms), exit $rc"
    printf '    %s\n' "${out//$'\n'/$'\n'    }"
    if ((rc != 0)); then
        problems+=("upgrade $i: zentinel-ctl upgrade exited $rc")
        continue
    fi
    check_upgrade "$before" "$(zt_ctl status --json)" "$bin" "$i"
done

zt_log "waiting for zentinel-load to finish (${duration}s in total)"
load_rc=0
wait "$load_pid" || load_rc=$?
zt_unregister_pid "$load_pid"
((load_rc == 0)) || problems+=("zentinel-load exited $load_rc")

# Replaced workers drain (keep-alive clients get `Connection: close`) and must exit.
if ((${#old_worker_pids[@]})); then
    deadline=$(($(zt_now_ms) + 15000))
    for pid in "${old_worker_pids[@]}"; do
        while zt_alive "$pid" && (($(zt_now_ms) < deadline)); do sleep 0.05; done
        if zt_alive "$pid"; then problems+=("replaced worker pid $pid still running 15 s after the load"); fi
    done
fi

zt_log "zentinel-ctl status (after)"
zt_ctl status

zt_log "throughput during the upgrade windows vs steady state (from --timeline-csv, 100 ms buckets)"
zt_window_rps "$ZT_TMP/timeline.csv" "$windows" $((duration * 1000))

zt_report_checks "every upgrade exited 0 and replaced the master and every worker (new pids, new binary)"
