#!/usr/bin/env bash
# Build llama.cpp's llama-server and llama-quantize (and keep its GGUF converter) from the sources that the
# llama-cpp-python sdist on PyPI bundles. Made once under $1 (default build/bench/llama.cpp); reruns skip it.
# `pip download` of an sdist prepares its metadata with the sdist's build backend; --no-build-isolation makes it
# use the one installed in $PY's environment (scikit-build-core, from requirements/bench.txt) instead of building
# an isolated one from sources (--no-binary :all: would apply to the backend too).
set -euo pipefail
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
if [[ -x "$OUT/bin/llama-server" && -x "$OUT/bin/llama-quantize" && -f "$OUT/src/convert_hf_to_gguf.py" ]]; then
  echo "llama-server: already built in $OUT"
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
cmake --build "$OUT/cmake" --target llama-server llama-quantize -j "$(nproc)" >>"$OUT/cmake.log"
mkdir -p "$OUT/bin"
cp "$OUT/cmake/bin/llama-server" "$OUT/cmake/bin/llama-quantize" "$OUT/bin/"
rm -rf "$OUT/cmake"
echo "llama-server and llama-quantize: built in $OUT/bin in $((SECONDS - started)) s"
