#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (a benchmark peer) once, into a cache folder.
#
# The llama.cpp repository is not fetched: the llama-cpp-python sdist on PyPI vendors the full
# llama.cpp source (tools/server included). Only the llama-server target is built. A native build
# (GGML_NATIVE=ON) crashes at the first decode on CPUs that report AMX tiles it cannot use, so the
# build enables AVX-512 explicitly and turns AMX off. About 15 minutes on 2 cores.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LLM_API_BENCH_CACHE:-$(cd "$(dirname "$0")/../.." && pwd)/.cache/bench}"
OUT="$CACHE/llama-server-$VERSION"
if [ -x "$OUT/bin/llama-server" ]; then
  echo "already built: $OUT/bin/llama-server"
  exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 -m pip download --no-deps --no-binary :all: --dest "$WORK" "llama-cpp-python==$VERSION"
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build "$WORK/build" --target llama-server -j "$(nproc)"
mkdir -p "$OUT/bin"
cp "$WORK/build/bin/llama-server" "$OUT/bin/"
echo "built: $OUT/bin/llama-server"
