#!/usr/bin/env bash
# Runs on the controller (Molecule prepare): makes the CPU runtime image look like the GPU variant (labels
# io.moltbot.variant=gpu and io.moltbot.cuda-major from the contract) and a DCGM exporter stand-in (serves a
# DCGM metric on 9400), and saves both into one archive the moltbot role ships like any image archive.
#   gpu-images.sh CPU_ARCHIVE OUT_ARCHIVE
set -euo pipefail
archive=$1 out=$2
here="$(cd "$(dirname "$0")" && pwd)"
cuda_major="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gpu"]["cuda_major"])' "$here/../../../../deploy/contract.json")"
docker image inspect moltbot:latest >/dev/null 2>&1 || docker load -q -i "$archive" >/dev/null
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
printf 'FROM moltbot:latest\nLABEL io.moltbot.variant=gpu io.moltbot.cuda-major=%s\n' "$cuda_major" \
  | DOCKER_BUILDKIT=0 docker build -q -t moltbot-molecule/moltbot:gpu - >/dev/null
cp "$here/dcgm-stand-in.py" "$context/"
printf 'FROM moltbot:latest\nCOPY dcgm-stand-in.py /dcgm-stand-in.py\nUSER 10001\nENTRYPOINT ["/opt/moltbot/venv/bin/python", "/dcgm-stand-in.py"]\n' \
  >"$context/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t moltbot-molecule/dcgm-exporter:stand-in "$context" >/dev/null
docker save -o "$out" moltbot-molecule/moltbot:gpu moltbot-molecule/dcgm-exporter:stand-in
docker image rm moltbot-molecule/moltbot:gpu moltbot-molecule/dcgm-exporter:stand-in >/dev/null
