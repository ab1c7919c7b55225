#!/usr/bin/env bash
# Zentinel against nginx and HAProxy on the same machine, same backend, same workload, same run:
# throughput and p99 per workload (plus the backend hit directly, the ceiling), the same over TLS
# (one certificate, one TLS 1.3 cipher suite for all three), HTTP/2 over that TLS with h2load,
# then failures under keep-alive load during nginx / HAProxy reloads versus Zentinel rolling
# upgrades.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
usage: scripts/bench-peers.sh [options]

Installs nginx and HAProxy with apt-get if missing, builds Zentinel (release), and measures with
zentinel-load, through each target in turn (alternating within every round):
  ka-1k     keep-alive, 64 connections, GET of a 1 KiB body
  ka-64k    keep-alive, 64 connections, GET of a 64 KiB body
  close-1k  a new connection per request, 16 connections, 1 KiB body
and over TLS (not to the backend), with zentinel-load --tls verifying the certificate:
  tls-ka-1k      keep-alive, 64 connections, 1 KiB body (req/s, p99)
  tls-new-1k     a new connection and a full TLS handshake per request, 16 connections
                 (new handshakes/s)
  tls-resume-1k  a new connection per request resuming an earlier TLS session (--resume),
                 16 connections (req/s, share of handshakes resumed)
and HTTP/2 over the same TLS (ALPN h2), with h2load (2 threads), when h2load is installed
(scripts/test-deps.sh installs nghttp2-client):
  h2-1k     16 connections x 16 concurrent streams, GET of a 1 KiB body (req/s, p99)
  h2-64k    16 connections x 4 concurrent streams, GET of a 64 KiB body
            (nginx: `http2` on its own TLS listener; HAProxy: `alpn h2,http/1.1` on its own
            bind; Zentinel: its https listener, which offers h2 by ALPN)
Every server gets the same certificate (ECDSA P-256, made here with openssl, signed by a CA made
here), TLS 1.3 only and one cipher suite, TLS_AES_128_GCM_SHA256: nginx `ssl_protocols TLSv1.3`
and `ssl_conf_command Ciphersuites`, HAProxy `bind ... ssl crt ... ssl-min-ver TLSv1.3
ciphersuites`, Zentinel `tls { min-version "1.3"; cipher-suites }`; session resumption as each
one does it by default. The output names what each server negotiated. Without openssl the TLS
workloads are skipped.
targets: backend (zentinel-backend hit directly: the ceiling), zentinel (2 workers),
nginx (worker_processes 2), haproxy (nbthread 2). Prints the median over the rounds of rps and
p99, the ratios Zentinel/nginx and Zentinel/HAProxy, then the reload comparison: failed requests
under keep-alive load (64 connections) with 2 reloads (nginx: SIGHUP to the master; HAProxy -W:
SIGUSR2 to the master, plain and with `expose-fd listeners`) or 2 Zentinel rolling upgrades.

options:
  --duration S      seconds per measurement (default 5)
  --rounds N        rounds (default 3); the table shows medians
  --reload-duration S  seconds of load per reload test (default 10)
  --quick           --duration 2 --rounds 1 --reload-duration 6 (a smoke run)
  --markdown FILE   also write the tables as markdown to FILE
  -h, --help        this help

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

duration=5 rounds=3 reload_duration=10 markdown=""
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --quick) duration=2 rounds=1 reload_duration=6; shift; continue ;;
        --duration | --rounds | --reload-duration | --markdown) (($# >= 2)) || bad_usage "$1 needs a value" ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
    case "$1" in
        --duration) duration="$2" ;;
        --rounds) rounds="$2" ;;
        --reload-duration) reload_duration="$2" ;;
        --markdown) markdown="$2" ;;
    esac
    shift 2
done
positive --duration "$duration"
positive --rounds "$rounds"
positive --reload-duration "$reload_duration"
((reload_duration >= 3)) || bad_usage "--reload-duration must be >= 3"
if [[ -n "$markdown" ]]; then
    [[ "$markdown" == /* ]] || markdown="$PWD/$markdown"
    : >"$markdown" || bad_usage "cannot write --markdown $markdown"
fi

zt_init
cd "$ZT_ROOT"

# ---------------------------------------------------------------------------------------------
# Peers: install when missing

PATH="$PATH:/usr/sbin:/sbin"
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
    zt_log "installing nginx and haproxy (apt-get)"
    sudo=()
    if (($(id -u) != 0)); then sudo=(sudo); fi
    if ! { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y --no-install-recommends nginx haproxy; }; then
        zt_warn "apt-get install failed; the missing peers are reported as n/a"
    fi
fi

zt_build

# ---------------------------------------------------------------------------------------------
# Header

nginx_version="$( (nginx -v 2>&1 || echo 'nginx: not installed') | head -n1)"
haproxy_version="$( (haproxy -v 2>/dev/null || echo 'HAProxy not installed') | head -n1)"
zentinel_version="$("$(zt_bin zentinel)" --version)"
cpu_model="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
header=(
    "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    "machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, $(uname -sr)"
    "versions: $zentinel_version; $nginx_version; $haproxy_version"
    "load: zentinel-load, 2 threads (HTTP/2: $( (h2load --version 2>/dev/null || echo 'h2load: not installed') | head -n1), 2 threads), ${duration}s per measurement, $rounds round(s), targets alternating"
)
zt_log "bench-peers"
printf '    %s\n' "${header[@]}"
load_avg="$(cut -d' ' -f1-3 /proc/loadavg)"
zt_info "load average before the run: $load_avg (anything else running skews the figures)"

# ---------------------------------------------------------------------------------------------
# TLS: one certificate for every server

TLS_SUITE=TLS_AES_128_GCM_SHA256
TLS_NAME=bench.test
tls_dir="$ZT_TMP/tls"
tls_ok=0
if zt_make_tls_cert "$tls_dir" "$TLS_NAME"; then tls_ok=1; else zt_warn "no TLS workloads"; fi

# ---------------------------------------------------------------------------------------------
# Targets

zt_start_backend backend
backend_addr="$ZT_BACKEND_ADDR"
declare -A addr=([backend]="$backend_addr")

cp "$(zt_bin zentinel)" "$ZT_TMP/zentinel-a"
cp "$(zt_bin zentinel)" "$ZT_TMP/zentinel-b"
zt_write_config "$ZT_TMP/zentinel.kdl" "$backend_addr" "$ZT_TMP/zentinel.sock" 2
# TLS: a second listener, next to the plain one (TLS workloads use addr_tls).
declare -A addr_tls=() addr_h2=()
if ((tls_ok)); then
    zentinel_tls_port="$(zt_free_port)"
    cat >"$ZT_TMP/zentinel-tls-listener.kdl" <<EOF
    listener "https" {
        address "127.0.0.1:$zentinel_tls_port"
        protocol "https"
        default-route "backend"
        tls {
            cert-file "$tls_dir/leaf.pem"
            key-file "$tls_dir/leaf.key"
            min-version "1.3"
            cipher-suites "$TLS_SUITE"
        }
    }
EOF
    # At the end of the listeners block: the plain listener stays the first one logged, which
    # is the one zt_start_zentinel takes for ZT_ADDR.
    awk -v f="$ZT_TMP/zentinel-tls-listener.kdl" '
        /^listeners \{/ { inside = 1 }
        inside && /^\}/ { while ((getline l < f) > 0) print l; inside = 0 }
        { print }' "$ZT_TMP/zentinel.kdl" >"$ZT_TMP/zentinel.kdl.new"
    mv "$ZT_TMP/zentinel.kdl.new" "$ZT_TMP/zentinel.kdl"
fi
zt_start_zentinel "$ZT_TMP/zentinel.kdl" "$ZT_TMP/zentinel-a"
addr[zentinel]="$ZT_ADDR"
[[ "$ZT_ADDR" != *":${zentinel_tls_port:-none}" ]] || zt_die "zentinel: took the TLS listener $ZT_ADDR for the plain one"
if ((tls_ok)); then
    if zt_wait_tcp 127.0.0.1 "$zentinel_tls_port" 10; then
        addr_tls[zentinel]="127.0.0.1:$zentinel_tls_port"
        # The https listener offers h2 by ALPN: HTTP/2 goes to the same socket.
        addr_h2[zentinel]="127.0.0.1:$zentinel_tls_port"
    else
        zt_warn "zentinel's TLS listener 127.0.0.1:$zentinel_tls_port does not accept"
    fi
fi
zt_info "backend $backend_addr, zentinel $ZT_ADDR (TLS ${addr_tls[zentinel]:-n/a})"

# nginx 1.25.1 replaced `listen ... http2` with the `http2 on;` directive.
nginx_h2_listen() {
    local v
    v="$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')"
    if [[ "$(printf '%s\n1.25.1\n' "$v" | sort -V | head -n1)" == 1.25.1 ]]; then
        printf 'listen 127.0.0.1:%s ssl;\n        http2 on;' "$1"
    else
        printf 'listen 127.0.0.1:%s ssl http2;' "$1"
    fi
}

write_nginx_conf() {
    local dir="$1" port="$2" tls_port="$3" h2_port="$4"
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
$( (($(id -u) == 0)) && echo 'user root;  # the temp paths are inside a 0700 directory')
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream backend {
        server $backend_addr;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
$( ((tls_ok)) && cat <<TLS
    server {
        listen 127.0.0.1:$tls_port ssl;
        ssl_certificate $tls_dir/leaf.pem;
        ssl_certificate_key $tls_dir/leaf.key;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites $TLS_SUITE;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        $(nginx_h2_listen "$h2_port")
        ssl_certificate $tls_dir/leaf.pem;
        ssl_certificate_key $tls_dir/leaf.key;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites $TLS_SUITE;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
TLS
)
}
EOF
}

# start_nginx: sets addr[nginx] (and addr_tls[nginx]) and nginx_pid, or returns 1 (reported as
# n/a).
start_nginx() {
    local dir="$ZT_TMP/nginx" port tls_port h2_port try
    command -v nginx >/dev/null || { zt_warn "nginx not installed"; return 1; }
    for try in 1 2 3; do
        port="$(zt_free_port)"
        tls_port="$(zt_free_port)"
        h2_port="$(zt_free_port)"
        write_nginx_conf "$dir" "$port" "$tls_port" "$h2_port"
        if ! nginx -t -q -e "$dir/error.log" -c "$dir/nginx.conf" -p "$dir" 2>"$dir/check.err"; then
            zt_warn "nginx -t rejected the config: $(cat "$dir/check.err")"
            return 1
        fi
        # setsid, like Zentinel (zt_start_zentinel): each server in its own session, hence its
        # own scheduler autogroup. Otherwise whichever shares the load generator's group gets a
        # smaller share of a busy machine, and that alone decides the comparison.
        setsid nginx -e "$dir/error.log" -c "$dir/nginx.conf" -p "$dir" >"$dir/stdout" 2>&1 &
        nginx_pid=$!
        zt_register_pid "$nginx_pid" nginx
        if zt_wait_tcp 127.0.0.1 "$port" 10 "$nginx_pid"; then
            addr[nginx]="127.0.0.1:$port"
            if ((tls_ok)) && zt_wait_tcp 127.0.0.1 "$tls_port" 10 "$nginx_pid"; then
                addr_tls[nginx]="127.0.0.1:$tls_port"
            fi
            if ((tls_ok)) && zt_wait_tcp 127.0.0.1 "$h2_port" 10 "$nginx_pid"; then
                addr_h2[nginx]="127.0.0.1:$h2_port"
            fi
            return 0
        fi
        zt_stop_pid "$nginx_pid" nginx
        zt_unregister_pid "$nginx_pid"
        zt_warn "nginx did not start on port $port (try $try): $(tail -n 3 "$dir/error.log" 2>/dev/null)"
    done
    return 1
}

write_haproxy_conf() {
    local file="$1" port="$2" seamless="$3" tls_port="$4" h2_port="$5"
    cat >"$file" <<EOF
global
    nbthread 2
    maxconn 4096
$( [[ "$seamless" == 1 ]] && echo "    stats socket $ZT_TMP/haproxy-$port.sock mode 600 level admin expose-fd listeners")
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$port
    default_backend be
$( ((tls_ok)) && cat <<TLS
frontend fe_tls
    bind 127.0.0.1:$tls_port ssl crt $tls_dir/leaf-and-key.pem ssl-min-ver TLSv1.3 ciphersuites $TLS_SUITE
    default_backend be
frontend fe_h2
    bind 127.0.0.1:$h2_port ssl crt $tls_dir/leaf-and-key.pem ssl-min-ver TLSv1.3 ciphersuites $TLS_SUITE alpn h2,http/1.1
    default_backend be
TLS
)
backend be
    server s1 $backend_addr
EOF
}

# start_haproxy NAME SEAMLESS: master-worker mode (-W) in the foreground (-db); sets addr[NAME]
# (and addr_tls[NAME]) and haproxy_pid[NAME], or returns 1.
declare -A haproxy_pid=()
start_haproxy() {
    local name="$1" seamless="$2" port tls_port h2_port try file pid
    command -v haproxy >/dev/null || { zt_warn "haproxy not installed"; return 1; }
    for try in 1 2 3; do
        port="$(zt_free_port)"
        tls_port="$(zt_free_port)"
        h2_port="$(zt_free_port)"
        file="$ZT_TMP/$name.cfg"
        write_haproxy_conf "$file" "$port" "$seamless" "$tls_port" "$h2_port"
        if ! haproxy -c -q -f "$file" >"$ZT_TMP/$name.check" 2>&1; then
            zt_warn "haproxy -c rejected $file: $(cat "$ZT_TMP/$name.check")"
            return 1
        fi
        # setsid: same scheduling footing as the other servers (see nginx above).
        setsid haproxy -W -db -f "$file" >"$ZT_TMP/$name.log" 2>&1 &
        pid=$!
        zt_register_pid "$pid" "$name"
        if zt_wait_tcp 127.0.0.1 "$port" 10 "$pid"; then
            addr[$name]="127.0.0.1:$port"
            haproxy_pid[$name]="$pid"
            if ((tls_ok)) && zt_wait_tcp 127.0.0.1 "$tls_port" 10 "$pid"; then
                addr_tls[$name]="127.0.0.1:$tls_port"
            fi
            if ((tls_ok)) && zt_wait_tcp 127.0.0.1 "$h2_port" 10 "$pid"; then
                addr_h2[$name]="127.0.0.1:$h2_port"
            fi
            return 0
        fi
        zt_stop_pid "$pid" "$name"
        zt_unregister_pid "$pid"
        zt_warn "$name did not start on port $port (try $try): $(tail -n 3 "$ZT_TMP/$name.log")"
    done
    return 1
}

nginx_pid=""
start_nginx || zt_warn "nginx is reported as n/a"
start_haproxy haproxy 0 || zt_warn "haproxy is reported as n/a"
zt_info "nginx ${addr[nginx]:-n/a} (TLS ${addr_tls[nginx]:-n/a}, h2 ${addr_h2[nginx]:-n/a}, master pid ${nginx_pid:-n/a}), haproxy ${addr[haproxy]:-n/a} (TLS ${addr_tls[haproxy]:-n/a}, h2 ${addr_h2[haproxy]:-n/a})"

# ---------------------------------------------------------------------------------------------
# Throughput and latency

targets=(backend zentinel nginx haproxy)
plain_workloads=(ka-1k ka-64k close-1k)
tls_workloads=()
((tls_ok)) && tls_workloads=(tls-ka-1k tls-new-1k tls-resume-1k)
h2_workloads=()
if ((tls_ok)) && command -v h2load >/dev/null; then
    h2_workloads=(h2-1k h2-64k)
else
    zt_warn "no HTTP/2 workloads (they need openssl and h2load: nghttp2-client)"
fi
workloads=("${plain_workloads[@]}" "${tls_workloads[@]}" "${h2_workloads[@]}")
tls_args="--tls --ca $tls_dir/ca.pem --sni $TLS_NAME"
declare -A wl_args=(
    [ka-1k]="-c 64 --mode keepalive --body 1024"
    [ka-64k]="-c 64 --mode keepalive --body 65536"
    [close-1k]="-c 16 --mode close --body 1024"
    [tls-ka-1k]="-c 64 --mode keepalive --body 1024 $tls_args"
    [tls-new-1k]="-c 16 --mode close --body 1024 $tls_args"
    [tls-resume-1k]="-c 16 --mode close --body 1024 $tls_args --resume"
    [h2-1k]="-c 16 -m 16 /bytes/1024"
    [h2-64k]="-c 16 -m 4 /bytes/65536"
)
declare -A rps_of=() p99_of=() failed_of=() hps_of=() resumed_of=() negotiated_of=() h2_proto_of=()
mkdir -p "$ZT_TMP/runs"

# target_addr WORKLOAD TARGET: where the workload goes ("" when that target has no such
# listener: the backend and any server without TLS for tls-* workloads).
target_addr() {
    case "$1" in
        tls-*) echo "${addr_tls[$2]:-}" ;;
        h2-*) echo "${addr_h2[$2]:-}" ;;
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

# measure WORKLOAD TARGET ROUND: one zentinel-load run; appends to rps_of/p99_of/failed_of, and
# for TLS to hps_of (handshakes/s), resumed_of (% of handshakes) and negotiated_of.
measure() {
    local w="$1" t="$2" r="$3" out last rc=0 hs
    out="$ZT_TMP/runs/$w-$t-$r.out"
    if [[ "$w" == h2-* ]]; then
        run_h2load "$w" "$t" "$out" >"$out"
        h2_proto_of[$t]="$(zt_summary_field "$(tail -n1 "$out")" proto)"
    else
        # shellcheck disable=SC2086  # wl_args holds several words on purpose
        "$(zt_bin zentinel-load)" --addr "$(target_addr "$w" "$t")" -t 2 -d "${duration}s" ${wl_args[$w]} >"$out" 2>&1 || rc=$?
    fi
    last="$(tail -n1 "$out" 2>/dev/null || true)"
    if [[ "$last" != requests=* ]]; then
        zt_warn "$w via $t (round $r): load generator exit $rc without a summary: $(tail -n 3 "$out" "$out.h2load" 2>/dev/null)"
        return 0
    fi
    rps_of[$w,$t]+="$(zt_summary_field "$last" rps) "
    p99_of[$w,$t]+="$(zt_summary_field "$last" p99_ms) "
    failed_of[$w,$t]=$((${failed_of[$w,$t]:-0} + $(zt_summary_field "$last" failed)))
    hs="$(zt_summary_field "$last" handshakes)"
    if [[ -n "$hs" ]]; then
        hps_of[$w,$t]+="$(zt_summary_field "$last" hps) "
        resumed_of[$w,$t]+="$(awk -v r="$(zt_summary_field "$last" resumed)" -v h="$hs" 'BEGIN { printf "%.0f", h ? 100 * r / h : 0 }') "
        negotiated_of[$t]="$(sed -n 's/^tls: .*negotiated: //p' "$out")"
    fi
    printf '    round %d  %-13s %-9s %s\n' "$r" "$w" "$t" "$last"
}

zt_log "throughput: ${#workloads[@]} workloads x ${#targets[@]} targets x $rounds round(s), ${duration}s each"
for ((r = 1; r <= rounds; r++)); do
    for w in "${workloads[@]}"; do
        # Rotate the order every round so no target always runs first or last.
        for ((k = 0; k < ${#targets[@]}; k++)); do
            t="${targets[$(((k + r - 1) % ${#targets[@]}))]}"
            [[ -n "$(target_addr "$w" "$t")" ]] || continue
            measure "$w" "$t" "$r"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Reload comparison

# Worker pids of a target (sorted, space-separated): a reload must replace them.
worker_pids() {
    case "$1" in
        zentinel) zt_status_workers "$(zt_ctl status --json)" | awk '$5 == "running" {print $2}' | sort -n | tr '\n' ' ' ;;
        nginx) zt_children "$nginx_pid" | sort -n | tr '\n' ' ' ;;
        haproxy*) zt_children "${haproxy_pid[$1]}" | sort -n | tr '\n' ' ' ;;
    esac
}

# reload_test NAME ACTION: keep-alive load for reload_duration with ACTION run at 1/3 and 2/3.
declare -A reload_line=() reload_replaced=()
reload_test() {
    local name="$1" action="$2" out load_pid start i at t0 t1 rc ev="" before after
    out="$ZT_TMP/runs/reload-$name.out"
    before="$(worker_pids "$name")"
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
    after="$(worker_pids "$name")"
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
    timeout 120 "$(zt_bin zentinel-ctl)" --socket "$ZT_SOCK" upgrade --rolling --binary "$bin"
}
reload_nginx() {
    # `nginx -s reload` sends SIGHUP to the pid in the pid file: the same, without the file.
    kill -HUP "$nginx_pid"
}
reload_haproxy() { kill -USR2 "${haproxy_pid[haproxy]}"; }
reload_haproxy_seamless() { kill -USR2 "${haproxy_pid[haproxy-seamless]}"; }

zt_log "reload comparison: keep-alive, 64 connections, 1 KiB, ${reload_duration}s with 2 reloads/upgrades at 1/3 and 2/3"
reload_targets=(zentinel)
reload_test zentinel reload_zentinel
if [[ -n "${addr[nginx]:-}" ]]; then
    reload_targets+=(nginx)
    reload_test nginx reload_nginx
fi
if [[ -n "${addr[haproxy]:-}" ]]; then
    reload_targets+=(haproxy)
    reload_test haproxy reload_haproxy
fi
if start_haproxy haproxy-seamless 1; then
    reload_targets+=(haproxy-seamless)
    reload_test haproxy-seamless reload_haproxy_seamless
else
    zt_warn "haproxy with expose-fd listeners is reported as n/a"
fi

# ---------------------------------------------------------------------------------------------
# Tables

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'
}

table=()
md=("| workload | target | rps (median) | p99 ms (median) | failed (all rounds) |" "|---|---|---:|---:|---:|")
declare -A med_rps=() med_p99=()
for w in "${plain_workloads[@]}"; do
    for t in "${targets[@]}"; do
        # shellcheck disable=SC2086  # space-separated samples
        med_rps[$w,$t]="$(zt_median ${rps_of[$w,$t]:-})"
        # shellcheck disable=SC2086
        med_p99[$w,$t]="$(zt_median ${p99_of[$w,$t]:-})"
        f="${failed_of[$w,$t]:-n/a}"
        table+=("$(printf '%-9s %-10s %12s %14s %10s' "$w" "$t" "${med_rps[$w,$t]}" "${med_p99[$w,$t]}" "$f")")
        md+=("| $w | $t | ${med_rps[$w,$t]} | ${med_p99[$w,$t]} | $f |")
    done
done

ratios=()
md_ratios=("| workload | rps Zentinel/nginx | rps Zentinel/HAProxy | p99 Zentinel/nginx | p99 Zentinel/HAProxy |" "|---|---:|---:|---:|---:|")
for w in "${plain_workloads[@]}"; do
    a="$(ratio "${med_rps[$w,zentinel]}" "${med_rps[$w,nginx]}")"
    b="$(ratio "${med_rps[$w,zentinel]}" "${med_rps[$w,haproxy]}")"
    c="$(ratio "${med_p99[$w,zentinel]}" "${med_p99[$w,nginx]}")"
    d="$(ratio "${med_p99[$w,zentinel]}" "${med_p99[$w,haproxy]}")"
    ratios+=("$(printf '%-9s %18s %20s %18s %20s' "$w" "$a" "$b" "$c" "$d")")
    md_ratios+=("| $w | $a | $b | $c | $d |")
done

# TLS: the same, plus handshakes/s and the share resumed; the ratios compare req/s, except for
# tls-new-1k where what is measured is new handshakes/s (one per request there).
tls_table=() tls_ratios=() md_tls=() md_tls_ratios=() tls_negotiated=()
if ((${#tls_workloads[@]})); then
    md_tls=("| workload | target | rps (median) | p99 ms (median) | handshakes/s (median) | resumed % (median) | failed (all rounds) |" "|---|---|---:|---:|---:|---:|---:|")
    declare -A med_hps=() med_res=()
    for w in "${tls_workloads[@]}"; do
        for t in zentinel nginx haproxy; do
            # shellcheck disable=SC2086  # space-separated samples
            med_rps[$w,$t]="$(zt_median ${rps_of[$w,$t]:-})"
            # shellcheck disable=SC2086
            med_p99[$w,$t]="$(zt_median ${p99_of[$w,$t]:-})"
            # shellcheck disable=SC2086
            med_hps[$w,$t]="$(zt_median ${hps_of[$w,$t]:-})"
            # shellcheck disable=SC2086
            med_res[$w,$t]="$(zt_median ${resumed_of[$w,$t]:-})"
            f="${failed_of[$w,$t]:-n/a}"
            tls_table+=("$(printf '%-13s %-10s %12s %14s %14s %10s %10s' "$w" "$t" "${med_rps[$w,$t]}" "${med_p99[$w,$t]}" "${med_hps[$w,$t]}" "${med_res[$w,$t]}" "$f")")
            md_tls+=("| $w | $t | ${med_rps[$w,$t]} | ${med_p99[$w,$t]} | ${med_hps[$w,$t]} | ${med_res[$w,$t]} | $f |")
        done
    done
    md_tls_ratios=("| workload | measure | Zentinel/nginx | Zentinel/HAProxy | p99 Zentinel/nginx | p99 Zentinel/HAProxy |" "|---|---|---:|---:|---:|---:|")
    for w in "${tls_workloads[@]}"; do
        if [[ "$w" == tls-new-* ]]; then
            m="handshakes/s" a="$(ratio "${med_hps[$w,zentinel]}" "${med_hps[$w,nginx]}")" b="$(ratio "${med_hps[$w,zentinel]}" "${med_hps[$w,haproxy]}")"
        else
            m="req/s" a="$(ratio "${med_rps[$w,zentinel]}" "${med_rps[$w,nginx]}")" b="$(ratio "${med_rps[$w,zentinel]}" "${med_rps[$w,haproxy]}")"
        fi
        c="$(ratio "${med_p99[$w,zentinel]}" "${med_p99[$w,nginx]}")"
        d="$(ratio "${med_p99[$w,zentinel]}" "${med_p99[$w,haproxy]}")"
        tls_ratios+=("$(printf '%-13s %-12s %14s %16s %18s %20s' "$w" "$m" "$a" "$b" "$c" "$d")")
        md_tls_ratios+=("| $w | $m | $a | $b | $c | $d |")
    done
    for t in zentinel nginx haproxy; do
        tls_negotiated+=("$t: ${negotiated_of[$t]:-n/a}")
    done
fi
# HTTP/2: req/s and p99 per target, from h2load (the ALPN each one negotiated is named).
h2_table=() h2_ratios=() md_h2=() md_h2_ratios=() h2_negotiated=()
if ((${#h2_workloads[@]})); then
    md_h2=("| workload | target | rps (median) | p99 ms (median) | failed or non-2xx (all rounds) |" "|---|---|---:|---:|---:|")
    md_h2_ratios=("| workload | rps Zentinel/nginx | rps Zentinel/HAProxy | p99 Zentinel/nginx | p99 Zentinel/HAProxy |" "|---|---:|---:|---:|---:|")
    for w in "${h2_workloads[@]}"; do
        for t in zentinel nginx haproxy; do
            # shellcheck disable=SC2086  # space-separated samples
            med_rps[$w,$t]="$(zt_median ${rps_of[$w,$t]:-})"
            # shellcheck disable=SC2086
            med_p99[$w,$t]="$(zt_median ${p99_of[$w,$t]:-})"
            f="${failed_of[$w,$t]:-n/a}"
            h2_table+=("$(printf '%-9s %-10s %12s %14s %10s' "$w" "$t" "${med_rps[$w,$t]}" "${med_p99[$w,$t]}" "$f")")
            md_h2+=("| $w | $t | ${med_rps[$w,$t]} | ${med_p99[$w,$t]} | $f |")
        done
        a="$(ratio "${med_rps[$w,zentinel]}" "${med_rps[$w,nginx]}")"
        b="$(ratio "${med_rps[$w,zentinel]}" "${med_rps[$w,haproxy]}")"
        c="$(ratio "${med_p99[$w,zentinel]}" "${med_p99[$w,nginx]}")"
        d="$(ratio "${med_p99[$w,zentinel]}" "${med_p99[$w,haproxy]}")"
        h2_ratios+=("$(printf '%-9s %18s %20s %18s %20s' "$w" "$a" "$b" "$c" "$d")")
        md_h2_ratios+=("| $w | $a | $b | $c | $d |")
    done
    for t in zentinel nginx haproxy; do
        h2_negotiated+=("$t: ${h2_proto_of[$t]:-n/a}")
    done
fi

# The TLS libraries doing the work: rustls in Zentinel and zentinel-load, the OpenSSL nginx and
# HAProxy run with.
rustls_version="$(awk '/^name = "rustls"$/ { getline; gsub(/"/, "", $3); print $3; exit }' "$ZT_ROOT/Cargo.lock")"
openssl_running="$( (haproxy -vv 2>/dev/null || true) | sed -n 's/^Running on OpenSSL version : //p' | head -n1)"
[[ -n "$openssl_running" ]] || openssl_running="$( (openssl version 2>/dev/null || echo 'n/a') | head -n1)"
tls_note="TLS: one ECDSA P-256 certificate (openssl, signed by a test CA) for all three, TLS 1.3 only, cipher suite $TLS_SUITE pinned in each (nginx ssl_conf_command Ciphersuites, HAProxy bind ciphersuites, Zentinel tls cipher-suites); libraries: rustls ${rustls_version:-?} (ring) in Zentinel and zentinel-load, $openssl_running in nginx and HAProxy; zentinel-load verifies the certificate; negotiated:"

reloads=()
md_reloads=("| target | action (2 during the load) | workers replaced | requests | failed | rps |" "|---|---|---|---:|---:|---:|")
declare -A reload_action=(
    [zentinel]="zentinel-ctl upgrade --rolling"
    [nginx]="SIGHUP to the master (nginx -s reload)"
    [haproxy]="SIGUSR2 to the -W master"
    [haproxy-seamless]="SIGUSR2, expose-fd listeners"
)
for t in zentinel nginx haproxy haproxy-seamless; do
    l="${reload_line[$t]:-}"
    if [[ "$l" == requests=* ]]; then
        rq="$(zt_summary_field "$l" requests)" fl="$(zt_summary_field "$l" failed)" rp="$(zt_summary_field "$l" rps)"
    else
        rq=n/a fl=n/a rp=n/a
    fi
    rr="${reload_replaced[$t]:-n/a}"
    reloads+=("$(printf '%-17s %-40s %9s %10s %8s %8s' "$t" "${reload_action[$t]}" "$rr" "$rq" "$fl" "$rp")")
    md_reloads+=("| $t | ${reload_action[$t]} | $rr | $rq | $fl | $rp |")
done

zt_log "results"
printf '    %s\n' "${header[@]}"
echo
printf '%-9s %-10s %12s %14s %10s\n' workload target "rps(median)" "p99ms(median)" failed
printf '%s\n' "${table[@]}"
echo
printf '%-9s %18s %20s %18s %20s\n' workload "rps zentinel/nginx" "rps zentinel/haproxy" "p99 zentinel/nginx" "p99 zentinel/haproxy"
printf '%s\n' "${ratios[@]}"
if ((${#tls_table[@]})); then
    echo
    echo "$tls_note"
    printf '    %s\n' "${tls_negotiated[@]}"
    printf '%-13s %-10s %12s %14s %14s %10s %10s\n' workload target "rps(median)" "p99ms(median)" "hs/s(median)" "resumed%" failed
    printf '%s\n' "${tls_table[@]}"
    echo
    printf '%-13s %-12s %14s %16s %18s %20s\n' workload measure "zentinel/nginx" "zentinel/haproxy" "p99 zentinel/nginx" "p99 zentinel/haproxy"
    printf '%s\n' "${tls_ratios[@]}"
fi
if ((${#h2_table[@]})); then
    echo
    echo "HTTP/2 over the same TLS (h2load, 2 threads); ALPN negotiated: ${h2_negotiated[*]}"
    printf '%-9s %-10s %12s %14s %10s\n' workload target "rps(median)" "p99ms(median)" failed
    printf '%s\n' "${h2_table[@]}"
    echo
    printf '%-9s %18s %20s %18s %20s\n' workload "rps zentinel/nginx" "rps zentinel/haproxy" "p99 zentinel/nginx" "p99 zentinel/haproxy"
    printf '%s\n' "${h2_ratios[@]}"
fi
echo
printf '%-17s %-40s %9s %10s %8s %8s\n' target "reload action" replaced requests failed rps
printf '%s\n' "${reloads[@]}"
zt_info "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg) (before: $load_avg)"

if [[ -n "$markdown" ]]; then
    {
        printf -- '- %s\n' "${header[@]}"
        echo
        printf '%s\n' "${md[@]}"
        echo
        printf '%s\n' "${md_ratios[@]}"
        echo
        if ((${#md_tls[@]})); then
            echo "$tls_note"
            echo
            printf -- '- %s\n' "${tls_negotiated[@]}"
            echo
            printf '%s\n' "${md_tls[@]}"
            echo
            printf '%s\n' "${md_tls_ratios[@]}"
            echo
        fi
        if ((${#md_h2[@]})); then
            echo "HTTP/2 over the same TLS (h2load, 2 threads); ALPN negotiated:"
            echo
            printf -- '- %s\n' "${h2_negotiated[@]}"
            echo
            printf '%s\n' "${md_h2[@]}"
            echo
            printf '%s\n' "${md_h2_ratios[@]}"
            echo
        fi
        echo "Reload comparison: keep-alive, 64 connections, 1 KiB, ${reload_duration}s with 2 reloads."
        echo
        printf '%s\n' "${md_reloads[@]}"
    } >"$markdown"
    zt_info "markdown written to $markdown"
fi
