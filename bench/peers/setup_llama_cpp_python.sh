#!/usr/bin/env bash
# Installs llama-cpp-python's OpenAI server (a benchmark peer) into its own venv in the cache folder.
# It compiles llama.cpp from the sdist (no prebuilt binary), with the same CPU flags as
# build_llama_server.sh: AVX-512 on, AMX off. About 15 minutes on 2 cores.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LLM_API_BENCH_CACHE:-$(cd "$(dirname "$0")/../.." && pwd)/.cache/bench}"
VENV="$CACHE/llama-cpp-python-venv"
if "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  echo "already installed: $VENV"
  exit 0
fi
python3 -m venv "$VENV"
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
 -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
 -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
"$VENV/bin/pip" install --no-binary llama-cpp-python "llama-cpp-python[server]==$VERSION"
echo "installed: $VENV"
