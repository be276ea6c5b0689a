#!/usr/bin/env bash
# Measures the container figures reported in the README: image size, and the time from `docker run` to the
# ready line in `docker logs` with the baked-in defaults (empty volumes), over RUNS starts (default 5).
#   scripts/image-measure.sh [TAG]        (default moltbot:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-moltbot:latest}"
runs="${RUNS:-5}"
# The image's port and volume paths, from the deployment contract.
read -r port models plugins logs < <(python3 -c '
import json
c = json.load(open("deploy/contract.json"))
print(c["ports"]["http"], c["paths"]["models"], c["paths"]["plugins"], c["paths"]["logs"])')
ready_line="AI Assistant service ready on port $port"
work="$(mktemp -d /tmp/moltbot-measure.XXXXXX)"
name="moltbot-measure-$$"
trap 'docker rm -f -v "$name" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

echo "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
times=()
for run in $(seq "$runs"); do
  rm -rf "$work"/* && mkdir -p "$work"/{models,plugins,logs}
  started=$(date +%s%N)
  docker run -d --name "$name" -p "127.0.0.1::$port" -v "$work/models:$models" -v "$work/plugins:$plugins" \
    -v "$work/logs:$logs" -e MOLTBOT_ALLOW_UNAUTHENTICATED=true "$tag" >/dev/null
  ready=""
  for _ in $(seq 1200); do  # at most 120 s
    if docker logs "$name" 2>&1 | grep -qF "$ready_line"; then ready=$(date +%s%N); break; fi
    sleep 0.1
  done
  [ -n "$ready" ] || { echo "run $run: not ready within 120 s" >&2; docker logs "$name" >&2; exit 1; }
  seconds=$(awk -v a="$started" -v b="$ready" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
  inside=$(docker logs "$name" 2>&1 | grep -o '"startup_seconds": [0-9.]*' | head -n 1 | cut -d' ' -f2)
  echo "run $run: docker run to ready line $seconds s (the runtime's own startup_seconds: $inside)"
  times+=("$seconds")
  docker rm -f -v "$name" >/dev/null
done
printf '%s\n' "${times[@]}" | sort -n | awk '{t[NR] = $1} END {printf "start to ready: median %.2f s, min %.2f s, max %.2f s over %d runs\n", t[int((NR + 1) / 2)], t[1], t[NR], NR}'
