# shellcheck shell=bash
# shellcheck disable=SC2034  # globals (ZT_BACKEND_ADDR, ...) are read by the sourcing scripts
# Shared helpers for the harness scripts (loadtest.sh, demo.sh, bench-peers.sh, soak.sh).
# Source it after `set -euo pipefail`; then call `zt_init` once.
#
# What it gives:
# - one temp dir ($ZT_TMP, from mktemp -d) removed at exit;
# - a registry of every process a script starts, stopped by pid (and Zentinel by its own process
#   group, because an upgrade replaces the master by a new pid that is not our child) on normal
#   exit, on error, and on Ctrl-C / SIGTERM;
# - build + binary paths (release by default; ZENTINEL_PROFILE=debug or `zt_use_profile debug`
#   uses target/debug without building), honouring CARGO_TARGET_DIR;
# - start a zentinel-backend / Zentinel (generated KDL config) and read their real addresses;
# - `zentinel-ctl status --json` parsing without jq or python (a fresh Debian has neither).
#
# Only loopback addresses are used. Ports: Zentinel and the backend bind 127.0.0.1:0 and report
# the port they got; peers (nginx, HAProxy) get a free port picked at run time (zt_free_port).

ZT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ZT_PROFILE="${ZENTINEL_PROFILE:-release}"
ZT_TMP=""
ZT_CLEANED=0
# Registry, in start order: "pid|name" for single processes, "group|pgid|name|socket" for a
# Zentinel instance (its master can change pid; the process group does not).
ZT_PROCS=()
# Ports handed out by zt_free_port in this run, so two peers never get the same one.
ZT_PORTS_USED=" "

zt_log() { printf '\n==> %s\n' "$*"; }
zt_info() { printf '    %s\n' "$*"; }
zt_warn() { printf 'warning: %s\n' "$*" >&2; }
zt_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
# Milliseconds since the epoch (GNU date).
zt_now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# Set-up, traps and cleanup

zt_init() {
    ZT_TMP="$(mktemp -d "${TMPDIR:-/tmp}/zentinel-harness.XXXXXX")"
    trap zt__on_exit EXIT
    trap 'zt__on_signal INT 130' INT
    trap 'zt__on_signal TERM 143' TERM
    trap 'zt__on_signal HUP 129' HUP
}

zt__on_signal() {
    printf '\ninterrupted (SIG%s): stopping every process this script started\n' "$1" >&2
    exit "$2"
}

zt__on_exit() {
    local rc=$?
    zt_cleanup
    exit "$rc"
}

# Stop every registered process, newest first, then remove the temp dir. Idempotent.
zt_cleanup() {
    [[ "$ZT_CLEANED" == 1 ]] && return 0
    ZT_CLEANED=1
    trap '' INT TERM HUP
    set +e
    # A script may define zt_before_cleanup (e.g. to stop its load generator first and still show
    # its report when interrupted).
    if declare -F zt_before_cleanup >/dev/null; then zt_before_cleanup; fi
    local i entry
    for ((i = ${#ZT_PROCS[@]} - 1; i >= 0; i--)); do
        entry="${ZT_PROCS[$i]}"
        if [[ "$entry" == group\|* ]]; then
            local rest="${entry#group|}" pgid name socket
            pgid="${rest%%|*}"
            rest="${rest#*|}"
            name="${rest%%|*}"
            socket="${rest#*|}"
            zt__stop_zentinel_group "$pgid" "$name" "$socket"
        else
            zt_stop_pid "${entry%%|*}" "${entry#*|}"
        fi
    done
    ZT_PROCS=()
    if [[ -n "$ZT_TMP" && -d "$ZT_TMP" ]]; then
        if [[ -n "${ZT_KEEP_TMP:-}" ]]; then
            printf 'kept temp dir %s (ZT_KEEP_TMP set)\n' "$ZT_TMP" >&2
        else
            rm -rf "$ZT_TMP"
        fi
    fi
    set -e
}

zt_register_pid() { ZT_PROCS+=("$1|$2"); }

# Forget a pid that the script has already stopped and waited for itself.
zt_unregister_pid() {
    local i
    for i in "${!ZT_PROCS[@]}"; do
        [[ "${ZT_PROCS[$i]}" == "$1|"* ]] && unset 'ZT_PROCS[i]'
    done
    ZT_PROCS=("${ZT_PROCS[@]}")
}

# True while PID exists and is not a zombie. (In a container, PID 1 may never reap the old
# master of an upgrade, so `kill -0` alone would see it forever.)
zt_alive() {
    local stat
    [[ -n "$1" ]] || return 1
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]]
}

# Live (non-zombie) members of process group PGID, one pid per line.
zt_group_members() {
    local d stat rest state pgrp
    for d in /proc/[0-9]*; do
        stat="$(cat "$d/stat" 2>/dev/null)" || continue
        rest="${stat##*) }"
        # rest: state ppid pgrp ...
        read -r state _ pgrp _ <<<"$rest"
        [[ "$pgrp" == "$1" && "$state" != Z ]] && echo "${d#/proc/}"
    done
    return 0
}

# Live children of PID, one per line.
zt_children() {
    local d stat rest state ppid
    for d in /proc/[0-9]*; do
        stat="$(cat "$d/stat" 2>/dev/null)" || continue
        rest="${stat##*) }"
        read -r state ppid _ <<<"$rest"
        [[ "$ppid" == "$1" && "$state" != Z ]] && echo "${d#/proc/}"
    done
    return 0
}

# Stop one process: SIGTERM, wait up to ZT_STOP_TIMEOUT (5 s), then SIGKILL.
zt_stop_pid() {
    local pid="$1" name="${2:-process}" deadline
    zt_alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null
    deadline=$(($(zt_now_ms) + ${ZT_STOP_TIMEOUT:-5} * 1000))
    while zt_alive "$pid" && (($(zt_now_ms) < deadline)); do sleep 0.05; done
    if zt_alive "$pid"; then
        printf '%s (pid %s) did not stop within %ss: SIGKILL\n' "$name" "$pid" "${ZT_STOP_TIMEOUT:-5}" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    # Its exit status is not ours (a load generator that saw failures exits 1): under `set -e`
    # a failing `wait` would end the calling script.
    wait "$pid" 2>/dev/null || true
}

# A Zentinel instance: SIGTERM its current master (graceful stop; workers drain), wait for the
# whole process group (old masters, adopted workers of every generation), then SIGKILL what
# is left of that group.
zt__stop_zentinel_group() {
    local pgid="$1" name="$2" socket="$3" master deadline left
    master="$(zt_master_pid_of "$socket" 2>/dev/null)" || master=""
    if [[ -n "$master" ]] && zt_alive "$master"; then
        kill -TERM "$master" 2>/dev/null
    else
        kill -TERM -- "-$pgid" 2>/dev/null
    fi
    deadline=$(($(zt_now_ms) + ${ZT_STOP_TIMEOUT:-10} * 1000))
    while [[ -n "$(zt_group_members "$pgid")" ]] && (($(zt_now_ms) < deadline)); do sleep 0.1; done
    left="$(zt_group_members "$pgid" | tr '\n' ' ')"
    if [[ -n "$left" ]]; then
        printf '%s: processes %sstill running after %ss: SIGKILL to group %s\n' \
            "$name" "$left" "${ZT_STOP_TIMEOUT:-10}" "$pgid" >&2
        kill -KILL -- "-$pgid" 2>/dev/null
    fi
    wait "$pgid" 2>/dev/null
    return 0
}

# ---------------------------------------------------------------------------------------------
# Build and binaries

zt_use_profile() {
    case "$1" in
        release | debug) ZT_PROFILE="$1" ;;
        *) zt_die "unknown profile '$1' (release|debug)" ;;
    esac
}

zt_bin_dir() {
    local target="${CARGO_TARGET_DIR:-target}"
    [[ "$target" == /* ]] || target="$ZT_ROOT/$target"
    echo "$target/$ZT_PROFILE"
}

zt_bin() { echo "$(zt_bin_dir)/$1"; }

# zt_build [FEATURES]: release: `cargo build --release --bins [--features FEATURES]`, once per
# run and set of features (a script started by another one inherits ZT_BUILT). Debug: no build
# (CI builds first, with the test-only faults); the binaries must already exist. FEATURES:
# e.g. zentinel-master/fault-injection for a script that arms ZENTINEL_FAULT_INJECTION.
zt_build() {
    local features="${1:-}" args=(--release --bins)
    [[ -z "$features" ]] || args+=(--features "$features")
    if [[ "$ZT_PROFILE" == release && "${ZT_BUILT:-}" != "release $features" ]]; then
        zt_log "building (release): cargo build ${args[*]}"
        (cd "$ZT_ROOT" && cargo build "${args[@]}")
        export ZT_BUILT="release $features"
    fi
    zt_require_bins zentinel zentinel-ctl zentinel-backend zentinel-load
}

zt_require_bins() {
    local b
    for b in "$@"; do
        [[ -x "$(zt_bin "$b")" ]] || zt_die "$(zt_bin "$b") not found; build it first (cargo build$([[ "$ZT_PROFILE" == release ]] && echo ' --release') --bins)"
    done
}

# ---------------------------------------------------------------------------------------------
# Waiting

# zt_wait_tcp HOST PORT TIMEOUT_S [PID]: until a TCP connect succeeds; fails at the deadline or
# when PID (the process expected to listen) exits.
zt_wait_tcp() {
    local host="$1" port="$2" deadline=$(($(zt_now_ms) + $3 * 1000)) pid="${4:-}"
    while (($(zt_now_ms) < deadline)); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
        if [[ -n "$pid" ]] && ! zt_alive "$pid"; then return 1; fi
        sleep 0.05
    done
    return 1
}

# zt_wait_line FILE REGEX TIMEOUT_S [PID]: until FILE has a line matching REGEX (printed).
zt_wait_line() {
    local file="$1" re="$2" deadline=$(($(zt_now_ms) + $3 * 1000)) pid="${4:-}" line
    while (($(zt_now_ms) < deadline)); do
        if line="$(grep -E -m1 -- "$re" "$file" 2>/dev/null)"; then
            echo "$line"
            return 0
        fi
        if [[ -n "$pid" ]] && ! zt_alive "$pid"; then return 1; fi
        sleep 0.05
    done
    return 1
}

# zt_sleep_until EPOCH_MS [PID]: a scheduled wait (returns 1 early if PID exits meanwhile).
zt_sleep_until() {
    local at="$1" pid="${2:-}" left
    while :; do
        left=$((at - $(zt_now_ms)))
        ((left > 0)) || return 0
        if [[ -n "$pid" ]] && ! zt_alive "$pid"; then return 1; fi
        ((left > 100)) && left=100
        sleep "0.$(printf '%03d' "$left")"
    done
}

# "S.mmm" seconds of a millisecond count.
zt_secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# Median of the numbers given as arguments ("n/a" when none).
zt_median() {
    (($#)) || { echo n/a; return 0; }
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
        if (NR % 2) printf "%g\n", v[(NR + 1) / 2]; else printf "%g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# zt_summary_field LINE KEY: a value from zentinel-load's final line
# `requests=N failed=N rps=N p50_ms=X p99_ms=X max_ms=X`.
zt_summary_field() { sed -n "s/.*\b$2=\([^ ]*\).*/\1/p" <<<"$1"; }

# zt_h2load_summary OUT LOG: an h2load run as zentinel-load's summary line (`requests=N failed=N
# rps=N p50_ms=X p99_ms=X max_ms=X`), from h2load's output OUT and its --log-file LOG (a line per
# request: start, status, microseconds), plus `proto=` (the ALPN h2load negotiated; "none" for
# h2c) and `non2xx=`. failed counts h2load's failed requests and the non-2xx answers: a run of
# error pages measures nothing. Prints nothing when OUT has no h2load summary.
zt_h2load_summary() {
    local out="$1" log="$2" rps req codes proto
    rps="$(sed -n 's|^finished in [^,]*, \([0-9.]*\) req/s.*|\1|p' "$out")"
    req="$(sed -n 's/^requests: //p' "$out")"
    codes="$(sed -n 's/^status codes: //p' "$out")"
    [[ -n "$rps" && -n "$req" ]] || return 0
    proto="$(sed -n 's/^Application protocol: //p' "$out")"
    cut -f3 "$log" | sort -n | awk -v rps="$rps" -v req="$req" -v codes="$codes" -v proto="${proto:-none}" '
        function field(text, word,   n, i, parts) {
            n = split(text, parts, ", ")
            for (i = 1; i <= n; i++) if (parts[i] ~ (" " word "$")) return parts[i] + 0
            return 0
        }
        function at(q,   i) { i = int(NR * q + 0.5); return t[i > 0 ? i : 1] / 1000 }
        { t[NR] = $1 + 0 }
        END {
            n = NR
            p50 = n ? at(0.50) : 0
            p99 = n ? at(0.99) : 0
            max = n ? t[n] / 1000 : 0
            bad = field(codes, "3xx") + field(codes, "4xx") + field(codes, "5xx")
            printf "requests=%d failed=%d rps=%.0f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f proto=%s non2xx=%d\n",
                field(req, "done"), field(req, "failed") + bad, rps, p50, p99, max, proto, bad
        }'
}

# A TCP port on 127.0.0.1 that nothing listens on now, outside the ephemeral range (so outgoing
# connections do not take it meanwhile) and not handed out before in this run. The caller must
# still handle a lost race (retry on "address in use").
zt_free_port() {
    local p tries=0
    while ((tries++ < 200)); do
        p=$((20000 + RANDOM % 12000))
        [[ "$ZT_PORTS_USED" == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            ZT_PORTS_USED+="$p "
            echo "$p"
            return 0
        fi
    done
    zt_die "no free port found on 127.0.0.1"
}

# zt_report_checks PASSED_MESSAGE: the end of a harness run. Prints the caller's `problems`
# array (or PASSED_MESSAGE when it is empty), then the load summary ($ZT_TMP/load.out); fails
# when there were problems.
zt_report_checks() {
    # shellcheck disable=SC2154  # `problems` is the caller's
    if ((${#problems[@]})); then
        zt_log "checks FAILED"
        printf '    %s\n' "${problems[@]}"
    else
        zt_log "checks passed: $1"
    fi
    zt_log "load summary (zentinel-load)"
    cat "$ZT_TMP/load.out"
    ((${#problems[@]} == 0))
}

# ---------------------------------------------------------------------------------------------
# TLS

# zt_make_tls_cert DIR NAME: with openssl, a test CA (DIR/ca.pem) and a certificate for NAME it
# signs (DIR/leaf.pem, key DIR/leaf.key, both in DIR/leaf-and-key.pem for HAProxy's `crt`),
# ECDSA P-256 keys; fails (with a warning) when openssl is missing or fails.
zt_make_tls_cert() {
    local dir="$1" name="$2"
    command -v openssl >/dev/null || { zt_warn "openssl not installed: no certificate"; return 1; }
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.pem -days 7 -subj "/CN=Zentinel harness test CA"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout leaf.key -out leaf.csr -subj "/CN=$name"
        printf '%s\n' "subjectAltName=DNS:$name" "basicConstraints=CA:FALSE" \
            "keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" >leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
            -extfile leaf.ext -out leaf.pem
        cat leaf.pem leaf.key >leaf-and-key.pem
    ) >"$dir/openssl.log" 2>&1 || {
        zt_warn "making a TLS certificate failed: $(tail -n 3 "$dir/openssl.log")"
        return 1
    }
}

# ---------------------------------------------------------------------------------------------
# Backend

# zt_start_backend NAME: start zentinel-backend on 127.0.0.1:0; sets ZT_BACKEND_ADDR and
# ZT_BACKEND_PID.
zt_start_backend() {
    local name="${1:-backend}" out line
    out="$ZT_TMP/$name.out"
    "$(zt_bin zentinel-backend)" --listen 127.0.0.1:0 --name "$name" >"$out" 2>"$ZT_TMP/$name.err" &
    ZT_BACKEND_PID=$!
    zt_register_pid "$ZT_BACKEND_PID" "$name"
    line="$(zt_wait_line "$out" '^listening on ' 10 "$ZT_BACKEND_PID")" ||
        zt_die "$name did not report its address within 10 s: $(cat "$ZT_TMP/$name.err")"
    ZT_BACKEND_ADDR="${line#listening on }"
}

# ---------------------------------------------------------------------------------------------
# Zentinel

# zt_write_config FILE BACKEND_ADDR SOCKET [WORKERS]: 2 workers by default, one HTTP listener on
# 127.0.0.1:0 (the master logs the port it got), every request routed to one upstream.
zt_write_config() {
    local file="$1" backend="$2" socket="$3" workers="${4:-2}"
    cat >"$file" <<EOF
// Generated by scripts/lib.sh for a harness run.
system {
    worker-processes $workers
    graceful-shutdown-timeout-secs 10
    control-socket "$socket"
}
listeners {
    listener "http" {
        address "127.0.0.1:0"
        protocol "http"
        default-route "backend"
    }
}
routes {
    route "backend" {
        upstream "backend"
    }
}
upstreams {
    upstream "backend" {
        target "$backend"
    }
}
EOF
}

# zt_start_zentinel CONFIG [BINARY] [NAME]: start a master in its own process group (setsid) so
# that every later master and worker of this instance can be found and stopped; waits until it
# listens and its control socket answers. Sets ZT_PGID, ZT_ADDR (host:port), ZT_SOCK, ZT_LOG,
# ZT_WORKERS. CONFIG "" runs the embedded default configuration (127.0.0.1:8080, one worker
# per CPU), with the control socket in the temp dir (XDG_RUNTIME_DIR).
zt_start_zentinel() {
    local config="$1" bin="${2:-$(zt_bin zentinel)}" name="${3:-zentinel}" pid line deadline
    local config_args=()
    if [[ -n "$config" ]]; then
        ZT_SOCK="$(sed -n 's/^ *control-socket "\(.*\)"$/\1/p' "$config")"
        [[ -n "$ZT_SOCK" ]] || zt_die "$config has no system { control-socket }"
        ZT_WORKERS="$(sed -n 's/^ *worker-processes \([0-9][0-9]*\).*/\1/p' "$config")"
        config_args=(-c "$config")
    else
        ZT_SOCK="$ZT_TMP/zentinel.sock"
        ZT_WORKERS="$(nproc)"
    fi
    ZT_LOG="$ZT_TMP/$name.log"
    # `setsid` execs without forking here (a background job of a non-interactive shell is not a
    # group leader), so $! is the master and its pid is the group id.
    env -u ZENTINEL_CONFIG XDG_RUNTIME_DIR="$ZT_TMP" setsid "$bin" "${config_args[@]}" \
        --log-level info >"$ZT_LOG" 2>&1 &
    pid=$!
    ZT_PGID="$pid"
    ZT_PROCS+=("group|$ZT_PGID|$name|$ZT_SOCK")
    line="$(zt_wait_line "$ZT_LOG" 'listening listener=.*address=' 10 "$pid")" ||
        zt_die "$name did not start listening within 10 s; its log:
$(tail -n 20 "$ZT_LOG")"
    ZT_ADDR="${line##*address=}"
    ZT_ADDR="${ZT_ADDR%% *}"
    zt_wait_tcp "${ZT_ADDR%:*}" "${ZT_ADDR##*:}" 10 "$pid" || zt_die "$name: $ZT_ADDR does not accept"
    deadline=$(($(zt_now_ms) + 10000))
    until zt_ctl status >/dev/null 2>&1; do
        if (($(zt_now_ms) >= deadline)) || ! zt_alive "$pid"; then
            zt_die "$name: control socket $ZT_SOCK does not answer"
        fi
        sleep 0.05
    done
    # Every worker running (ready) before the load starts.
    until [[ "$(zt_status_workers "$(zt_ctl status --json)" | awk '$5 == "running"' | wc -l)" -ge "${ZT_WORKERS:-1}" ]]; do
        (($(zt_now_ms) < deadline)) || zt_die "$name: no worker running after 10 s"
        sleep 0.05
    done
}

zt_ctl() { "$(zt_bin zentinel-ctl)" --socket "$ZT_SOCK" "$@"; }

# ---------------------------------------------------------------------------------------------
# `zentinel-ctl status --json` parsing (flat objects, no nesting inside master/worker objects)

zt__json_str() { sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" <<<"$1"; }
zt__json_num() { sed -n "s/.*\"$2\":\([0-9][0-9]*\).*/\1/p" <<<"$1"; }

zt_master_pid_of() {
    local json
    json="$("$(zt_bin zentinel-ctl)" --socket "$1" --timeout 2s status --json 2>/dev/null)" || return 1
    zt_status_master "$json" | awk '{print $1}'
}

# One line: "PID GENERATION BINARY"
zt_status_master() {
    local m="${1%%\"workers\"*}"
    echo "$(zt__json_num "$m" pid) $(zt__json_num "$m" generation) $(zt__json_str "$m" binary)"
}

# One line per worker: "ID PID GENERATION BINARY STATE"
zt_status_workers() {
    local w line
    w="${1#*\"workers\":\[}"
    while IFS= read -r line; do
        [[ "$line" == *'"pid"'* ]] || continue
        echo "$(zt__json_num "$line" id) $(zt__json_num "$line" pid) $(zt__json_num "$line" generation)" \
            "$(zt__json_str "$line" binary) $(zt__json_str "$line" state)"
    done <<<"${w//\},\{/$'}\n{'}"
}

# zt_status_worker_field JSON PID KEY: a numeric field (e.g. active_connections) of the worker
# with that pid, empty if it is not listed.
zt_status_worker_field() {
    local w line
    w="${1#*\"workers\":\[}"
    while IFS= read -r line; do
        if [[ "$(zt__json_num "$line" pid)" == "$2" ]]; then
            zt__json_num "$line" "$3"
            return 0
        fi
    done <<<"${w//\},\{/$'}\n{'}"
    return 0
}

# ---------------------------------------------------------------------------------------------
# /proc sampling

zt_rss_kb() { awk '/^VmRSS:/ {print $2; f=1} END {if (!f) print "NA"}' "/proc/$1/status" 2>/dev/null || echo NA; }
zt_fd_count() {
    local n
    n="$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)" || n=NA
    zt_alive "$1" && echo "$n" || echo NA
}

# ---------------------------------------------------------------------------------------------
# Timeline analysis

# zt_window_rps CSV WINDOWS DURATION_MS: WINDOWS is "START_EPOCH_MS:END_EPOCH_MS" per upgrade,
# space-separated. A 100 ms bucket of zentinel-load's --timeline-csv belongs to an upgrade window if
# it overlaps [start, max(end, start + 1 s)] (at least 1 s, so the moments right after the
# command returned, while the old worker drains and the new one warms its upstream pool, count
# as the upgrade too). The first second (connection set-up) and buckets past the duration are
# left out of both. Prints "upgrade_window_rps=X steady_rps=Y ratio=Z".
zt_window_rps() {
    awk -v dur="$3" -v windows="$2" -F, '
        BEGIN {
            nw = split(windows, list, " ")
            for (i = 1; i <= nw; i++) {
                split(list[i], se, ":")
                ws[i] = se[1] + 0; we[i] = (se[2] > se[1] + 1000 ? se[2] + 0 : se[1] + 1000)
            }
        }
        NR == 1 { next }
        {
            t = $1; e = $2; n = $3 + $4
            if (t < 1000 || t + 100 > dur) next
            inw = 0
            for (i = 1; i <= nw; i++) if (e < we[i] && e + 100 > ws[i]) inw = 1
            if (inw) { wn += n; wb++ } else { sn += n; sb++ }
        }
        END {
            w = wb ? wn / (wb / 10) : -1
            s = sb ? sn / (sb / 10) : -1
            printf "upgrade_window_rps=%s steady_rps=%s ratio=%s\n",
                (w < 0 ? "n/a" : sprintf("%.0f", w)), (s < 0 ? "n/a" : sprintf("%.0f", s)),
                (w < 0 || s <= 0 ? "n/a" : sprintf("%.2f", w / s))
        }' "$1"
}
