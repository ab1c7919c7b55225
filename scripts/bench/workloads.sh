# shellcheck shell=bash
# shellcheck disable=SC2034  # globals (rps_of, ...) are read by bench/tables.sh
# bench/workloads.sh: the workloads of scripts/bench-peers.sh, one measurement of a workload
# through a target (with the target's CPU time around it), and the rounds that alternate the
# targets. Sourced after bench/peers.sh. Reads: duration, download_bytes, tls_dir, only.
#
# Every measurement is one zentinel-load (or h2load) run. Results are kept per
# "WORKLOAD,WORKERS,TARGET" as space-separated samples, one per round:
#   rps_of     requests/s, or for the byte workloads bytes/s, or for tls-new-* handshakes/s
#   p99_of     p99 latency, ms (byte workloads: the transfer time)
#   cpu_of     the target's CPU per unit: µs per request (per handshake), or s per GiB
#   failed_of  failed requests, summed over the rounds

declare -A rps_of=() p99_of=() cpu_of=() failed_of=() resumed_of=() negotiated_of=() h2_proto_of=()

# bench_workloads: sets workloads (in run order) and, per workload, wl_args (zentinel-load or
# h2load arguments), wl_kind (rps | hps | bytes), wl_listener (http | tls | h2 | tcp) and
# wl_desc. The plain workloads always; TLS with a certificate; HTTP/2 with h2load too.
bench_workloads() {
    local tls_args="--tls --ca $tls_dir/ca.pem --sni $TLS_NAME" w keep=() size_text
    size_text="$(bytes_text "$download_bytes")"
    declare -gA wl_args=() wl_kind=() wl_listener=() wl_desc=()
    workloads=()
    add() { workloads+=("$1"); wl_listener[$1]="$2" wl_kind[$1]="$3" wl_args[$1]="$4" wl_desc[$1]="$5"; }
    add ka-5b http rps "-c 64 --mode keepalive --body 5" "keep-alive, 64 connections, GET of a 5 B body"
    add ka-1k http rps "-c 64 --mode keepalive --body 1024" "keep-alive, 64 connections, GET of a 1 KiB body"
    add ka-64k http rps "-c 64 --mode keepalive --body 65536" "keep-alive, 64 connections, GET of a 64 KiB body"
    add tcp-ka-5b tcp rps "-c 64 --mode keepalive --body 5" "keep-alive 5 B GETs through each proxy's TCP tunnel (no HTTP parsing, one upstream connection per client: the least a proxy can do per request)"
    add close-1k http rps "-c 16 --mode close --body 1024" "a new connection per request, 16 connections, 1 KiB body"
    if ((tls_ok)); then
        add tls-ka-1k tls rps "-c 64 --mode keepalive --body 1024 $tls_args" "TLS keep-alive, 64 connections, 1 KiB body"
        add tls-new-1k tls hps "-c 16 --mode close --body 1024 $tls_args" "a new connection and a full TLS handshake per request, 16 connections (handshakes/s)"
        add tls-resume-1k tls rps "-c 16 --mode close --body 1024 $tls_args --resume" "a new connection per request resuming an earlier TLS session, 16 connections"
    fi
    if ((tls_ok)) && command -v h2load >/dev/null; then
        add h2-1k h2 rps "-c 16 -m 16 /bytes/1024" "HTTP/2 over the same TLS (h2load), 16 connections x 16 streams, 1 KiB"
        add h2-64k h2 rps "-c 16 -m 4 /bytes/65536" "HTTP/2, 16 connections x 4 streams, 64 KiB"
    fi
    add dl-1g http bytes "-c 1 -n 1 --body $download_bytes --verify status" "one GET of $size_text over one connection (bytes/s, proxy CPU per byte)"
    add tcp-1g tcp bytes "-c 1 -n 1 --body $download_bytes --verify status" "the same $size_text GET through each proxy's TCP tunnel (Zentinel protocol \"tcp\", nginx stream, HAProxy mode tcp)"
    unset -f add
    if [[ "$only" == none ]]; then
        workloads=()
    elif [[ -n "$only" ]]; then
        for w in "${workloads[@]}"; do
            [[ ",$only," == *",$w,"* ]] && keep+=("$w")
        done
        workloads=("${keep[@]}")
        ((${#workloads[@]})) || zt_die "--only $only: no such workload (or its tools are missing)"
    fi
}

# "1 GiB", "256 MiB", or bytes.
bytes_text() {
    awk -v b="$1" 'BEGIN {
        if (b % 1073741824 == 0) printf "%d GiB\n", b / 1073741824
        else if (b % 1048576 == 0) printf "%d MiB\n", b / 1048576
        else printf "%d B\n", b }'
}

# target_addr WORKLOAD TARGET: where the workload goes ("" when the target has no such
# listener, e.g. the backend for HTTP/2).
target_addr() {
    case "${wl_listener[$1]}" in
        tls) echo "${addr_tls[$2]:-}" ;;
        h2) echo "${addr_h2[$2]:-}" ;;
        tcp) echo "${addr_tcp[$2]:-}" ;;
        *) echo "${addr[$2]:-}" ;;
    esac
}

# run_h2load WORKLOAD TARGET OUT: h2load over TLS (ALPN h2); prints zentinel-load's summary line.
run_h2load() {
    local w="$1" t="$2" out="$3" args path
    read -ra args <<<"${wl_args[$w]}"
    path="${args[-1]}"
    unset 'args[-1]'
    h2load -t 2 "${args[@]}" -D "$duration" --log-file "$out.log" \
        "https://$(target_addr "$w" "$t")$path" >"$out.h2load" 2>&1 || true
    zt_h2load_summary "$out.h2load" "$out.log"
}

# measure WORKLOAD WORKERS TARGET ROUND: one run, with the target's CPU time read before and
# after (not for the backend: it is the server, not a proxy).
measure() {
    local w="$1" n="$2" t="$3" r="$4" k="$1,$2,$3" out last rc=0 pids=() c0=0 c1=0 units v p99 cpu
    local args
    out="$ZT_TMP/runs/$w-$n-$t-$r.out"
    [[ "$t" == backend ]] || mapfile -t pids < <(target_pids "$t")
    ((${#pids[@]})) && c0="$(cpu_us "${pids[@]}")"
    if [[ "${wl_listener[$w]}" == h2 ]]; then
        run_h2load "$w" "$t" "$out" >"$out"
        h2_proto_of[$n,$t]="$(zt_summary_field "$(tail -n1 "$out")" proto)"
    elif [[ "${wl_kind[$w]}" == bytes ]]; then
        read -ra args <<<"${wl_args[$w]}"
        "$(zt_bin zentinel-load)" --addr "$(target_addr "$w" "$t")" -t 1 -d 600s --timeout 600s \
            "${args[@]}" >"$out" 2>&1 || rc=$?
    else
        read -ra args <<<"${wl_args[$w]}"
        "$(zt_bin zentinel-load)" --addr "$(target_addr "$w" "$t")" -t 2 -d "${duration}s" \
            "${args[@]}" >"$out" 2>&1 || rc=$?
    fi
    ((${#pids[@]})) && c1="$(cpu_us "${pids[@]}")"
    last="$(tail -n1 "$out" 2>/dev/null || true)"
    if [[ "$last" != requests=* ]]; then
        zt_warn "$w via $t ($n workers, round $r): load generator exit $rc without a summary: $(tail -n 3 "$out" "$out.h2load" 2>/dev/null)"
        return 0
    fi
    failed_of[$k]=$((${failed_of[$k]:-0} + $(zt_summary_field "$last" failed)))
    p99="$(zt_summary_field "$last" p99_ms)"
    case "${wl_kind[$w]}" in
        bytes)
            # One request: its latency (max_ms, exact) is the transfer time.
            p99="$(zt_summary_field "$last" max_ms)"
            if [[ "$(zt_summary_field "$last" requests)" == 1 ]]; then
                v="$(awk -v b="$download_bytes" -v ms="$p99" 'BEGIN { printf "%.0f", (ms > 0 ? b * 1000 / ms : 0) }')"
            else
                v=0
            fi
            units="$(awk -v b="$download_bytes" 'BEGIN { print b / 1073741824 }')" ;;
        hps)
            v="$(zt_summary_field "$last" hps)"
            units="$(zt_summary_field "$last" handshakes)" ;;
        *)
            v="$(zt_summary_field "$last" rps)"
            units="$(zt_summary_field "$last" requests)" ;;
    esac
    if ((${#pids[@]})) && awk -v u="$units" 'BEGIN { exit !(u > 0) }'; then
        # bytes: CPU seconds per GiB; otherwise CPU µs per request (handshake).
        cpu="$(awk -v d=$((c1 - c0)) -v u="$units" -v kind="${wl_kind[$w]}" \
            'BEGIN { if (kind == "bytes") printf "%.3f", d / 1e6 / u; else printf "%.1f", d / u }')"
        cpu_of[$k]+="$cpu "
    else
        cpu="n/a"
    fi
    rps_of[$k]+="$v "
    p99_of[$k]+="$p99 "
    if [[ -n "$(zt_summary_field "$last" handshakes)" ]]; then
        resumed_of[$k]+="$(awk -v r="$(zt_summary_field "$last" resumed)" -v h="$(zt_summary_field "$last" handshakes)" 'BEGIN { printf "%.0f", h ? 100 * r / h : 0 }') "
        negotiated_of[$t]="$(sed -n 's/^tls: .*negotiated: //p' "$out")"
    fi
    printf '    round %d  %-13s %dw %-9s %s cpu=%s\n' "$r" "$w" "$n" "$t" "$last" "$cpu"
}

# warm_download: one HEAD of the download to the backend, untimed: the backend computes and
# keeps the checksum of a streamed body (about a second per GiB) before the first timed run.
warm_download() {
    local host="${backend_addr%:*}" port="${backend_addr##*:}"
    [[ " ${workloads[*]} " == *" dl-"* || " ${workloads[*]} " == *" tcp-"* ]] || return 0
    if ! timeout 120 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "HEAD /bytes/%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" "$3" "$1" >&3 && cat <&3 >/dev/null' \
        _ "$host" "$port" "$download_bytes"; then
        zt_warn "HEAD /bytes/$download_bytes to the backend failed: the first download includes the checksum"
    fi
}

# run_rounds WORKERS: every workload through every target, rounds x (workloads x targets), the
# targets' order rotated every round so no target always runs first or last.
run_rounds() {
    local n="$1" r w k t
    local targets=(backend zentinel nginx haproxy)
    warm_download
    for ((r = 1; r <= rounds; r++)); do
        for w in "${workloads[@]}"; do
            for ((k = 0; k < ${#targets[@]}; k++)); do
                t="${targets[$(((k + r - 1) % ${#targets[@]}))]}"
                [[ -n "$(target_addr "$w" "$t")" ]] || continue
                measure "$w" "$n" "$t" "$r"
            done
        done
    done
}
