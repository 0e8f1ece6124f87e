"""Make llama.cpp's AMX kernels load their whole tile configuration when built with GCC 12.

GCC 12's ``_tile_loadconfig`` tells the compiler that ``ldtilecfg`` reads 8 bytes of its 64-byte
argument, so the optimizer drops the stores of every tile's rows and columns (only the palette byte
survives). The first tile load then finds no tile configured and the process dies of SIGILL: the
"AMX crash" seen on machines that have AMX. This rewrites the one call in ggml's AMX matrix code as
``ldtilecfg`` on the full 64-byte operand, whose stores no compiler may drop.

Usage: python scripts/patch_llama_cpp_amx.py LLAMA_CPP_SOURCE_DIR
"""

import sys
from pathlib import Path

CALL = "    _tile_loadconfig(&tc);\n"
FULL_OPERAND = '    __asm__ volatile ("ldtilecfg %0" :: "m" (*(const char (*)[64]) &tc));  // all 64 bytes read\n'


def main(source: Path) -> None:
    kernel = source / "ggml" / "src" / "ggml-cpu" / "amx" / "mmq.cpp"
    text = kernel.read_text()
    if text.count(CALL) != 1:
        sys.exit(f"{kernel}: expected one `{CALL.strip()}` to rewrite; check the fix against this version")
    kernel.write_text(text.replace(CALL, FULL_OPERAND))
    print(f"patched {kernel}: ldtilecfg reads its whole tile configuration")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
