#!/usr/bin/env bash
# What the end-to-end tests need beyond a Rust toolchain, installed when missing: Debian
# packages for the real clients the tests drive (curl, openssl, h2load from nghttp2-client),
# redis-server for the Redis-backed rate limits (each test starts its own instance on a free
# loopback port; the package's system service is stopped and disabled, never used),
# and a Python virtual environment with grpcio and h2 (PyPI) for the gRPC and HTTP/2 upstream
# tests (tests/python/). Called by scripts/test.sh; safe to run again (installs nothing when
# all is there).
set -euo pipefail
cd "$(dirname "$0")/.."

PATH="$PATH:/usr/sbin:/sbin"
sudo=()
if (($(id -u) != 0)); then sudo=(sudo); fi

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v python3 >/dev/null || missing+=(python3)
# `python3 -m venv` needs ensurepip, which Debian ships apart.
if ! python3 -c 'import ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
if ((${#missing[@]} > 0)); then
    echo "test-deps: installing ${missing[*]} (apt-get)" >&2
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Installing redis-server enables and starts its system service where systemd runs: the tests
# start their own servers, so that one only takes port 6379 and memory. Stopped and disabled.
if command -v systemctl >/dev/null && systemctl is-enabled redis-server >/dev/null 2>&1; then
    "${sudo[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

# The venv: where scripts/test.sh points the tests (ZENTINEL_TEST_PYTHON); one per machine,
# reused while it has what the tests import.
venv="${ZENTINEL_TEST_VENV:-$HOME/.cache/zentinel-test-venv}"
if ! "$venv/bin/python" -c 'import grpc, h2' 2>/dev/null; then
    echo "test-deps: creating the Python venv $venv (grpcio, h2)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check grpcio h2
fi
