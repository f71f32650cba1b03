#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian 12 machine as root: installs the Debian
# packages the tests need (if missing), then runs every unit and integration test once.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg_bin in "build-essential:cc" "python3:python3"; do
  pkg=${pkg_bin%%:*} bin=${pkg_bin##*:}
  command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo test --locked -j"$(nproc)" 2>&1
