#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian 12 machine as root: installs the Debian
# packages the tests need (if missing), then runs every unit and integration test once.
set -euo pipefail
cd "$(dirname "$0")/.."
# busybox-static: the tests' base image; skopeo, umoci: interop checks; git: ADD of git repos;
# iptables, iproute2, util-linux (nsenter: networks; script: ptys for run -it tests);
# docker-registry (Distribution), apache2-utils (htpasswd) and openssl (the token server's key
# and certificate): the registry tests.
packages=(build-essential python3 busybox-static skopeo umoci git iptables iproute2 util-linux docker-registry apache2-utils openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo test --locked -j"$(nproc)" 2>&1
