# shellcheck shell=bash
# shellcheck disable=SC2034  # header is read by the entry scripts
# bench/tools.sh: what the benchmark scripts need from the machine: packages installed with
# apt-get when missing, the open-file limit raised, and the run's header (date, machine,
# kernel, versions, command). Sourced by scripts/bench-peers.sh and scripts/bench-cost.sh
# after scripts/lib.sh.

# bench_apt_install PKG...: apt-get install (as root or with sudo); warns and fails on error.
bench_apt_install() {
    local sudo=()
    (($(id -u) != 0)) && sudo=(sudo)
    zt_log "installing $* (apt-get)"
    if ! { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"; } >"$ZT_TMP/apt.log" 2>&1; then
        zt_warn "apt-get install $* failed: $(tail -n 3 "$ZT_TMP/apt.log")"
        return 1
    fi
}

# bench_need CMD:PKG...: installs in one apt-get call the packages whose command is missing
# (a CMD starting with / is a file that must exist). What is still missing afterwards is
# reported as n/a by whoever needs it.
bench_need() {
    local spec cmd missing=()
    for spec in "$@"; do
        cmd="${spec%%:*}"
        if [[ "$cmd" == /* ]]; then [[ -e "$cmd" ]] && continue; else command -v "$cmd" >/dev/null && continue; fi
        missing+=("${spec#*:}")
    done
    ((${#missing[@]} == 0)) || bench_apt_install "${missing[@]}" || true
}

# Every proxy holds 10,000 client connections plus as many upstream ones for the connection
# curve, and the load generator its 10,000: raise the open-file limit (hard too, as root).
bench_raise_nofile() {
    local want=200000
    ulimit -Hn "$want" 2>/dev/null || true
    ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || ulimit -Sn "$want" 2>/dev/null || true
    zt_info "open files limit: $(ulimit -Sn) (hard $(ulimit -Hn))"
}

# bench_header COMMAND: header (lines): date, machine, kernel, versions, the tree's commit, the
# command line. The load average is added by the caller (before and after).
bench_header() {
    local cpu_model nginx_v haproxy_v zentinel_v commit
    # (sed -n 1p, not head: under pipefail a writer cut off by head fails the pipeline.)
    cpu_model="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sed -n 1p)"
    nginx_v="$( (nginx -v 2>&1 || echo 'nginx: not installed') | sed -n 1p | sed 's/^nginx version: //')"
    haproxy_v="$( (haproxy -v 2>/dev/null || echo 'HAProxy not installed') | sed -n 1p | sed 's/ - https.*//')"
    zentinel_v="$("$(zt_bin zentinel)" --version)"
    commit="$(git -C "$ZT_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    git -C "$ZT_ROOT" diff --quiet HEAD -- 2>/dev/null || commit+=" (with uncommitted changes)"
    header=(
        "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        "machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
        "kernel: $(uname -sr)"
        "versions: $zentinel_v (commit $commit, $ZT_PROFILE build); $nginx_v; $haproxy_v"
        "command: $1"
    )
}
