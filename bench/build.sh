#!/usr/bin/env bash
# Build benchmarks from the RUN/DAG/cache issue, run with kiln and, when installed, with Buildah
# and Docker+BuildKit (../shared/peers/setup.sh installs them), printing seconds and ratios.
#   (a) five stages: four `sleep 2` + write 20 MB each, one unused `sleep 5`, a final stage
#       that COPY --from the four (parallel stages, unused stage skipped);
#   (b) a 280 MiB context (20,000 small files + 10 x 20 MiB) with `COPY . .` then
#       `RUN find . -type f | wc -l`: cold, warm (nothing changed), one file changed.
# Usage: bench/build.sh            (needs root; busybox-static for kiln's base image)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
kiln="$PWD/target/release/kiln"
work=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export KILN_ROOT="$work/root"

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.1f'; }

# kiln's base image: Debian's static busybox, made without RUN.
mkdir -p "$work/bb/rootfs/bin"
cp /bin/busybox "$work/bb/rootfs/bin/busybox"
for a in sh head sleep find wc cat; do ln -s busybox "$work/bb/rootfs/bin/$a"; done
printf 'FROM scratch\nCOPY rootfs/ /\n' > "$work/bb/Dockerfile"
"$kiln" build -q -t busybox "$work/bb" >/dev/null

have_buildah=""; command -v buildah >/dev/null && buildah inspect localhost:5000/busybox:latest >/dev/null 2>&1 && have_buildah=1
# Docker 20.10's own CLI (Debian's docker.io) runs BuildKit builds without the buildx plugin.
DOCKER=${DOCKER:-/usr/bin/docker}
have_docker=""; [ -x "$DOCKER" ] && "$DOCKER" image inspect localhost:5000/busybox:latest >/dev/null 2>&1 && have_docker=1

# --- (a) parallel stages -------------------------------------------------------------------
mkdir -p "$work/a"
{
  for i in 1 2 3 4; do printf 'FROM BASE AS s%s\nRUN sleep 2 && head -c 20971520 /dev/urandom > /data%s\n' "$i" "$i"; done
  printf 'FROM BASE AS unused\nRUN sleep 5\n'
  printf 'FROM BASE\n'
  for i in 1 2 3 4; do printf 'COPY --from=s%s /data%s /\n' "$i" "$i"; done
} > "$work/a/Dockerfile.tmpl"
sed 's#BASE#busybox#' "$work/a/Dockerfile.tmpl" > "$work/a/Dockerfile"
sed 's#BASE#localhost:5000/busybox#' "$work/a/Dockerfile.tmpl" > "$work/a/Dockerfile.peer"
t0=$(now); "$kiln" build -q --no-cache "$work/a" >/dev/null; t1=$(now); ka=$(secs "$t0" "$t1")
echo "(a) parallel stages: kiln ${ka}s (default --jobs: one per CPU, more while CPUs idle)"
t0=$(now); "$kiln" build -q --no-cache --jobs 4 "$work/a" >/dev/null; t1=$(now); ka4=$(secs "$t0" "$t1")
echo "(a) parallel stages: kiln --jobs 4 ${ka4}s"
if [ -n "$have_buildah" ]; then
  t0=$(now); buildah bud -q --jobs 4 --no-cache -f "$work/a/Dockerfile.peer" "$work/a" >/dev/null 2>&1; t1=$(now); ba=$(secs "$t0" "$t1")
  echo "(a) parallel stages: buildah ${ba}s (kiln $(ratio "$ba" "$ka")x faster)"
fi
if [ -n "$have_docker" ]; then
  t0=$(now); DOCKER_BUILDKIT=1 "$DOCKER" build -q --no-cache -f "$work/a/Dockerfile.peer" "$work/a" >/dev/null 2>&1; t1=$(now); da=$(secs "$t0" "$t1")
  echo "(a) parallel stages: docker/BuildKit ${da}s (kiln $(ratio "$da" "$ka")x faster)"
fi

# --- (b) big context ----------------------------------------------------------------------
mkdir -p "$work/b/ctx/small"
python3 - "$work/b/ctx" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(20000):
    d = os.path.join(root, "small", f"d{i // 500}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write(f"file {i}\n" * 4)
for i in range(10):
    with open(os.path.join(root, f"big{i}.bin"), "wb") as f:
        f.write(os.urandom(20 * 1024 * 1024))
PY
printf 'FROM BASE\nWORKDIR /src\nCOPY . .\nRUN find . -type f | wc -l\n' > "$work/b/Dockerfile.tmpl"
sed 's#BASE#busybox#' "$work/b/Dockerfile.tmpl" > "$work/b/Dockerfile"
sed 's#BASE#localhost:5000/busybox#' "$work/b/Dockerfile.tmpl" > "$work/b/Dockerfile.peer"
run_b() { # tool label
  local t0 t1
  t0=$(now)
  case "$1" in
    kiln) "$kiln" build -q -f "$work/b/Dockerfile" "$work/b/ctx" >/dev/null ;;
    buildah) buildah bud -q --layers -f "$work/b/Dockerfile.peer" "$work/b/ctx" >/dev/null 2>&1 ;;
    docker) DOCKER_BUILDKIT=1 "$DOCKER" build -q -f "$work/b/Dockerfile.peer" "$work/b/ctx" >/dev/null 2>&1 ;;
  esac
  t1=$(now); secs "$t0" "$t1"
}
for tool in kiln ${have_buildah:+buildah} ${have_docker:+docker}; do
  echo "seed" > "$work/b/ctx/small/d0/f0.txt"
  case "$tool" in
    kiln) rm -rf "$KILN_ROOT/cache" ;;
    buildah) buildah rmi -a -f >/dev/null 2>&1 || true; buildah pull -q --tls-verify=false localhost:5000/busybox:latest >/dev/null 2>&1 || true ;;
    docker) "$DOCKER" builder prune -af >/dev/null 2>&1 || true ;;
  esac
  cold=$(run_b "$tool"); warm=$(run_b "$tool")
  echo "changed $(date +%s%N)" > "$work/b/ctx/small/d0/f0.txt"
  one=$(run_b "$tool")
  if [ "$tool" = kiln ]; then
    kcold=$cold kwarm=$warm kone=$one
    echo "(b) big context: kiln cold ${cold}s, warm ${warm}s, one file changed ${one}s"
  else
    echo "(b) big context: $tool cold ${cold}s ($(ratio "$cold" "$kcold")x), warm ${warm}s ($(ratio "$warm" "$kwarm")x), one file changed ${one}s ($(ratio "$one" "$kone")x)"
  fi
done
