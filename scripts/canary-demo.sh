#!/usr/bin/env bash
# The upgrade safety net, end to end under load: pre-flight (dry run), a canary-gated rolling
# upgrade to a healthy build that passes, then one to a build that answers 500 to everything,
# which the canary catches and rolls back. Reproduces the README's upgrade-flow examples.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
usage: scripts/canary-demo.sh [--canary DUR] [--rate RPS] [--debug]

A zentinel-backend, Zentinel (2 workers) in front of it and keep-alive load through it
(zentinel-load, open loop at RPS requests/s) during three steps:
  1. zentinel-ctl upgrade --rolling --canary DUR --dry-run   (pre-flight and plan only)
  2. zentinel-ctl upgrade --rolling --canary DUR              to a healthy copy: must pass
  3. the same to a copy armed with ZENTINEL_FAULT_INJECTION=respond-500 (its workers answer
     500 to every request): the canary must fail, roll back, and the command exit 1
Then checks that every worker is back on the healthy copy, that no request failed outside
step 3 (until the rolled-back canary exited), and prints the load summary.

options:
  --canary DUR   canary window (default 5s)
  --rate RPS     request rate (default 2000)
  --debug        use target/debug binaries without building (built with
                 --features zentinel-master/fault-injection, as scripts/test.sh does);
                 default: cargo build --release --features zentinel-master/fault-injection
  -h, --help     this help

Exit status: 0 when every step did what it must; 1 otherwise; 2 on a usage error.
EOF
}
bad_usage() {
    printf 'canary-demo.sh: %s\n(see scripts/canary-demo.sh --help)\n' "$1" >&2
    exit 2
}

canary=5s rate=2000
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --debug) zt_use_profile debug; shift; continue ;;
        --canary | --rate) (($# >= 2)) || bad_usage "$1 needs a value" ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
    case "$1" in
        --canary) canary="$2" ;;
        --rate) rate="$2" ;;
    esac
    shift 2
done
[[ "$canary" =~ ^[0-9]+(\.[0-9]+)?(ms|s|m)?$ ]] || bad_usage "--canary must be a duration like 5s (got '$canary')"
[[ "$rate" =~ ^[1-9][0-9]*$ ]] || bad_usage "--rate must be a whole number >= 1 (got '$rate')"

zt_init
cd "$ZT_ROOT"
# Step 3's bad build is armed through the test-only fault switch, compiled in by this feature.
zt_build zentinel-master/fault-injection
"$(zt_bin zentinel)" --version --json | grep -q '"fault-injection"' ||
    zt_die "$(zt_bin zentinel) has no fault injection; build it with --features zentinel-master/fault-injection"

zt_log "starting zentinel-backend"
zt_start_backend backend
zt_info "backend pid $ZT_BACKEND_PID on $ZT_BACKEND_ADDR"

# Three copies: the one running, a healthy new build, and a "bad build" (the same binary, armed
# by path through the test switch, so the real code path runs and only that copy misbehaves).
bin_old="$ZT_TMP/zentinel-old"
bin_new="$ZT_TMP/zentinel-new"
bin_bad="$ZT_TMP/zentinel-bad"
for b in "$bin_old" "$bin_new" "$bin_bad"; do cp "$(zt_bin zentinel)" "$b"; done
export ZENTINEL_FAULT_INJECTION="respond-500@$bin_bad"

config="$ZT_TMP/zentinel.kdl"
zt_write_config "$config" "$ZT_BACKEND_ADDR" "$ZT_TMP/zentinel.sock" 2
zt_log "starting zentinel (2 workers) from $bin_old"
zt_start_zentinel "$config" "$bin_old"
zt_info "listening on $ZT_ADDR, control socket $ZT_SOCK, log $ZT_LOG"

# Long enough for the three steps; stopped (SIGTERM: it prints its report) once they are done.
load_args=(--addr "$ZT_ADDR" -c 16 -t 1 -d 300s --rate "$rate" --timeline-csv "$ZT_TMP/timeline.csv")
zt_log "load: zentinel-load ${load_args[*]}"
load_start=$(zt_now_ms)
"$(zt_bin zentinel-load)" "${load_args[@]}" >"$ZT_TMP/load.out" 2>&1 &
load_pid=$!
zt_register_pid "$load_pid" zentinel-load
zt_sleep_until $((load_start + 2000)) "$load_pid" || zt_die "zentinel-load exited early: $(cat "$ZT_TMP/load.out")"

problems=()

# step N TITLE EXPECTED_RC ARGS...: one zentinel-ctl upgrade, printed with its timing.
step() {
    local n="$1" title="$2" want="$3" rc=0 t0 t1 out
    shift 3
    zt_log "step $n: $title"
    zt_info "\$ zentinel-ctl upgrade $*"
    t0=$(zt_now_ms)
    out="$(timeout 120 "$(zt_bin zentinel-ctl)" --socket "$ZT_SOCK" upgrade "$@" 2>&1)" || rc=$?
    t1=$(zt_now_ms)
    printf '    %s\n' "${out//$'\n'/$'\n'    }"
    zt_info "(exit $rc after $((t1 - t0)) ms)"
    ((rc == want)) || problems+=("step $n: zentinel-ctl upgrade exited $rc, expected $want")
    STEP_START=$t0 STEP_END=$t1
}

step 1 "pre-flight and plan only" 0 --rolling --binary "$bin_new" --canary "$canary" --dry-run
step 2 "canary-gated rolling upgrade to a healthy build" 0 --rolling --binary "$bin_new" --canary "$canary"
step 3 "the same to a build whose workers answer 500" 1 --rolling --binary "$bin_bad" --canary "$canary"
bad_start=$STEP_START

# The rolled-back canary drains like any replaced worker: the keep-alive connections it still
# holds get one last answer (with `Connection: close`), a 500 from this build. Its window ends
# when it exits.
bad_pids=()
while read -r _ pid _ wbin state; do
    [[ "$wbin" == "$bin_bad" ]] && bad_pids+=("$pid")
done < <(zt_status_workers "$(zt_ctl status --json)")
deadline=$(($(zt_now_ms) + 15000))
for pid in "${bad_pids[@]}"; do
    while zt_alive "$pid" && (($(zt_now_ms) < deadline)); do sleep 0.05; done
    zt_alive "$pid" && problems+=("the rolled-back canary pid $pid still runs 15 s later")
done
bad_end=$(zt_now_ms)
zt_info "the rolled-back canary (pid ${bad_pids[*]:-none}) exited $((bad_end - STEP_END)) ms after the command returned"

zt_log "zentinel-ctl status (after the rollback)"
zt_ctl status
while read -r id pid _ wbin state; do
    [[ "$state" == running ]] || continue
    [[ "$wbin" == "$bin_new" ]] || problems+=("worker $id (pid $pid) runs $wbin after the rollback, expected $bin_new")
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || echo gone)"
    [[ "$exe" == "$bin_new" ]] || problems+=("worker $id (pid $pid) executes $exe, expected $bin_new")
done < <(zt_status_workers "$(zt_ctl status --json)")

# A few more seconds of load on the rolled-back workers: nothing may fail any more.
zt_sleep_until $(($(zt_now_ms) + 3000)) "$load_pid" || problems+=("zentinel-load exited early")
zt_stop_pid "$load_pid" zentinel-load
zt_unregister_pid "$load_pid"

zt_log "failed requests by phase (from --timeline-csv, 100 ms buckets)"
read -r during outside < <(awk -F, -v s="$bad_start" -v e="$bad_end" '
    NR > 1 { if ($2 + 100 > s && $2 < e) d += $4; else o += $4 }
    END { printf "%d %d\n", d, o }' "$ZT_TMP/timeline.csv")
zt_info "while the bad canary served (step 3, until it exited): $during; at any other time: $outside"
((outside == 0)) || problems+=("$outside requests failed outside the bad canary's window")
((during > 0)) || problems+=("no request met the bad canary: the demo proves nothing")

zt_report_checks "the healthy build passed its canary, the 500 build was rolled back, every worker runs the healthy build, and requests failed only while the bad canary served"
