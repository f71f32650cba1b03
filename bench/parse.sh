#!/usr/bin/env bash
# Frontend speed: parse + lint a 100,000-line Dockerfile with `kiln check`, and with
# `docker build --check` when a Docker engine with BuildKit is running (../shared/peers/setup.sh).
# Usage: bench/parse.sh [LINES]   (prints seconds per run and the ratio)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-100000}
cargo build --release -q
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$lines" > "$work/Dockerfile" <<'PY'
import sys
n = int(sys.argv[1])
out = ["# syntax=docker/dockerfile:1", "ARG BASE=busybox", "FROM ${BASE} AS base"]
i = 0
while len(out) < n:
    out += [f"ENV V{i}=value{i}", f"RUN echo {i} \\", "  && true", f"COPY --chown=1:1 a{i} /b/"]
    i += 1
print("\n".join(out[:n]))
PY
kiln=target/release/kiln
time_it() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
best() { local b=999999 t; for _ in 1 2 3; do t=$(time_it "$@"); b=$(echo "if ($t < $b) $t else $b" | bc -l); done; printf '%.3f' "$b"; }
k=$(best "$kiln" check -f "$work/Dockerfile" "$work")
echo "kiln check, $lines lines: ${k}s"
if command -v docker >/dev/null && docker info >/dev/null 2>&1 && docker build --help 2>/dev/null | grep -q -- '--check'; then
  d=$(best docker build --check -f "$work/Dockerfile" "$work")
  echo "docker build --check, $lines lines: ${d}s (kiln is $(echo "$d / $k" | bc -l | xargs printf '%.1f')x faster)"
else
  echo "docker build --check: not available here (needs a running dockerd with BuildKit check support)"
fi
