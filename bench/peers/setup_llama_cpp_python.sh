#!/usr/bin/env bash
# llama-cpp-python's own OpenAI server (a benchmark peer) in its own venv in the cache folder, on the
# llama.cpp libraries that scripts/build_llama_cpp.sh builds (the same build, AVX-512 on, AMX off).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${LLM_API_BENCH_CACHE:-$ROOT/.cache/bench}"
VENV="$CACHE/llama-cpp-python-venv"
if "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  echo "already installed: $VENV"
  exit 0
fi
bash "$ROOT/scripts/build_llama_cpp.sh" "$VENV" "[server]"
