#!/usr/bin/env bash
# The API's overhead: N sequential requests of the same listing in-process (`kiln images`),
# through the daemon with kiln's client (`kiln -H … images`), with the docker CLI, and raw
# `curl /images/json`; then `run --rm … true` in-process, with `kiln -H` and with the docker CLI;
# plus the daemon's resident memory. Usage: bench/daemon.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50}
cargo build -q
KILN=$PWD/target/debug/kiln
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/bb/rootfs/bin"
cp /bin/busybox "$work/bb/rootfs/bin/" && ln -s busybox "$work/bb/rootfs/bin/sh"
printf 'FROM scratch\nCOPY rootfs/ /\n' > "$work/bb/Dockerfile"
"$KILN" --root "$work/root" build -q -t bench:1 "$work/bb" >/dev/null
"$KILN" --root "$work/root" daemon -H "unix://$work/kiln.sock" 2>/dev/null &
pid=$!
until [ -S "$work/kiln.sock" ]; do sleep 0.05; done
export DOCKER_HOST="unix://$work/kiln.sock" DOCKER_CONFIG="$work/cfg"
timeit() {
  local label=$1; shift
  local start end
  start=$(date +%s%N)
  for _ in $(seq "$N"); do "$@" >/dev/null; done
  end=$(date +%s%N)
  printf '%-28s %8.2f ms/request\n' "$label" "$(echo "($end - $start) / 1000000 / $N" | bc -l)"
}
timeit "kiln images (in-process)" env -u DOCKER_HOST "$KILN" --root "$work/root" images
timeit "kiln -H … images" "$KILN" -H "$DOCKER_HOST" images
timeit "docker images" docker images
timeit "curl /images/json" curl -s --unix-socket "$work/kiln.sock" http://kiln/v1.43/images/json
timeit "curl /_ping" curl -s --unix-socket "$work/kiln.sock" http://kiln/_ping
# A container's whole life (create, start, attach, wait, remove), without a network.
timeit "kiln run --rm (in-process)" env -u DOCKER_HOST "$KILN" --root "$work/root" run --rm --network none bench:1 sh -c true
timeit "kiln -H … run --rm" "$KILN" -H "$DOCKER_HOST" run --rm --network none bench:1 sh -c true
timeit "docker run --rm" docker run --rm --network none bench:1 sh -c true
echo "daemon RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
