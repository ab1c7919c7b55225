# shellcheck shell=bash
# shellcheck disable=SC2034  # globals (addr, addr_tls, ...) are read by the other bench modules
# bench/peers.sh: the servers of a peer benchmark: the backend (plain, and TLS for the direct TLS ceiling), and start/stop of Zentinel,
# nginx and HAProxy with N workers (Zentinel `system { worker-processes N }`, nginx
# `worker_processes N`, HAProxy `nbthread N`), each with an HTTP listener, a TLS listener, an
# HTTP/2 listener (nginx, HAProxy; Zentinel's TLS listener offers h2 by ALPN) and a TCP tunnel
# listener to the same backend (Zentinel `protocol "tcp"`, nginx `stream`, HAProxy `mode tcp`).
# Also: the processes of each target and their CPU time, read from /proc.
# Sourced by scripts/bench-peers.sh after scripts/lib.sh.

# Where each target listens, per kind of listener ("" / unset: none).
declare -A addr=() addr_tls=() addr_h2=() addr_tcp=()
declare -A haproxy_pid=()
nginx_pid="" zentinel_pgid="" zentinel_sock=""
TLS_SUITE=TLS_AES_128_GCM_SHA256
TLS_NAME=bench.test
tls_ok=0 tls_dir=""

# ---------------------------------------------------------------------------------------------
# TLS: one certificate for every server

# bench_tls_cert: sets tls_dir and tls_ok (0 without openssl: the TLS workloads are skipped).
bench_tls_cert() {
    tls_dir="$ZT_TMP/tls"
    if zt_make_tls_cert "$tls_dir" "$TLS_NAME"; then tls_ok=1; else zt_warn "no TLS workloads"; fi
}

# ---------------------------------------------------------------------------------------------
# Backend

# bench_start_backends: the plain backend (addr[backend]) and, with a certificate, the same
# backend over TLS (addr_tls[backend]: the direct ceiling of the TLS workloads).
bench_start_backends() {
    local out line pid
    zt_start_backend backend
    backend_addr="$ZT_BACKEND_ADDR"
    backend_pid="$ZT_BACKEND_PID"
    addr[backend]="$backend_addr"
    addr_tcp[backend]="$backend_addr"
    ((tls_ok)) || return 0
    out="$ZT_TMP/backend-tls.out"
    "$(zt_bin zentinel-backend)" --listen 127.0.0.1:0 --name backend-tls \
        --tls "$tls_dir/leaf.pem" "$tls_dir/leaf.key" >"$out" 2>"$ZT_TMP/backend-tls.err" &
    pid=$!
    zt_register_pid "$pid" backend-tls
    if line="$(zt_wait_line "$out" '^listening on ' 10 "$pid")"; then
        addr_tls[backend]="${line#listening on }"
    else
        zt_warn "the TLS backend did not start: $(cat "$ZT_TMP/backend-tls.err"); direct TLS is n/a"
    fi
}

# ---------------------------------------------------------------------------------------------
# Zentinel: the configuration of scripts/lib.sh (zt_write_config: defaults, nothing tuned) with
# N workers, plus a TLS listener and a TCP listener at the end of the listeners block.

# zentinel_config FILE WORKERS TLS_PORT TCP_PORT
zentinel_config() {
    local file="$1" workers="$2" tls_port="$3" tcp_port="$4" extra="$ZT_TMP/zentinel-extra.kdl"
    zt_write_config "$file" "$backend_addr" "$ZT_TMP/zentinel.sock" "$workers"
    {
        if ((tls_ok)); then
            cat <<EOF
    listener "https" {
        address "127.0.0.1:$tls_port"
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
        fi
        cat <<EOF
    listener "tunnel" {
        address "127.0.0.1:$tcp_port"
        protocol "tcp"
        upstream "backend"
    }
EOF
    } >"$extra"
    # At the end of the listeners block: the plain listener stays the first one logged, which
    # is the one zt_start_zentinel takes for ZT_ADDR.
    awk -v f="$extra" '
        /^listeners \{/ { inside = 1 }
        inside && /^\}/ { while ((getline l < f) > 0) print l; inside = 0 }
        { print }' "$file" >"$file.new"
    mv "$file.new" "$file"
}

# start_zentinel WORKERS [BINARY]: sets addr/addr_tls/addr_h2/addr_tcp[zentinel],
# zentinel_pgid and zentinel_sock.
start_zentinel() {
    local workers="$1" bin="${2:-$ZT_TMP/zentinel-a}" tls_port tcp_port cfg="$ZT_TMP/zentinel-$1.kdl"
    tls_port="$(zt_free_port)"
    tcp_port="$(zt_free_port)"
    zentinel_config "$cfg" "$workers" "$tls_port" "$tcp_port"
    zt_start_zentinel "$cfg" "$bin"
    zentinel_pgid="$ZT_PGID" zentinel_sock="$ZT_SOCK"
    addr[zentinel]="$ZT_ADDR"
    case "$ZT_ADDR" in
        *":$tls_port" | *":$tcp_port") zt_die "zentinel: took the TLS or TCP listener $ZT_ADDR for the plain one" ;;
    esac
    if ((tls_ok)) && zt_wait_tcp 127.0.0.1 "$tls_port" 10; then
        addr_tls[zentinel]="127.0.0.1:$tls_port"
        addr_h2[zentinel]="127.0.0.1:$tls_port"
    elif ((tls_ok)); then
        zt_warn "zentinel's TLS listener 127.0.0.1:$tls_port does not accept"
    fi
    if zt_wait_tcp 127.0.0.1 "$tcp_port" 10; then
        addr_tcp[zentinel]="127.0.0.1:$tcp_port"
    else
        zt_warn "zentinel's TCP listener 127.0.0.1:$tcp_port does not accept"
    fi
}

stop_zentinel() {
    [[ -n "$zentinel_pgid" ]] || return 0
    zt__stop_zentinel_group "$zentinel_pgid" zentinel "$zentinel_sock"
    zt_unregister_pid "group|$zentinel_pgid"
    zentinel_pgid=""
    unset 'addr[zentinel]' 'addr_tls[zentinel]' 'addr_h2[zentinel]' 'addr_tcp[zentinel]'
}

# ---------------------------------------------------------------------------------------------
# nginx

# The nginx stream module, when this nginx has it as a dynamic module (Debian: a package of its
# own, libnginx-mod-stream): its path, or "" when built in.
nginx_stream_module() {
    case "$(nginx -V 2>&1)" in
        *--with-stream=dynamic*) echo /usr/lib/nginx/modules/ngx_stream_module.so ;;
    esac
}

# nginx 1.25.1 replaced `listen ... http2` with the `http2 on;` directive.
nginx_h2_listen() {
    local v
    v="$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')"
    if [[ "$(printf '%s\n1.25.1\n' "$v" | sort -V | sed -n 1p)" == 1.25.1 ]]; then
        printf 'listen 127.0.0.1:%s ssl;\n        http2 on;' "$1"
    else
        printf 'listen 127.0.0.1:%s ssl http2;' "$1"
    fi
}

nginx_tls_server() {
    cat <<EOF
    server {
        $1
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
EOF
}

# write_nginx_conf DIR WORKERS PORT TLS_PORT H2_PORT TCP_PORT: keep-alive to the backend
# (`keepalive 128`, as in issue 18's measurements), a stream (TCP) server to it.
write_nginx_conf() {
    local dir="$1" workers="$2" port="$3" tls_port="$4" h2_port="$5" tcp_port="$6" module
    module="$(nginx_stream_module)"
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
$( (($(id -u) == 0)) && echo 'user root;  # the temp paths are inside a 0700 directory')
$([[ -n "$module" ]] && echo "load_module $module;")
worker_processes $workers;
worker_rlimit_nofile $(ulimit -Sn);
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $(ulimit -Sn); }
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
        keepalive 128;
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
$( ((tls_ok)) && nginx_tls_server "listen 127.0.0.1:$tls_port ssl;")
$( ((tls_ok)) && nginx_tls_server "$(nginx_h2_listen "$h2_port")")
}
stream {
    server {
        listen 127.0.0.1:$tcp_port;
        proxy_pass $backend_addr;
    }
}
EOF
}

# start_nginx WORKERS: sets addr*[nginx] and nginx_pid, or returns 1 (reported as n/a).
start_nginx() {
    local workers="$1" dir="$ZT_TMP/nginx" port tls_port h2_port tcp_port try
    command -v nginx >/dev/null || { zt_warn "nginx not installed"; return 1; }
    for try in 1 2 3; do
        port="$(zt_free_port)" tls_port="$(zt_free_port)" h2_port="$(zt_free_port)" tcp_port="$(zt_free_port)"
        write_nginx_conf "$dir" "$workers" "$port" "$tls_port" "$h2_port" "$tcp_port"
        if ! nginx -t -q -e "$dir/error.log" -c "$dir/nginx.conf" -p "$dir" 2>"$dir/check.err"; then
            zt_warn "nginx -t rejected $dir/nginx.conf: $(cat "$dir/check.err")"
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
            ((tls_ok)) && zt_wait_tcp 127.0.0.1 "$tls_port" 10 "$nginx_pid" && addr_tls[nginx]="127.0.0.1:$tls_port"
            ((tls_ok)) && zt_wait_tcp 127.0.0.1 "$h2_port" 10 "$nginx_pid" && addr_h2[nginx]="127.0.0.1:$h2_port"
            zt_wait_tcp 127.0.0.1 "$tcp_port" 10 "$nginx_pid" && addr_tcp[nginx]="127.0.0.1:$tcp_port"
            return 0
        fi
        stop_nginx
        zt_warn "nginx did not start on port $port (try $try): $(tail -n 3 "$dir/error.log" 2>/dev/null)"
    done
    return 1
}

stop_nginx() {
    [[ -n "$nginx_pid" ]] || return 0
    zt_stop_pid "$nginx_pid" nginx
    zt_unregister_pid "$nginx_pid"
    nginx_pid=""
    unset 'addr[nginx]' 'addr_tls[nginx]' 'addr_h2[nginx]' 'addr_tcp[nginx]'
}

# ---------------------------------------------------------------------------------------------
# HAProxy

# HAProxy is one process (nbthread) and refuses to start when its maxconn needs more file
# descriptors (two per proxied connection) than the open-file limit allows: the largest maxconn
# under that limit, at most 60000. Where the limit cannot be raised past 20,000 (no
# CAP_SYS_RESOURCE), that is 9,900: the 10,000-connection point of the curve then queues the
# last connections in HAProxy's accept backlog (the run says so).
haproxy_maxconn() {
    local n=$((($(ulimit -Sn) - 200) / 2))
    ((n > 60000)) && n=60000
    echo "$n"
}

# write_haproxy_conf FILE WORKERS SEAMLESS PORT TLS_PORT H2_PORT TCP_PORT: `http-reuse always`
# (as in issue 18's measurements), a `mode tcp` proxy to the backend.
write_haproxy_conf() {
    local file="$1" workers="$2" seamless="$3" port="$4" tls_port="$5" h2_port="$6" tcp_port="$7"
    local bind_tls="ssl crt $tls_dir/leaf-and-key.pem ssl-min-ver TLSv1.3 ciphersuites $TLS_SUITE"
    cat >"$file" <<EOF
global
    nbthread $workers
    maxconn $(haproxy_maxconn)
$([[ "$seamless" == 1 ]] && echo "    stats socket $ZT_TMP/haproxy-$port.sock mode 600 level admin expose-fd listeners")
defaults
    mode http
    maxconn $(haproxy_maxconn)
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:$port
    option http-keep-alive
    default_backend be
$( ((tls_ok)) && cat <<TLS
frontend fe_tls
    bind 127.0.0.1:$tls_port $bind_tls
    option http-keep-alive
    default_backend be
frontend fe_h2
    bind 127.0.0.1:$h2_port $bind_tls alpn h2,http/1.1
    option http-keep-alive
    default_backend be
TLS
)
backend be
    http-reuse always
    server s1 $backend_addr
listen tunnel
    mode tcp
    bind 127.0.0.1:$tcp_port
    server s1 $backend_addr
EOF
}

# start_haproxy NAME WORKERS SEAMLESS: master-worker mode (-W) in the foreground (-db); sets
# addr*[NAME] and haproxy_pid[NAME], or returns 1.
start_haproxy() {
    local name="$1" workers="$2" seamless="$3" port tls_port h2_port tcp_port try file pid
    command -v haproxy >/dev/null || { zt_warn "haproxy not installed"; return 1; }
    for try in 1 2 3; do
        port="$(zt_free_port)" tls_port="$(zt_free_port)" h2_port="$(zt_free_port)" tcp_port="$(zt_free_port)"
        file="$ZT_TMP/$name.cfg"
        write_haproxy_conf "$file" "$workers" "$seamless" "$port" "$tls_port" "$h2_port" "$tcp_port"
        if ! haproxy -c -q -f "$file" >"$ZT_TMP/$name.check" 2>&1; then
            zt_warn "haproxy -c rejected $file: $(cat "$ZT_TMP/$name.check")"
            return 1
        fi
        # setsid: same scheduling footing as the other servers (see nginx above).
        setsid haproxy -W -db -f "$file" >"$ZT_TMP/$name.log" 2>&1 &
        pid=$!
        zt_register_pid "$pid" "$name"
        haproxy_pid[$name]="$pid"
        if zt_wait_tcp 127.0.0.1 "$port" 10 "$pid"; then
            addr[$name]="127.0.0.1:$port"
            ((tls_ok)) && zt_wait_tcp 127.0.0.1 "$tls_port" 10 "$pid" && addr_tls[$name]="127.0.0.1:$tls_port"
            ((tls_ok)) && zt_wait_tcp 127.0.0.1 "$h2_port" 10 "$pid" && addr_h2[$name]="127.0.0.1:$h2_port"
            zt_wait_tcp 127.0.0.1 "$tcp_port" 10 "$pid" && addr_tcp[$name]="127.0.0.1:$tcp_port"
            return 0
        fi
        stop_haproxy "$name"
        zt_warn "$name did not start on port $port (try $try): $(tail -n 3 "$ZT_TMP/$name.log")"
    done
    return 1
}

stop_haproxy() {
    local name="$1"
    [[ -n "${haproxy_pid[$name]:-}" ]] || return 0
    zt_stop_pid "${haproxy_pid[$name]}" "$name"
    zt_unregister_pid "${haproxy_pid[$name]}"
    unset "haproxy_pid[$name]" "addr[$name]" "addr_tls[$name]" "addr_h2[$name]" "addr_tcp[$name]"
}

# start_proxies WORKERS / stop_proxies: the three proxies with WORKERS workers each.
start_proxies() {
    start_zentinel "$1"
    start_nginx "$1" || zt_warn "nginx is reported as n/a"
    start_haproxy haproxy "$1" 0 || zt_warn "haproxy is reported as n/a"
    local t
    for t in zentinel nginx haproxy; do
        zt_info "$t ($1 worker(s)): http ${addr[$t]:-n/a}, tls ${addr_tls[$t]:-n/a}, h2 ${addr_h2[$t]:-n/a}, tcp ${addr_tcp[$t]:-n/a}"
    done
}
stop_proxies() {
    stop_haproxy haproxy
    stop_nginx
    stop_zentinel
}

# ---------------------------------------------------------------------------------------------
# Processes and CPU time

# target_pids TARGET: every process of the target (master and workers), one per line.
target_pids() {
    case "$1" in
        zentinel) [[ -z "$zentinel_pgid" ]] || zt_group_members "$zentinel_pgid" ;;
        nginx) [[ -z "$nginx_pid" ]] || { echo "$nginx_pid"; zt_children "$nginx_pid"; } ;;
        haproxy*) [[ -z "${haproxy_pid[$1]:-}" ]] || { echo "${haproxy_pid[$1]}"; zt_children "${haproxy_pid[$1]}"; } ;;
    esac
}

# worker_pids TARGET: the processes that serve requests (not the masters), sorted, one per line.
worker_pids() {
    case "$1" in
        zentinel) zt_status_workers "$(zt_ctl status --json)" | awk '$5 == "running" {print $2}' | sort -n ;;
        nginx) [[ -z "$nginx_pid" ]] || zt_children "$nginx_pid" | sort -n ;;
        haproxy*) [[ -z "${haproxy_pid[$1]:-}" ]] || zt_children "${haproxy_pid[$1]}" | sort -n ;;
    esac
}

CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"

# cpu_split_us PID...: "USER SYSTEM", the CPU time these processes (all their threads,
# exited ones too) used so far in user space and in the kernel, in microseconds: utime and
# stime of /proc/PID/stat, in CLK_TCK ticks.
cpu_split_us() {
    local pid stat user=0 sys=0 f
    for pid in "$@"; do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        # After "comm) ": state is field 3 of the full line; utime and stime are fields 14, 15.
        read -ra f <<<"${stat##*) }"
        user=$((user + f[11])) sys=$((sys + f[12]))
    done
    echo "$((user * 1000000 / CLK_TCK)) $((sys * 1000000 / CLK_TCK))"
}

# cpu_us PID...: CPU time (user + system) used so far by these processes, all their threads,
# in microseconds.
cpu_us() {
    local user sys
    read -r user sys < <(cpu_split_us "$@")
    echo $((user + sys))
}
