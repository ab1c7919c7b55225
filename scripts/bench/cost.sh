# shellcheck shell=bash
# shellcheck disable=SC2034  # globals (cost_text, cost_md) are read by the entry scripts
# bench/cost.sh: what one request costs in each proxy's workers, on a fixed request count
# (cost_requests GETs of 1 KiB, 16 connections, one load-generator thread), each proxy running
# 1 worker, for three kinds of request (cost_kinds): keep-alive, TLS keep-alive, and a new
# connection per request:
#   syscalls per request      strace -c -f -p on the worker processes (every thread)
#   CPU µs per request        /proc/PID/stat utime + stime of the workers, before and after,
#                             and the kernel's share of it (stime / (utime + stime))
# and, for keep-alive only:
#   instructions:u per req.   perf stat -e instructions:u -p (n/a where the machine has no
#                             hardware counters, as in most VMs, or without perf)
#   allocations per request   calls of malloc, calloc, realloc, posix_memalign, aligned_alloc,
#                             memalign in the workers, counted by scripts/bench/alloc-count.c
#                             preloaded (LD_PRELOAD) into a second start of the proxies; nginx
#                             and HAProxy carve most of their memory out of their own pools,
#                             whose allocations count only when a pool grows
# Each figure comes from its own run of cost_requests requests after a warm-up run (pools
# filled, connections open), so the tracers' overhead does not leak into the CPU figure.
# Sourced after bench/peers.sh. Reads: cost_requests.

# Keyed by "KIND,TARGET" (instructions and allocations: keep-alive only, by TARGET).
declare -A cost_syscalls=() cost_cpu=() cost_kernel=() cost_instr=() cost_alloc=() cost_top=()

# cost_kinds: the kinds of request measured (TLS keep-alive only with a certificate).
cost_kinds() {
    echo ka-1k
    ((tls_ok)) && echo tls-ka-1k
    echo close-1k
}

# cost_kind_desc KIND
cost_kind_desc() {
    case "$1" in
        ka-1k) echo "keep-alive" ;;
        tls-ka-1k) echo "TLS keep-alive" ;;
        close-1k) echo "a connection per request" ;;
    esac
}

# cost_load_args KIND TARGET: zentinel-load's target and mode arguments (empty when TARGET has
# no listener for KIND).
cost_load_args() {
    case "$1" in
        ka-1k) [[ -n "${addr[$2]:-}" ]] && echo "--addr ${addr[$2]} --mode keepalive" ;;
        tls-ka-1k) [[ -n "${addr_tls[$2]:-}" ]] && echo "--addr ${addr_tls[$2]} --mode keepalive --tls --ca $tls_dir/ca.pem --sni $TLS_NAME" ;;
        close-1k) [[ -n "${addr[$2]:-}" ]] && echo "--addr ${addr[$2]} --mode close" ;;
    esac
}

# cost_load KIND TARGET N: N 1 KiB requests of KIND through TARGET; prints the summary line.
cost_load() {
    local out="$ZT_TMP/runs/cost-$1-$2-$RANDOM.out" args=()
    read -ra args <<<"$(cost_load_args "$1" "$2")"
    "$(zt_bin zentinel-load)" "${args[@]}" -t 1 -c 16 -n "$3" -d 600s --body 1024 >"$out" 2>&1 || true
    tail -n1 "$out"
}

# cost_ok LINE N: true when the summary LINE shows N requests and none failed.
cost_ok() {
    [[ "$(zt_summary_field "$1" requests)" == "$2" && "$(zt_summary_field "$1" failed)" == 0 ]]
}

# per_req COUNT N: COUNT / N with 2 decimals (n/a when COUNT is not a number).
per_req() {
    awk -v c="$1" -v n="$2" 'BEGIN { if (c ~ /^[0-9.]+$/ && n > 0) printf "%.2f\n", c / n; else print "n/a" }'
}

# cost_strace KIND TARGET PIDS...: syscalls per request, and the five most frequent per request.
cost_strace() {
    local kind="$1" t="$2" k="$1,$2" out="$ZT_TMP/runs/cost-$1-$2.strace" err="$ZT_TMP/runs/cost-$1-$2.strace.err"
    shift 2
    local pargs=() p threads=0 spid line deadline
    command -v strace >/dev/null || { cost_syscalls[$k]="n/a (no strace)"; return 0; }
    for p in "$@"; do
        pargs+=(-p "$p")
        threads=$((threads + $(find "/proc/$p/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)))
    done
    # -f with -p attaches every thread of each process; "Process N attached" per thread.
    strace -c -f -o "$out" "${pargs[@]}" 2>"$err" &
    spid=$!
    zt_register_pid "$spid" "strace ($t)"
    deadline=$(($(zt_now_ms) + 10000))
    while (($(grep -c 'attached' "$err" 2>/dev/null || true) < threads)); do
        if (($(zt_now_ms) > deadline)) || ! zt_alive "$spid"; then
            zt_warn "strace on $t did not attach: $(tail -n 2 "$err")"
            zt_stop_pid "$spid" strace
            zt_unregister_pid "$spid"
            cost_syscalls[$k]=n/a
            return 0
        fi
        sleep 0.05
    done
    line="$(cost_load "$kind" "$t" "$cost_requests")"
    kill -INT "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    zt_unregister_pid "$spid"
    if ! cost_ok "$line" "$cost_requests"; then
        zt_warn "cost: $kind via $t under strace: $line"
        cost_syscalls[$k]=n/a
        return 0
    fi
    # The total line: "100.00 SECONDS USECS/CALL CALLS [ERRORS] total".
    cost_syscalls[$k]="$(per_req "$(awk '$NF == "total" { print $4 }' "$out")" "$cost_requests")"
    cost_top[$k]="$(awk -v n="$cost_requests" '
        /^-/ || /^%/ || $NF == "total" || NF < 5 { next }
        { printf "%s %.2f\n", $NF, $4 / n }' "$out" | sort -k2 -g -r | sed -n 1,5p | paste -sd, - | sed 's/,/, /g')"
}

# cost_perf TARGET PIDS...: user-space instructions per request.
cost_perf() {
    local t="$1" out="$ZT_TMP/runs/cost-$1.perf" list value
    shift
    command -v perf >/dev/null || { cost_instr[$t]="n/a (no perf)"; return 0; }
    list="$(printf '%s,' "$@")"
    # perf counts the -p processes while the command (the load) runs.
    perf stat -e instructions:u -x, -o "$out" -p "${list%,}" -- \
        "$(zt_bin zentinel-load)" --addr "${addr[$t]}" -t 1 -c 16 -n "$cost_requests" -d 600s \
        --mode keepalive --body 1024 >"$out.load" 2>&1 || true
    value="$(awk -F, '$3 ~ /^instructions/ { print $1; exit }' "$out")"
    if ! cost_ok "$(tail -n1 "$out.load")" "$cost_requests"; then
        cost_instr[$t]=n/a
    elif [[ "$value" =~ ^[0-9]+$ ]]; then
        cost_instr[$t]="$(awk -v c="$value" -v n="$cost_requests" 'BEGIN { printf "%.0f\n", c / n }')"
    else
        cost_instr[$t]="n/a (${value:-no counter})"
    fi
}

# alloc_shim: builds scripts/bench/alloc-count.c (an LD_PRELOAD allocation counter) into the
# temp dir; prints its path, or fails when there is no C compiler.
alloc_shim() {
    local so="$ZT_TMP/alloc-count.so" cc
    [[ -e "$so" ]] && { echo "$so"; return 0; }
    cc="$(command -v cc || command -v gcc || true)"
    [[ -n "$cc" ]] || return 1
    "$cc" -O2 -shared -fPIC -o "$so" "$ZT_ROOT/scripts/bench/alloc-count.c" 2>"$ZT_TMP/alloc-count.err" || {
        zt_warn "building the allocation counter failed: $(tail -n 3 "$ZT_TMP/alloc-count.err")"
        return 1
    }
    echo "$so"
}

# alloc_count PID...: the allocations counted so far in these processes.
alloc_count() {
    local p total=0 v
    for p in "$@"; do
        v="$(od -An -t u8 -N 8 "$ZT_TMP/alloc/$p" 2>/dev/null | tr -d ' ')"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# cost_allocations: restarts the three proxies (1 worker) with the counter preloaded, takes
# allocations per request from each, then restarts them without it.
cost_allocations() {
    local so t pids=() line a0 a1
    if ! so="$(alloc_shim)"; then
        for t in zentinel nginx haproxy; do cost_alloc[$t]="n/a (no C compiler)"; done
        return 0
    fi
    mkdir -p "$ZT_TMP/alloc"
    stop_proxies
    ALLOC_COUNT_DIR="$ZT_TMP/alloc" LD_PRELOAD="$so" start_proxies 1 >/dev/null
    for t in zentinel nginx haproxy; do
        [[ -n "${addr[$t]:-}" ]] || continue
        mapfile -t pids < <(worker_pids "$t")
        line="$(cost_load ka-1k "$t" 2000)"
        a0="$(alloc_count "${pids[@]}")"
        line="$(cost_load ka-1k "$t" "$cost_requests")"
        a1="$(alloc_count "${pids[@]}")"
        if ! cost_ok "$line" "$cost_requests"; then
            zt_warn "cost: $t with the allocation counter: $line"
            cost_alloc[$t]=n/a
        elif [[ ! -e "$ZT_TMP/alloc/${pids[0]}" ]]; then
            # No file: the worker does not run with the counter (its environment was cleared).
            cost_alloc[$t]="n/a (not preloaded)"
        else
            cost_alloc[$t]="$(per_req $((a1 - a0)) "$cost_requests")"
        fi
    done
    stop_proxies
    start_proxies 1 >/dev/null
}

# run_cost: every figure for zentinel, nginx and haproxy (already started, 1 worker each).
run_cost() {
    local t kind k pids=() line c0 c1
    zt_log "per-request cost: $cost_requests 1 KiB requests per figure ($(cost_kinds | paste -sd' ' -)), 16 connections, 1 worker per proxy"
    for t in zentinel nginx haproxy; do
        [[ -n "${addr[$t]:-}" ]] || continue
        mapfile -t pids < <(worker_pids "$t")
        ((${#pids[@]})) || { zt_warn "cost: no worker process found for $t"; continue; }
        for kind in $(cost_kinds); do
            k="$kind,$t"
            [[ -n "$(cost_load_args "$kind" "$t")" ]] || continue
            line="$(cost_load "$kind" "$t" 2000)"
            cost_ok "$line" 2000 || zt_warn "cost: $kind via $t warm-up: $line"
            c0="$(cpu_split_us "${pids[@]}")"
            line="$(cost_load "$kind" "$t" "$cost_requests")"
            c1="$(cpu_split_us "${pids[@]}")"
            if cost_ok "$line" "$cost_requests"; then
                read -r cost_cpu[$k] cost_kernel[$k] < <(awk -v a="$c0" -v b="$c1" -v n="$cost_requests" 'BEGIN {
                    split(a, x, " "); split(b, y, " "); u = y[1] - x[1]; s = y[2] - x[2]
                    printf "%.1f %.0f\n", (u + s) / n, (u + s > 0 ? 100 * s / (u + s) : 0) }')
            else
                zt_warn "cost: $kind via $t: $line"
                cost_cpu[$k]=n/a cost_kernel[$k]=n/a
            fi
            cost_strace "$kind" "$t" "${pids[@]}"
        done
        cost_perf "$t" "${pids[@]}"
    done
    cost_allocations
    for kind in $(cost_kinds); do
        for t in zentinel nginx haproxy; do
            k="$kind,$t"
            printf '    %-9s %-9s syscalls/req %s, CPU µs/req %s (kernel %s %%)\n' \
                "$kind" "$t" "${cost_syscalls[$k]:-n/a}" "${cost_cpu[$k]:-n/a}" "${cost_kernel[$k]:-n/a}"
        done
    done
    for t in zentinel nginx haproxy; do
        printf '    %-9s keep-alive: instructions:u/req %s, allocations/req %s\n' "$t" "${cost_instr[$t]:-n/a}" "${cost_alloc[$t]:-n/a}"
    done
}

# build_cost_table: cost_text and cost_md (lines), a row per kind of request and target.
build_cost_table() {
    local t kind k instr alloc
    cost_text=("$(printf '%-9s %-9s %13s %11s %9s %19s %16s  %s' request target syscalls/req "CPU µs/req" kernel% instructions:u/req allocations/req "most frequent syscalls per request")")
    cost_md=("| request | target | syscalls/req | CPU µs/req | kernel share of the CPU | instructions:u/req | heap allocations/req | most frequent syscalls per request |" "|---|---|---:|---:|---:|---:|---:|---|")
    for kind in $(cost_kinds); do
        for t in zentinel nginx haproxy; do
            k="$kind,$t" instr="" alloc=""
            [[ "$kind" == ka-1k ]] && instr="${cost_instr[$t]:-n/a}" alloc="${cost_alloc[$t]:-n/a}"
            cost_text+=("$(printf '%-9s %-9s %13s %11s %9s %19s %16s  %s' "$kind" "$t" "${cost_syscalls[$k]:-n/a}" "${cost_cpu[$k]:-n/a}" "${cost_kernel[$k]:-n/a}" "${instr:--}" "${alloc:--}" "${cost_top[$k]:-}")")
            cost_md+=("| $(cost_kind_desc "$kind") | $t | ${cost_syscalls[$k]:-n/a} | ${cost_cpu[$k]:-n/a} | ${cost_kernel[$k]:-n/a} % | ${instr:--} | ${alloc:--} | ${cost_top[$k]:-} |")
        done
    done
}

# write_cost_markdown FILE: the cost table as the generated section "bench-cost" of FILE, with
# the run's header (set by bench_header; the load average appended by the caller).
write_cost_markdown() {
    local section="$ZT_TMP/cost-section.md"
    {
        echo "### Per-request cost, generated by \`scripts/bench/cost.sh\`"
        echo
        printf -- '- %s\n' "${header[@]}"
        echo
        echo "$cost_requests GETs of 1 KiB per figure (16 connections, one load-generator thread) for each kind of request (keep-alive; TLS keep-alive, TLS 1.3 with the certificate and suite of the throughput runs; a new connection per request), each proxy with 1 worker, each figure from its own run after a warm-up. Syscalls: \`strace -c -f -p\` on the worker processes; CPU: utime + stime of the workers (/proc/PID/stat, 10 ms ticks), and stime's share of it (the kernel's work: the socket calls themselves, which every proxy makes); instructions (keep-alive): \`perf stat -e instructions:u -p\` (n/a without hardware counters); allocations: calls of malloc, calloc, realloc, posix_memalign, aligned_alloc and memalign in the workers, counted by \`scripts/bench/alloc-count.c\` preloaded into a second start of each proxy (nginx and HAProxy carve most of their memory out of their own pools, counted only when a pool grows; keep-alive)."
        echo
        printf '%s\n' "${cost_md[@]}"
    } >"$section"
    md_section "$1" bench-cost "$section"
}
