#!/usr/bin/env bash
# The per-request cost table alone (what `scripts/bench-peers.sh --cost` adds to its run):
# syscalls, CPU µs (and the kernel's share of it), user-space instructions and libc allocations
# per request in the workers of Zentinel, nginx and HAProxy, 1 worker each, on a fixed number
# of 1 KiB requests: keep-alive, TLS keep-alive, and a new connection per request.
# See scripts/bench/cost.sh for how each figure is taken.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"
# shellcheck source=scripts/bench/tools.sh
source "$here/bench/tools.sh"
# shellcheck source=scripts/bench/peers.sh
source "$here/bench/peers.sh"
# shellcheck source=scripts/bench/tables.sh
source "$here/bench/tables.sh"
# shellcheck source=scripts/bench/cost.sh
source "$here/bench/cost.sh"

usage() {
    cat <<'EOF'
usage: scripts/bench-cost.sh [options]

Installs what is missing with apt-get (nginx, HAProxy, strace), builds Zentinel
(release), starts zentinel-backend and the three proxies with 1 worker each (Zentinel with its
default configuration) and measures, per proxy, on REQUESTS GETs of 1 KiB per figure, for
keep-alive, TLS keep-alive (TLS 1.3, one certificate and suite for all) and a connection per
request: syscalls per request (strace -c -f -p on the workers), CPU µs per request and the
kernel's share of it (/proc stat); for keep-alive also user-space instructions per request
(perf stat -e instructions:u, n/a without hardware counters) and heap allocations per request
(malloc, calloc, realloc, posix_memalign, ... counted by scripts/bench/alloc-count.c,
preloaded into a second start of each proxy).

options:
  --requests N        requests per figure (default 20000)
  --markdown [FILE]   write the table as the generated section "bench-cost" of FILE (default
                      docs/benchmarks.md), replacing it if present
  --quick             --requests 5000 (a smoke run)
  -h, --help          this help

Exit status: 0 when the measurement ran; 1 on a harness error; 2 on usage.
EOF
}
bad_usage() {
    printf 'bench-cost.sh: %s\n(see scripts/bench-cost.sh --help)\n' "$1" >&2
    exit 2
}

command_line="scripts/bench-cost.sh $*"
cost_requests=20000 markdown=""
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --quick) cost_requests=5000; shift ;;
        --requests)
            (($# >= 2)) || bad_usage "--requests needs a value"
            if ! [[ "$2" =~ ^[0-9]+$ ]] || ((10#$2 < 100)); then bad_usage "--requests must be a whole number >= 100 (got '$2')"; fi
            cost_requests=$((10#$2))
            shift 2 ;;
        --markdown)
            if (($# >= 2)) && [[ "$2" != -* ]]; then markdown="$2"; shift 2; else markdown=docs/benchmarks.md; shift; fi ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
done
if [[ -n "$markdown" ]]; then
    [[ "$markdown" == /* ]] || markdown="$PWD/$markdown"
    touch "$markdown" 2>/dev/null || bad_usage "cannot write --markdown $markdown"
fi

zt_init
cd "$ZT_ROOT"
PATH="$PATH:/usr/sbin:/sbin"
bench_need nginx:nginx haproxy:haproxy strace:strace
command -v nginx >/dev/null && [[ -n "$(nginx_stream_module)" ]] && bench_need "$(nginx_stream_module):libnginx-mod-stream"
# shellcheck disable=SC2119  # no extra cargo features
zt_build
bench_raise_nofile
bench_header "$command_line"
zt_log "bench-cost"
printf '    %s\n' "${header[@]}"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

bench_tls_cert
bench_start_backends
cp "$(zt_bin zentinel)" "$ZT_TMP/zentinel-a"
mkdir -p "$ZT_TMP/runs"
start_proxies 1
run_cost
stop_proxies
header+=("load average: $load_before before the run, $(cut -d' ' -f1-3 /proc/loadavg) after it")

build_cost_table
zt_log "per-request cost ($cost_requests 1 KiB requests per figure, 1 worker each)"
printf '    %s\n' "${header[@]}"
echo
printf '%s\n' "${cost_text[@]}"
if [[ -n "$markdown" ]]; then
    write_cost_markdown "$markdown"
    zt_info "markdown written to $markdown"
fi
