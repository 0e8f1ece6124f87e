"""What llama.cpp's kernels cost alone: ms a decode step at several batch sizes, and prompt tokens a second,
for the embedded GGUF as our ``llama_cpp`` backend loads it (no engine loop, no sampling, no HTTP).

Usage:  python -m bench.llama_cpp_steps [--rows 1 8 16] [--steps 40] [--quantization none|q8_0]

Every row has its own slot holding a 64-token prompt; each step feeds one token to every row. The first
five steps are left out and the median of the rest is reported. The load log line that names where the
weights went (``AMX`` or ``CPU_REPACK`` buffers) is printed too: it says which kernels ran.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from bench.run import MODEL_CACHE
from llm_api.local_model.llama_cpp_model import LlamaCppModel
from llm_api.local_model.loader import ModelSpec, load_model

PROMPT = list(range(100, 164))
LONG_PROMPT = list(range(100, 356))


def run_prompt(model: LlamaCppModel, ids: list[int], slot: int) -> None:
    """``ids`` into ``slot`` from position 0, in one step, with the last token's logits."""
    model.run(ids, range(len(ids)), [slot] * len(ids), [False] * (len(ids) - 1) + [True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quantization", default="none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    spec = ModelSpec("embedded", cache_dir=str(MODEL_CACHE), backend="llama_cpp", quantization=args.quantization)
    model = load_model(spec, slots=max(args.rows)).model
    try:
        for rows in args.rows:
            model.clear()
            for slot in range(rows):
                run_prompt(model, PROMPT, slot)
            seconds = []
            for step in range(args.steps):
                started = time.perf_counter()
                model.run([7] * rows, [len(PROMPT) + step] * rows, list(range(rows)), [True] * rows)
                seconds.append(time.perf_counter() - started)
            print(f"{rows:>2} rows: {1000 * statistics.median(seconds[5:]):.2f} ms a step", flush=True)
        model.clear()
        started = time.perf_counter()
        run_prompt(model, LONG_PROMPT, 0)
        print(f"prompt: {len(LONG_PROMPT) / (time.perf_counter() - started):.0f} tokens a second", flush=True)
    finally:
        model.close()


if __name__ == "__main__":
    main()
