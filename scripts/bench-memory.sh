#!/usr/bin/env bash
# Memory of a Zentinel worker: RSS when idle, and RSS growth per idle keep-alive client
# connection.
#
#   scripts/bench-memory.sh [--connections N] [--no-build]
#   ZENTINEL_BIN=/path/to/zentinel scripts/bench-memory.sh --no-build   (another build)
#
# Builds release, starts a `zentinel-backend` and Zentinel with one worker proxying to it,
# reads the idle worker's RSS, then opens N client connections (default 10000). Each one sends
# one request, reads the whole response, and then stays open and idle. The script prints the
# RSS before and after and (after - before) / N. Every process it started is stopped on exit,
# also on Ctrl-C.
#
# Targets (issue 5): idle worker under 10 MiB RSS, under 64 KiB per idle connection. The exit
# status is non-zero if either is missed, or if any request failed.
set -euo pipefail
cd "$(dirname "$0")/.."

connections=10000
build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --connections) connections="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

IDLE_MAX_KIB=$((10 * 1024))
PER_CONN_MAX_KIB=64

log() { printf '==> %s\n' "$*" >&2; }

if [[ $build == 1 ]]; then
    log "building (release)"
    cargo build --release --bins >&2
fi
# ZENTINEL_BIN: measure another build (e.g. an older binary, for a before/after comparison).
bin=${ZENTINEL_BIN:-target/release/zentinel}
backend_bin=target/release/zentinel-backend

work=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port, chosen by the kernel.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

log "starting the backend"
"$backend_bin" --listen 127.0.0.1:0 >"$work/backend.out" 2>"$work/backend.err" &
pids+=($!)
backend=""
for _ in $(seq 100); do
    backend=$(sed -n 's/^listening on //p' "$work/backend.out")
    [[ -n "$backend" ]] && break
    sleep 0.05
done
[[ -n "$backend" ]] || { echo "backend did not start" >&2; cat "$work/backend.err" >&2; exit 1; }

port=$(free_port)
cat >"$work/zentinel.kdl" <<EOF
system {
    worker-processes 1
    max-connections $((connections + 1000))
    control-socket "$work/zentinel.sock"
}
listeners {
    listener "http" {
        address "127.0.0.1:$port"
        protocol "http"
        default-route "backend"
        keepalive-timeout-secs 600
        request-timeout-secs 600
    }
}
routes {
    route "backend" {
        upstream "backend"
    }
}
upstreams {
    upstream "backend" {
        target "$backend"
    }
}
EOF

log "starting zentinel (1 worker) on 127.0.0.1:$port -> backend $backend"
"$bin" -c "$work/zentinel.kdl" --log-level warn 2>"$work/zentinel.err" &
master=$!
pids+=("$master")

worker=""
for _ in $(seq 100); do
    worker=$(pgrep -P "$master" | head -n1 || true)
    if [[ -n "$worker" ]] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$master" 2>/dev/null || { echo "zentinel exited:" >&2; cat "$work/zentinel.err" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$worker" ]] || { echo "no worker process" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Let the worker settle (the readiness probe above was its first connection).
sleep 0.5
idle=$(rss_kib "$worker")
log "idle worker (pid $worker): VmRSS ${idle} KiB"

# The client: N connections, one request each (the response read in full and checked), all
# left open; then it reports and waits for stdin to close before closing them.
cat >"$work/client.py" <<'EOF'
import resource, socket, sys, time

port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard != resource.RLIM_INFINITY and hard < n + 100:
    sys.exit(f"the hard open-file limit ({hard}) is below {n + 100}: cannot hold {n} connections")
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

request = b"GET /bytes/1024 HTTP/1.1\r\nHost: bench\r\n\r\n"
conns, failed = [], 0
start = time.monotonic()
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the response head")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            raise ConnectionError("no Content-Length")
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("body truncated")
            body += chunk
        if len(body) != length:
            raise ConnectionError("extra bytes after the body")
    except (OSError, ConnectionError, ValueError) as e:
        failed += 1
        if failed <= 5:
            print(f"connection {i}: {e}", file=sys.stderr)
        s.close()
        continue
    conns.append(s)
print(f"open={len(conns)} failed={failed} seconds={time.monotonic() - start:.1f}", flush=True)
sys.stdin.read()
EOF

log "opening $connections keep-alive connections (one request each, then idle)"
coproc CLIENT { python3 "$work/client.py" "$port" "$connections"; }
pids+=("$CLIENT_PID")
read -r summary <&"${CLIENT[0]}" || { echo "client failed" >&2; exit 1; }
log "client: $summary"
open=$(sed -n 's/.*open=\([0-9]*\).*/\1/p' <<<"$summary")
failed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$summary")

# The worker's accounting of them (all of them must be held, and idle).
sleep 1
loaded=$(rss_kib "$worker")
held=$(ls "/proc/$worker/fd" | wc -l)
per_conn=$(awk -v a="$loaded" -v b="$idle" -v n="$open" 'BEGIN { if (n > 0) printf "%.2f", (a - b) / n; else print "nan" }')

# Close the client's connections, then stop.
exec {CLIENT[1]}>&-

printf '\n'
printf 'worker idle RSS:            %8d KiB  (target < %d KiB)\n' "$idle" "$IDLE_MAX_KIB"
printf 'worker RSS, %6d conns:   %8d KiB  (%d fds open in the worker)\n' "$open" "$loaded" "$held"
printf 'growth per idle connection: %8s KiB  (target < %d KiB)\n' "$per_conn" "$PER_CONN_MAX_KIB"
printf 'idle_rss_kib=%d loaded_rss_kib=%d connections=%d failed=%d per_conn_kib=%s\n' \
    "$idle" "$loaded" "$open" "$failed" "$per_conn"

status=0
if ((idle >= IDLE_MAX_KIB)); then echo "FAIL: idle worker RSS over target" >&2; status=1; fi
if ((failed > 0 || open < connections)); then echo "FAIL: $failed connections failed" >&2; status=1; fi
if ! awk -v p="$per_conn" -v m="$PER_CONN_MAX_KIB" 'BEGIN { exit !(p + 0 < m) }'; then
    echo "FAIL: per-connection memory over target" >&2
    status=1
fi
exit "$status"
