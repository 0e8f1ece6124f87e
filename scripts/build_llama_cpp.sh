#!/usr/bin/env bash
# Builds llama.cpp once, into .cache/llama.cpp-VERSION-ISA-PATCHES: its shared libraries (for the optional
# `llama_cpp` backend and the llama-cpp-python benchmark peer) and its own `llama-server` (a peer).
# .cache/llama.cpp-VERSION links to the build for this machine's CPU.
#
# No prebuilt llama.cpp loads here: llama-cpp-python is source-only on PyPI. Its sdist vendors the
# whole llama.cpp source (tools/server included), so that sdist is the one download. The build names
# the instruction sets it compiles for, chosen from this CPU's flags, rather than compiling for
# whatever the compiler finds (GGML_NATIVE): ISA, the folder's suffix, lists them (for example
# avx512-vbmi-vnni-bf16-amx, or sse42-avx-avx2-fma-f16c-bmi2), so a build for one kind of CPU is never loaded on a CPU
# that lacks one of its instructions (it would die of SIGILL at the first decode). With AVX-512 it
# also compiles ggml's AMX kernels; where the CPU or kernel has no AMX, llama.cpp says so once and
# runs without them. scripts/patch_llama_cpp.py changes ggml's CPU code first: its AMX kernels die of
# SIGILL when GCC 12 compiles them as they are, and its attention runs short prompts a row at a time; the
# folder's name ends with that script's digest, so a change there builds again. Nothing is downloaded but the sdist
# (llama-server's web UI is not fetched: the server runs without it). The libraries take 2 to 4 minutes
# on 2 cores, with llama-server about 6.
#
# Usage: [LLAMA_CPP_SERVER=1] scripts/build_llama_cpp.sh [VENV] [EXTRAS]
#        scripts/build_llama_cpp.sh --isa   (prints what this CPU gets; builds nothing)
#        scripts/build_llama_cpp.sh --compile-only   (the libraries alone, no virtual environment touched: CI
#        compiles them while pip fills the venv, then `make llama-cpp` finds them built)
# VENV (default .venv) also gets the llama-cpp-python bindings (with pip extras EXTRAS, e.g. "[server]"),
# installed without compiling anything, and a copy of the libraries built here in their lib/ folder.
# LLAMA_CPP_SERVER=1 builds llama-server too (a benchmark peer, `make bench-peers`): its tools and web server
# are most of the compile, so the backend alone (`make llama-cpp`, what the tests need) leaves it out.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"

# The x86 instruction sets to compile for: those of this CPU that ggml has a switch for. REQUIRED lists their
# /proc/cpuinfo flags; it is written beside the libraries, and the backend refuses to start on a CPU lacking one.
CPU_FLAGS=" $(grep -m1 '^flags' "${CPUINFO:-/proc/cpuinfo}" 2>/dev/null | cut -d: -f2) "
has() { local flag; for flag in "$@"; do [[ "$CPU_FLAGS" == *" $flag "* ]] || return 1; done; }
compile_for() {  # GGML switch, name in ISA, the CPU flags it needs
  if has "${@:3}"; then
    ISA_FLAGS+=("-DGGML_$1=ON") ISA+=("$2") REQUIRED+=("${@:3}")
  else
    ISA_FLAGS+=("-DGGML_$1=OFF")
  fi
}
ISA=() ISA_FLAGS=(-DGGML_NATIVE=OFF) REQUIRED=()
if [ "$(uname -m)" != x86_64 ]; then
  ISA=(native "$(uname -m)") ISA_FLAGS=(-DGGML_NATIVE=ON)  # other architectures: what the compiler finds
elif has avx512f avx512cd avx512vl avx512dq avx512bw; then
  ISA_FLAGS+=(-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON)
  ISA=(avx512) REQUIRED=(sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq avx512bw)
  compile_for AVX512_VBMI vbmi avx512_vbmi
  compile_for AVX512_VNNI vnni avx512_vnni
  compile_for AVX512_BF16 bf16 avx512_bf16
  ISA_FLAGS+=(-DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16=ON) ISA+=(amx)  # checked at run time
else
  compile_for SSE42 sse42 sse4_2
  compile_for AVX avx avx
  compile_for AVX2 avx2 avx2
  compile_for FMA fma fma
  compile_for F16C f16c f16c
  compile_for BMI2 bmi2 bmi2
  compile_for AVX_VNNI vnni avx_vnni
  [ ${#ISA[@]} -gt 0 ] || ISA=(generic)
fi
ISA_NAME="$(IFS=-; echo "${ISA[*]}")"
LINK="$ROOT/.cache/llama.cpp-$VERSION"
PATCHES="$(sha256sum "$ROOT/scripts/patch_llama_cpp.py" | cut -c1-8)"
OUT="${LLAMA_CPP_BUILD_DIR:-$LINK-$ISA_NAME-$PATCHES}"
if [ "${1:-}" = --isa ]; then  # what this CPU gets, for the tests: the suffix, the switches, the flags needed
  printf '%s\n' "$ISA_NAME" "${ISA_FLAGS[*]}" "${REQUIRED[*]}"
  exit 0
fi
COMPILE_ONLY=0
if [ "${1:-}" = --compile-only ]; then COMPILE_ONLY=1; shift; fi
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

mkdir -p "$(dirname "$OUT")"
if command -v flock >/dev/null 2>&1; then  # one build at a time: a second run waits, then finds the libraries built
  exec 9>"$OUT.lock"
  flock 9
fi
if [ ! -f "$OUT/libllama.so" ] || { [ "$SERVER" = 1 ] && [ ! -x "$OUT/llama-server" ]; }; then
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  "$PYTHON" -m pip download --no-deps --no-binary :all: --dest "$WORK" "llama-cpp-python==$VERSION"
  tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
  SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
  "$PYTHON" "$ROOT/scripts/patch_llama_cpp.py" "$SRC"
  cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DCMAKE_BUILD_RPATH='$ORIGIN' "${ISA_FLAGS[@]}" -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "${TOOLS[@]}"
  cmake --build "$WORK/build" --target "${TARGETS[@]}" -j "$(nproc)"
  mkdir -p "$OUT.tmp"
  cp -a "$WORK"/build/bin/lib*.so* "$OUT.tmp/"
  echo "${REQUIRED[*]}" > "$OUT.tmp/cpu-flags"
  [ "$SERVER" != 1 ] || cp -a "$WORK/build/bin/llama-server" "$OUT.tmp/"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
  echo "built: $OUT"
fi
[ -n "${LLAMA_CPP_BUILD_DIR:-}" ] || ln -sfn "$(basename "$OUT")" "$LINK"  # what bench/run.py runs
[ "$COMPILE_ONLY" = 0 ] || exit 0

# The Python bindings alone (LLAMA_BUILD=OFF compiles nothing), then the libraries where they look first.
EXTRAS="${2:-}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$VENV/bin/pip" install "llama-cpp-python$EXTRAS==$VERSION"
PACKAGE="$("$VENV/bin/python" -c 'import importlib.util; print(importlib.util.find_spec("llama_cpp").submodule_search_locations[0])')"
mkdir -p "$PACKAGE/lib"
cp -a "$OUT"/lib*.so* "$OUT/cpu-flags" "$PACKAGE/lib/"
"$VENV/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'loads its libraries')"
