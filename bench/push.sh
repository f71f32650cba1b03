#!/usr/bin/env bash
# Push/pull benchmark from the registry issue: an image with 280 MiB of incompressible
# layers (4 x 70 MiB of random bytes on a busybox base) pushed to and pulled from a local
# Distribution registry (Debian's docker-registry, started here on a free 127.0.0.1 port).
# Prints kiln's push (gzip, the default; and zstd) and pull times, the time to write the same
# bytes to disk (cp + sync of the layer blobs: what "pull within 1.5x" compares to), and,
# when installed, `skopeo copy` to a directory and buildah's pull and push of the same image.
# Usage: bench/push.sh            (needs root, docker-registry, busybox-static)
#        BENCH_SCRATCH=/dev/shm bench/push.sh   puts the registry's storage, the build context
#        and the pushing store there (a tmpfs when the disk is short of the ~2.5 GB the run
#        needs); the pulled store and the write reference stay on /var/tmp's disk.
#        BENCH_ONLY_KILN=1 skips skopeo and buildah; BENCH_DIR=DIR runs everything in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
# KILN_BIN=path runs another kiln binary (e.g. an older build, for before/after figures).
kiln=${KILN_BIN:-$PWD/target/release/kiln}
[ -n "${KILN_BIN:-}" ] || cargo build --release -q
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/kiln-push-bench.XXXXXX")
scratch=$work
[ -n "${BENCH_SCRATCH:-}" ] && scratch=$(mktemp -d "$BENCH_SCRATCH/kiln-push-bench.XXXXXX")
reg_pid=""
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work" "$scratch"; }
trap cleanup EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }

# A registry of our own (one may already listen on 5000: leave it alone).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $scratch/registry
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
reg="127.0.0.1:$port"

# The image: busybox + 4 layers of 70 MiB random bytes.
mkdir -p "$scratch/ctx/rootfs/bin"
cp /bin/busybox "$scratch/ctx/rootfs/bin/busybox"
for i in 1 2 3 4; do head -c $((70 * 1024 * 1024)) /dev/urandom > "$scratch/ctx/data$i"; done
{
  printf 'FROM scratch\nCOPY rootfs/ /\n'
  for i in 1 2 3 4; do printf 'COPY data%s /data%s\n' "$i" "$i"; done
} > "$scratch/ctx/Dockerfile"
export KILN_ROOT="$scratch/root"
"$kiln" build -q -t "$reg/bench/app:gzip" "$scratch/ctx" >/dev/null
rm -rf "$scratch/ctx"
"$kiln" tag "$reg/bench/app:gzip" "$reg/bench/zstd:1"

t0=$(now); "$kiln" push -q "$reg/bench/app:gzip" >/dev/null; t1=$(now)
push_gzip=$(secs "$t0" "$t1")
t0=$(now); "$kiln" push -q --compression zstd "$reg/bench/zstd:1" >/dev/null; t1=$(now)
push_zstd=$(secs "$t0" "$t1")

# Pull into an empty root: download, verify, store, unpack.
sync
t0=$(now); KILN_ROOT="$work/root2" "$kiln" pull -q "$reg/bench/app:gzip" >/dev/null; sync; t1=$(now)
pull=$(secs "$t0" "$t1")

# The same bytes written to disk (the pulled blobs, copied and synced).
mkdir -p "$work/copy"
sync
t0=$(now); cp "$work"/root2/blobs/sha256/* "$work/copy/"; sync; t1=$(now)
write=$(secs "$t0" "$t1")
# A pull writes every byte twice (the verified blob kept in the store, and the unpacked
# files): the same bytes written twice, for the ratio that compares like with like.
rm -rf "$work/root2"
sync
t0=$(now); for c in copy2 copy3; do mkdir -p "$work/$c"; cp "$work"/copy/* "$work/$c/"; done; sync; t1=$(now)
write2=$(secs "$t0" "$t1")
rm -rf "$work/copy2" "$work/copy3"

echo "push 280 MiB (gzip):   ${push_gzip}s   (target < 3 s; measured docker push 14.3 s, buildah push 5.4 s)"
echo "push 280 MiB (zstd):   ${push_zstd}s"
echo "pull 280 MiB:          ${pull}s   (incl. unpack into snapshots)"
echo "write the bytes:       ${write}s   (pull / write = $(echo "$pull / $write" | bc -l | xargs printf '%.2f'), target <= 1.5)"
echo "write them twice:      ${write2}s   (pull / write twice = $(echo "$pull / $write2" | bc -l | xargs printf '%.2f'))"
[ -n "${BENCH_ONLY_KILN:-}" ] && exit 0

if command -v skopeo >/dev/null; then
  # skopeo copy to a directory: download + verify + write, no unpack (a lower bound for pull).
  sync
  t0=$(now); skopeo --insecure-policy copy -q --src-tls-verify=false "docker://$reg/bench/app:gzip" "dir:$work/skopeo" >/dev/null; sync; t1=$(now)
  echo "skopeo copy to a dir:  $(secs "$t0" "$t1")s   (pull without unpack)"
fi

if command -v buildah >/dev/null; then
  sync
  t0=$(now); buildah pull -q --tls-verify=false "docker://$reg/bench/app:gzip" >/dev/null; sync; t1=$(now)
  echo "buildah pull:          $(secs "$t0" "$t1")s"
  buildah rmi -f "$reg/bench/app:gzip" >/dev/null 2>&1 || true

  "$kiln" save -o "$work/app.tar" "$reg/bench/app:gzip"
  buildah pull -q "docker-archive:$work/app.tar" >/dev/null 2>&1 || true
  img=$(buildah images -q --filter "reference=$reg/bench/app:gzip" 2>/dev/null | head -1)
  if [ -n "$img" ]; then
    t0=$(now); buildah push -q --tls-verify=false "$img" "docker://$reg/bench/buildah:1" >/dev/null; t1=$(now)
    echo "buildah push:          $(secs "$t0" "$t1")s"
    buildah rmi -f "$img" >/dev/null 2>&1 || true
  fi
fi
