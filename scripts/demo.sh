#!/usr/bin/env bash
# The main job, for now: build Zentinel, start it on its embedded default config (one HTTP
# listener on 127.0.0.1:8080 answering a built-in static response), show the master and its
# workers, send requests through it, then stop it gracefully. Later issues turn this into the
# rolling-upgrade-under-load demo.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

log "building (release)"
cargo build --release --bins

bin=target/release/zentinel
master_pid=""
cleanup() {
    if [[ -n "$master_pid" ]] && kill -0 "$master_pid" 2>/dev/null; then
        kill -TERM "$master_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$master_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$master_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM

log "checking the embedded default config"
"$bin" --check

log "starting zentinel (embedded default config)"
"$bin" --log-level info &
master_pid=$!

# Wait (bounded) for the listener to accept.
for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then break; fi
    kill -0 "$master_pid" 2>/dev/null || { echo "zentinel exited during start-up" >&2; exit 1; }
    sleep 0.1
done

log "processes: master $master_pid and its workers"
ps -o pid,ppid,args --ppid "$master_pid" --pid "$master_pid"

request() {
    if command -v curl >/dev/null; then
        curl -sS -i "http://127.0.0.1:8080$1"
    else
        exec 3<>/dev/tcp/127.0.0.1/8080
        printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$1" >&3
        cat <&3
        exec 3>&-
    fi
}

log "a request through the proxy"
request /
log "another one"
request /any/path

log "graceful stop (SIGTERM)"
kill -TERM "$master_pid"
wait "$master_pid" && echo "zentinel stopped cleanly"
master_pid=""
