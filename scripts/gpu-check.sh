#!/usr/bin/env bash
# The GPU check of issue 14, for a machine with an NVIDIA GPU and nothing reachable outside it (the device
# machine lent to some sessions: Python 3.12 with PyTorch and transformers 5, a CPU-only onnxruntime, 64 MiB a
# transfer). What it needs travels as wheels made here:
#
#   here:   scripts/gpu-check.sh prepare
#           wheels for CPython 3.12 in build/gpu-wheels/ (git-ignored): onnxruntime-gpu (CUDA 13), split into
#           parts of PART_BYTES under build/gpu-wheels/parts/, one folder per part; the small wheels (the model
#           builder, the runtime's own dependencies the image lacks) in build/gpu-wheels/small/, with SHA256SUMS
#           of every whole wheel.
#   there:  one call per part, back to back (a machine stays warm 30 s), each carrying that part's folder:
#             scripts/gpu-check.sh stage build/gpu-wheels/parts/01
#           then one call carrying build/gpu-wheels/small:
#             scripts/gpu-check.sh run
#           which joins the parts, checks every wheel's sha256, installs them into /tmp/site, builds the bench
#           model, and runs the GPU rows of `make bench` (fp16 CUDA graph from the model builder against
#           transformers eager fp16) and an int4 CUDA graph smoke test, all in under 8 minutes; the report goes
#           to $OUT (or build/gpu-check/).
#
# Written on a machine without a GPU: `prepare` and the joining and checking of `run` ran here; the rest has
# not run on a GPU yet.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=build/gpu-wheels
STAGE=${GPU_CHECK_STAGE:-/root/gpu-wheels}
PART_BYTES=${PART_BYTES:-55000000}  # a part and the working tree travel together in one 64 MiB call
RUN_SECONDS=${GPU_CHECK_SECONDS:-470}
# Versions: onnxruntime-gpu as pinned by pyproject's gpu extra, the builder as in requirements/builder.txt, the
# runtime's dependencies (pyproject) that the device image does not have.
BIG_WHEELS=(onnxruntime-gpu==1.31.1)
SMALL_WHEELS=(onnxruntime-genai==0.18.0 sanic==25.12.0 sanic-routing==23.12.0 html5tagger==2.0.0
              tracerite==2.6.5 httptools==0.9.0 ujson==6.1.0 websockets==17.4 pydantic==2.14.4
              pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 jsonschema==4.26.0
              jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 typing-extensions==4.16.0)

die() { echo "gpu-check: $*" >&2; exit 1; }

download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$1" "${@:2}"
}

prepare() {
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS/big" "$WHEELS/small" "$WHEELS/parts"
  download "$WHEELS/big" "${BIG_WHEELS[@]}"
  download "$WHEELS/small" "${SMALL_WHEELS[@]}"
  (cd "$WHEELS" && sha256sum big/*.whl small/*.whl | sed 's#  [a-z]*/#  #') >"$WHEELS/small/SHA256SUMS"
  local wheel name n=0
  for wheel in "$WHEELS"/big/*.whl; do
    name=$(basename "$wheel")
    split -b "$PART_BYTES" -d -a 2 "$wheel" "$WHEELS/parts/$name.part"
  done
  for part in "$WHEELS"/parts/*.part*; do  # one folder per part: `carry` names folders
    n=$((n + 1))
    mkdir -p "$WHEELS/parts/$(printf %02d $n)"
    mv "$part" "$WHEELS/parts/$(printf %02d $n)/"
  done
  rm -rf "$WHEELS/big"
  echo "gpu-check: $n part(s) in $WHEELS/parts/NN, small wheels and SHA256SUMS in $WHEELS/small:"
  du -sh "$WHEELS"/parts/* "$WHEELS/small"
}

stage() {
  [ $# -gt 0 ] || die "stage: name the carried part folder(s)"
  mkdir -p "$STAGE"
  local item
  for item in "$@"; do
    if [ -d "$item" ]; then cp "$item"/* "$STAGE"/; else cp "$item" "$STAGE"/; fi
  done
  ls -l "$STAGE"
}

# Join the staged parts into whole wheels beside the small ones; every wheel's sha256 must match SHA256SUMS.
assemble() {
  local into=$1 name
  mkdir -p "$into"
  cp "$WHEELS"/small/*.whl "$WHEELS/small/SHA256SUMS" "$into"/
  for name in $(ls "$STAGE" | sed -n 's/\.part[0-9][0-9]$//p' | sort -u); do
    cat "$STAGE/$name".part* >"$into/$name"
  done
  (cd "$into" && sha256sum --quiet -c SHA256SUMS) || die "a wheel does not match SHA256SUMS (a part missing?)"
  echo "gpu-check: $(ls "$into"/*.whl | wc -l) wheels joined and checked"
}

run() {
  local out=${OUT:-build/gpu-check} whole=/tmp/gpu-wheels
  mkdir -p "$out"
  assemble "$whole"
  [ "${GPU_CHECK_ASSEMBLE_ONLY:-}" = 1 ] && return 0
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: this is not a GPU machine"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$whole"/*.whl
  export PYTHONPATH=/tmp/site:$PWD/runtime:$PWD PYTHONUNBUFFERED=1
  MOLTBOT_BUILDER_PYTHON=$(command -v python3)
  export MOLTBOT_BUILDER_PYTHON
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  python3 -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())' | tee -a "$out/gpu.txt"
  timeout --signal=INT "$RUN_SECONDS" python3 -m bench.run --gpu-only --rounds 3 --docs "$out/benchmarks-gpu.md" \
    2>&1 | tee "$out/bench.log" || echo "gpu-check: bench ended with status $?" | tee -a "$out/bench.log"
  timeout 120 python3 - <<'EOF' 2>&1 | tee "$out/int4-cuda.log" || true
# An int4 CUDA graph from the model builder, served by the runtime's shared-KV runner on the CUDA provider.
from pathlib import Path
import numpy as np
from bench.models import GPU_SHAPE
from bench.prepare import ensure_checkpoint
from moltbot.engine.sessions import DeviceOptions
from moltbot.engine.shared_kv import SharedKVRunner
from moltbot.export.genai_builder import build_graph
checkpoint = ensure_checkpoint(GPU_SHAPE, Path("build/bench/models"), dtype="float16")
graph = build_graph(checkpoint, Path("/tmp/gpu-int4-cuda"), "int4", "cuda")
runner = SharedKVRunner(graph, DeviceOptions(device="cuda"), slots=4, max_length=256)
assert runner.provider == "CUDAExecutionProvider", runner.provider
slots, logits = runner.prefill([[1, 2, 3, 4], [5, 6, 7]], token_budget=64)
tokens = [int(t) for t in logits.argmax(axis=1)]
for _ in range(16):
    tokens = [int(t) for t in runner.decode(slots, tokens).argmax(axis=1)]
assert np.isfinite(logits).all()
print(f"int4 cuda: {runner.precision} graph on {runner.provider}, 2 sequences x 16 steps ok")
EOF
  ls -l "$out"
}

case "${1:-}" in
  prepare) prepare ;;
  stage) shift; stage "$@" ;;
  run) run ;;
  *) die "usage: $0 prepare | stage PART_FOLDER | run   (see the comment at the top)" ;;
esac
