#!/usr/bin/env bash
# What a route's filters cost (issue 17): the same Zentinel, the same backend and the same
# requests, through a route with `headers` + `cors` + `rate-limit` filters (a limit too high to
# ever refuse) and through a route with none, alternating, as ratios of the medians.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
usage: scripts/bench-filters.sh [options]

Builds Zentinel (release), starts a zentinel-backend and Zentinel (2 workers) with two routes to
it, told apart by Host:
  plain     no filters
  filtered  filters "limit" "cors" "headers": a rate-limit (max-rps and burst 10,000,000, key
            client-ip: never refuses, but every request takes a token), a cors filter (two
            allowed origins, one a pattern, credentials, exposed headers), and a headers filter
            in phase "both" (two fields set, one removed, on the request and on the response)
Every request carries `Origin: https://app.example.com` (an allowed origin: the cors filter adds
its fields to every response). The load is h2load over HTTP/1.1 (--h1): 2 threads, keep-alive,
GET /bytes/1024. Before measuring, one request per route checks that the filters act on one
and not on the other. The routes alternate within each round (the first one changes from
round to round).

Prints per route the median over the rounds of req/s, p99, and the workers' CPU time per
request (utime + stime of every worker over the run, from /proc, divided by the requests), and
their user time alone (the filters' own work; the kernel's share, the same for both routes,
dominates the total and moves with whatever else the machine runs). Then the filtered/plain
ratios: of the medians, and the median of each round's ratio (the two routes of a round ran
seconds apart, so a machine whose load drifts between rounds moves both alike).

options:
  --duration S      seconds per measurement (default 5)
  --rounds N        rounds (default 3)
  --connections N   h2load connections (default 64)
  --quick           --duration 2 --rounds 1 (a smoke run)
  --markdown FILE   also write the results as markdown to FILE
  --debug           use target/debug binaries without building (also ZENTINEL_PROFILE=debug)
  -h, --help        this help

Exit status: 0 when the benchmark ran and no request failed; 1 otherwise; 2 on usage.
EOF
}
bad_usage() {
    printf 'bench-filters.sh: %s\n(see scripts/bench-filters.sh --help)\n' "$1" >&2
    exit 2
}
positive() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || ((10#$2 < 1)); then bad_usage "$1 must be a whole number >= 1 (got '$2')"; fi
}

duration=5 rounds=3 connections=64 markdown=""
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --quick) duration=2 rounds=1; shift; continue ;;
        --debug) zt_use_profile debug; shift; continue ;;
        --duration | --rounds | --connections | --markdown) (($# >= 2)) || bad_usage "$1 needs a value" ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
    case "$1" in
        --duration) duration="$2" ;;
        --rounds) rounds="$2" ;;
        --connections) connections="$2" ;;
        --markdown) markdown="$2" ;;
    esac
    shift 2
done
positive --duration "$duration"
positive --rounds "$rounds"
positive --connections "$connections"
if [[ -n "$markdown" ]]; then
    [[ "$markdown" == /* ]] || markdown="$PWD/$markdown"
    : >"$markdown" || bad_usage "cannot write --markdown $markdown"
fi
command -v h2load >/dev/null || zt_die "h2load not installed (scripts/test-deps.sh installs nghttp2-client)"
command -v curl >/dev/null || zt_die "curl not installed (scripts/test-deps.sh installs it)"

zt_init
cd "$ZT_ROOT"
zt_build

ORIGIN="https://app.example.com"
header=(
    "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(uname -sr)"
    "versions: $("$(zt_bin zentinel)" --version) ($ZT_PROFILE); $(h2load --version | head -n1)"
    "load: h2load --h1 -t 2 -c $connections, keep-alive, GET /bytes/1024 with Origin, ${duration}s per measurement, $rounds round(s), routes alternating"
)
zt_log "bench-filters"
printf '    %s\n' "${header[@]}"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
zt_info "load average before the run: $load_before (anything else running skews the figures)"

zt_start_backend backend
config="$ZT_TMP/zentinel.kdl"
cat >"$config" <<EOF
system {
    worker-processes 2
    graceful-shutdown-timeout-secs 5
    control-socket "$ZT_TMP/zentinel.sock"
}
listeners {
    listener "http" {
        address "127.0.0.1:0"
        protocol "http"
        default-route "plain"
    }
}
filters {
    filter "limit" {
        type "rate-limit"
        max-rps 10000000
        burst 10000000
        key "client-ip"
    }
    filter "cors" {
        type "cors"
        allowed-origins "$ORIGIN" "https://*.example.org"
        allowed-methods "GET" "POST"
        exposed-headers "X-Total-Count"
        allow-credentials #true
    }
    filter "headers" {
        type "headers"
        phase "both"
        set { X-Gateway "zentinel"; X-Content-Type-Options "nosniff"; }
        remove "X-Debug"
    }
}
routes {
    route "filtered" {
        matches { host "filtered.test"; }
        upstream "backend"
        filters "limit" "cors" "headers"
    }
    route "plain" {
        matches { host "plain.test"; }
        upstream "backend"
    }
}
upstreams {
    upstream "backend" {
        target "$ZT_BACKEND_ADDR"
        connection-pool { max-idle 256; idle-timeout-secs 60; }
    }
}
EOF
zt_start_zentinel "$config"
zt_info "backend $ZT_BACKEND_ADDR, zentinel $ZT_ADDR"

# The filters act on the filtered route only (else the comparison measures nothing).
check_route() {
    local host="$1" want="$2" head
    head="$(curl -sS -o /dev/null -D - -H "Host: $host" -H "Origin: $ORIGIN" "http://$ZT_ADDR/bytes/1024" | tr -d '\r')"
    [[ "$head" == "HTTP/1.1 200"* ]] || zt_die "$host: not a 200: $head"
    if [[ "$want" == yes ]]; then
        grep -qi "^access-control-allow-origin: $ORIGIN$" <<<"$head" || zt_die "$host: no CORS field: $head"
        grep -qi '^x-ratelimit-limit: ' <<<"$head" || zt_die "$host: no rate-limit field: $head"
        grep -qi '^x-gateway: zentinel$' <<<"$head" || zt_die "$host: no headers-filter field: $head"
    elif grep -qiE '^(access-control-|x-ratelimit-|x-gateway)' <<<"$head"; then
        zt_die "$host: filter fields on the plain route: $head"
    fi
}
check_route filtered.test yes
check_route plain.test no

worker_pids() { zt_status_workers "$(zt_ctl status --json)" | awk '$5 == "running" {print $2}'; }
# Clock ticks of every worker: "USER SYSTEM".
worker_ticks() {
    local pid user=0 sys=0 stat
    for pid in $(worker_pids); do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        stat="${stat##*) }"
        # After the command name: field 3 is the state; utime and stime are fields 14 and 15.
        read -ra f <<<"$stat"
        user=$((user + f[11]))
        sys=$((sys + f[12]))
    done
    echo "$user $sys"
}
ticks_per_sec="$(getconf CLK_TCK)"

declare -A rps_of=() p99_of=() cpu_of=() user_of=() failed_of=()
# Per round: "rps cpu user" of each route, for the paired ratios.
declare -A round_of=()
failed_total=0
mkdir -p "$ZT_TMP/runs"

# measure ROUTE ROUND: one h2load run through ROUTE's host.
measure() {
    local route="$1" r="$2" out t0 t1 u0 s0 u1 s1 line req cpu user
    out="$ZT_TMP/runs/$route-$r"
    t0="$(worker_ticks)"
    h2load --h1 -t 2 -c "$connections" -m 1 -D "$duration" --log-file "$out.log" \
        -H ":authority: $route.test" -H "Origin: $ORIGIN" \
        "http://$ZT_ADDR/bytes/1024" >"$out.h2load" 2>&1 || true
    t1="$(worker_ticks)"
    line="$(zt_h2load_summary "$out.h2load" "$out.log")"
    if [[ "$line" != requests=* ]]; then
        zt_warn "$route (round $r): no h2load summary: $(tail -n 3 "$out.h2load")"
        failed_total=$((failed_total + 1))
        return 0
    fi
    req="$(zt_summary_field "$line" requests)"
    read -r u0 s0 <<<"$t0"
    read -r u1 s1 <<<"$t1"
    per_req() { awk -v t="$1" -v hz="$ticks_per_sec" -v n="$req" 'BEGIN { printf "%.2f", n ? t / hz * 1e6 / n : 0 }'; }
    cpu="$(per_req $((u1 + s1 - u0 - s0)))"
    user="$(per_req $((u1 - u0)))"
    rps_of[$route]+="$(zt_summary_field "$line" rps) "
    p99_of[$route]+="$(zt_summary_field "$line" p99_ms) "
    cpu_of[$route]+="$cpu "
    user_of[$route]+="$user "
    round_of[$route,$r]="$(zt_summary_field "$line" rps) $cpu $user"
    failed_of[$route]=$((${failed_of[$route]:-0} + $(zt_summary_field "$line" failed)))
    failed_total=$((failed_total + $(zt_summary_field "$line" failed)))
    printf '    round %d  %-9s %s worker_cpu_us_per_req=%s user=%s\n' "$r" "$route" "$line" "$cpu" "$user"
}

zt_log "load: 2 routes x $rounds round(s), ${duration}s each"
routes=(plain filtered)
for ((r = 1; r <= rounds; r++)); do
    for ((k = 0; k < 2; k++)); do
        measure "${routes[$(((k + r - 1) % 2))]}" "$r"
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.3f", a / b }'; }
declare -A med_rps=() med_p99=() med_cpu=() med_user=()
table=() md=("| route | req/s (median) | p99 ms (median) | worker CPU µs per request (median) | of which user (median) | failed (all rounds) |" "|---|---:|---:|---:|---:|---:|")
for route in plain filtered; do
    # shellcheck disable=SC2086  # space-separated samples
    med_rps[$route]="$(zt_median ${rps_of[$route]:-})"
    # shellcheck disable=SC2086
    med_p99[$route]="$(zt_median ${p99_of[$route]:-})"
    # shellcheck disable=SC2086
    med_cpu[$route]="$(zt_median ${cpu_of[$route]:-})"
    # shellcheck disable=SC2086
    med_user[$route]="$(zt_median ${user_of[$route]:-})"
    table+=("$(printf '%-9s %12s %14s %16s %10s %8s' "$route" "${med_rps[$route]}" "${med_p99[$route]}" "${med_cpu[$route]}" "${med_user[$route]}" "${failed_of[$route]:-n/a}")")
    md+=("| $route | ${med_rps[$route]} | ${med_p99[$route]} | ${med_cpu[$route]} | ${med_user[$route]} | ${failed_of[$route]:-n/a} |")
done
rps_ratio="$(ratio "${med_rps[filtered]}" "${med_rps[plain]}")"
p99_ratio="$(ratio "${med_p99[filtered]}" "${med_p99[plain]}")"
cpu_ratio="$(ratio "${med_cpu[filtered]}" "${med_cpu[plain]}")"
user_ratio="$(ratio "${med_user[filtered]}" "${med_user[plain]}")"
# The median of the rounds' own ratios (field 1 rps, 2 CPU, 3 user).
paired() {
    local r ratios=() a b
    for ((r = 1; r <= rounds; r++)); do
        a="${round_of[filtered,$r]:-}" b="${round_of[plain,$r]:-}"
        [[ -n "$a" && -n "$b" ]] || continue
        ratios+=("$(ratio "$(cut -d' ' -f"$1" <<<"$a")" "$(cut -d' ' -f"$1" <<<"$b")")")
    done
    zt_median "${ratios[@]}"
}
rps_paired="$(paired 1)" cpu_paired="$(paired 2)" user_paired="$(paired 3)"
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

zt_log "results"
printf '    %s\n' "${header[@]}"
echo
printf '%-9s %12s %14s %16s %10s %8s\n' route "rps(median)" "p99ms(median)" "cpu_us/req(med)" "user(med)" failed
printf '%s\n' "${table[@]}"
echo
echo "filtered/plain, of the medians: rps $rps_ratio, p99 $p99_ratio, worker CPU per request $cpu_ratio (user $user_ratio)"
echo "filtered/plain, median of the rounds' ratios: rps $rps_paired, worker CPU per request $cpu_paired (user $user_paired)"
zt_info "load average after the run: $load_after (before: $load_before)"

if [[ -n "$markdown" ]]; then
    {
        printf -- '- %s\n' "${header[@]}"
        printf -- '- load average: %s before, %s after\n' "$load_before" "$load_after"
        echo
        printf '%s\n' "${md[@]}"
        echo
        echo "| filtered/plain | req/s | p99 | worker CPU per request | of which user |"
        echo "|---|---:|---:|---:|---:|"
        echo "| ratio of the medians | $rps_ratio | $p99_ratio | $cpu_ratio | $user_ratio |"
        echo "| median of the rounds' ratios | $rps_paired | | $cpu_paired | $user_paired |"
    } >"$markdown"
    zt_info "markdown written to $markdown"
fi
((failed_total == 0))
