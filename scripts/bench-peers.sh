#!/usr/bin/env bash
# Zentinel against nginx and HAProxy on the same machine, same backend, same workloads, same
# run, each proxy with 1 and with 2 workers and Zentinel with its default configuration:
# throughput, p99 and CPU per unit per workload (plus the backend hit directly, the ceiling),
# one table of ratios, the connection-count curve with its plot, optionally the per-request
# cost table, then failures during reloads. The parts live in scripts/bench/ (peers.sh,
# workloads.sh, tables.sh, curve.sh, cost.sh, reload.sh, tools.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"
# shellcheck source=scripts/bench/tools.sh
source "$here/bench/tools.sh"
# shellcheck source=scripts/bench/peers.sh
source "$here/bench/peers.sh"
# shellcheck source=scripts/bench/workloads.sh
source "$here/bench/workloads.sh"
# shellcheck source=scripts/bench/tables.sh
source "$here/bench/tables.sh"
# shellcheck source=scripts/bench/curve.sh
source "$here/bench/curve.sh"
# shellcheck source=scripts/bench/cost.sh
source "$here/bench/cost.sh"
# shellcheck source=scripts/bench/reload.sh
source "$here/bench/reload.sh"

usage() {
    cat <<'EOF'
usage: scripts/bench-peers.sh [options]

Installs what is missing with apt-get (nginx, its stream module, HAProxy; gnuplot for the
curve; strace for --cost), builds Zentinel (release) and measures with zentinel-load
(h2load for HTTP/2), through each target in turn, alternating within every round. Targets:
backend (zentinel-backend hit directly: the ceiling), zentinel (its default configuration:
only worker-processes, listeners, a route and an upstream are written), nginx (keepalive 128
to the backend), haproxy (http-reuse always). Each proxy runs with 1 and with 2 workers
(Zentinel system { worker-processes }, nginx worker_processes, HAProxy nbthread).

Workloads (--only takes a comma-separated list of these names):
  ka-5b ka-1k ka-64k  keep-alive, 64 connections, GET of a 5 B, 1 KiB, 64 KiB body (req/s, p99)
  close-1k        a new connection per request, 16 connections, 1 KiB body
  tls-ka-1k       TLS keep-alive, 64 connections, 1 KiB (direct: zentinel-backend --tls)
  tls-new-1k      a new connection and a full TLS handshake per request, 16 connections
                  (new handshakes/s)
  tls-resume-1k   a new connection per request resuming an earlier TLS session (--resume)
  h2-1k h2-64k    HTTP/2 over the same TLS with h2load (when installed): 16 connections x 16
                  (x 4) streams
  tcp-ka-5b       keep-alive 5 B GETs through each proxy's TCP tunnel (Zentinel listener
                  protocol "tcp", nginx stream, HAProxy mode tcp): no HTTP parsing, one upstream
                  connection per client, the least any proxy does per request (the floor)
  dl-1g           one GET of 1 GiB (--download-size) over one connection: bytes/s, and the
                  proxy's CPU per byte (s per GiB)
  tcp-1g          the same GET through each proxy's TCP tunnel: Zentinel listener protocol
                  "tcp", nginx stream, HAProxy mode tcp (bytes/s, CPU per byte)
TLS: one ECDSA P-256 certificate (made here with openssl) for every server, TLS 1.3 only, one
cipher suite, TLS_AES_128_GCM_SHA256, pinned in each.
CPU per unit: utime + stime of all the proxy's processes (/proc/PID/stat) before and after each
run, divided by its requests (µs/req) or by the GiB moved (s/GiB).

Then the connection-count curve: keep-alive 1 KiB req/s at 100, 300, 1000, 3000, 10000
concurrent connections per target (2 workers per proxy), plotted with gnuplot (or matplotlib)
to bench/connections.svg beside the --markdown file; and the reload comparison (2 workers):
failed requests under keep-alive load with 2 reloads (nginx SIGHUP; HAProxy -W SIGUSR2, plain
and with expose-fd listeners) or 2 Zentinel rolling upgrades.

options:
  --duration S          seconds per measurement (default 5)
  --rounds N            rounds (default 3); the tables show medians
  --workers LIST        worker counts, comma-separated (default 1,2)
  --only LIST           only these workloads (comma-separated names); "none": no workload
  --download-size B     bytes of dl-1g and tcp-1g (default 1073741824; suffixes M, G: MiB, GiB)
  --curve-points LIST   connection counts of the curve (default 100,300,1000,3000,10000)
  --curve-duration S    seconds per curve point (default 10; req/s counted after the first third)
  --curve-workers N     workers per proxy for the curve (default 2)
  --no-curve            no connection curve
  --cost                also the per-request cost table (scripts/bench/cost.sh, 1 worker each;
                        keep-alive, TLS keep-alive, a connection per request)
  --cost-requests N     requests per cost figure (default 20000)
  --reload-duration S   seconds of load per reload test (default 10)
  --no-reload           no reload comparison
  --markdown [FILE]     write the results as a generated section of FILE (default
                        docs/benchmarks.md), replacing that section if present, and the plot to
                        bench/connections.svg beside FILE
  --plot FILE           write the plot there (default: beside --markdown's file; none without)
  --quick               a smoke run: --duration 2 --rounds 1 --reload-duration 6
                        --download-size 256M --curve-points 100,1000 --curve-duration 3
                        --cost-requests 5000
  -h, --help            this help

Figures are only comparable within one run: load generator, proxy and backend share the CPU.
Exit status: 0 when the benchmark ran (whatever it measured); 1 on a harness error; 2 on usage.
EOF
}
bad_usage() {
    printf 'bench-peers.sh: %s\n(see scripts/bench-peers.sh --help)\n' "$1" >&2
    exit 2
}
positive() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || ((10#$2 < 1)); then bad_usage "$1 must be a whole number >= 1 (got '$2')"; fi
}
# parse_list FLAG TEXT ARRAY: a comma-separated list of whole numbers >= 1 into ARRAY. (Not
# in a command substitution: bad_usage must exit this shell, not a subshell.)
parse_list() {
    local -n into="$3"
    local x xs=()
    IFS=, read -ra xs <<<"$2"
    ((${#xs[@]})) || bad_usage "$1 needs at least one number"
    into=()
    for x in "${xs[@]}"; do positive "$1" "$x"; into+=("$((10#$x))"); done
}
# parse_size FLAG TEXT: bytes (suffix M: MiB, G: GiB) into download_bytes.
parse_size() {
    case "$2" in
        *[Gg]) positive "$1" "${2%?}"; download_bytes=$((10#${2%?} * 1073741824)) ;;
        *[Mm]) positive "$1" "${2%?}"; download_bytes=$((10#${2%?} * 1048576)) ;;
        *) positive "$1" "$2"; download_bytes=$((10#$2)) ;;
    esac
}

command_line="scripts/bench-peers.sh $*"
duration=5 rounds=3 reload_duration=10 markdown="" plot="" only="" curve_duration=10
workers_text=1,2 curve_text_arg=100,300,1000,3000,10000 download_bytes=1073741824
curve=1 curve_workers=2 cost=0 cost_requests=20000 reload=1
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --quick)
            duration=2 rounds=1 reload_duration=6 download_bytes=268435456 curve_text_arg=100,1000 cost_requests=5000
            curve_duration=3
            shift; continue ;;
        --no-curve) curve=0; shift; continue ;;
        --no-reload) reload=0; shift; continue ;;
        --cost) cost=1; shift; continue ;;
        --markdown)
            if (($# >= 2)) && [[ "$2" != -* ]]; then markdown="$2"; shift 2; else markdown=docs/benchmarks.md; shift; fi
            continue ;;
        --duration | --rounds | --reload-duration | --workers | --only | --download-size | --curve-points | \
            --curve-duration | --curve-workers | --cost-requests | --plot)
            (($# >= 2)) || bad_usage "$1 needs a value" ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
    case "$1" in
        --duration) duration="$2" ;;
        --rounds) rounds="$2" ;;
        --reload-duration) reload_duration="$2" ;;
        --workers) workers_text="$2" ;;
        --only) only="$2" ;;
        --download-size) parse_size "$1" "$2" ;;
        --curve-points) curve_text_arg="$2" ;;
        --curve-duration) curve_duration="$2" ;;
        --curve-workers) curve_workers="$2" ;;
        --cost-requests) cost_requests="$2" ;;
        --plot) plot="$2" ;;
    esac
    shift 2
done
positive --duration "$duration"
positive --rounds "$rounds"
positive --reload-duration "$reload_duration"
positive --curve-workers "$curve_workers"
positive --cost-requests "$cost_requests"
((reload_duration >= 3)) || bad_usage "--reload-duration must be >= 3"
positive --curve-duration "$curve_duration"
parse_list --workers "$workers_text" workers_list
parse_list --curve-points "$curve_text_arg" curve_points
if [[ -n "$markdown" ]]; then
    [[ "$markdown" == /* ]] || markdown="$PWD/$markdown"
    touch "$markdown" 2>/dev/null || bad_usage "cannot write --markdown $markdown"
    [[ -n "$plot" ]] || plot="$(dirname "$markdown")/bench/connections.svg"
fi
[[ -z "$plot" || "$plot" == /* ]] || plot="$PWD/$plot"

zt_init
cd "$ZT_ROOT"
PATH="$PATH:/usr/sbin:/sbin"
needs=(nginx:nginx haproxy:haproxy)
((curve)) && needs+=(gnuplot:gnuplot-nox curl:curl)
((cost)) && needs+=(strace:strace)
bench_need "${needs[@]}"
# Once nginx is there: its stream module (TCP tunnel), a package of its own on Debian.
command -v nginx >/dev/null && [[ -n "$(nginx_stream_module)" ]] && bench_need "$(nginx_stream_module):libnginx-mod-stream"
# shellcheck disable=SC2119  # no extra cargo features
zt_build
bench_raise_nofile

bench_header "$command_line"
zt_log "bench-peers"
printf '    %s\n' "${header[@]}"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
zt_info "load average before the run: $load_before (anything else running skews the figures)"

bench_tls_cert
bench_start_backends
cp "$(zt_bin zentinel)" "$ZT_TMP/zentinel-a"
cp "$(zt_bin zentinel)" "$ZT_TMP/zentinel-b"
mkdir -p "$ZT_TMP/runs"
bench_workloads
zt_info "backend ${addr[backend]} (TLS ${addr_tls[backend]:-n/a}); workloads: ${workloads[*]:-none}"

# One block per worker count: the proxies started with that many workers, then everything
# measured with that count.
last_workers="${workers_list[-1]}"
done_curve=0 done_cost=0
for n in "${workers_list[@]}"; do
    zt_log "proxies with $n worker(s)"
    start_proxies "$n"
    if ((${#workloads[@]})); then
        zt_log "throughput, $n worker(s): ${#workloads[@]} workloads x 4 targets x $rounds round(s), ${duration}s each"
        run_rounds "$n"
    fi
    ((curve && n == curve_workers)) && { run_curve "$n"; done_curve=1; }
    ((cost && n == 1)) && { run_cost; done_cost=1; }
    ((reload && n == last_workers)) && run_reloads "$n"
    stop_proxies
done
if ((curve && !done_curve)); then
    start_proxies "$curve_workers"
    run_curve "$curve_workers"
    stop_proxies
fi
if ((cost && !done_cost)); then
    start_proxies 1
    run_cost
    stop_proxies
fi
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
header+=("load average: $load_before before the run, $load_after after it")

# ---------------------------------------------------------------------------------------------
# Results

build_results_table
build_tls_notes
((curve)) && build_curve_table "$ZT_TMP/curve.dat"
((cost)) && build_cost_table
((reload)) && build_reload_table
plotted=""
if ((curve)) && [[ -n "$plot" ]]; then
    plot_curve "$ZT_TMP/curve.dat" "$plot" && plotted="$plot"
fi

zt_log "results"
printf '    %s\n' "${header[@]}"
if ((${#workloads[@]})); then
    echo
    echo "Medians over $rounds round(s); Z/x: Zentinel's throughput over x's (p99 Z/x: below 1 is better);"
    echo "throughput is req/s, handshakes/s (tls-new-*) or MiB/s (dl-*, tcp-*); CPU: the proxy's processes."
    printf '%s\n' "${table_text[@]}"
fi
((${#tls_notes[@]})) && { echo; printf '%s\n' "${tls_notes[@]}"; }
if ((curve)); then
    echo
    echo "Connection curve ($curve_workers worker(s) per proxy, keep-alive 1 KiB from $curve_backend, steady req/s, medians):"
    printf '%s\n' "${curve_text[@]}"
    [[ -z "$curve_note" ]] || echo "note: $curve_note"
    [[ -n "$plotted" ]] && echo "plot: $plotted"
fi
if ((cost)); then
    echo
    echo "Per-request cost ($cost_requests 1 KiB requests per figure, 1 worker each):"
    printf '%s\n' "${cost_text[@]}"
fi
if ((reload)); then
    echo
    printf '%s\n' "${reload_text[@]}"
fi
zt_info "load average after the run: $load_after (before: $load_before)"

if [[ -n "$markdown" ]]; then
    section="$ZT_TMP/section.md"
    {
        echo "### Generated by \`scripts/bench-peers.sh\`"
        echo
        printf -- '- %s\n' "${header[@]}" "$rounds round(s) of ${duration}s per target, targets alternating; medians"
        echo
        echo "Workloads:"
        echo
        for w in "${workloads[@]}"; do echo "- \`$w\`: ${wl_desc[$w]}"; done
        echo
        if ((${#workloads[@]})); then
            echo "Z/x is Zentinel's throughput (req/s, handshakes/s or bytes/s) over x's; p99 Z/x below 1 is better. CPU per unit: utime + stime of all the proxy's processes, per request (µs) or per GiB moved (s)."
            echo
            printf '%s\n' "${table_md[@]}"
            echo
        fi
        ((${#tls_notes[@]})) && { printf -- '- %s\n' "${tls_notes[@]}"; echo; }
        if ((curve)); then
            echo "Connection curve: keep-alive 1 KiB GETs to $curve_backend, $curve_workers worker(s) per proxy, ${curve_duration}s per point (req/s over the steady part: the first third of each run left out), medians; p99 ms in brackets."
            echo
            printf '%s\n' "${curve_md[@]}"
            echo
            [[ -z "$curve_note" ]] || { echo "Note: $curve_note."; echo; }
            if [[ -n "$plotted" ]]; then
                rel="$(realpath --relative-to="$(dirname "$markdown")" "$plotted" 2>/dev/null || echo "$plotted")"
                echo "![requests/s against concurrent keep-alive connections]($rel)"
                echo
            fi
        fi
        if ((reload)); then
            echo "Reload comparison ($reload_workers worker(s)): keep-alive, 64 connections, 1 KiB, ${reload_duration}s with 2 reloads."
            echo
            printf '%s\n' "${reload_md[@]}"
        fi
    } >"$section"
    md_section "$markdown" bench-peers "$section"
    ((cost)) && write_cost_markdown "$markdown"
    zt_info "markdown written to $markdown"
fi
