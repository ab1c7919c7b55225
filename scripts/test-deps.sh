#!/usr/bin/env bash
# What the end-to-end tests need beyond a Rust toolchain, installed when missing: Debian
# packages for the real clients the tests drive (curl, openssl, h2load from nghttp2-client).
# Called by scripts/test.sh; safe to run again (installs nothing when all is there).
set -euo pipefail
cd "$(dirname "$0")/.."

PATH="$PATH:/usr/sbin:/sbin"
sudo=()
if (($(id -u) != 0)); then sudo=(sudo); fi

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if ((${#missing[@]} > 0)); then
    echo "test-deps: installing ${missing[*]} (apt-get)" >&2
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
