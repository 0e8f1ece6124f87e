"""Two changes to ggml's CPU code, made in llama-cpp-python's vendored llama.cpp before it is compiled.

Each rewrites exact lines of the pinned source and stops the build when they are not there once (the pin
moved: check the change against the new version). scripts/build_llama_cpp.sh names its build folder after
this file's digest, so a build made before a change here is built again.

- **AMX tile configuration.** GCC 12's ``_tile_loadconfig`` tells the compiler that ``ldtilecfg`` reads 8
  bytes of its 64-byte argument, so the optimizer drops the stores of every tile's rows and columns (only
  the palette byte survives). The first tile load then finds no tile configured and the process dies of
  SIGILL: the "AMX crash" seen on machines that have AMX. The one call in ggml's AMX matrix code becomes
  ``ldtilecfg`` on the full 64-byte operand, whose stores no compiler may drop.
- **Tiled attention for short prompts.** ggml's CPU flash attention takes each query row on its own, one
  16-bit dot product and one 16-bit multiply-add per cached cell, unless a sequence brings at least 64
  query rows to the step; then it runs tiles of 64 rows through small float32 matrix products, and computes
  all 64 rows of a tile even where fewer are real. A new turn of a stored conversation brings 10 to 40
  tokens over a long history, so it took the row-at-a-time path: 24 new tokens after 1,500 cached ones cost
  2.7 times the same 24 alone on an AVX2 machine. The tiled path now starts at 2 rows and computes the
  tile's real rows only. Each row's result is the same whichever rows share its tile, so a prompt's
  continuation after cached cells gets the same logits, bit for bit, as the whole prompt run at once
  (tested); the row-at-a-time path did not (up to 0.9 apart). One-token decode steps keep the
  row-at-a-time path, which is faster for one row; the engine never runs a prompt's token alone.

Usage: python scripts/patch_llama_cpp.py LLAMA_CPP_SOURCE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

CPU = Path("ggml") / "src" / "ggml-cpu"
TILED_FROM_ROWS = 2  # query rows of one sequence in a step from which attention runs in tiles

AMX_TILE_CONFIG = [(
    "    _tile_loadconfig(&tc);\n",
    '    __asm__ volatile ("ldtilecfg %0" :: "m" (*(const char (*)[64]) &tc));  // all 64 bytes read\n',
)]

SHORT_PROMPT_TILES = [
    ("simd_gemm(KQ, (const float *)Q_q, K_f32, Q_TILE_SZ, DK, KV_TILE_SZ);",
     "simd_gemm(KQ, (const float *)Q_q, K_f32, tile_rows, DK, KV_TILE_SZ);"),
    ("            bool skip[Q_TILE_SZ] = {};\n\n            for (int tq = 0; tq < Q_TILE_SZ; tq++) {",
     "            bool skip[Q_TILE_SZ] = {};\n\n            for (int tq = 0; tq < tile_rows; tq++) {"),
    ("            for (int tq = 0; tq < Q_TILE_SZ; tq++) {\n                if (skip[tq]) {",
     "            for (int tq = 0; tq < tile_rows; tq++) {\n                if (skip[tq]) {"),
    ("simd_gemm(VKQ32, KQ, V32, Q_TILE_SZ, KV_TILE_SZ, DV);",
     "simd_gemm(VKQ32, KQ, V32, tile_rows, KV_TILE_SZ, DV);"),
    ("                                neq1 >= Q_TILE_SZ);",
     f"                                neq1 >= {TILED_FROM_ROWS});  // tiles from {TILED_FROM_ROWS} rows"),
]


def rewrite(path: Path, changes: list[tuple[str, str]], what: str) -> None:
    """Make every (old, new) change in ``path``, each old text being there exactly once, or stop the build."""
    text = path.read_text()
    for old, new in changes:
        if text.count(old) != 1:
            sys.exit(f"{path}: expected `{old.strip().splitlines()[-1]}` once, for {what}; "
                     "check the change against this version")
        text = text.replace(old, new)
    path.write_text(text)
    print(f"patched {path}: {what}")


def main(source: Path) -> None:
    rewrite(source / CPU / "amx" / "mmq.cpp", AMX_TILE_CONFIG, "ldtilecfg reads its whole tile configuration")
    rewrite(source / CPU / "ops.cpp", SHORT_PROMPT_TILES,
            f"flash attention runs in tiles from {TILED_FROM_ROWS} query rows, over a tile's real rows only")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
