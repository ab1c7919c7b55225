# shellcheck shell=bash
# shellcheck disable=SC2034  # globals (curve_text, curve_md) are read by bench-peers.sh
# bench/curve.sh: the connection-count curve: requests/s of keep-alive 1 KiB GETs against the
# number of concurrent active keep-alive connections (curve_points, e.g. 100 to 10,000), through
# each proxy and to the backend directly, then a plot (gnuplot, else python3 with matplotlib).
# Sourced after bench/workloads.sh. Reads: curve_points, curve_duration, rounds.
#
# Each point is one zentinel-load run of curve_duration seconds with that many connections
# (2 threads, each an epoll loop over its share: it holds 10,000 connections in one process
# within an open-file limit of 20,000). Its req/s is counted over the steady part of the run
# only (from --timeline-csv): the first third (at least 1 s) is left out, when thousands of
# connections are still being opened and SYNs beyond a listener's backlog wait for their
# retransmission (1 s, then 3 s).

# The backend of the curve: zentinel-backend runs a thread per connection, which at 10,000
# connections measures the backend's scheduler more than the proxy in front of it. The curve
# uses nginx serving the same 1 KiB body (the pattern and checksum header zentinel-backend
# sends for /bytes/1024, fetched from it) as a static file: event-driven, like the proxies.
# Each target gets an instance of its own, so that what one target leaves behind (Zentinel
# and HAProxy keep their idle upstream connections open) does not load the next one's backend.
# Only for the curve; the proxies are restarted pointing at theirs, then back.
declare -A static_addr=()
curve_backend="zentinel-backend"

# start_static_backend TARGET: sets static_addr[TARGET], or returns 1 (the curve then uses
# zentinel-backend).
start_static_backend() {
    local dir="$ZT_TMP/static-$1" port sum pid
    command -v nginx >/dev/null && command -v curl >/dev/null || return 1
    mkdir -p "$dir/tmp"
    curl -sS -o "$dir/body-1024" -D "$dir/head-1024" "http://$backend_addr/bytes/1024" 2>"$dir/curl.err" || {
        zt_warn "fetching /bytes/1024 from the backend failed: $(cat "$dir/curl.err")"
        return 1
    }
    sum="$(sed -n 's/^X-Body-Checksum: \([0-9a-f]*\).*/\1/Ip' "$dir/head-1024")"
    [[ -n "$sum" ]] || { zt_warn "the backend sent no X-Body-Checksum for /bytes/1024"; return 1; }
    port="$(zt_free_port)"
    cat >"$dir/nginx.conf" <<EOF
$( (($(id -u) == 0)) && echo 'user root;')
worker_processes auto;
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
    server {
        listen 127.0.0.1:$port backlog=4096;
        location = /bytes/1024 {
            alias $dir/body-1024;
            default_type application/octet-stream;
            add_header X-Body-Checksum $sum;
        }
    }
}
EOF
    setsid nginx -e "$dir/error.log" -c "$dir/nginx.conf" -p "$dir" >"$dir/stdout" 2>&1 &
    pid=$!
    zt_register_pid "$pid" "static backend ($1)"
    zt_wait_tcp 127.0.0.1 "$port" 10 "$pid" || {
        zt_warn "the static backend (nginx) did not start: $(tail -n 3 "$dir/error.log")"
        return 1
    }
    static_addr[$1]="127.0.0.1:$port"
    curve_backend="nginx serving the body as a static file, one instance per target"
}

declare -A curve_rps=() curve_p99=() curve_failed=()
curve_note=""

# steady_rps CSV DURATION_S: requests/s in the 100 ms buckets of zentinel-load's timeline that
# start after the first third of the run (at least 1 s) and end before its end.
steady_rps() {
    awk -F, -v dur="$2" '
        BEGIN { skip = dur * 1000 / 3; if (skip < 1000) skip = 1000; end = dur * 1000 }
        NR == 1 { next }
        $1 >= skip && $1 + 100 <= end { ok += $3; b++ }
        END { if (b) printf "%.0f\n", ok / (b / 10); else print "n/a" }' "$1"
}

# run_curve WORKERS: every point through every target, rounds times, targets rotated. The
# proxies (running with WORKERS workers) are restarted in front of the static backend, and
# after the curve in front of the usual one again.
run_curve() {
    local n="$1" r c k t out last rps saved="$backend_addr"
    local targets=(backend zentinel nginx haproxy)
    if ((${#static_addr[@]} == 4)) || { start_static_backend backend && start_static_backend zentinel &&
        start_static_backend nginx && start_static_backend haproxy; }; then
        stop_proxies
        addr[backend]="${static_addr[backend]}"
        backend_addr="${static_addr[zentinel]}" start_zentinel "$n" >/dev/null
        backend_addr="${static_addr[nginx]}" start_nginx "$n" >/dev/null || zt_warn "nginx is reported as n/a"
        backend_addr="${static_addr[haproxy]}" start_haproxy haproxy "$n" 0 >/dev/null || zt_warn "haproxy is reported as n/a"
    else
        zt_warn "the curve goes to zentinel-backend (a thread per connection)"
    fi
    zt_log "connection curve ($n worker(s) per proxy): keep-alive 1 KiB at ${curve_points[*]} connections, ${curve_duration}s per point, $rounds round(s)"
    for c in "${curve_points[@]}"; do
        if ((c > $(haproxy_maxconn))); then
            curve_note="HAProxy's maxconn is $(haproxy_maxconn) (open-file limit $(ulimit -Sn), two descriptors per proxied connection): at $c connections the rest wait in its accept queue"
            zt_warn "$curve_note"
        fi
        if ((c + 100 > $(ulimit -Sn))); then
            zt_warn "curve: $c connections with an open-file limit of $(ulimit -Sn): the load generator may run out of descriptors"
        fi
    done
    for ((r = 1; r <= rounds; r++)); do
        for c in "${curve_points[@]}"; do
            for ((k = 0; k < ${#targets[@]}; k++)); do
                t="${targets[$(((k + r - 1) % ${#targets[@]}))]}"
                [[ -n "${addr[$t]:-}" ]] || continue
                out="$ZT_TMP/runs/curve-$c-$t-$r.out"
                "$(zt_bin zentinel-load)" --addr "${addr[$t]}" -t 2 -c "$c" -d "${curve_duration}s" \
                    --mode keepalive --body 1024 --timeout 30s --timeline-csv "$out.csv" >"$out" 2>&1 || true
                last="$(tail -n1 "$out" 2>/dev/null || true)"
                if [[ "$last" != requests=* || ! -s "$out.csv" ]]; then
                    zt_warn "curve: $c connections via $t: no summary: $(tail -n 3 "$out")"
                    continue
                fi
                rps="$(steady_rps "$out.csv" "$curve_duration")"
                curve_rps[$c,$t]+="$rps "
                curve_p99[$c,$t]+="$(zt_summary_field "$last" p99_ms) "
                curve_failed[$c,$t]=$((${curve_failed[$c,$t]:-0} + $(zt_summary_field "$last" failed)))
                printf '    round %d  %5d conns %-9s steady_rps=%s %s\n' "$r" "$c" "$t" "$rps" "$last"
            done
        done
    done
    curve_workers="$n"
    if [[ "${addr[backend]}" != "$saved" ]]; then
        stop_proxies
        addr[backend]="$saved"
        start_proxies "$n" >/dev/null
    fi
}

# build_curve_table DATAFILE: curve_text / curve_md (lines) and DATAFILE (for the plot:
# "connections backend zentinel nginx haproxy", medians, NaN where missing).
build_curve_table() {
    local data="$1" c t line md rps
    curve_text=("$(printf '%-11s %24s %24s %24s %24s %9s %10s' connections direct zentinel nginx haproxy Z/nginx Z/haproxy)")
    curve_md=("| connections | direct req/s (p99 ms) | Zentinel | nginx | HAProxy | Z/nginx | Z/HAProxy | Z/direct | failed |" "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    echo "connections direct zentinel nginx haproxy" >"$data"
    for c in "${curve_points[@]}"; do
        local -A v=() p=()
        local failed=0 row="$c"
        for t in backend zentinel nginx haproxy; do
            v[$t]="$(med curve_rps "$c,$t")" p[$t]="$(med curve_p99 "$c,$t")"
            failed=$((failed + ${curve_failed[$c,$t]:-0}))
            rps="${v[$t]}"
            [[ "$rps" == n/a ]] && rps=NaN
            row+=" $rps"
        done
        echo "$row" >>"$data"
        line="$(printf '%-11s' "$c")"
        md="| $c |"
        for t in backend zentinel nginx haproxy; do
            line+="$(printf ' %24s' "${v[$t]} (p99 ${p[$t]})")"
            md+=" ${v[$t]} (${p[$t]}) |"
        done
        line+="$(printf ' %9s %10s' "$(ratio "${v[zentinel]}" "${v[nginx]}")" "$(ratio "${v[zentinel]}" "${v[haproxy]}")")"
        md+=" $(ratio "${v[zentinel]}" "${v[nginx]}") | $(ratio "${v[zentinel]}" "${v[haproxy]}") | $(ratio "${v[zentinel]}" "${v[backend]}") | $failed |"
        curve_text+=("$line")
        curve_md+=("$md")
    done
}

# plot_curve DATAFILE SVG: gnuplot (installed by the caller when missing), else python3 with
# matplotlib; fails with a warning when neither works.
plot_curve() {
    local data="$1" svg="$2" title
    title="keep-alive 1 KiB GETs, ${curve_workers:-?} worker(s) per proxy, $(date -u '+%Y-%m-%d')"
    mkdir -p "$(dirname "$svg")"
    if command -v gnuplot >/dev/null; then
        if gnuplot >"$ZT_TMP/gnuplot.log" 2>&1 <<EOF; then
set terminal svg size 800,480 dynamic font "sans,12"
set output "$svg"
set title "Requests/s against concurrent keep-alive connections ($title)"
set logscale x
set xtics ($(printf '%s,' "${curve_points[@]}" | sed 's/,$//'))
set xlabel "concurrent keep-alive connections"
set ylabel "requests/s (steady part of each run)"
set yrange [0:*]
set offsets graph 0.05, graph 0.05, 0, 0
set key outside right top
set grid
set datafile missing "NaN"
plot for [i=2:5] "$data" using 1:i with linespoints linewidth 2 title columnheader(i)
EOF
            return 0
        fi
        zt_warn "gnuplot failed: $(tail -n 3 "$ZT_TMP/gnuplot.log")"
    fi
    if python3 -c 'import matplotlib' 2>/dev/null; then
        python3 - "$data" "$svg" "$title" <<'EOF' && return 0
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data, svg, title = sys.argv[1], sys.argv[2], sys.argv[3]
with open(data) as f:
    names = f.readline().split()[1:]
    rows = [[float(x) for x in line.split()] for line in f if line.strip()]
xs = [r[0] for r in rows]
fig, ax = plt.subplots(figsize=(8, 4.8))
for i, name in enumerate(names, start=1):
    ax.plot(xs, [r[i] for r in rows], marker="o", label=name)
ax.set_xscale("log")
ax.set_xticks(xs, [str(int(x)) for x in xs])
ax.set_ylim(bottom=0)
ax.set_xlabel("concurrent keep-alive connections")
ax.set_ylabel("requests/s (steady part of each run)")
ax.set_title("Requests/s against connections (" + title + ")", fontsize=10)
ax.grid(True)
ax.legend()
fig.savefig(svg, bbox_inches="tight")
EOF
        zt_warn "matplotlib failed to plot"
    fi
    zt_warn "no plot: neither gnuplot nor python3 with matplotlib works"
    return 1
}
