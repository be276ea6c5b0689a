#!/usr/bin/env bash
# Build llama.cpp's llama-server, llama-quantize, llama-perplexity and llama-tokenize (and keep its GGUF converter)
# from the sources that the llama-cpp-python sdist on PyPI bundles. Made once under $1 (default
# build/bench/llama.cpp); reruns skip it. The bench needs the first two, the fidelity tests (tests/fidelity/) all four:
# one cmake build makes them together, since most of the time goes into the shared libllama/ggml objects.
# `pip download` of an sdist prepares its metadata with the sdist's build backend; --no-build-isolation makes it
# use the one installed in $PY's environment (scikit-build-core, from requirements/bench.txt) instead of building
# an isolated one from sources (--no-binary :all: would apply to the backend too).
set -euo pipefail
TOOLS=(llama-server llama-quantize llama-perplexity llama-tokenize)
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PY="${PY:-.venv/bin/python}"
OUT="$(realpath -m "${1:-build/bench/llama.cpp}")"
mkdir -p "$OUT"
exec 9>"$OUT/.build.lock"
# One build at a time: a second caller waits for it (at most LLAMA_BUILD_WAIT seconds when set), then finds it made.
if [[ -n "${LLAMA_BUILD_WAIT:-}" ]]; then
  flock -w "$LLAMA_BUILD_WAIT" 9 || { echo "llama-server: another build still runs after ${LLAMA_BUILD_WAIT} s" >&2; exit 1; }
else
  flock 9
fi
built() {
  local tool
  for tool in "${TOOLS[@]}"; do [[ -x "$OUT/bin/$tool" ]] || return 1; done
  [[ -f "$OUT/src/convert_hf_to_gguf.py" && -d "$OUT/src/tools/perplexity" ]]
}
if built; then
  echo "llama.cpp tools: already built in $OUT"
  exit 0
fi
for tool in cmake ninja g++; do
  command -v "$tool" >/dev/null || { echo "llama-server: needs $tool (apt-get install cmake ninja-build g++)" >&2; exit 1; }
done
mkdir -p "$OUT"
sdist="$OUT/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
if [[ ! -f "$sdist" ]]; then
  "$PY" -c 'import scikit_build_core' 2>/dev/null || {
    echo "llama-server: $PY lacks scikit-build-core (make bench-deps installs requirements/bench.txt)" >&2; exit 1; }
  "$PY" -m pip download -q --no-binary :all: --no-deps --no-build-isolation \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$OUT/sdist"
fi
rm -rf "$OUT/src" "$OUT/unpack"
mkdir -p "$OUT/unpack"
tar -xzf "$sdist" -C "$OUT/unpack"
mv "$OUT/unpack/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp" "$OUT/src"
rm -rf "$OUT/unpack"
started=$SECONDS
cmake -S "$OUT/src" -B "$OUT/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF >"$OUT/cmake.log"
cmake --build "$OUT/cmake" --target "${TOOLS[@]}" -j "$(nproc)" >>"$OUT/cmake.log"
mkdir -p "$OUT/bin"
for tool in "${TOOLS[@]}"; do cp "$OUT/cmake/bin/$tool" "$OUT/bin/"; done
rm -rf "$OUT/cmake"
echo "${TOOLS[*]}: built in $OUT/bin in $((SECONDS - started)) s"
