#!/usr/bin/env bash
# `kiln run --rm IMAGE true` from the run issue (docker 0.46 s, podman 0.53 s measured there;
# target for kiln: under 0.05 s), with hyperfine: the default bridge network, --network none,
# and, when installed, docker and podman on their busybox.
# Usage: bench/run.sh            (needs root, hyperfine and busybox-static)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || apt-get install -y -q hyperfine >/dev/null
cargo build --release -q
kiln="$PWD/target/release/kiln"
work=$(mktemp -d /var/tmp/kiln-bench-run.XXXXXX)
trap '"$kiln" --root "$work/root" network prune -f >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export KILN_ROOT="$work/root"

# kiln's base image: Debian's static busybox, made without RUN.
mkdir -p "$work/bb/rootfs/bin"
cp /bin/busybox "$work/bb/rootfs/bin/busybox"
ln -s busybox "$work/bb/rootfs/bin/true"
printf 'FROM scratch\nCOPY rootfs/ /\n' > "$work/bb/Dockerfile"
"$kiln" build -q -t busybox "$work/bb" >/dev/null

cmds=(
  "$kiln run --rm busybox true"
  "$kiln run --rm --network none busybox true"
  "$kiln run --rm --network host busybox true"
)
if docker image inspect busybox >/dev/null 2>&1; then cmds+=("docker run --rm busybox true"); fi
if podman image exists busybox >/dev/null 2>&1; then cmds+=("podman run --rm busybox true"); fi
hyperfine -N --warmup 5 --runs 50 "${cmds[@]}"
# Nothing may be left behind.
left=$(ls "$work/root/containers" | grep -v '^\.lock$' || true)
[ -z "$left" ] || { echo "containers left behind: $left" >&2; exit 1; }
