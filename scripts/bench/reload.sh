# shellcheck shell=bash
# shellcheck disable=SC2034  # globals (reload_text, reload_md) are read by bench-peers.sh
# bench/reload.sh: failures under keep-alive load (64 connections, 1 KiB) during two reloads:
# nginx SIGHUP to the master, HAProxy -W SIGUSR2 to the master (plain and with `expose-fd
# listeners`), Zentinel `zentinel-ctl upgrade --rolling` (alternating between two copies of
# its binary, zentinel-a and zentinel-b in the temp dir). Sourced after bench/peers.sh; the
# proxies must be running. Reads: reload_duration.

declare -A reload_line=() reload_replaced=()

# reload_test NAME ACTION: keep-alive load for reload_duration with ACTION run at 1/3 and 2/3.
reload_test() {
    local name="$1" action="$2" out load_pid start i at t0 t1 rc ev="" before after
    out="$ZT_TMP/runs/reload-$name.out"
    before="$(worker_pids "$name" | tr '\n' ' ')"
    start=$(zt_now_ms)
    "$(zt_bin zentinel-load)" --addr "${addr[$name]}" -t 2 -c 64 --mode keepalive --body 1024 \
        -d "${reload_duration}s" >"$out" 2>&1 &
    load_pid=$!
    zt_register_pid "$load_pid" "zentinel-load ($name)"
    for i in 1 2; do
        at=$((start + reload_duration * 1000 * i / 3))
        zt_sleep_until "$at" "$load_pid" || break
        t0=$(zt_now_ms)
        rc=0
        "$action" "$i" >>"$ZT_TMP/runs/reload-$name.actions" 2>&1 || rc=$?
        t1=$(zt_now_ms)
        ev+="#$i t=$(zt_secs $((t0 - start)))s $((t1 - t0))ms rc=$rc; "
    done
    wait "$load_pid" || true
    zt_unregister_pid "$load_pid"
    after="$(worker_pids "$name" | tr '\n' ' ')"
    if [[ -n "$before" && -n "$after" && "$before" != "$after" ]]; then
        ev+="workers [${before% }] -> [${after% }]"
        reload_replaced[$name]=yes
    else
        reload_replaced[$name]=NO
        ev+="WORKERS NOT REPLACED: [${before% }] -> [${after% }]"
    fi
    reload_line[$name]="$(tail -n1 "$out")"
    printf '    %-16s %s\n' "$name" "${reload_line[$name]}"
    printf '    %-16s events: %s\n' "" "$ev"
    # The failure kinds and first details, when there are any.
    awk '/^failures/ && !/none/ {on = 1} /^latency/ {on = 0} on' "$out" | sed 's/^/                     /'
}

reload_zentinel() {
    local bin="$ZT_TMP/zentinel-b"
    (($1 % 2 == 0)) && bin="$ZT_TMP/zentinel-a"
    timeout 120 "$(zt_bin zentinel-ctl)" --socket "$zentinel_sock" upgrade --rolling --binary "$bin"
}
# `nginx -s reload` sends SIGHUP to the pid in the pid file: the same, without the file.
reload_nginx() { kill -HUP "$nginx_pid"; }
reload_haproxy() { kill -USR2 "${haproxy_pid[haproxy]}"; }
reload_haproxy_seamless() { kill -USR2 "${haproxy_pid[haproxy-seamless]}"; }

# run_reloads WORKERS: the comparison, with the proxies as started (WORKERS workers), then a
# seamless HAProxy of its own.
run_reloads() {
    zt_log "reload comparison ($1 worker(s)): keep-alive, 64 connections, 1 KiB, ${reload_duration}s with 2 reloads/upgrades at 1/3 and 2/3"
    reload_workers="$1"
    [[ -n "${addr[zentinel]:-}" ]] && reload_test zentinel reload_zentinel
    [[ -n "${addr[nginx]:-}" ]] && reload_test nginx reload_nginx
    [[ -n "${addr[haproxy]:-}" ]] && reload_test haproxy reload_haproxy
    if start_haproxy haproxy-seamless "$1" 1; then
        reload_test haproxy-seamless reload_haproxy_seamless
        stop_haproxy haproxy-seamless
    else
        zt_warn "haproxy with expose-fd listeners is reported as n/a"
    fi
}

# build_reload_table: reload_text and reload_md (lines).
build_reload_table() {
    local t l rq fl rp rr
    local -A action=(
        [zentinel]="zentinel-ctl upgrade --rolling"
        [nginx]="SIGHUP to the master (nginx -s reload)"
        [haproxy]="SIGUSR2 to the -W master"
        [haproxy-seamless]="SIGUSR2, expose-fd listeners"
    )
    reload_text=("$(printf '%-17s %-40s %9s %10s %8s %8s' target "reload action" replaced requests failed rps)")
    reload_md=("| target | action (2 during the load) | workers replaced | requests | failed | rps |" "|---|---|---|---:|---:|---:|")
    for t in zentinel nginx haproxy haproxy-seamless; do
        l="${reload_line[$t]:-}"
        if [[ "$l" == requests=* ]]; then
            rq="$(zt_summary_field "$l" requests)" fl="$(zt_summary_field "$l" failed)" rp="$(zt_summary_field "$l" rps)"
        else
            rq=n/a fl=n/a rp=n/a
        fi
        rr="${reload_replaced[$t]:-n/a}"
        reload_text+=("$(printf '%-17s %-40s %9s %10s %8s %8s' "$t" "${action[$t]}" "$rr" "$rq" "$fl" "$rp")")
        reload_md+=("| $t | ${action[$t]} | $rr | $rq | $fl | $rp |")
    done
}
