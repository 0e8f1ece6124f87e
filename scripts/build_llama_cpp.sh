#!/usr/bin/env bash
# Builds llama.cpp once, into .cache/llama.cpp-VERSION-amx: its shared libraries (for the optional
# `llama_cpp` backend and the llama-cpp-python benchmark peer) and its own `llama-server` (a peer).
#
# No prebuilt llama.cpp loads here: llama-cpp-python is source-only on PyPI. Its sdist vendors the
# whole llama.cpp source (tools/server included), so that sdist is the one download. The build names
# its instruction sets (AVX-512 and AMX) rather than probing this machine's (GGML_NATIVE), so the
# libraries run on any CPU with AVX-512; where the CPU or kernel has no AMX, llama.cpp says so once and
# runs without it. ggml's AMX kernels die of SIGILL when GCC 12 compiles them as they are:
# scripts/patch_llama_cpp_amx.py fixes that one line first. Nothing is downloaded but the sdist
# (llama-server's web UI is not fetched: the server runs without it). The libraries take about 2 minutes
# on 2 cores, with llama-server about 6.
#
# Usage: [LLAMA_CPP_SERVER=1] scripts/build_llama_cpp.sh [VENV] [EXTRAS]
# VENV (default .venv) also gets the llama-cpp-python bindings (with pip extras EXTRAS, e.g. "[server]"),
# installed without compiling anything, and a copy of the libraries built here in their lib/ folder.
# LLAMA_CPP_SERVER=1 builds llama-server too (a benchmark peer, `make bench-peers`): its tools and web server
# are most of the compile, so the backend alone (`make llama-cpp`, what the tests need) leaves it out.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
OUT="${LLAMA_CPP_BUILD_DIR:-$ROOT/.cache/llama.cpp-$VERSION-amx}"
VENV="${1:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
SERVER="${LLAMA_CPP_SERVER:-0}"
if [ "$SERVER" = 1 ]; then
  TARGETS=(llama llama-server)
  TOOLS=()
else
  TARGETS=(llama)
  TOOLS=(-DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF)
fi

if [ ! -f "$OUT/libllama.so" ] || { [ "$SERVER" = 1 ] && [ ! -x "$OUT/llama-server" ]; }; then
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  "$PYTHON" -m pip download --no-deps --no-binary :all: --dest "$WORK" "llama-cpp-python==$VERSION"
  tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
  SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
  "$PYTHON" "$ROOT/scripts/patch_llama_cpp_amx.py" "$SRC"
  cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DCMAKE_BUILD_RPATH='$ORIGIN' -DGGML_NATIVE=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
    -DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16=ON -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "${TOOLS[@]}"
  cmake --build "$WORK/build" --target "${TARGETS[@]}" -j "$(nproc)"
  mkdir -p "$OUT.tmp"
  cp -a "$WORK"/build/bin/lib*.so* "$OUT.tmp/"
  [ "$SERVER" != 1 ] || cp -a "$WORK/build/bin/llama-server" "$OUT.tmp/"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
  echo "built: $OUT"
fi

# The Python bindings alone (LLAMA_BUILD=OFF compiles nothing), then the libraries where they look first.
EXTRAS="${2:-}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$VENV/bin/pip" install "llama-cpp-python$EXTRAS==$VERSION"
PACKAGE="$("$VENV/bin/python" -c 'import importlib.util; print(importlib.util.find_spec("llama_cpp").submodule_search_locations[0])')"
mkdir -p "$PACKAGE/lib"
cp -a "$OUT"/lib*.so* "$PACKAGE/lib/"
"$VENV/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'loads its libraries')"
