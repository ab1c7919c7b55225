# shellcheck shell=bash
# shellcheck disable=SC2034  # globals (table_text, table_md, ...) are read by bench-peers.sh
# bench/tables.sh: medians over the rounds, the one results table with its ratios (text and
# markdown), and writing a generated section into a markdown file between marker comments
# (replaced on every run, the rest of the file kept). Sourced after bench/workloads.sh.

# ratio A B: A/B with 2 decimals, n/a when either is missing or B is 0.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'
}

# med ARRAY KEY: the median of the samples of ARRAY[KEY] (n/a when none).
med() {
    local -n samples="$1"
    # shellcheck disable=SC2086  # space-separated samples
    zt_median ${samples[$2]:-}
}

# shown KIND VALUE: a throughput as printed: bytes/s as MiB/s, others as they are.
shown() {
    if [[ "$1" == bytes && "$2" != n/a ]]; then
        awk -v v="$2" 'BEGIN { printf "%.0f MiB/s\n", v / 1048576 }'
    else
        echo "$2"
    fi
}

measure_name() {
    case "$1" in
        bytes) echo "bytes/s" ;;
        hps) echo "handshakes/s" ;;
        *) echo "req/s" ;;
    esac
}
cpu_unit() { if [[ "$1" == bytes ]]; then echo "CPU s/GiB"; else echo "CPU µs/req"; fi; }

# build_results_table: table_text (lines) and table_md (lines) from the samples of every
# workload and worker count: throughput per target, the ratios Zentinel/nginx, Zentinel/HAProxy
# and Zentinel/direct (and the same for p99: below 1 is better), p99 per target, the proxies'
# CPU per unit, failed requests of all targets and rounds.
build_results_table() {
    local n w t kind k
    local -A v=() p=() c=()
    table_text=() table_md=()
    table_md+=("| workload | workers | measure | direct | Zentinel | nginx | HAProxy | Z/nginx | Z/HAProxy | Z/direct | p99 Z/nginx | p99 Z/HAProxy | p99 ms Z / nginx / HAProxy / direct | CPU per unit Z / nginx / HAProxy | failed |")
    table_md+=("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    table_text+=("$(printf '%-13s %2s %-12s %12s %12s %12s %12s %7s %9s %8s %9s %11s  %-27s %-22s %6s' \
        workload w measure direct zentinel nginx haproxy Z/nginx Z/haproxy Z/direct p99Z/ngx p99Z/hapx \
        "p99 ms Z/ngx/hapx/direct" "CPU Z/ngx/hapx" failed)")
    for n in "${workers_list[@]}"; do
        for w in "${workloads[@]}"; do
            kind="${wl_kind[$w]}"
            local failed=0 any=0
            for t in backend zentinel nginx haproxy; do
                k="$w,$n,$t"
                v[$t]="$(med rps_of "$k")" p[$t]="$(med p99_of "$k")" c[$t]="$(med cpu_of "$k")"
                [[ -n "${failed_of[$k]:-}" ]] && any=1 && failed=$((failed + failed_of[$k]))
            done
            ((any)) || failed=n/a
            local zn zh zd pn ph p99s cpus
            zn="$(ratio "${v[zentinel]}" "${v[nginx]}")"
            zh="$(ratio "${v[zentinel]}" "${v[haproxy]}")"
            zd="$(ratio "${v[zentinel]}" "${v[backend]}")"
            pn="$(ratio "${p[zentinel]}" "${p[nginx]}")"
            ph="$(ratio "${p[zentinel]}" "${p[haproxy]}")"
            p99s="${p[zentinel]} / ${p[nginx]} / ${p[haproxy]} / ${p[backend]}"
            cpus="${c[zentinel]} / ${c[nginx]} / ${c[haproxy]} $(cpu_unit "$kind" | sed 's/^CPU //')"
            table_text+=("$(printf '%-13s %2s %-12s %12s %12s %12s %12s %7s %9s %8s %9s %11s  %-27s %-22s %6s' \
                "$w" "$n" "$(measure_name "$kind")" "$(shown "$kind" "${v[backend]}")" "$(shown "$kind" "${v[zentinel]}")" \
                "$(shown "$kind" "${v[nginx]}")" "$(shown "$kind" "${v[haproxy]}")" "$zn" "$zh" "$zd" "$pn" "$ph" "$p99s" "$cpus" "$failed")")
            table_md+=("| $w | $n | $(measure_name "$kind") | $(shown "$kind" "${v[backend]}") | $(shown "$kind" "${v[zentinel]}") | $(shown "$kind" "${v[nginx]}") | $(shown "$kind" "${v[haproxy]}") | $zn | $zh | $zd | $pn | $ph | $p99s | $cpus | $failed |")
        done
    done
}

# build_tls_notes: tls_notes (lines): what each server negotiated, the share of TLS sessions
# resumed (tls-resume-*), the ALPN of the HTTP/2 runs, and the TLS libraries.
build_tls_notes() {
    local rustls_version openssl_running n t w line
    tls_notes=()
    ((tls_ok)) || return 0
    [[ " ${workloads[*]} " == *" tls-"* || " ${workloads[*]} " == *" h2-"* ]] || return 0
    rustls_version="$(awk '/^name = "rustls"$/ { getline; gsub(/"/, "", $3); print $3; exit }' "$ZT_ROOT/Cargo.lock")"
    openssl_running="$( (haproxy -vv 2>/dev/null || true) | sed -n 's/^Running on OpenSSL version : //p' | sed -n 1p)"
    [[ -n "$openssl_running" ]] || openssl_running="$( (openssl version 2>/dev/null || echo 'n/a') | sed -n 1p)"
    tls_notes+=("TLS: one ECDSA P-256 certificate (openssl, signed by a test CA) for all, TLS 1.3 only, cipher suite $TLS_SUITE pinned in each proxy (nginx ssl_conf_command Ciphersuites, HAProxy bind ciphersuites, Zentinel tls cipher-suites); rustls ${rustls_version:-?} in Zentinel, the backend and zentinel-load, $openssl_running in nginx and HAProxy; zentinel-load verifies the certificate. The direct target is zentinel-backend --tls, with rustls' default suites (not pinned).")
    line="negotiated:"
    for t in backend zentinel nginx haproxy; do line+=" $t ${negotiated_of[$t]:-n/a};"; done
    tls_notes+=("$line")
    for w in "${workloads[@]}"; do
        [[ "$w" == tls-resume-* ]] || continue
        for n in "${workers_list[@]}"; do
            line="$w, $n worker(s), TLS sessions resumed (%, median):"
            for t in backend zentinel nginx haproxy; do line+=" $t $(med resumed_of "$w,$n,$t");"; done
            tls_notes+=("$line")
        done
    done
    if [[ " ${workloads[*]} " == *" h2-"* ]]; then
        for n in "${workers_list[@]}"; do
            tls_notes+=("HTTP/2 (h2load, 2 threads), $n worker(s), ALPN negotiated: zentinel ${h2_proto_of[$n,zentinel]:-n/a}, nginx ${h2_proto_of[$n,nginx]:-n/a}, haproxy ${h2_proto_of[$n,haproxy]:-n/a}")
        done
    fi
}

# md_section FILE NAME CONTENT: replaces the lines between `<!-- NAME:begin -->` and
# `<!-- NAME:end -->` in FILE with the file CONTENT (markers kept), or appends the markers and
# CONTENT at the end when FILE has no such section. FILE is created when missing.
md_section() {
    local file="$1" name="$2" content="$3" begin end
    begin="<!-- $name:begin (generated; replaced on every run) -->"
    end="<!-- $name:end -->"
    [[ -e "$file" ]] || : >"$file"
    if grep -q "^<!-- $name:begin" "$file" && grep -qxF "$end" "$file"; then
        awk -v b="<!-- $name:begin" -v e="$end" -v f="$content" -v bl="$begin" '
            index($0, b) == 1 { print bl; while ((getline l < f) > 0) print l; skip = 1; next }
            skip && index($0, e) == 1 { skip = 0 }
            !skip { print }' "$file" >"$file.new"
        mv "$file.new" "$file"
    else
        { [[ -s "$file" ]] && echo; echo "$begin"; cat "$content"; echo "$end"; } >>"$file"
    fi
}
